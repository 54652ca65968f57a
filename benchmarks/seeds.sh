#!/usr/bin/env bash
# Three training seeds per activation at the demo's size (1 layer, d_model 128, d_mlp 512,
# 2M builtin tokens each), one shared tokenizer, all six indexed into one database, then
# scored and compared with seeds as the unit:
#   bash benchmarks/seeds.sh OUT        (about 6 x the demo's training time on a CPU)
set -euo pipefail
out=${1:?usage: bash benchmarks/seeds.sh OUT}
seeds=${SEEDS:-"0 1 2"}
mkdir -p "$out"
first=${seeds%% *}
tok="$out/gelu-s$first/tokenizer.json"  # the first run trains the tokenizer; the others share it
for seed in $seeds; do
  for act in gelu solu_ln; do
    name="${act%_ln}-s$seed"
    grep -qs '"complete": true' "$out/$name/config.json" && continue  # a finished run (an interrupted one resumes from scratch)
    if [ -f "$tok" ]; then shared=(--tokenizer "$tok"); else shared=(); fi
    solu train --act "$act" --seed "$seed" --device cpu --out "$out/$name" --force "${shared[@]}"
  done
done
ckpts=()
for seed in $seeds; do for act in gelu solu; do ckpts+=("$out/$act-s$seed"); done; done
# (re)index when there is no index yet or a checkpoint is newer than it
if [ ! -f "$out/index.duckdb" ] || [ -n "$(find "${ckpts[@]}" -name config.json -newer "$out/index.duckdb")" ]; then
  solu index "${ckpts[@]}" --db "$out/index.duckdb" --device cpu
fi
solu autolabel --db "$out/index.duckdb"
groups_gelu=$(for s in $seeds; do printf 'gelu-s%s,' "$s"; done)
groups_solu=$(for s in $seeds; do printf 'solu-s%s,' "$s"; done)
solu compare --db "$out/index.duckdb" "${groups_gelu%,}" "${groups_solu%,}" --out "$out/compare"
