"""SQL over the index: the same guarded read-only engine as `solu sql`."""
import streamlit as st

from explorer import data, db
from solu.errors import UserError

MAX_ROWS = 5000
TIMEOUT_S = 10.0
EXAMPLES = {
    "Most active neurons per model": """SELECT model_id, layer, neuron, site, max_act, frac_active
FROM neurons WHERE is_primary
ORDER BY max_act DESC LIMIT 20""",
    "Neurons whose top examples peak on '=' or '=='": """SELECT model_id, layer, neuron, count(*) AS snippets
FROM examples
WHERE kind = 'top' AND trim(tokens[max_pos + 1]) IN ('=', '==')
GROUP BY ALL ORDER BY snippets DESC LIMIT 20""",
    "GELU vs SoLU: density and max": """SELECT m.act_fn, count(*) AS neurons,
       median(n.frac_active) AS median_density, avg(n.max_act) AS mean_max,
       count(*) FILTER (WHERE n.frac_active < 0.01) AS sparse_neurons
FROM neurons n JOIN models m USING (model_id)
WHERE n.is_primary GROUP BY m.act_fn""",
    "Labels with their authors": """SELECT model_id, layer, neuron, label, author, created_at
FROM current_labels WHERE source = 'human' ORDER BY created_at DESC""",
    "Tokens that most often carry a neuron's max": """SELECT tokens[max_pos + 1] AS token, count(*) AS snippets
FROM examples WHERE kind = 'top'
GROUP BY token ORDER BY snippets DESC LIMIT 25""",
}


def run(sql: str) -> None:
    try:
        with st.spinner("Running…"):
            df, truncated = db.run_sql(data.db_path(), sql, MAX_ROWS, TIMEOUT_S)
    except UserError as e:
        st.error(str(e))
        return
    except ImportError:
        st.error("The SQL engine (index.sqlguard) is not installed in this version.")
        return
    note = f" (truncated to the first {MAX_ROWS:,})" if truncated else ""
    st.caption(f"{len(df):,} rows{note}")
    if truncated:
        st.warning(f"Only the first {MAX_ROWS:,} rows are shown and downloadable; add a LIMIT or an aggregate.")
    st.dataframe(df, hide_index=True)
    st.download_button("Download CSV", df.to_csv(index=False).encode(), file_name="query.csv", mime="text/csv")


def page() -> None:
    data.require_db()
    st.title("SQL")
    st.caption(f"Read-only DuckDB SQL over the index: SELECT, WITH, DESCRIBE, SHOW. No writes, no files, "
               f"{TIMEOUT_S:.0f} s and {MAX_ROWS:,} rows at most. Tables: models, neurons, examples, logits, "
               f"activations, tokens, labels, current_labels, example_tokens.")
    example = st.selectbox("Examples", ["(your own query)", *EXAMPLES])
    initial = EXAMPLES.get(example, st.query_params.get("q", ""))
    sql = st.text_area("Query", value=initial, height=180, key=f"sql|{example}",
                       placeholder="SELECT * FROM neurons LIMIT 10")
    if st.button("Run query", type="primary") and sql.strip():
        st.query_params["q"] = sql
        run(sql)


page()
