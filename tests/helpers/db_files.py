"""Test helpers for database files: a read-only query, and a file's digest to check it is unchanged."""
from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb


def query(db: Path, sql: str, params=()):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
