"""The `solu` command. Each package declares its subcommands in the `solu.commands`
entry-point group (pyproject.toml), so this module imports nothing above `solu/`;
handlers import their heavy dependencies lazily so `solu --help` stays fast."""
from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from solu.errors import UserError, first_line

COMMAND_GROUP = "solu.commands"
SPIN_COUNT = "3000"  # GOMP_SPINCOUNT: how long an idle OpenMP thread spins before it sleeps


class Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported like every other user error: one line."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    import os

    from solu.flags import check_values

    # torch's OpenMP threads (GNU libgomp) spin only briefly before they sleep: by default
    # they spin about 300,000 times, which on a machine whose cores another process also
    # uses slows training 5x; 3,000 keeps the speed of a quiet machine and most of it on a
    # busy one (benchmarks/bench_busy.py). Read once, when torch loads; a user's own
    # OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage mistake argparse reported in one line
        return e.code if isinstance(e.code, int) else 2
    try:
        check_values(args)
        return args.func(args) or 0
    except UserError as e:
        print(f"solu {args.command}: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system said no (disk full, permissions) where no check foresaw it
        where = f": {e.filename}" if e.filename else ""
        print(f"solu {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"solu {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not _is_duckdb_io_error(e):
            raise
        print(f"solu {args.command}: error: {_one_line(first_line(e))} (a damaged or truncated database file, "
              "or a full or failing disk)", file=sys.stderr)
        return 2


def _is_duckdb_io_error(e: Exception) -> bool:
    """DuckDB's I/O errors (a file cut short, a full disk: an IOException, or a commit that
    could not write its log) are not OSErrors; they come from the file system, not from a
    bug here."""
    duckdb = sys.modules.get("duckdb")
    if duckdb is None or not isinstance(e, duckdb.Error):
        return False
    return isinstance(e, duckdb.IOException) or "No space left on device" in str(e)


def _one_line(text: str) -> str:
    return " ".join(text.split("\n")) if "\n" in text else text


if __name__ == "__main__":
    sys.exit(main())
