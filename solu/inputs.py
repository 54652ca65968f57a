"""Files a command reads where a regular file is expected (a config, a tokenizer, weights,
a training state): anything else is refused before it is opened, since opening a FIFO
blocks until a writer comes, a device like /dev/zero never ends, and a huge file where a
small one belongs would be read whole."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from solu.errors import UserError

SMALL_FILE_BYTES = 256 * 2**20  # a config or a tokenizer is far below this


def check_regular(path: str | Path, what: str, max_bytes: int | None = SMALL_FILE_BYTES) -> None:
    """UserError unless `path`, if it exists, is a regular file (links followed) of at most
    max_bytes (None: any size). A missing path is left to the caller's own message."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {path} is not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise UserError(f"{what} {path} is {st.st_size / 2**20:,.0f} MB; at most {max_bytes / 2**20:,.0f} MB is read")
