"""Two index files, table by table: the same rows, or what differs.

For checking that a refactor changed no output: build the demo before and after
(`solu demo --out A --no-app`, then again from the other commit), then

    python benchmarks/diff_index.py A/index.duckdb B/index.duckdb

Every table and view both files have is compared as a multiset of rows, over the columns
both have, floats to 1e-9 relative. Columns that record when or how fast a run went
(run ids, timestamps, seconds, tokens/s, timings, the code version) are left out, and so
are a model's source path and config.json (it holds the training time); a column only one
file has is named. Exit 0 when everything compared is equal.
"""
from __future__ import annotations

import argparse
import sys

import duckdb
import numpy as np
import pandas as pd

VOLATILE = {"run_id", "started_at", "seconds", "tokens_per_s", "timings", "created_at", "updated_at",
            "finished_at", "code_version", "saved_at", "train_s", "index_s", "score_s"}
# where a model came from (its checkpoint's path) and its config.json (which holds its training time)
PER_TABLE = {"models": {"source", "config"}}


def tables(con) -> dict[str, list[str]]:
    rows = con.execute("""
        SELECT table_name, list(column_name ORDER BY column_index) FROM duckdb_columns()
        WHERE database_name = current_database() AND schema_name = 'main' AND table_name IN (
            SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND NOT internal
            UNION ALL SELECT view_name FROM duckdb_views() WHERE database_name = current_database() AND NOT internal)
        GROUP BY table_name""").fetchall()
    return {name: cols for name, cols in rows if name != "meta"}


def frame(con, table: str, columns: list[str]) -> pd.DataFrame:
    quoted = ", ".join(f'"{c}"' for c in columns)
    df = con.execute(f"SELECT {quoted} FROM {table}").df()
    for c in df.columns:  # lists and arrays compare as text
        if df[c].dtype == object:
            df[c] = df[c].map(lambda v: repr(list(v)) if isinstance(v, (list, np.ndarray)) else
                              repr(v) if isinstance(v, dict) else v)
    return df.sort_values(list(df.columns), na_position="last").reset_index(drop=True)


def same(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    if a.shape != b.shape:
        return False
    for c in a.columns:
        x, y = a[c], b[c]
        if pd.api.types.is_float_dtype(x) and pd.api.types.is_float_dtype(y):
            if not np.allclose(x.to_numpy(), y.to_numpy(), rtol=1e-9, atol=0, equal_nan=True):
                return False
        elif not x.equals(y):
            return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a")
    parser.add_argument("b")
    args = parser.parse_args()
    con_a, con_b = duckdb.connect(args.a, read_only=True), duckdb.connect(args.b, read_only=True)
    ta, tb = tables(con_a), tables(con_b)
    equal = True
    for name in sorted(set(ta) | set(tb)):
        if name not in ta or name not in tb:
            print(f"{name}: only in {'the first' if name in ta else 'the second'}")
            continue
        skip = VOLATILE | PER_TABLE.get(name, set())
        shared = [c for c in ta[name] if c in tb[name] and c not in skip]
        only = sorted((set(ta[name]) ^ set(tb[name])) - skip)
        a, b = frame(con_a, name, shared), frame(con_b, name, shared)
        ok = same(a, b)
        equal &= ok
        print(f"{name}: {len(a):,} / {len(b):,} rows, {len(shared)} columns: {'same' if ok else 'DIFFERENT'}"
              + (f" (a column in one file only: {', '.join(only)})" if only else ""))
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
