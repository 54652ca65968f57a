"""Read queries over an index, for the explorer and the label CLI.

Each function takes an open DuckDB connection and returns a pandas DataFrame; none of
them imports Streamlit or keeps state. Every result is fetched in full (`.df()`), so
the connection is free for the next query.
"""
from __future__ import annotations

import pandas as pd

from solu.errors import UserError

# sort keys the neuron table offers, mapped to SQL (never interpolate user text)
SORTS = {"max_act": "n.max_act", "density": "n.frac_active", "mean_act": "n.mean_act",
         "neuron": "n.model_id, n.layer, n.neuron", "labeled_at": "h.created_at", "auto_score": "a.score",
         "heldout_score": "x.score"}
LABEL_FILTERS = ("any", "labeled", "unlabeled", "suggested")

_NEURON_KEY = "model_id = ? AND layer = ? AND neuron = ?"


def models(con) -> pd.DataFrame:
    """One row per indexed model, with its latest index run's settings."""
    return con.execute("""
        SELECT m.*, r.dataset AS index_dataset, r.tokens AS index_tokens, r.top_k, r.band_kind, r.bands,
               r.started_at AS indexed_at
        FROM models m LEFT JOIN latest_runs r USING (model_id)
        ORDER BY m.act_fn, m.model_id""").df()


def require_models(con, model_ids: list[str]) -> list[str]:
    """The index's model ids, in order; UserError naming the first of `model_ids` that is
    not among them."""
    known = [r[0] for r in con.execute("SELECT model_id FROM models ORDER BY model_id").fetchall()]
    for m in model_ids:
        if m not in known:
            raise UserError(f"model {m!r} is not in the index (models: {', '.join(known) or 'none'})")
    return known


def latest_run(con, model_id: str) -> str | None:
    """The run_id of the model's latest index run (None if it has none)."""
    rows = con.execute("SELECT run_id FROM latest_runs WHERE model_id = ?", [model_id]).fetchall()
    return rows[0][0] if rows else None


def sites(con) -> pd.DataFrame:
    """Each model's sites and layers: (model_id, site, is_primary, n_layers, d_mlp)."""
    return con.execute("""
        SELECT model_id, site, bool_or(is_primary) AS is_primary, max(layer) + 1 AS n_layers,
               max(neuron) + 1 AS d_mlp
        FROM neurons GROUP BY model_id, site ORDER BY model_id, is_primary DESC, site""").df()


def _current(source: str, alias: str) -> str:
    return (f"LEFT JOIN (SELECT model_id, layer, neuron, label, note, author, created_at, score, status "
            f"FROM current_labels WHERE source = '{source}') {alias} USING (model_id, layer, neuron)")


def explanations_source(con) -> str:
    """The current explanations, or an empty stand-in for an index from before schema 8."""
    if has_table(con, "current_explanations"):
        return "current_explanations"
    columns = [("model_id", "VARCHAR"), ("layer", "INTEGER"), ("neuron", "INTEGER"), ("site", "VARCHAR"),
               ("kind", "VARCHAR"), ("explanation", "VARCHAR"), ("score", "DOUBLE"), ("score_low", "DOUBLE"),
               ("score_high", "DOUBLE"), ("top_share", "DOUBLE"), ("sample_share", "DOUBLE")]
    return f"(SELECT {', '.join(f'NULL::{kind} AS {name}' for name, kind in columns)} WHERE false)"


def _table_filters(models_: list | None, layers: list | None, sites_: list | None, primary_only: bool,
                   search: str, labeled: str, concept: str | None = None,
                   verdict: tuple[float, float] | None = None) -> tuple[str, list]:
    where, params = ["TRUE"], []
    if verdict is not None:
        where.append("x.top_share >= ? AND x.score >= ?")
        params += [float(v) for v in verdict]
    if concept:
        where.append("a.label = ? AND coalesce(a.status, '') <> 'rejected'")
        params.append(concept)
    if models_:
        where.append(f"n.model_id IN ({', '.join('?' * len(models_))})")
        params += list(models_)
    if layers:
        where.append(f"n.layer IN ({', '.join('?' * len(layers))})")
        params += [int(x) for x in layers]
    if sites_:
        where.append(f"n.site IN ({', '.join('?' * len(sites_))})")
        params += list(sites_)
    if primary_only:
        where.append("n.is_primary")
    if search:
        where.append("(contains(lower(coalesce(h.label, '') || ' ' || coalesce(h.note, '') || ' ' || "
                     "coalesce(a.label, '')), lower(?)))")
        params.append(search)
    if labeled == "labeled":
        where.append("coalesce(h.label, '') <> ''")
    elif labeled == "unlabeled":
        where.append("coalesce(h.label, '') = ''")
    elif labeled == "suggested":
        where.append("a.label IS NOT NULL AND coalesce(a.status, '') <> 'rejected'")
    return " AND ".join(where), params


def neuron_table(con, *, models: list | None = None, layers: list | None = None, sites: list | None = None,
                 primary_only: bool = True, search: str = "", labeled: str = "any", concept: str | None = None,
                 verdict: tuple[float, float] | None = None, sort: str = "max_act", descending: bool = True, limit: int = 100,
                 offset: int = 0) -> pd.DataFrame:
    """A page of the neuron table; the `total` column counts every matching row. `concept`
    keeps the neurons whose automatic label (not rejected) is that concept, `verdict` =
    (top share, score) those whose explanation holds at that share of the top examples and
    whose held-out score reaches that score (index.measure.verdict's cuts)."""
    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}; choose one of {', '.join(SORTS)}")
    if labeled not in LABEL_FILTERS:
        raise ValueError(f"unknown label filter {labeled!r}")
    where, params = _table_filters(models, layers, sites, primary_only, search.strip(), labeled, concept,
                                   verdict)
    order = ", ".join(f"{c} {'DESC' if descending else 'ASC'} NULLS LAST" for c in SORTS[sort].split(", "))
    return con.execute(f"""
        SELECT n.model_id, n.layer, n.neuron, n.site, n.max_act, n.frac_active AS density, n.mean_act,
               n.max_tokens[1] AS top_token, nullif(h.label, '') AS label,
               CASE WHEN coalesce(a.status, '') <> 'rejected' THEN a.label END AS auto_label,
               a.score AS auto_score, x.explanation, x.top_share AS explained_top_share, x.score AS heldout_score,
               count(*) OVER () AS total
        FROM neurons n {_current('human', 'h')} {_current('auto', 'a')}
        LEFT JOIN {explanations_source(con)} x USING (model_id, layer, neuron, site)
        WHERE {where}
        ORDER BY {order}, n.model_id, n.layer, n.neuron, n.site
        LIMIT ? OFFSET ?""", params + [int(limit), int(offset)]).df()


def auto_concepts(con) -> pd.DataFrame:
    """The concepts that label some neuron automatically (suggested or accepted, not
    rejected): (concept, neurons), most neurons first."""
    return con.execute("""
        SELECT label AS concept, count(*) AS neurons FROM current_labels
        WHERE source = 'auto' AND coalesce(status, '') <> 'rejected' AND coalesce(label, '') <> ''
        GROUP BY label ORDER BY neurons DESC, concept""").df()


def neuron(con, model_id: str, layer: int, neuron_: int, site: str) -> pd.DataFrame:
    """The neuron's stats row (empty if there is no such neuron)."""
    return con.execute(f"SELECT * FROM neurons WHERE {_NEURON_KEY} AND site = ?",
                       [model_id, layer, neuron_, site]).df()


def examples(con, model_id: str, layer: int, neuron_: int, site: str) -> pd.DataFrame:
    """All stored snippets of a neuron: kind 'top', the interval samples, 'random'."""
    return con.execute(f"""
        SELECT kind, band, rank, doc_id, max_act, max_pos, start_pos, tokens, acts
        FROM examples WHERE {_NEURON_KEY} AND site = ?
        ORDER BY kind, band NULLS FIRST, rank""", [model_id, layer, neuron_, site]).df()


def has_table(con, name: str) -> bool:
    """Whether the index has this table or view (an index from before its schema step lacks it)."""
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name]).fetchone()[0]
                or con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [name]).fetchone()[0])


def _neuron_rows(con, table: str, columns: list[str], order: str, key: list) -> pd.DataFrame:
    """A neuron's rows of a relation table (none before the schema step that added it)."""
    if not has_table(con, table):
        return pd.DataFrame(columns=columns)
    return con.execute(f"SELECT {', '.join(columns)} FROM {table} WHERE {_NEURON_KEY} ORDER BY {order}", key).df()


def connections(con, model_id: str, layer: int, neuron_: int) -> pd.DataFrame:
    """The neuron's strongest partners by virtual weight."""
    return _neuron_rows(con, "connections", ["direction", "sign", "rank", "other_layer", "other_neuron", "weight"],
                        "direction, sign DESC, rank", [model_id, layer, neuron_])


def matches(con, model_id: str, layer: int, neuron_: int) -> pd.DataFrame:
    """The neuron's best matches in other models (solu match)."""
    return _neuron_rows(con, "neuron_matches", ["other_model", "other_layer", "other_neuron", "rank", "r", "tokens"],
                        "other_model, rank", [model_id, layer, neuron_])


def ablation(con, model_id: str, layer: int, neuron_: int) -> pd.DataFrame:
    """The loss changes on the neuron's top examples (solu index --ablation on), one row per example."""
    if not has_table(con, "ablations"):
        return pd.DataFrame(columns=["rank", "first_pos", "delta_zero", "delta_mean", "loss"])
    return con.execute(f"""
        SELECT rank, min(window_pos) AS first_pos, list(delta_zero ORDER BY window_pos) AS delta_zero,
               list(delta_mean ORDER BY window_pos) AS delta_mean, list(loss ORDER BY window_pos) AS loss
        FROM ablations WHERE {_NEURON_KEY} GROUP BY rank ORDER BY rank""", [model_id, layer, neuron_]).df()


def ln_agreement(con, model_id: str, layer: int, neuron_: int) -> pd.DataFrame:
    """How far a SoLU neuron's post-LN top examples agree with its pre-LN ones."""
    return _neuron_rows(con, "ln_agreement", ["top_k", "overlap", "rank_corr"], "top_k", [model_id, layer, neuron_])


def explanation(con, model_id: str, layer: int, neuron_: int, site: str) -> pd.DataFrame:
    """The neuron's explanation and held-out score (empty before `solu autolabel`)."""
    return con.execute(f"SELECT * FROM {explanations_source(con)} WHERE {_NEURON_KEY} AND site = ?",
                       [model_id, layer, neuron_, site]).df()


def logits(con, model_id: str, layer: int, neuron_: int) -> pd.DataFrame:
    """Top and bottom logit tokens; `positive` says which list a row belongs to."""
    return con.execute(f"""
        SELECT sign = 'pos' AS positive, rank, token, weight
        FROM logits WHERE {_NEURON_KEY} ORDER BY positive DESC, rank""",
                       [model_id, layer, neuron_]).df()


def current_labels(con, model_id: str, layer: int, neuron_: int) -> pd.DataFrame:
    """The latest human and auto label of a neuron (0 to 2 rows, `source` tells which)."""
    return con.execute(f"SELECT * FROM current_labels WHERE {_NEURON_KEY} ORDER BY source",
                       [model_id, layer, neuron_]).df()


def label_history(con, model_id: str, layer: int, neuron_: int) -> pd.DataFrame:
    """Every label row of a neuron, newest first."""
    return con.execute(f"""
        SELECT created_at, source, label, note, author, score, status FROM labels
        WHERE {_NEURON_KEY} ORDER BY created_at DESC, label_id DESC""", [model_id, layer, neuron_]).df()


def neighbour(con, model_id: str, site: str, layer: int, neuron_: int, step: int) -> pd.DataFrame:
    """The neuron `step` places after (or before) this one in (layer, neuron) order, wrapping."""
    op, order, wrap = (">", "ASC", "ASC") if step > 0 else ("<", "DESC", "DESC")
    return con.execute(f"""
        (SELECT layer, neuron, 0 AS wrapped FROM neurons
         WHERE model_id = ? AND site = ? AND (layer, neuron) {op} (?, ?)
         ORDER BY layer {order}, neuron {order} LIMIT 1)
        UNION ALL
        (SELECT layer, neuron, 1 FROM neurons WHERE model_id = ? AND site = ?
         ORDER BY layer {wrap}, neuron {wrap} LIMIT 1)
        ORDER BY wrapped LIMIT 1""", [model_id, site, layer, neuron_, model_id, site]).df()


def random_neuron(con, model_id: str, site: str, seed: int) -> pd.DataFrame:
    """A random neuron of the model that fired at all (any neuron if none did)."""
    return con.execute("""
        SELECT layer, neuron FROM neurons WHERE model_id = ? AND site = ?
        ORDER BY (max_act > 0) DESC, hash(?, layer, neuron) LIMIT 1""", [model_id, site, seed]).df()


def neuron_labels(con, keys: list[tuple[int, int]], model_id: str, site: str | None = None) -> pd.DataFrame:
    """Current human/auto labels and indexed max of several neurons of one model, at
    `site` (default: the primary site)."""
    if not keys:
        return pd.DataFrame(columns=["layer", "neuron", "max_act", "label", "auto_label"])
    values = ", ".join("(?, ?)" for _ in keys)
    params = [int(v) for key in keys for v in key]
    return con.execute(f"""
        SELECT k.layer, k.neuron, n.max_act, nullif(h.label, '') AS label,
               CASE WHEN coalesce(a.status, '') <> 'rejected' THEN a.label END AS auto_label
        FROM (VALUES {values}) k(layer, neuron)
        LEFT JOIN neurons n ON n.model_id = ? AND n.layer = k.layer AND n.neuron = k.neuron
                           AND (n.site = ? OR (? IS NULL AND n.is_primary))
        LEFT JOIN (SELECT * FROM current_labels WHERE source = 'human' AND model_id = ?) h
               ON h.layer = k.layer AND h.neuron = k.neuron
        LEFT JOIN (SELECT * FROM current_labels WHERE source = 'auto' AND model_id = ?) a
               ON a.layer = k.layer AND a.neuron = k.neuron""",
                       params + [model_id, site, site, model_id, model_id]).df()


def model_summary(con) -> pd.DataFrame:
    """Per model: neurons at the primary site, how many fired, how many carry a human label."""
    return con.execute("""
        SELECT n.model_id, any_value(m.act_fn) AS act_fn, any_value(m.eval_loss) AS eval_loss,
               count(*) AS neurons, count(*) FILTER (WHERE n.max_act > 0) AS fired,
               count(h.label) FILTER (WHERE h.label <> '') AS labeled,
               count(h.label) FILTER (WHERE h.label <> '') / count(*) AS frac_labeled,
               median(n.frac_active_rel) AS median_density  -- tokens above the index's threshold
        FROM neurons n JOIN models m USING (model_id)
        LEFT JOIN (SELECT * FROM current_labels WHERE source = 'human') h USING (model_id, layer, neuron)
        WHERE n.is_primary GROUP BY n.model_id ORDER BY act_fn, n.model_id""").df()


def export_labels(con, *, history: bool = False, source: str | None = None) -> pd.DataFrame:
    """Labels for export: the current ones, or every row when `history`."""
    table = "labels" if history else "current_labels"
    where, params = ("WHERE source = ?", [source]) if source else ("", [])
    return con.execute(f"""
        SELECT model_id, layer, neuron, label, note, source, author, score, status, created_at
        FROM {table} {where} ORDER BY model_id, layer, neuron, source, created_at""", params).df()


def neuron_exists(con, model_id: str, layer: int, neuron_: int) -> bool:
    return bool(con.execute(f"SELECT count(*) FROM neurons WHERE {_NEURON_KEY}",
                            [model_id, layer, neuron_]).fetchone()[0])
