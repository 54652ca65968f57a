"""The architecture holds: imports flow solu <- index <- explorer with no cycle, and the
CLI flags of train and index are the config dataclasses' fields with their defaults."""
from __future__ import annotations

import argparse
import ast
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from index.engine.config import IndexConfig
from solu.cli import build_parser
from solu.commands import MODEL_FLAGS
from solu.config import ModelConfig, TrainConfig
from solu.flags import flag_name

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("solu", "index", "explorer")
MAY_IMPORT = {"solu": {"solu"}, "index": {"solu", "index"}, "explorer": {"solu", "index", "explorer"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """Every project module `path` imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {name: {m for m in project_imports(path) if m in files and m != name} for name, path in files.items()}


def test_graph_sees_the_packages():
    graph = import_graph()
    assert {"solu.cli", "index.engine.pipeline", "explorer.app"} <= set(graph)
    assert "solu.model" in graph["index.engine.hooks"]  # the walk does see imports


def test_imports_flow_one_way():
    wrong = [f"{mod} imports {dep}" for mod, deps in import_graph().items() for dep in deps
             if dep.split(".")[0] not in MAY_IMPORT[mod.split(".")[0]]]
    assert not wrong, wrong


def test_the_engine_computes_and_never_writes():
    """index.engine hands results over; the store (and index.build) write them."""
    wrong = [f"{mod} imports {dep}" for mod, deps in import_graph().items() if mod.startswith("index.engine.")
             for dep in deps if dep.startswith(("index.store", "index.build"))]
    assert not wrong, wrong


def private_imports(path: Path) -> list[str]:
    """Names starting with one underscore that `path` imports from another project module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [f"{node.module}.{a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")
                      and node.module.split(".")[0] in PACKAGES + ("tests",)]
    return found


def test_no_module_imports_another_modules_private_names():
    files = [p for folder in PACKAGES + ("tests", "benchmarks") for p in (ROOT / folder).rglob("*.py")]
    wrong = {str(p.relative_to(ROOT)): names for p in files if (names := private_imports(p))}
    assert not wrong, wrong


def test_private_import_check_sees_one(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from index.engine.pipeline import _span, index_model\nfrom os import _exit\n")
    assert private_imports(probe) == ["index.engine.pipeline._span"]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def subparser(name: str) -> argparse.ArgumentParser:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.option_strings[-1]: a for a in parser._actions if a.option_strings}


@pytest.mark.parametrize("command, cls, rename, unset", [
    ("index", IndexConfig, {}, ()),
    ("train", TrainConfig, {}, ("tokens",)),
    ("train", ModelConfig, MODEL_FLAGS, tuple(f.name for f in fields(ModelConfig))),
])
def test_flags_are_the_config_fields(command, cls, rename, unset):
    opts = options(subparser(command))
    for f in fields(cls):
        action = opts[flag_name(f.name, rename)]
        assert action.dest == f.name
        if f.name in unset:
            assert action.default is None  # the command must see whether it was given
        else:
            assert action.default == f.default
        if f.default is not MISSING:
            shown = (("on" if f.default else "off") if isinstance(f.default, bool) else
                     f"{f.default:,}" if isinstance(f.default, int) else f"{f.default}")
            assert f"default {shown}" in action.help
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"


# The commands and flags users and scripts rely on (DESIGN.md's contract and the README).
CONTRACT = {
    "train": {"--act", "--layers", "--d-model", "--d-mlp", "--heads", "--ctx", "--vocab", "--dataset", "--tokens",
              "--seed", "--out", "--resume", "--force", "--batch-size", "--lr", "--device", "--tokenizer"},
    "index": {"--dataset", "--tokens", "--top-k", "--db", "--batch-size", "--device", "--seed", "--threads"},
    "sql": {"--db", "--format", "--max-rows", "--timeout"},
    "app": {"--db", "--port", "--host"},
    "demo": {"--out", "--quick", "--no-app", "--port"},
    "compare": {"--db", "--out", "--threshold"},
    "autolabel": {"--db", "--models", "--concepts", "--regex", "--threshold"},
    "label": {"--db", "--note", "--author"},
    "corpus": {"--seed"},
    "match": {"--db", "--top"},
    "experiment": {"--out", "--acts", "--layers", "--seeds", "--tokens", "--dataset", "--index-tokens", "--workers",
                   "--address", "--device", "--quick"},
}


def test_cli_keeps_its_commands_and_flags():
    for command, flags in CONTRACT.items():
        assert flags <= set(options(subparser(command))), command
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {"train", "index", "sql", "app", "demo", "compare", "autolabel", "study", "label", "labels",
            "corpus", "match", "experiment"} <= set(action.choices)


def test_value_errors_name_the_flag_the_user_typed(tmp_path, capsys):
    from solu.cli import main

    assert main(["train", "--act", "gelu", "--layers", "-1", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "--layers must not be negative" in err and "--n-layers" not in err
