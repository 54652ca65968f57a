"""The database schema: today's in schema.sql, older ones brought there by numbered steps.

A new database is created from schema.sql, the one readable statement of every table
and view; MIGRATIONS are the steps by which a database of an earlier version reaches
it (step N brings version N - 1 to N), and a test checks that a version-1 database
migrated to the end is exactly what schema.sql creates. A change to the schema is a new
step here and the same change in schema.sql.

Rebuildable index data (models, index_runs, neurons, examples, logits, activations,
tokens, match_sample) is kept apart from human data (labels), which the indexer never deletes:
re-indexing a model replaces its index rows and leaves every label in place.
Labels are append-only; `current_labels` shows the latest row per neuron and source.
"""
from __future__ import annotations

import functools
from pathlib import Path

import duckdb

from solu.errors import UserError

MIGRATIONS: list[str] = [
    # 1: the index and labels
    """
    CREATE TABLE meta(key VARCHAR PRIMARY KEY, value VARCHAR);
    CREATE TABLE models(
        model_id VARCHAR PRIMARY KEY, act_fn VARCHAR, n_layers INTEGER, d_model INTEGER,
        d_mlp INTEGER, n_heads INTEGER, n_ctx INTEGER, d_vocab INTEGER, n_params BIGINT,
        eval_loss DOUBLE, tokens_trained BIGINT, source VARCHAR, config JSON, loss_curve JSON);
    CREATE TABLE index_runs(
        run_id VARCHAR, model_id VARCHAR, dataset VARCHAR, tokens BIGINT, documents BIGINT,
        top_k INTEGER, window_before INTEGER, window_after INTEGER, sites VARCHAR[],
        bands INTEGER, band_kind VARCHAR, samples_per_band INTEGER, random_samples INTEGER,
        activation_threshold DOUBLE, sample_documents INTEGER, started_at TIMESTAMP,
        seconds DOUBLE, tokens_per_s DOUBLE, code_version VARCHAR, device VARCHAR);
    CREATE TABLE neurons(
        model_id VARCHAR, layer INTEGER, neuron INTEGER, site VARCHAR, is_primary BOOLEAN,
        max_act FLOAT, min_act FLOAT, mean_act DOUBLE, std_act DOUBLE, kurtosis DOUBLE,
        frac_active DOUBLE, frac_active_rel DOUBLE, hist_lo FLOAT, hist_hi FLOAT,
        hist_counts BIGINT[], max_tokens VARCHAR[], max_token_counts INTEGER[],
        PRIMARY KEY (model_id, layer, neuron, site));
    CREATE TABLE examples(
        model_id VARCHAR, layer INTEGER, neuron INTEGER, site VARCHAR, kind VARCHAR,
        band INTEGER, rank INTEGER, doc_id BIGINT, max_act FLOAT, max_pos INTEGER,
        start_pos INTEGER, tokens VARCHAR[], acts FLOAT[]);
    CREATE TABLE logits(
        model_id VARCHAR, layer INTEGER, neuron INTEGER, sign VARCHAR, rank INTEGER,
        token VARCHAR, token_id INTEGER, weight FLOAT);
    CREATE TABLE activations(
        model_id VARCHAR, layer INTEGER, neuron INTEGER, site VARCHAR, doc_id BIGINT,
        pos INTEGER, act FLOAT);
    CREATE TABLE tokens(model_id VARCHAR, doc_id BIGINT, pos INTEGER, token VARCHAR, token_id INTEGER);
    CREATE TABLE labels(
        label_id BIGINT, model_id VARCHAR, layer INTEGER,
        neuron INTEGER, label VARCHAR, note VARCHAR, source VARCHAR, author VARCHAR,
        score DOUBLE, status VARCHAR, created_at TIMESTAMP DEFAULT current_timestamp);
    CREATE VIEW current_labels AS
        SELECT * EXCLUDE (rn) FROM (
            SELECT *, row_number() OVER (PARTITION BY model_id, layer, neuron, source
                                         ORDER BY created_at DESC, label_id DESC) AS rn
            FROM labels) WHERE rn = 1;
    CREATE VIEW example_tokens AS
        SELECT model_id, layer, neuron, site, kind, band, rank, doc_id, max_act AS example_max,
               start_pos + i - 1 AS pos, i - 1 AS window_pos, tokens[i] AS token, acts[i] AS act
        FROM examples, range(1, len(tokens) + 1) AS r(i);
    """,
    # 2: concept scores (rebuilt by `solu autolabel`) and the blinded study (human data)
    """
    CREATE TABLE concepts(name VARCHAR PRIMARY KEY, description VARCHAR, pattern VARCHAR,
        updated_at TIMESTAMP DEFAULT current_timestamp);
    CREATE TABLE concept_scores(
        model_id VARCHAR, layer INTEGER, neuron INTEGER, site VARCHAR, concept VARCHAR,
        auroc DOUBLE, top_share DOUBLE, score DOUBLE, n_recorded BIGINT, n_top INTEGER,
        PRIMARY KEY (model_id, layer, neuron, site, concept));
    CREATE TABLE studies(
        study VARCHAR PRIMARY KEY, models VARCHAR[], per_model INTEGER, seed INTEGER,
        snippets INTEGER, created_at TIMESTAMP DEFAULT current_timestamp);
    CREATE TABLE study_answers(
        answer_id BIGINT, study VARCHAR, rater VARCHAR, model_id VARCHAR, layer INTEGER,
        neuron INTEGER, site VARCHAR, answer VARCHAR, label VARCHAR, seconds DOUBLE,
        created_at TIMESTAMP DEFAULT current_timestamp);
    """,
    # 3: concept scores remember the index run they were computed from; a re-index
    # makes them stale, and current_concept_scores shows only those of the latest run
    """
    ALTER TABLE concept_scores ADD COLUMN run_id VARCHAR;
    CREATE VIEW current_concept_scores AS
        SELECT s.* FROM concept_scores s
        LEFT JOIN (SELECT model_id, run_id FROM index_runs
                   QUALIFY row_number() OVER (PARTITION BY model_id ORDER BY started_at DESC) = 1) r
               USING (model_id)
        WHERE s.run_id IS NOT DISTINCT FROM r.run_id;
    """,
    # 4: what each index run was asked for (all of `solu index`'s settings) and where its time
    # went; example_tokens also says which token holds the example's max
    """
    CREATE TABLE index_details(
        run_id VARCHAR, model_id VARCHAR, tokens_requested BIGINT, stats_every INTEGER,
        stats_tokens BIGINT, config JSON, timings JSON);
    CREATE OR REPLACE VIEW example_tokens AS
        SELECT model_id, layer, neuron, site, kind, band, rank, doc_id, max_act AS example_max,
               start_pos + i - 1 AS pos, i - 1 AS window_pos, tokens[i] AS token, acts[i] AS act,
               max_pos, i - 1 = max_pos AS is_max
        FROM examples, range(1, len(tokens) + 1) AS r(i);
    """,
    # 5: where a model came from: source_kind 'checkpoint' (solu train), 'tl-legacy' (a TransformerLens
    # pretrained model) or 'hf' (a Hugging Face model), and the hub commit it was read at
    """
    ALTER TABLE models ADD COLUMN source_kind VARCHAR;
    ALTER TABLE models ADD COLUMN revision VARCHAR;
    """,
    # 6: long documents are ranked and sampled as segments (examples, activations and
    # tokens say which); the activation sample is hash-chosen segments, its size and
    # rule recorded per run; token-level stats are always over every token
    """
    ALTER TABLE examples ADD COLUMN segment INTEGER;
    ALTER TABLE activations ADD COLUMN segment INTEGER;
    ALTER TABLE tokens ADD COLUMN segment INTEGER;
    ALTER TABLE index_runs ADD COLUMN sample_segments INTEGER;
    ALTER TABLE index_runs ADD COLUMN sample_tokens BIGINT;
    ALTER TABLE index_runs ADD COLUMN sample_rule VARCHAR;
    ALTER TABLE index_runs ADD COLUMN segment_tokens INTEGER;
    """,
    # 7: decisions with one home. latest_runs: each model's latest index run, which the
    # queries, autolabel and current_concept_scores read. Concept scores gain the paper's
    # rule with its interval (top_hits of n_top, Wilson 95% top_low..top_high) and the
    # measure over the activation sample (sample_share against the concept's base_rate);
    # best_concepts: each primary-site neuron's best concept of the latest run.
    """
    CREATE VIEW latest_runs AS
        SELECT * FROM index_runs
        QUALIFY row_number() OVER (PARTITION BY model_id ORDER BY started_at DESC, run_id DESC) = 1;
    ALTER TABLE concept_scores ADD COLUMN top_hits INTEGER;
    ALTER TABLE concept_scores ADD COLUMN top_low DOUBLE;
    ALTER TABLE concept_scores ADD COLUMN top_high DOUBLE;
    ALTER TABLE concept_scores ADD COLUMN sample_share DOUBLE;
    ALTER TABLE concept_scores ADD COLUMN base_rate DOUBLE;
    ALTER TABLE concept_scores ADD COLUMN occurrences BIGINT;
    CREATE OR REPLACE VIEW current_concept_scores AS
        SELECT s.* FROM concept_scores s LEFT JOIN latest_runs r USING (model_id)
        WHERE s.run_id IS NOT DISTINCT FROM r.run_id;
    CREATE VIEW best_concepts AS
        SELECT s.* FROM current_concept_scores s JOIN neurons n USING (model_id, layer, neuron, site)
        WHERE n.is_primary
        QUALIFY row_number() OVER (PARTITION BY s.model_id, s.layer, s.neuron
                                   ORDER BY s.score DESC NULLS LAST, s.sample_share DESC NULLS LAST,
                                            s.concept) = 1;
    """,
    # 8: explanations (rebuilt by `solu autolabel`): each primary-site neuron's rule,
    # chosen on half of its records and scored on the other half across its whole range
    """
    CREATE TABLE explanations(
        model_id VARCHAR, layer INTEGER, neuron INTEGER, site VARCHAR, kind VARCHAR, explanation VARCHAR,
        args VARCHAR[], score DOUBLE, score_low DOUBLE, score_high DOUBLE, fit_score DOUBLE, fit_mean DOUBLE,
        top_share DOUBLE, sample_share DOUBLE, fit_tokens BIGINT, held_tokens BIGINT, held_records INTEGER,
        run_id VARCHAR, PRIMARY KEY (model_id, layer, neuron, site));
    CREATE VIEW current_explanations AS
        SELECT e.* FROM explanations e LEFT JOIN latest_runs r USING (model_id)
        WHERE e.run_id IS NOT DISTINCT FROM r.run_id;
    """,
    # 9: neuron relations. connections: each neuron's strongest partners by virtual weight
    # (solu index); ablations: the loss change on its top examples (solu index --ablation on);
    # neuron_matches: the same neuron in another model (solu match); ln_agreement:
    # how far a SoLU neuron's top examples after its LayerNorm agree with those before it
    """
    CREATE TABLE connections(
        model_id VARCHAR, layer INTEGER, neuron INTEGER, direction VARCHAR, sign VARCHAR, rank INTEGER,
        other_layer INTEGER, other_neuron INTEGER, weight FLOAT);
    CREATE TABLE ablations(
        model_id VARCHAR, layer INTEGER, neuron INTEGER, rank INTEGER, window_pos INTEGER, token_id INTEGER,
        loss FLOAT, delta_zero FLOAT, delta_mean FLOAT);
    CREATE TABLE neuron_matches(
        model_id VARCHAR, layer INTEGER, neuron INTEGER, other_model VARCHAR, other_layer INTEGER,
        other_neuron INTEGER, rank INTEGER, r DOUBLE, tokens BIGINT, method VARCHAR);
    CREATE VIEW ln_agreement AS
        WITH pre AS (SELECT model_id, layer, neuron, doc_id, coalesce(segment, 0) AS segment, rank FROM examples
                     WHERE kind = 'top' AND site = 'pre_ln'),
             post AS (SELECT model_id, layer, neuron, doc_id, coalesce(segment, 0) AS segment, rank FROM examples
                      WHERE kind = 'top' AND site = 'post_ln'),
             joined AS (SELECT model_id, layer, neuron, pre.rank AS pre_rank, post.rank AS post_rank
                        FROM pre FULL JOIN post USING (model_id, layer, neuron, doc_id, segment)),
             sized AS (SELECT *, count(pre_rank) OVER (PARTITION BY model_id, layer, neuron) AS k FROM joined)
        SELECT model_id, layer, neuron, max(k) AS top_k,
               count(*) FILTER (WHERE pre_rank IS NOT NULL AND post_rank IS NOT NULL) / max(k) AS overlap,
               corr(coalesce(pre_rank, k + 1), coalesce(post_rank, k + 1)) AS rank_corr
        FROM sized GROUP BY model_id, layer, neuron;
    """,
    # 10: `solu experiment`: the grid and its settings, and each cell's state
    """
    CREATE TABLE experiments(experiment VARCHAR PRIMARY KEY, grid JSON, created_at TIMESTAMP DEFAULT current_timestamp);
    CREATE TABLE experiment_cells(
        experiment VARCHAR, model_id VARCHAR, act_fn VARCHAR, n_layers INTEGER, seed INTEGER, eval_loss DOUBLE,
        train_s DOUBLE, index_s DOUBLE, score_s DOUBLE, finished_at TIMESTAMP DEFAULT current_timestamp,
        PRIMARY KEY (experiment, model_id));
    """,
    # 11: the sha256 of the builtin corpus a run read (NULL for other datasets), so two runs
    # on `builtin` can be seen to have read the same text
    """
    ALTER TABLE index_runs ADD COLUMN dataset_sha256 VARCHAR;
    CREATE OR REPLACE VIEW latest_runs AS
        SELECT * FROM index_runs
        QUALIFY row_number() OVER (PARTITION BY model_id ORDER BY started_at DESC, run_id DESC) = 1;
    """,
    # 12: concept_scores.score was a copy of top_share (and `score` elsewhere is the held-out
    # correlation of an explanation): dropped, and best_concepts ranks by top_share
    """
    ALTER TABLE concept_scores DROP COLUMN score;
    CREATE OR REPLACE VIEW current_concept_scores AS
        SELECT s.* FROM concept_scores s LEFT JOIN latest_runs r USING (model_id)
        WHERE s.run_id IS NOT DISTINCT FROM r.run_id;
    CREATE OR REPLACE VIEW best_concepts AS
        SELECT s.* FROM current_concept_scores s JOIN neurons n USING (model_id, layer, neuron, site)
        WHERE n.is_primary
        QUALIFY row_number() OVER (PARTITION BY s.model_id, s.layer, s.neuron
                                   ORDER BY s.top_share DESC NULLS LAST, s.sample_share DESC NULLS LAST,
                                            s.concept) = 1;
    """,
    # 13: the activations table keeps each neuron's highest sample activations within a budget
    # of rows (index.engine.sample_rows): the run's budget, and where each neuron's rows stop;
    # example_tokens without a lateral join
    """
    ALTER TABLE index_runs ADD COLUMN sample_rows BIGINT;
    ALTER TABLE neurons ADD COLUMN sample_cut FLOAT;
    CREATE OR REPLACE VIEW latest_runs AS
        SELECT * FROM index_runs
        QUALIFY row_number() OVER (PARTITION BY model_id ORDER BY started_at DESC, run_id DESC) = 1;
    -- example_tokens unnests in the select list: the lateral range join ran out of memory on
    -- GPT-2 small's examples even for one neuron
    CREATE OR REPLACE VIEW example_tokens AS
        SELECT model_id, layer, neuron, site, kind, band, rank, doc_id, example_max,
               start_pos + window_pos AS pos, window_pos, tokens[window_pos + 1] AS token, acts[window_pos + 1] AS act,
               max_pos, window_pos = max_pos AS is_max
        FROM (SELECT *, max_act AS example_max, unnest(range(len(tokens))) AS window_pos FROM examples);
    """,
    # 14: the match sample (index.engine.match_sample): each primary-site neuron's whole
    # activations at a few thousand sample tokens, which `solu match` reads
    """
    ALTER TABLE tokens ADD COLUMN match_index INTEGER;
    CREATE TABLE match_sample(model_id VARCHAR, layer INTEGER, neuron INTEGER, site VARCHAR, acts BLOB);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
SCHEMA_SQL = Path(__file__).with_name("schema.sql")
INDEX_TABLES = ("models", "index_runs", "index_details", "neurons", "examples", "logits", "activations", "tokens",
                "match_sample", "connections", "ablations")
HUMAN_TABLES = ("labels", "studies", "study_answers")


RESTORE = "restore it from a backup, or re-index into a new file with solu index"


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    """0 for an empty database; raises UserError for a database that is not ours."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if not tables:
        return 0
    if "meta" not in tables:
        raise UserError("this DuckDB file is not a solu index (no meta table)")
    rows = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    if not rows:
        raise UserError(f"this DuckDB file is not a solu index (no schema version); {RESTORE}")
    try:
        version = int(rows[0][0])
    except (TypeError, ValueError):
        version = -1
    if version < 1:
        raise UserError(f"this DuckDB file is not a solu index (schema version {rows[0][0]!r}); {RESTORE}")
    return version


def check_version(con: duckdb.DuckDBPyConnection, tables: bool = True) -> int:
    """The database's schema version, once its tables, views and columns are checked to be
    exactly that version's (UserError, in one line, saying what is missing or unexpected).
    tables=False checks the number only (the SQL sandbox: its parent checked the tables)."""
    version = schema_version(con)
    if version > SCHEMA_VERSION:
        raise UserError(f"the database has schema version {version}, newer than this solu "
                        f"({SCHEMA_VERSION}); upgrade solu-neuron-explorer")
    if version and tables:
        check_tables(con, version)
    return version


def tables_of(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[str, frozenset]]:
    """Each table and view of the database `con` opened (not an attached one, nor a
    connection's temporary views): (TABLE or VIEW, its column names)."""
    rows = con.execute("""
        SELECT table_name, list(column_name) FROM duckdb_columns()
        WHERE database_name = current_database() AND schema_name = 'main' GROUP BY table_name""").fetchall()
    views = {r[0] for r in con.execute("""
        SELECT view_name FROM duckdb_views()
        WHERE database_name = current_database() AND schema_name = 'main' AND NOT internal""").fetchall()}
    return {name: ("VIEW" if name in views else "TABLE", frozenset(cols)) for name, cols in rows}


@functools.cache
def declared(version: int) -> dict[str, tuple[str, frozenset]]:
    """The tables, views and columns a database of `version` has: migrations 1..version
    applied to an empty in-memory database (the last is what schema.sql creates; a test
    checks that)."""
    con = duckdb.connect(":memory:")
    try:
        for number in range(version):
            con.execute(MIGRATIONS[number])
        return tables_of(con)
    finally:
        con.close()


def check_tables(con: duckdb.DuckDBPyConnection, version: int) -> None:
    have, want = tables_of(con), declared(version)
    problems = [f"no {kind.lower()} {name}" for name, (kind, _) in want.items() if name not in have]
    problems += [f"{name} is a {have[name][0].lower()}, not a {kind.lower()}" for name, (kind, _) in want.items()
                 if name in have and have[name][0] != kind]
    for name, (kind, columns) in want.items():
        if name in have and have[name][0] == kind:
            problems += [f"no column {name}.{c}" for c in sorted(columns - have[name][1])]
            problems += [f"an unexpected column {name}.{c}" for c in sorted(have[name][1] - columns)]
    problems += [f"an unexpected {have[name][0].lower()} {name}" for name in sorted(set(have) - set(want))]
    if problems:
        later = [v for v in range(1, SCHEMA_VERSION + 1) if v != version and declared(v) == have]
        why = (f"its tables are those of schema version {later[0]}, but it says {version}" if later else
               "damaged, or changed outside solu")
        shown = "; ".join(sorted(problems)[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise UserError(f"this index does not match its schema version {version} ({why}): {shown}; {RESTORE}")


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Bring a writable connection to SCHEMA_VERSION: an empty database from schema.sql,
    an older one step by step, each step one transaction (a crash leaves the version before
    it, whole). Returns the version it started at."""
    start = check_version(con)
    if start == 0:
        _apply(con, SCHEMA_SQL.read_text(encoding="utf-8"), SCHEMA_VERSION)
        return 0
    for number in range(start, SCHEMA_VERSION):
        _apply(con, MIGRATIONS[number], number + 1)
    return start


def _apply(con: duckdb.DuckDBPyConnection, sql: str, version: int) -> None:
    con.execute("BEGIN")
    try:
        con.execute(sql)
        con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(version)])
        con.execute("COMMIT")
    except BaseException:
        rollback(con)
        raise


def rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back the open transaction, if one is still open (a COMMIT that failed, on a
    full disk, has already ended it): the first error is the one to report."""
    try:
        con.execute("ROLLBACK")
    except duckdb.TransactionException:
        pass
