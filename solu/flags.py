"""Command-line flags derived from config dataclasses, so each default is written once.

A field becomes `--field-name` (or the name in `rename`), typed by its annotation, with
its metadata's "help" text and its default. A command that must know whether the user
gave a flag (train's model shape under --resume) asks for `unset=True`: the flag's
parsed default is then None and the dataclass default applies when the config is built.
"""
from __future__ import annotations

import argparse
import os
import typing
from dataclasses import MISSING, fields

from solu.errors import UserError

def on_off(text: str) -> bool:
    value = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}
    if text.lower() not in value:
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return value[text.lower()]


PARSERS = {int: int, float: float, str: str, bool: on_off}
FLAGS: dict[str, str] = {}  # dest -> flag, for the fields whose flag is renamed (error messages)


def path(text: str):
    """A path flag's type: the text given, never empty (argparse reports it in one line)."""
    from pathlib import Path

    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path is not a file or a folder")
    return Path(text)


def count(most: int, what: str, least: int = 1):
    """A whole-number flag's type: from `least` to `most` (`what` says what bounds it);
    anything else is refused by argparse in one line, before any work."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not least <= value <= most:
            raise argparse.ArgumentTypeError(f"must be from {least:,} to {most:,} ({what}), got {value:,}")
        return value

    parse.__name__ = "count"
    return parse


def flag_name(field_name: str, rename: dict[str, str] | None = None) -> str:
    return "--" + (rename or {}).get(field_name, field_name).replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, cls, *, rename: dict[str, str] | None = None,
                     skip: tuple[str, ...] = (), unset: bool | tuple[str, ...] = False) -> None:
    """Add one flag per field of `cls` (except `skip`) to `parser`."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        default = None if f.default is MISSING else f.default
        leave_unset = unset is True or (unset and f.name in unset)
        help_text = f.metadata.get("help", "")
        boolean = hints[f.name] is bool
        if default is not None:
            help_text += (f" (default {'on' if default else 'off'})" if boolean else
                          f" (default {default:,})" if isinstance(default, int) else f" (default {default})")
        if "most" in f.metadata:
            help_text += f" (at most {f.metadata['most'][0]:,})"
        FLAGS[f.name] = flag_name(f.name, rename)
        parser.add_argument(FLAGS[f.name], dest=f.name, type=PARSERS[hints[f.name]],
                            default=None if leave_unset else default, help=help_text.strip(),
                            metavar="{on,off}" if boolean else None)


def config_from_args(cls, args: argparse.Namespace, *, rename: dict[str, str] | None = None,
                     skip: tuple[str, ...] = (), **overrides):
    """Build `cls` from parsed flags (flags left unset take the field default); a bad value is a UserError."""
    values = {f.name: getattr(args, f.name) for f in fields(cls)
              if f.name not in skip and getattr(args, f.name, None) is not None}
    values.update(overrides)
    for f in fields(cls):
        if f.default is MISSING and f.default_factory is MISSING and f.name not in values:
            raise UserError(f"{flag_name(f.name, rename)} is required")
    try:
        return cls(**values)
    except ValueError as e:
        raise UserError(str(e)) from None


def given(cls, args: argparse.Namespace, *, skip: tuple[str, ...] = ()) -> list[str]:
    """The flags of `cls` the user gave (needs `unset=True` when the flags were added)."""
    return [f.name for f in fields(cls) if f.name not in skip and getattr(args, f.name, None) is not None]


# the largest number any flag takes; above it a value is a typo or an attack, not a request
MAX_FLAG_VALUE = 10**15
MAX_CLUSTER_WORKERS = 1024  # tasks or workers sent to a Ray cluster (--address) at once


def cores() -> int:
    """The CPUs this process may run on: the bound of every flag that starts processes or threads here."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_count(flag: str, value: int, most: int, what: str) -> None:
    """A count of processes, workers or threads from 1 to `most` (`what` says what bounds
    it), checked before any work; otherwise one line and exit 2."""
    if not 1 <= value <= most:
        raise UserError(f"{flag} must be from 1 to {most:,} ({what}), got {value:,}")


def check_values(args: argparse.Namespace) -> None:
    """Every parsed value, whichever command declared it: numbers finite, not negative and
    not absurd (above MAX_FLAG_VALUE); text and paths valid UTF-8 without NUL. Commands
    check their own narrower ranges on top (a config's __post_init__, SqlLimits, ...)."""
    for name, value in vars(args).items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            _check_value(name, item)


def _check_value(name: str, value) -> None:
    import math
    from pathlib import PurePath

    flag = FLAGS.get(name) or flag_name(name)
    if isinstance(value, bool) or value is None or callable(value):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{flag} must be a finite number, got {value}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise UserError(f"{flag} must not be negative, got {value:g}")
        if value > MAX_FLAG_VALUE:
            raise UserError(f"{flag} {value:g} is absurdly large (at most {MAX_FLAG_VALUE:.0e})")
    if isinstance(value, (str, PurePath)):
        text = str(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(f"{flag} is not valid UTF-8 text") from None
        if "\0" in text:
            raise UserError(f"{flag} contains a NUL character")
