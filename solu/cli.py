"""The `solu` command. Each package registers its own subcommands; handlers import
their heavy dependencies lazily so `solu --help` stays fast."""
from __future__ import annotations

import argparse
import importlib
import sys

from solu.errors import UserError

# modules with a register(subparsers) function, in help order
COMMAND_MODULES = ["solu.commands", "index.commands", "explorer.commands", "index.measure.commands"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="solu", description="Train GELU and SoLU transformers, index their MLP neurons, explore them.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as e:
        print(f"solu {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"solu {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
