"""Finding this test's child processes in /proc (Linux), for tests that kill them."""
from __future__ import annotations

import os
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


def listening_addresses(pids) -> set[str]:
    """The local addresses (hex from /proc/net/tcp{,6}) of TCP sockets that any of `pids`
    holds in the LISTEN state."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue  # it ended meanwhile
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.add(fields[1].split(":")[0])
    return found


LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1 and ::1 as /proc/net/tcp writes them


class ListeningWatch:
    """with ListeningWatch() as w: ... — every 50 ms, the processes started inside the
    block (descendants of this one that were not there before) and the addresses any of
    them listens on (w.workers, w.seen)."""

    def __init__(self):
        import threading

        from solu.data_parallel import descendants

        self._descendants = descendants
        self.before = set(descendants())  # another test's Ray cluster may be up: not this block's
        self.workers: set[int] = set()
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch)

    def _watch(self) -> None:
        while not self._stop.is_set():
            pids = set(self._descendants()) - self.before
            self.workers.update(pids)
            self.seen.update(listening_addresses(pids))
            time.sleep(0.05)

    def __enter__(self) -> "ListeningWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def network(self) -> set[str]:
        """Addresses other than loopback that a process of the block listened on."""
        return self.seen - LOOPBACK

