"""Helpers for `tests/test_browser.py`: Debian's Chromium, a throwaway JupyterLab server, console checks.

Playwright cannot download its own browsers here, so the test drives the system Chromium
(``/usr/bin/chromium``, or ``$CHROMIUM``) that ``scripts/install_chromium.sh`` installs with
apt-get. Everything the server and the browser write (settings, workspaces, runtime files,
the browser profile) goes to temporary folders, so a run never depends on, or changes, the
user's own Jupyter setup.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
INSTALL_SCRIPT = ROOT / "scripts" / "install_chromium.sh"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # runs as root in containers, where the sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
]


# ---------------------------------------------------------------------------------------------
# Chromium
# ---------------------------------------------------------------------------------------------

def chromium_or_skip() -> Path:
    """The Chromium executable; installs it (apt-get) when missing, else skips the test.

    Skipping is only allowed where apt-get itself is unavailable, and never on CI (``$CI`` set):
    there the test fails, so a CI image without a browser cannot pass silently.
    """
    if not CHROMIUM.exists() and INSTALL_SCRIPT.exists():
        # `make test` already ran it (target browser-deps); this covers a bare `pytest`.
        subprocess.run(["/bin/sh", str(INSTALL_SCRIPT)], check=False)
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get"):
        pytest.fail(f"{CHROMIUM} is missing although apt-get exists: run `sudo sh scripts/install_chromium.sh` "
                    "(apt-get install -y --no-install-recommends chromium)")
    message = (f"browser test needs Chromium at {CHROMIUM} and apt-get is unavailable to install it; "
               "install Chromium and set CHROMIUM=/path/to/chromium")
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(message + " (not skipping: CI is set)")
    pytest.skip(message)


# ---------------------------------------------------------------------------------------------
# Console and page errors
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Allowed:
    """A console error that is not the lab's fault, matched narrowly, with the reason it is allowed."""

    pattern: str
    reason: str

    def matches(self, text: str) -> bool:
        return re.search(self.pattern, text) is not None


@dataclass
class ConsoleLog:
    """Every console message of type error and every uncaught exception of the pages it watches."""

    allowed: tuple[Allowed, ...] = ()
    errors: list[str] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def watch(self, page) -> None:
        page.on("console", lambda msg: self._console(page, msg))
        page.on("pageerror", lambda exc: self._add(f"[pageerror] {page.url}: {exc}"))

    def _console(self, page, msg) -> None:
        text = msg.text
        location = msg.location or {}
        where = location.get("url") or page.url
        self.messages.append(f"[{msg.type}] {text}")
        if msg.type == "error":
            self._add(f"[console.error] {where}: {text}")

    def _add(self, text: str) -> None:
        for rule in self.allowed:
            if rule.matches(text):
                self.ignored.append((text, rule.reason))
                return
        self.errors.append(text)

    def check(self, what: str) -> None:
        """Fails the test when any error that is not allow-listed was seen."""
        if self.errors:
            listing = "\n  ".join(self.errors)
            pytest.fail(f"JavaScript errors in the browser console during {what}:\n  {listing}", pytrace=False)


# ---------------------------------------------------------------------------------------------
# JupyterLab server
# ---------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    url: str
    token: str
    root: Path
    log: Path
    process: subprocess.Popen

    def lab_url(self, path: str) -> str:
        return f"{self.url}lab/tree/{path}?token={self.token}"

    def api(self, path: str, method: str = "GET", timeout: float = 5.0):
        request = urllib.request.Request(f"{self.url}api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


# JupyterLab's own user settings for the test: no "get Jupyter news?" toast, no update check.
LAB_USER_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}


@contextlib.contextmanager
def jupyter_lab(root: Path, workdir: Path, *, start_timeout: float = 60.0) -> Iterator[LabServer]:
    """A ``jupyter lab --no-browser`` serving `root` on a free localhost port, with a random token.

    The server cannot reach the network (no news feed, no update check, the read-only extension
    manager instead of the PyPI one) and keeps its config, runtime files, settings and workspaces
    under `workdir`. It is stopped on exit, however the block ends: REST shutdown (which also
    shuts its kernels down), then SIGTERM and SIGKILL to its process group.
    """
    port, token = free_port(), secrets.token_hex(24)
    for name in ("config", "runtime", "settings", "workspaces", "ipython"):
        (workdir / name).mkdir(parents=True, exist_ok=True)
    for rel, settings in LAB_USER_SETTINGS.items():
        path = workdir / "settings" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    env = {**os.environ,
           "JUPYTER_CONFIG_DIR": str(workdir / "config"),
           "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
           "IPYTHONDIR": str(workdir / "ipython"),
           "JUPYTER_PLATFORM_DIRS": "1",
           "PYTHONUNBUFFERED": "1"}
    env.pop("JUPYTER_TOKEN", None)
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser",
           "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
           "--ServerApp.terminals_enabled=False",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly",
           f"--LabApp.user_settings_dir={workdir / 'settings'}",
           f"--LabApp.workspaces_dir={workdir / 'workspaces'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI images often run as root
    log = workdir / "jupyter-lab.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = LabServer(f"http://127.0.0.1:{port}/", token, root, log, process)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with status {process.returncode}:\n{server.log_tail()}")
            try:
                server.api("status", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"jupyter lab did not answer /api/status within {start_timeout:.0f}s:\n"
                                       f"{server.log_tail()}") from None
                time.sleep(0.25)
        yield server
    finally:
        stop_server(server)


def stop_server(server: LabServer, grace: float = 10.0) -> None:
    process = server.process
    if process.poll() is None:
        with contextlib.suppress(Exception):
            server.api("shutdown", method="POST", timeout=5)   # also shuts the kernels down
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    # The group may still hold children (kernels start in their own session, and the REST
    # shutdown above stops those); whatever is left in the server's own group goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# Time budget
# ---------------------------------------------------------------------------------------------

class Deadline:
    """One time budget for the whole browser module: every wait gets at most what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    @property
    def left(self) -> float:
        return self.seconds - self.elapsed

    def ms(self, cap_s: float) -> float:
        """A Playwright timeout (ms): `cap_s`, or less when the budget is nearly spent."""
        left = self.left
        if left <= 0:
            pytest.fail(f"the browser tests ran past their {self.seconds:.0f} s budget", pytrace=False)
        return 1000 * min(cap_s, left)


# ---------------------------------------------------------------------------------------------
# Playwright helpers
# ---------------------------------------------------------------------------------------------

def save_screenshot(page, name: str, **kwargs) -> Path | None:
    """`page` as ``test-artifacts/browser/NAME.png``; returns the path (None if the page is gone)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    try:
        page.screenshot(path=str(path), **kwargs)
    except Exception as exc:  # noqa: BLE001 - a failure screenshot must not hide the failure itself
        print(f"could not save screenshot {path}: {exc}")
        return None
    print(f"screenshot: {path}")
    return path
