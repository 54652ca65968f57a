"""The pages' way to the database: which file, cached query results, label writes.

Query results are cached per (file, file version), so a re-index or a label save (both
rewrite the file) is picked up on the next run; labels themselves are read uncached. The
measures a page computes from the whole index (the Models page's comparison: seconds on
a GPT-2-small index) are cached the same way (`computed`), so coming back to the page or
changing one of its other widgets does not compute them again.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import streamlit as st

from explorer import db
from explorer.render import md_escape
from index.store import queries
from solu.errors import UserError

DB_ENV = "SOLU_DB"


def db_path() -> Path | None:
    value = os.environ.get(DB_ENV)
    return Path(value) if value else None


def require_db() -> Path:
    """The database path; stops the page with one clear message if it cannot be read."""
    path = db_path()
    if path is None:
        st.error(f"No database given: start the app with `solu app --db FILE` (or set {DB_ENV}).")
        st.stop()
    try:
        query("sites")
    except UserError as e:
        st.error(md_escape(str(e)))
        st.stop()
    return path


@st.cache_data(max_entries=512, show_spinner=False)
def _cached(path: str, version: tuple, name: str, args: tuple, kwargs: tuple):
    return db.read(path, _function(name), *args, **dict(kwargs))


def _function(name: str):
    """queries.<name>, or for 'module:function' that module's function."""
    if ":" not in name:
        return getattr(queries, name)
    module, function = name.split(":")
    return getattr(importlib.import_module(module), function)


def query(name: str, *args, **kwargs):
    """queries.<name>(con, *args, **kwargs), cached until the database file changes."""
    path = db_path()
    try:
        version = db.file_version(path)
    except OSError:
        raise UserError(f"database {path} not found (build one with 'solu index')") from None
    return _cached(str(path), version, name, args, tuple(sorted(kwargs.items())))


def computed(fn, *args, **kwargs):
    """fn(con, *args, **kwargs) for a module-level function outside queries (a measure that
    reads the whole index), cached like `query` until the database file changes."""
    return query(f"{fn.__module__}:{fn.__name__}", *args, **kwargs)


def fresh(name: str, *args, **kwargs):
    """queries.<name>(con, ...) read now, never cached (labels another tab may have changed)."""
    return db.read(db_path(), getattr(queries, name), *args, **kwargs)


def save_label(model_id: str, layer: int, neuron: int, label: str, note: str = "", **kwargs) -> None:
    db.write_label(db_path(), model_id, int(layer), int(neuron), label, note, **kwargs)


def author() -> str:
    """The author name this browser session last used (or SOLU_AUTHOR, or empty)."""
    return st.session_state.get("author", os.environ.get("SOLU_AUTHOR", ""))
