"""Test helpers for database files: a read-only query (rows, or a frame), and a file's
digest to check it is unchanged."""
from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb


def query(db: Path, sql: str, params=()):
    """A read-only query's rows."""
    return _read(db, sql, params, lambda result: result.fetchall())


def frame(db: Path, sql: str, params=()):
    """A read-only query's result as a DataFrame."""
    return _read(db, sql, params, lambda result: result.df())


def _read(db: Path, sql: str, params, fetch):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return fetch(con.execute(sql, list(params)))
    finally:
        con.close()


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def plain_frame(table):
    """A pyarrow table (or a stream of batches) as pandas, dictionary columns
    (index.store.rows' activations) as plain values rather than Categoricals."""
    import pyarrow as pa

    if isinstance(table, pa.RecordBatchReader):
        table = table.read_all()
    return pa.table({name: col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col
                     for name, col in zip(table.column_names, table.columns)}).to_pandas()
