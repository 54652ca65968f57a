"""The verdict against blinded readers, sample by sample (docs/measuring.md).

    python benchmarks/readers.py --db pair.duckdb [--studies tune eval test]

For each study (in the order given), over the neurons not already drawn by an earlier
study of the list: how many of the raters' "yes" and "no" answers the verdict accepts,
with 95% Wilson intervals, its Cohen's kappa, the held-out score's AUROC and the raters'
agreement with each other (kappa of the first two raters). The raters' answers behind the
numbers in the docs are in benchmarks/readers/ (`solu study answer` records them).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from index.measure import study, verdict  # noqa: E402
from index.measure.intervals import wilson  # noqa: E402
from index.store.connection import open_read  # noqa: E402

KEY = ["model_id", "layer", "neuron", "site"]


def agreement(con, name: str, seen: pd.DataFrame) -> dict:
    answers = study.latest_answers(con, name).merge(seen.assign(_seen=1), on=KEY, how="left")
    answers = answers[answers._seen.isna()].drop(columns="_seen")
    expl = con.execute("SELECT model_id, layer, neuron, site, top_share, score FROM current_explanations").df()
    rated = answers.merge(expl, on=KEY)
    yes = (rated.answer == "yes").to_numpy()
    says = verdict.interpretable(rated.top_share, rated.score)
    row = {"study": name, "neurons": len(rated[KEY].drop_duplicates()), "answers": len(rated)}
    for label, mask in (("yes", yes), ("no", ~yes)):
        k, n = int(says[mask].sum()), int(mask.sum())
        low, high = wilson(k, n)
        row[f"accepts_{label}"] = f"{k}/{n} = {k / n:.1%} [{float(low):.1%}, {float(high):.1%}]" if n else "-"
    row["kappa"] = round(float(verdict.kappa(says, yes)), 3)
    row["auroc"] = round(verdict.auroc(rated.score, yes), 3)
    raters = sorted(rated.rater.unique())
    if len(raters) >= 2:
        wide = rated.pivot_table(index=KEY, columns="rater", values="answer", aggfunc="first").dropna()
        row["rater_kappa"] = round(float(verdict.kappa((wide[raters[0]] == "yes").to_numpy(),
                                                       (wide[raters[1]] == "yes").to_numpy())), 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, type=Path)
    parser.add_argument("--studies", nargs="+", default=["tune", "eval", "test"])
    args = parser.parse_args()
    with open_read(args.db) as con:
        seen = pd.DataFrame(columns=KEY)
        rows = []
        for name in args.studies:
            rows.append(agreement(con, name, seen))
            seen = pd.concat([seen, study.study_items(con, name)[KEY]]).drop_duplicates()
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"verdict: top share >= {verdict.TOP_SHARE}, held-out score >= {verdict.SCORE}")


if __name__ == "__main__":
    main()
