"""SQL over the index: the same guarded read-only engine as `solu sql`."""
import pandas as pd
import streamlit as st

from explorer import data, db, sql_examples
from explorer.render import md_escape
from index.store.readonly_sql import run_query
from solu.errors import UserError

MAX_ROWS = 5000
TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 60.0
EXAMPLES = sql_examples.examples()


def relations(con) -> pd.DataFrame:
    """Every table and view of the index, as the database itself lists them."""
    return con.execute("SELECT table_name, table_type FROM information_schema.tables "
                       "WHERE table_schema = 'main' ORDER BY table_type, table_name").df()


def execute(sql: str, max_rows: int, timeout_s: float) -> dict:
    """The query's outcome: rows or one error message, kept for later reruns of the page."""
    try:
        with st.spinner("Running…"):
            df, truncated = run_query(data.db_path(), sql, max_rows, timeout_s)
    except UserError as e:
        return {"error": str(e)}
    except ImportError:
        return {"error": "The SQL engine (index.store.readonly_sql) is not installed in this version."}
    return {"df": df, "truncated": truncated, "max_rows": max_rows}


def show(result: dict) -> None:
    if "error" in result:
        st.error(md_escape(result["error"]))
        return
    df, truncated = result["df"], result["truncated"]
    st.caption(f"{len(df):,} row{'s' * (len(df) != 1)}{' (truncated)' if truncated else ''}")
    if truncated:
        st.warning(f"Only the first {result['max_rows']:,} rows are shown and downloadable; "
                   f"add a LIMIT or an aggregate.")
    st.dataframe(df, hide_index=True)
    st.download_button("Download CSV", df.to_csv(index=False).encode(), file_name="query.csv", mime="text/csv",
                       on_click="ignore")


def page() -> None:
    data.require_db()
    st.title("SQL")
    found = db.read(data.db_path(), relations)
    names = {kind: md_escape(", ".join(found[found.table_type == kind].table_name)) for kind in ("BASE TABLE", "VIEW")}
    st.caption("Read-only DuckDB SQL over the index, the engine of `solu sql`: one SELECT (or WITH, DESCRIBE, "
               f"SHOW, EXPLAIN) at a time; no writes, no files, no network. Tables: {names['BASE TABLE']}. "
               f"Views: {names['VIEW']}. `DESCRIBE name` shows a table's columns.")
    example = st.selectbox("Examples", ["(your own query)", *EXAMPLES])
    initial = EXAMPLES.get(example, st.query_params.get("q", ""))
    sql = st.text_area("Query", value=initial, height=180, key=f"sql|{example}",
                       placeholder="SELECT * FROM neurons LIMIT 10")
    left, rows_col, time_col, _ = st.columns([1.2, 1.2, 1.2, 3], vertical_alignment="bottom")
    max_rows = int(rows_col.number_input("Rows at most", 1, 100_000, MAX_ROWS, step=1000))
    timeout_s = float(time_col.number_input("Seconds at most", 0.1, MAX_TIMEOUT_S, TIMEOUT_S, step=1.0))
    if left.button("Run query", type="primary") and sql.strip():
        st.query_params["q"] = sql
        st.session_state["sql_result"] = execute(sql, max_rows, timeout_s)
    if "sql_result" in st.session_state:
        show(st.session_state["sql_result"])


page()
