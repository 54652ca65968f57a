"""The `solu` command. Each package declares its subcommands in the `solu.commands`
entry-point group (pyproject.toml), so this module imports nothing above `solu/`;
handlers import their heavy dependencies lazily so `solu --help` stays fast."""
from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from solu.errors import UserError

COMMAND_GROUP = "solu.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="solu", description="Train GELU and SoLU transformers, index their MLP neurons, explore them.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    registrations = sorted(entry_points(group=COMMAND_GROUP), key=lambda ep: ep.name)
    if not registrations:
        raise SystemExit(f"solu: no subcommands found in the {COMMAND_GROUP!r} entry points; reinstall the package "
                         "(pip install -e .)")
    for ep in registrations:
        ep.load()(sub)
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
