"""The documentation is checked like code (after datasette's documentation tests): every
`solu` command and flag is documented, every SQL block runs, and every link and file path
the pages give resolves. The pages are README.md and docs/*.md; a block that includes a
file with pymdownx.snippets (`--8<-- "path"`) is checked through that file."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import duckdb
import pytest

from index.store.readonly_sql import run_query
from helpers.measure_db import build_measure_db
from solu.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SNIPPET = re.compile(r'^\s*--8<--\s+"([^"]+)"\s*$', re.M)
FENCE = re.compile(r"^(```+|~~~+)([^\n]*)\n(.*?)^\1[ \t]*$", re.M | re.S)
SCHEMA = "index/store/schema.sql"  # DDL, not a query: it must build a database instead
TOP_LEVEL = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")} - {
    "runs", "site", "screenshots", "build"}  # the project's folders, not what runs leave behind


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def expand(text: str) -> str:
    """The text with each snippet line replaced by the file it names (paths from the root)."""
    return SNIPPET.sub(lambda m: (ROOT / m.group(1)).read_text(), text)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m.group(2).strip().split(" ")[0].lstrip("{.").rstrip("}"), m.group(3)) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The text without its fenced code blocks."""
    return FENCE.sub("", text)


def all_text() -> dict[str, str]:
    return {rel(p): expand(p.read_text()) for p in PAGES}


# ------------------------------------------------------------------ commands and flags

def commands() -> list[tuple[str, argparse.ArgumentParser]]:
    """('study create', its parser), ... for every command and subcommand of `solu`."""
    found = []

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.append((" ".join([*words, name]), sub))
                    walk(sub, [*words, name])

    walk(build_parser(), [])
    return found


def test_the_walk_finds_every_command():
    names = {name for name, _ in commands()}
    assert {"train", "index", "sql", "app", "demo", "study create", "labels export"} <= names


@pytest.mark.parametrize("name,parser", commands(), ids=[name for name, _ in commands()])
def test_every_command_and_flag_is_documented(name, parser):
    """The command appears as `solu NAME`, and each of its flags on a page that names it."""
    pages = {path: text for path, text in all_text().items() if re.search(rf"solu {name}(?![\w-])", text)}
    assert pages, f"`solu {name}` appears in no page (README.md, docs/*.md)"
    flags = [flag for action in parser._actions if not isinstance(action, argparse._HelpAction)
             for flag in action.option_strings if flag.startswith("--")]
    missing = [flag for flag in flags if not any(re.search(rf"{re.escape(flag)}(?![\w-])", text)
                                                 for text in pages.values())]
    assert not missing, f"flags of `solu {name}` on no page that names it ({sorted(pages)}): {missing}"


# ------------------------------------------------------------------ SQL blocks

def sql_blocks() -> list[tuple[str, str]]:
    """(where, the block's text with its snippets expanded) for every ```sql block."""
    blocks = []
    for page in PAGES:
        for i, (lang, body) in enumerate(fenced_blocks(page.read_text())):
            if lang == "sql":
                sources = SNIPPET.findall(body)
                blocks.append((f"{rel(page)} block {i}" + (f" ({', '.join(sources)})" if sources else ""), body))
    return blocks


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """A small index with every table of the schema (tests/measure_db.py)."""
    return build_measure_db(tmp_path_factory.mktemp("docs") / "index.duckdb")


def test_the_pages_have_sql_blocks_and_include_the_example_file():
    where = " ".join(w for w, _ in sql_blocks())
    assert "explorer/sql_examples.sql" in where and SCHEMA in where


@pytest.mark.parametrize("where,body", sql_blocks(), ids=[w for w, _ in sql_blocks()])
def test_every_sql_block_runs(db, where, body):
    """A block of queries runs read-only against an index, one statement at a time (apart by
    a blank line or a semicolon), through the engine of `solu sql`; the schema block builds
    a database."""
    if SNIPPET.findall(body) == [SCHEMA]:
        con = duckdb.connect()
        try:
            con.execute(expand(body))
            assert con.execute("SELECT count(*) FROM duckdb_tables()").fetchone()[0] > 10
        finally:
            con.close()
        return
    statements = [s.query.strip() for part in re.split(r"\n\s*\n", expand(body)) if part.strip()
                  for s in duckdb.extract_statements(part)]  # apart by a blank line, as in sql_examples.sql
    assert statements, where
    for sql in statements:
        run_query(db, sql.rstrip(";"))


# ------------------------------------------------------------------ links and paths

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")


def links() -> list[tuple[str, str]]:
    return [(rel(page), target) for page in PAGES for target in LINK.findall(prose(page.read_text()))
            if not re.match(r"^[a-z]+:|^#", target)]


@pytest.mark.parametrize("page,target", links(), ids=[f"{p}->{t}" for p, t in links()])
def test_every_relative_link_resolves(page, target):
    path = (ROOT / page).parent / target.split("#")[0]
    assert path.exists(), f"{page} links to {target}, which does not exist"


def file_paths() -> list[tuple[str, str]]:
    """Paths to files of the repository written in backticks in the pages' prose: a word
    with a slash that starts at a top-level folder, or that names a .py file."""
    found = set()
    for page in PAGES:
        for code in INLINE_CODE.findall(prose(expand(page.read_text()))):
            for word in code.split():
                word = word.split("::")[0].strip("\"'(").rstrip(",.;:)")
                if "/" not in word or word.startswith(("/", "~", ".", "$")) or re.search(r"[*{}<>|=]", word):
                    continue
                if word.split("/")[0] in TOP_LEVEL or word.endswith(".py"):
                    found.add((rel(page), word))
    return sorted(found)


def test_the_pages_name_files():
    assert len(file_paths()) > 30


@pytest.mark.parametrize("page,path", file_paths(), ids=[f"{p}:{f}" for p, f in file_paths()])
def test_every_file_path_resolves(page, path):
    assert (ROOT / path).exists(), f"{page} names `{path}`, which is not in the repository"


def test_every_snippet_names_a_file():
    for page in PAGES:
        for source in SNIPPET.findall(page.read_text()):
            assert (ROOT / source).is_file(), f"{rel(page)} includes {source}, which does not exist"


def test_every_named_test_exists():
    """A page that cites `tests/FILE.py::NAME` (the guarantees do) cites a test that exists."""
    cited = {(m.group(1), m.group(2)) for page in PAGES
             for m in re.finditer(r"(tests/\w+\.py)::(\w+)", page.read_text())}
    assert len(cited) > 20
    missing = [f"{f}::{name}" for f, name in sorted(cited)
               if not re.search(rf"^def {name}\(", (ROOT / f).read_text(), re.M)]
    assert not missing, f"the pages cite tests that do not exist: {missing}"
