"""Where commands write: checked before any work, never over what they did not create.

A command's output file (`solu labels export --out`) must not exist, unless the user
says --force, and even then it must be a regular file that is not one of the
command's inputs (its own database). It is written to a temporary file beside it and
moved into place, so a failure (a full disk) leaves nothing behind. An output folder
(`solu train --out`, `solu demo --out`, SOLU_CACHE) must be a folder, or not exist yet
under a writable folder.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

from solu.errors import UserError


def writable(path: Path) -> bool:
    """We may write it, and it is not marked read-only (root could write anyway; we don't)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return os.access(path, os.W_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def check_out_file(path: Path, flag: str, *, force: bool = False, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse, before any work, an output file we may not (over)write."""
    path = Path(path)
    for source in inputs:
        if path.exists() and source.exists() and path.resolve() == Path(source).resolve():
            raise UserError(f"{flag} {path} is the command's own input; it is never written over")
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file name")
    if path.exists() or path.is_symlink():
        if not force:
            raise UserError(f"{flag} {path} already exists; pass --force to replace it")
        if not path.is_file() or path.is_symlink():
            raise UserError(f"{flag} {path} is not a regular file; it is never replaced")
        if not writable(path):
            raise UserError(f"{flag} {path} is read-only")
    _check_folder(path.parent, flag, path)


def _check_folder(folder: Path, flag: str, path: Path) -> None:
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise UserError(f"{flag} {path}: {folder} {what}")
    if not writable(folder):
        raise UserError(f"{flag} {path}: folder {folder} is not writable")


def write_atomic(path: Path, write, flag: str | None = None) -> None:
    """write(tmp) to a temporary file beside `path`, then move it into place: the one way
    outputs are written. On any failure the temporary file is removed and `path` is as it
    was; a full disk (and, for a user's --flag output, any OSError) is one UserError
    (torch and safetensors raise their own types)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        full = isinstance(e, Exception) and out_of_space(e, path.parent)
        tmp.unlink(missing_ok=True)
        if flag and isinstance(e, OSError):
            raise UserError(f"{flag} {path}: {e.strerror or e}; nothing was written") from None
        if full:
            raise UserError(f"cannot write {path}: no space left on the disk") from None
        raise


def alive(pid: int) -> bool:
    """Whether a process of that id runs (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: Path) -> None:
    """Delete the temporary files write_atomic left in `folder` when its process was killed
    (kill -9 skips every cleanup); a running writer's stay."""
    for path in Path(folder).glob(".*.tmp"):
        pid = path.name[:-len(".tmp")].rpartition(".")[2]
        if pid.isdigit() and not alive(int(pid)):
            path.unlink(missing_ok=True)


def write_text(path: Path, text: str, flag: str) -> None:
    """Write `text` to `path` (a user's --flag output) through write_atomic, synced."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    write_atomic(path, write, flag)


def out_of_space(e: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of space: ENOSPC in the error or its causes (an
    OSError, or a library's "No space left on device" / "os error 28"). torch's errors
    carry no code ("iostream error", "file write failed"), so for an error that is not an
    OSError the file system holding `folder` must be full (under 1 MiB free)."""
    seen = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(seen) or "os error 28" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    if isinstance(e, OSError):
        return False
    try:
        return shutil.disk_usage(folder).free < 2**20
    except OSError:
        return False


def check_out_dir(path: Path, flag: str) -> None:
    """Refuse an output folder that is a file, or would be created under a file or a
    read-only folder. (Whether an existing folder may be reused is the command's rule.)"""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder")
    if path.is_dir():
        if not writable(path):
            raise UserError(f"{flag} {path} is not writable")
        return
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{flag} {path}: {ancestor} is a file, not a folder")
    if not writable(ancestor):
        raise UserError(f"{flag} {path}: folder {ancestor} is not writable")


MANIFEST = ".solu-output.json"  # in a folder a command writes into: which command, and the names it wrote


class OutputFolder:
    """A folder a command writes its files into (`solu compare --out`, `solu demo --out`,
    an experiment's report). Checked before any work: it is new, empty, or holds only what
    this command wrote there before, as its manifest says. Anything else there is the
    user's: refused, or with --force left alone while the command writes beside it. A name
    the user owns is never replaced, even with --force. Files are written through
    write_atomic; a run that fails removes the files it began and a folder it made."""

    def __init__(self, path: Path, flag: str, command: str, *, force: bool = False):
        self.path, self.flag, self.command = Path(path), flag, command
        check_out_dir(self.path, flag)
        self.created = not self.path.exists()
        self.own = set() if self.created else self._manifest()
        foreign = [] if self.created else sorted(
            p.name for p in self.path.iterdir()
            if p.name != MANIFEST and p.name not in self.own and not _temporary(p.name, self.own))
        if foreign and not force:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise UserError(f"{flag} {self.path} holds files `solu {command}` did not write ({shown}); pick a new "
                            "folder, or pass --force to write beside them (they are never replaced)")
        self.foreign = set(foreign)
        self.begun: list[Path] = []

    def _manifest(self) -> set[str]:
        import json

        path = self.path / MANIFEST
        if not path.is_file():
            return set()
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return set()
        if not isinstance(saved, dict) or saved.get("command") != self.command:
            return set()
        return {name for name in saved.get("files", []) if isinstance(name, str)}

    def claim(self, *names: str) -> list[Path]:
        """The paths of `names` in the folder, recorded as this command's (UserError, before
        anything is written, if one is the user's)."""
        import json

        for name in names:
            if name in self.foreign:
                raise UserError(f"{self.flag} {self.path / name} is not a file `solu {self.command}` wrote; it is "
                                "never replaced (pick a new folder)")
        self.path.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.path)
        if not self.own.issuperset(names):
            self.own.update(names)
            write_text(self.path / MANIFEST, json.dumps({"command": self.command, "files": sorted(self.own)}),
                       self.flag)
        return [self.path / name for name in names]

    def write(self, name: str, write) -> Path:
        """write(tmp) into a temporary file, moved into place as `name`."""
        path, = self.claim(name)
        if not path.exists():
            self.begun.append(path)
        write_atomic(path, write, self.flag)
        return path

    def abandon(self) -> None:
        """After a failure: remove the files this run began, and the folder if this run made it."""
        for path in self.begun:
            path.unlink(missing_ok=True)
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)


def _temporary(name: str, own: set[str]) -> bool:
    """A temporary file this command writes beside one of its own (`.NAME.PID.tmp`, the
    indexer's `.NAME.PID.indexing`)."""
    return any(name.startswith(f".{mine}.") for mine in own)
