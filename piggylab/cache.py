"""The run cache: within one batch, a run is trained once, whichever notebook asks for it first.

Several notebooks need the same runs (01, 04, 05, 06 and 08 all train piggyback, fine-tuning
and classifier-only on the same tasks). `RunCache(folder)` keeps each finished run in its own
entry, named by a hash of everything that determines it (`run_key`): the backbone's
fingerprint, the task and its data (name, origin, split sizes), the method and every training
and mask setting, the batch size, the seed, and the version of the lab's code (a hash of its
source files, so editing the code never reuses an old run). An entry is a folder holding

- ``spec.json``: what determined the run (the hash's input, to read);
- ``row.json``: its result row; written last, so its presence means the entry is complete;
- ``history.csv``: its training history;
- ``task.safetensors``: the trained task (`piggylab.storage`), for methods that leave one.

All are safe formats (JSON, CSV, safetensors; no pickle), written atomically. `RunCache.lock`
holds a file lock (`filelock`) per entry while it is computed, so two notebooks running at
the same time do not train it twice: the second waits, then reads it. The cache knows
nothing about training; `piggylab.experiments.run` uses it.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock

from .io import atomic_write_bytes, atomic_write_text, write_json

PACKAGE = Path(__file__).resolve().parent


@cache
def code_version() -> str:
    """SHA-256 (first 12 hex digits) of the lab's source files: changes with any code change."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def run_key(spec: Mapping[str, Any]) -> str:
    """The hash naming a run's entry: `spec` (JSON-able) and the code version."""
    text = json.dumps({"spec": spec, "code": code_version()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass
class CachedRun:
    """A finished run read back from the cache."""

    row: dict[str, Any]
    history: pd.DataFrame
    task_file: Path | None


class RunCache:
    """Finished runs under `folder`, one entry per `run_key`; see the module docstring."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def entry(self, key: str) -> Path:
        return self.folder / key

    @contextmanager
    def lock(self, key: str, timeout: float = -1) -> Iterator[Path]:
        """Hold the entry's lock (waiting for another process computing it); yields its folder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.folder / f"{key}.lock"), timeout=timeout):
            yield self.entry(key)

    def get(self, key: str) -> CachedRun | None:
        """The finished run of `key`, or None."""
        entry = self.entry(key)
        if not (entry / "row.json").exists():
            return None
        history = pd.read_csv(entry / "history.csv")
        task_file = entry / "task.safetensors"
        return CachedRun(json.loads((entry / "row.json").read_text()), history,
                         task_file if task_file.exists() else None)

    def put(self, key: str, spec: Mapping[str, Any], row: Mapping[str, Any], history: pd.DataFrame,
            task_file: bytes | None = None) -> CachedRun:
        """Store a finished run (its row last, which completes the entry)."""
        entry = self.entry(key)
        write_json(entry / "spec.json", dict(spec))
        buffer = io.StringIO()
        history.to_csv(buffer, index=False)
        atomic_write_text(entry / "history.csv", buffer.getvalue())
        if task_file is not None:
            atomic_write_bytes(entry / "task.safetensors", task_file)
        write_json(entry / "row.json", dict(row))
        return self.get(key)
