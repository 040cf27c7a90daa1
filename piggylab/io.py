"""Writing files so that nothing is lost: every file the lab writes goes through here.

`atomic_open(path)` gives a new temporary file beside `path`; only once it is fully written
and synced to disk is it renamed over `path` (an atomic step on POSIX file systems). A
crash, a kill or a full disk therefore leaves either the old file or the new one, never a
half-written one, and the temporary file is removed on any error; a full disk (or quota, or
file size limit) is reported as `NoSpaceError`, naming the file and saying the previous one is
intact. A kill leaves the temporary file (``.NAME.*.tmp``) behind, never a damaged NAME.
`atomic_write_bytes`,
`atomic_write_text` and `write_json` are the usual uses. Reading is the callers' (the lab
never unpickles: safetensors, JSON, CSV and ``.npz`` without pickle).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

NO_SPACE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
"""Errors of a write that found no room: the disk is full, the quota is spent, or the file size
limit (``ulimit -f``) is reached."""


class NoSpaceError(OSError):
    """A write found no room (`NO_SPACE_ERRORS`); the file it was replacing is intact."""


@contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """A new binary file that replaces `path` only once it is fully written and synced.

    On any error the old file stays as it was and the temporary file is removed; no room left
    (`NO_SPACE_ERRORS`, whether in a write, the sync or the rename) raises `NoSpaceError`. The
    file is created as `open` creates files (the umask applies), not with `tempfile.mkstemp`'s 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRORS:
            before = "the previous file is intact" if path.exists() else "no file was there before, none is now"
            raise NoSpaceError(f"no space left while writing {path} ({exc.strerror}): {before}") from exc
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to a temporary file beside `path`, then rename it over `path`."""
    with atomic_open(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write_bytes` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, value: Any) -> Path:
    """`value` as indented JSON (anything JSON does not know as its `str`), atomically."""
    return atomic_write_text(path, json.dumps(value, indent=2, default=str) + "\n")
