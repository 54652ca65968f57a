"""A synthetic index with the real schema, for tests and the explorer's speed benchmark.

Every value is generated inside DuckDB from hashes of (seed, model, layer, neuron), so a
database of 100k neurons x 20 examples builds in seconds and the same arguments always
give the same file. One example is hostile on purpose (see HOSTILE_TOKENS): it is the
first top example of the first neuron of the first model, so tests can check that the
explorer shows markup as inert text.
"""
from __future__ import annotations

import json
from pathlib import Path

import duckdb

from index.store.schema import migrate

HOSTILE_TOKENS = ["<script>alert('xss')</script>", " <img src=x onerror=alert(1)>", " **bold**",
                  " $x^2$", " \\(y\\)", "\n", "\tindent", " [link](javascript:alert(2))", " `code`",
                  " # heading", " &amp;", " _under_"]
HOSTILE_MAX_POS = 1  # the <img> token carries the example's max activation (window and document position)

WORDS = (" the of and to in is that for it as with was on be by at this from or an are not have "
         "which one all but were their has more when can there been if its also about into other "
         "number people base64 = ( ) : , . def return self None True import class for in range "
         "x y i n value data list dict str int print").split(" ")
VOCAB = [w if i == 0 else " " + w for i, w in enumerate(WORDS) if w] + \
        ["\n", "    ", "QUJD", "ZGVm", "==", "Z2hp", "()", "):", "0", "1", "2", "3"]
DEFAULT_MODELS = (("gelu-synth", "gelu"), ("solu-synth", "solu_ln"))


def _sites(act_fn: str, post_ln: bool) -> list[tuple[str, bool]]:
    if act_fn == "solu_ln":
        return [("pre_ln", True)] + ([("post_ln", False)] if post_ln else [])
    return [("post", True)]


def build_synthetic_index(path: str | Path, *, n_layers: int = 2, d_mlp: int = 64, examples: int = 20,
                          window: int = 24, seed: int = 0, models=DEFAULT_MODELS, post_ln: bool = False,
                          labels: bool = True) -> Path:
    """Write a fresh synthetic index at `path` (replacing any file there)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    try:
        con.execute("SET enable_progress_bar = false")
        migrate(con)
        for m, (model_id, act_fn) in enumerate(models):
            _insert_model(con, model_id, act_fn, n_layers, d_mlp, m)
            for site, primary in _sites(act_fn, post_ln):
                _insert_neurons(con, model_id, act_fn, site, primary, n_layers, d_mlp, seed + m)
                _insert_examples(con, model_id, site, n_layers * d_mlp, d_mlp, examples, window, seed + m)
            _insert_logits(con, model_id, n_layers * d_mlp, d_mlp, seed + m)
        first_model, first_act = models[0]
        _make_hostile(con, first_model, _sites(first_act, post_ln)[0][0])
        if labels:
            _insert_labels(con, models)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return path


def _insert_model(con, model_id: str, act_fn: str, n_layers: int, d_mlp: int, m: int) -> None:
    eval_loss = 4.9 + 0.05 * m
    curve = [{"step": s * 10, "tokens": s * 20480, "train_loss": 8.3 - 3.1 * (1 - 0.8 ** s),
              "eval_loss": 8.3 - 3.2 * (1 - 0.8 ** s) + 0.05 * m} for s in range(16)]
    config = {"model": {"act_fn": act_fn, "n_layers": n_layers, "d_model": 128, "d_mlp": d_mlp,
                        "n_heads": 4, "n_ctx": 128, "d_vocab": 4096}, "train": {"dataset": "synthetic"}}
    con.execute("INSERT INTO models (model_id, act_fn, n_layers, d_model, d_mlp, n_heads, n_ctx, d_vocab, n_params, "
                "eval_loss, tokens_trained, source, config, loss_curve) "
                "VALUES (?, ?, ?, 128, ?, 4, 128, 4096, 1000000, ?, 2000000, ?, ?, ?)",
                [model_id, act_fn, n_layers, d_mlp, eval_loss, f"/nonexistent/{model_id}",
                 json.dumps(config), json.dumps(curve)])
    con.execute("INSERT INTO index_runs BY NAME SELECT 'synthetic' AS run_id, ? AS model_id, 'synthetic' AS dataset, "
                "1000000 AS tokens, 5000 AS documents, 10 AS top_k, 12 AS window_before, 4 AS window_after, "
                "? AS sites, 4 AS bands, 'interval' AS band_kind, 2 AS samples_per_band, 2 AS random_samples, "
                "0.2 AS activation_threshold, 100 AS sample_documents, now()::TIMESTAMP AS started_at, "
                "1.0 AS seconds, 1e6 AS tokens_per_s, 'synthetic' AS code_version, 'cpu' AS device",
                [model_id, [s for s, _ in _sites(act_fn, True)]])


def _insert_neurons(con, model_id, act_fn, site, primary, n_layers, d_mlp, seed) -> None:
    power = 3.0 if act_fn == "solu_ln" else 1.5  # SoLU neurons come out sparser
    con.execute(f"""
        INSERT INTO neurons BY NAME
        SELECT ? AS model_id, i // {d_mlp} AS layer, i % {d_mlp} AS neuron, ? AS site, ? AS is_primary,
               mx AS max_act, -0.17 AS min_act, mx * 0.05 AS mean_act, mx * 0.1 AS std_act,
               dens AS frac_active, dens * 0.5 AS frac_active_rel, -0.17 AS hist_lo, mx AS hist_hi,
               list_transform(range(32), lambda b: CAST(20000 * exp(-b / (2.0 + h % 5)) AS BIGINT)) AS hist_counts,
               ['{VOCAB[1]}', '{VOCAB[2]}', '{VOCAB[3]}'] AS max_tokens, [7, 3, 1] AS max_token_counts
        FROM (SELECT i, hash(?, i) AS h, 0.5 + (hash(?, i, 1) % 10000) / 1000.0 AS mx,
                     pow((hash(?, i, 2) % 1000) / 1000.0, {power}) AS dens
              FROM range({n_layers * d_mlp}) t(i))
    """, [model_id, site, primary, seed, seed, seed])


def _insert_examples(con, model_id, site, n_neurons, d_mlp, examples, window, seed) -> None:
    n_top = examples // 2
    n_random = max(1, examples // 10)
    n_interval = examples - n_top - n_random
    con.execute(f"""
        INSERT INTO examples (model_id, layer, neuron, site, kind, band, rank, doc_id, max_act, max_pos, start_pos,
                              tokens, acts)
        SELECT ?, n // {d_mlp}, n % {d_mlp}, ?, kind,
               CASE WHEN kind = 'interval' THEN (e - {n_top}) % 4 END,
               1 + CASE WHEN kind = 'top' THEN e WHEN kind = 'interval' THEN (e - {n_top}) // 4
                        ELSE e - {n_top + n_interval} END,
               h % 100000, emax, mpos, h % 900, toks,
               list_transform(range({window}), lambda j: CAST(CASE WHEN j = mpos THEN emax
                   ELSE emax * pow((hash(h, j) % 100) / 100.0, 4) END AS FLOAT))
        FROM (SELECT n, e, h, CAST(hash(h, 7) % {window} AS INTEGER) AS mpos, kind,
                     CAST(CASE WHEN kind = 'top' THEN mx * (1 - e * 0.03)
                               WHEN kind = 'interval' THEN mx * (((e - {n_top}) % 4) + 0.5) / 4
                               ELSE mx * 0.01 * (h % 10) END AS FLOAT) AS emax,
                     list_transform(range({window}),
                                    lambda j: ?[CAST(1 + hash(h, j, 3) % {len(VOCAB)} AS BIGINT)]) AS toks
              FROM (SELECT i // {examples} AS n, i % {examples} AS e, hash(?, i) AS h,
                           0.5 + (hash(?, i // {examples}, 1) % 10000) / 1000.0 AS mx,
                           CASE WHEN i % {examples} < {n_top} THEN 'top'
                                WHEN i % {examples} < {n_top + n_interval} THEN 'interval'
                                ELSE 'random' END AS kind
                    FROM range({n_neurons * examples}) t(i)))
    """, [model_id, site, VOCAB, seed, seed])


def _insert_logits(con, model_id, n_neurons, d_mlp, seed) -> None:
    con.execute(f"""
        INSERT INTO logits
        SELECT ?, n // {d_mlp}, n % {d_mlp}, CASE WHEN r < 10 THEN 'pos' ELSE 'neg' END, r % 10 + 1,
               ?[CAST(1 + hash(?, n, r) % {len(VOCAB)} AS BIGINT)], CAST(hash(?, n, r) % {len(VOCAB)} AS INTEGER),
               CAST(CASE WHEN r < 10 THEN 1.5 - 0.1 * r ELSE -1.5 + 0.1 * (r - 10) END AS FLOAT)
        FROM range({n_neurons}) a(n), range(20) b(r)
    """, [model_id, VOCAB, seed, seed])


def _make_hostile(con, model_id: str, site: str) -> None:
    acts = [0.5 if i != HOSTILE_MAX_POS else 9.0 for i in range(len(HOSTILE_TOKENS))]
    con.execute("UPDATE examples SET tokens = ?, acts = ?, max_act = 9.0, max_pos = ?, start_pos = 37 "
                "WHERE model_id = ? AND layer = 0 AND neuron = 0 AND site = ? AND kind = 'top' AND rank = 1",
                [HOSTILE_TOKENS, acts, HOSTILE_MAX_POS, model_id, site])
    con.execute("UPDATE neurons SET max_act = 9.0 WHERE model_id = ? AND layer = 0 AND neuron = 0 AND site = ?",
                [model_id, site])


def _insert_labels(con, models) -> None:
    first, second = models[0][0], models[-1][0]
    rows = [(1, first, 0, 1, "base64 text", "fires inside base64 runs", "human", "ana", None, None),
            (2, first, 0, 1, "base64 (padding)", "mostly '=='", "human", "ben", None, None),
            (3, second, 0, 2, "numbers of people", "", "human", None, None, None),
            (4, second, 0, 3, "Python keyword 'def'", "", "auto", "concepts", 0.82, None)]
    for r in rows:
        con.execute("INSERT INTO labels VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                    "TIMESTAMP '2025-01-01 00:00:00' + INTERVAL (?) MINUTE)", [*r, r[0]])
