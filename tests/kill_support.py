"""Test support for faults: run Python code in a child process, let it pause at a known point
(`pause`, or halfway through writing a file: `pause_writing`), then kill it with SIGKILL.

The child imports this module too (the tests folder is on its path): it calls `pause_writing`
before the write under test, or `pause` from a training callback; the parent calls
`kill_when_paused(code)`. Patching happens only in the child, never in the package.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PAUSED = "PAUSED"


def pause() -> None:
    """Tell the parent the child is where it should be killed, and wait for the kill."""
    print(PAUSED, flush=True)
    time.sleep(600)


class _HalfThenPause:
    """A file whose first write stores half its data, syncs it, then pauses (`pause`)."""

    def __init__(self, file) -> None:
        self.file = file

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.file.__exit__(*exc)

    def write(self, data: bytes) -> int:
        self.file.write(data[: len(data) // 2])
        self.file.flush()
        os.fsync(self.file.fileno())
        pause()
        return len(data)

    def __getattr__(self, name: str):
        return getattr(self.file, name)


def pause_writing(name: str, nth: int = 1) -> None:
    """Make the `nth` atomic write (`piggylab.io.atomic_open`) of a file called `name` pause
    halfway through its data, by giving `piggylab.io` an `open` that wraps that file."""
    import piggylab.io

    opened = 0

    def paused_open(path, mode="r", *args, **kwargs):
        nonlocal opened
        file = builtins.open(path, mode, *args, **kwargs)
        if Path(path).name.startswith(f".{name}."):
            opened += 1
            if opened == nth:
                return _HalfThenPause(file)
        return file

    piggylab.io.open = paused_open


def _child(code: str) -> dict:
    """Popen arguments for `code` (dedented) in a child Python with the tests folder on its path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "PYTHONWARNINGS": "ignore"}
    return {"args": [sys.executable, "-c", textwrap.dedent(code)], "text": True, "env": env, "cwd": TESTS}


def run_child(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `code` in a child Python to its end (`_child`)."""
    return subprocess.run(**_child(code), capture_output=True, timeout=timeout)


@contextlib.contextmanager
def paused_child(code: str, timeout: float = 300) -> Iterator[subprocess.Popen]:
    """Run `code` in a child until it pauses, give it to the caller there, then SIGKILL it.
    Fails the test if the child ends, or has not paused after `timeout` seconds."""
    child = subprocess.Popen(**_child(code), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(child.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while True:
                if not selector.select(max(0.0, deadline - time.monotonic())):
                    raise AssertionError(f"the child did not pause within {timeout} s")
                line = child.stdout.readline()
                if line.strip() == PAUSED:
                    break
                if not line:
                    raise AssertionError(f"the child ended before pausing:\n{child.stderr.read()}")
        yield child
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()


def kill_when_paused(code: str, timeout: float = 300) -> int:
    """Run `code` in a child until it pauses, SIGKILL it there (`paused_child`); its process id."""
    with paused_child(code, timeout) as child:
        return child.pid
