"""Finding this test's child processes in /proc (Linux), for tests that kill them."""
from __future__ import annotations

import time
from pathlib import Path


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def descends_from(pid: int, ancestor: int) -> bool:
    while pid and pid > 1:
        pid = parent_of(pid)
        if pid == ancestor:
            return True
    return False


def descendants(ancestor: int, marker: bytes) -> list[int]:
    """Processes below `ancestor` whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmd and descends_from(int(entry.name), ancestor):
            found.append(int(entry.name))
    return found


def gone_within(pid: int, seconds: float) -> bool:
    """Whether `pid` exits (or is a zombie) within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False
