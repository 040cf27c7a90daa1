"""Run a grid of notebooks x parameter sets with papermill on a Dask cluster.

A grid file (YAML) names the notebooks and their parameters::

    description: Embedded reproduction          # optional, shown in the report
    output: runs/embedded                       # run folders, results.csv and report.html go here
    notebooks_dir: notebooks                    # optional (default: notebooks)
    workers: 2                                  # optional: LocalCluster worker processes
    defaults: {smoke: false, seed: 0}           # optional: for every run whose notebook has them
    runs:
      - notebook: 01_quickstart
        parameters: {task: greek}
      - notebook: 02_init_schemes
        grid: {seed: [0, 1]}                    # cartesian product: one run per combination

Relative paths are resolved against the current directory. Every parameter must be one the
notebook declares in its cell tagged ``parameters``; ``output_dir`` is set by the runner, and
so is ``cache_dir`` (``OUTPUT/cache``, the batch's run cache, `piggylab.cache`) for notebooks
that declare it: a run that several notebooks need is trained once per batch.
`load_grid` checks all of that (and the keys, and the notebook names) before anything runs.

Each run gets its own folder ``OUTPUT/runs/RUN_ID`` (RUN_ID: the notebook, its own parameters
and a hash of all of them): the executed notebook (``executed.ipynb``), whatever the notebook
writes into ``output_dir`` (``metrics.json``, CSV tables, HTML figures), ``run.json`` (what ran,
how long, how it ended) and, for a failed run, ``error.txt``. A run whose ``metrics.json``
exists is done and skipped, so rerunning an interrupted batch only runs what is missing; a
failed run never keeps a ``metrics.json`` (it is renamed ``metrics.failed.json``), so it is
retried. ``OUTPUT/batch.json`` lists every run a batch on this folder has held, so batches of
the same grid with other parameters (``--set seed=1``) add up in one folder, one report and
one claims table. Runs execute on a Dask ``LocalCluster`` (one notebook per worker process) or on a
running cluster given by its scheduler address, which must share this file system.

One batch per output folder: a batch holds ``OUTPUT/batch.lock`` (`batch_lock`, an OS file
lock, released by the system when its holder dies) and writes its process id, host and start
time beside it in ``batch.lock.json``. A second batch on the same folder stops at once
(`BatchBusy`, naming the first); a lock left by a killed batch is free, and taken over.

`run_batch` is the Python entry point and ``piggylab batch`` (`piggylab.cli`) the command
line. This module does not build the report: `piggylab.report` does, from the run folders.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import functools
import hashlib
import importlib.util
import itertools
import json
import logging
import os
import re
import socket
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .io import atomic_write_text, write_json
from .report import MetricsError, build_report, read_metrics

GRID_KEYS = ("description", "output", "notebooks_dir", "workers", "defaults", "runs")
RUN_KEYS = ("notebook", "parameters", "grid")
RESERVED_PARAMETERS = ("output_dir", "cache_dir")
LOCAL_SCHEDULERS = ("local", "local-threads")
"""`local`: a LocalCluster of worker processes; `local-threads`: worker threads in this process."""
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
KERNEL_NAME = "piggylab"
"""The kernel spec installed into ``sys.prefix`` when ``python3`` would not run this interpreter."""

KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=CRITICAL"]
"""Quiets the kernel process's own log (a plain-TCP warning at start, an interrupt at shutdown, every
run); the notebook's outputs and errors are unaffected: they reach the executed notebook."""

LOCAL_WORKER_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
}
"""Dask configuration for the local workers, which spend minutes waiting for one notebook each
while its kernel (a child process, which inherits their environment) trains.

- Not Dask's default ``MALLOC_TRIM_THRESHOLD_=65536``: any fixed threshold turns off glibc's
  adaptive mmap threshold, so every large tensor a training step frees and allocates again is a
  fresh mmap, with its page faults. On 2 cores the kernels spent 40% of their time in the system,
  and each run took 2.3x as long as from papermill alone.
- Their event-loop tick (20 ms) and memory monitors (100 ms, 500 ms) less often: each wake-up
  preempts a kernel. Runs then took 1.2x, not 1.35x (`benchmarks/RESULTS.md`, "The batch's workers").

A remote cluster's workers want the first too (``MALLOC_TRIM_THRESHOLD_: null`` under
``distributed.nanny.pre-spawn-environ`` in their Dask configuration)."""

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


LOCK_FILE = "batch.lock"
HOLDER_FILE = "batch.lock.json"
"""Beside the lock: the running batch's process id, host and start time."""


class BatchBusy(RuntimeError):
    """Another batch is running on the same output folder."""


class GridError(ValueError):
    """A grid file that cannot run: unknown key, notebook or parameter, bad value, duplicate run."""


@dataclass(frozen=True)
class Run:
    """One notebook executed with one parameter set, into its own folder."""

    notebook: str
    notebook_path: Path
    parameters: dict[str, Any]
    run_id: str
    run_dir: Path
    cache_dir: Path | None = None

    @property
    def injected(self) -> dict[str, Any]:
        """The parameters papermill injects: the run's own plus ``output_dir`` (and ``cache_dir``)."""
        cache = {} if self.cache_dir is None else {"cache_dir": str(self.cache_dir)}
        return {**self.parameters, "output_dir": str(self.run_dir), **cache}

    @property
    def done(self) -> bool:
        """Whether the run finished earlier (its ``metrics.json`` exists)."""
        return (self.run_dir / "metrics.json").exists()


@dataclass(frozen=True)
class Grid:
    """A validated grid: where outputs go, how many local workers, and the expanded runs."""

    name: str
    description: str
    output: Path
    notebooks_dir: Path
    workers: int
    runs: tuple[Run, ...]


@dataclass(frozen=True)
class RunOutcome:
    """How one run ended: `ok`, `failed` or `skipped` (finished by an earlier batch)."""

    run_id: str
    notebook: str
    status: str
    seconds: float = 0.0
    error: str = ""


@dataclass
class BatchResult:
    """The outcome of every run of a batch, and where its results and report are."""

    outcomes: list[RunOutcome] = field(default_factory=list)
    results_csv: Path | None = None
    report: Path | None = None

    def by_status(self, status: str) -> list[RunOutcome]:
        """The outcomes with this status, in the grid's order."""
        return [o for o in self.outcomes if o.status == status]


# ---------------------------------------------------------------------------------------------
# Grid files


def _check_keys(mapping: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = [k for k in mapping if k not in allowed]
    if unknown:
        raise GridError(f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(allowed)}")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise GridError(f"{where} must be a mapping of names to values, got {value!r}")
    return dict(value)


@functools.cache
def notebook_parameters(path: Path) -> tuple[str, ...]:
    """The names assigned in the notebook's cell tagged ``parameters``, as papermill's Python
    translator reads them (the lab's notebooks are Python, whatever kernel their metadata names);
    empty when there is no such cell. Raises `GridError` for a file that is not a notebook."""
    import nbformat
    from papermill.translators import PythonTranslator

    try:
        notebook = nbformat.read(path, as_version=4)
    except Exception as exc:  # nbformat raises several kinds for a broken file
        raise GridError(f"cannot read notebook {path}: {exc}") from None
    cell = next((c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    return () if cell is None else tuple(p.name for p in PythonTranslator.inspect(cell))


def _slug(parameters: Mapping[str, Any]) -> str:
    parts = []
    for name, value in parameters.items():
        text = "+".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        parts.append(f"{name}={text}")
    return re.sub(r"[^A-Za-z0-9.=+_-]+", "_", "-".join(parts))[:60].strip("-_")


def run_id(notebook: str, own: Mapping[str, Any], parameters: Mapping[str, Any]) -> str:
    """``NOTEBOOK[-SLUG]-HASH``: the slug shows the run's own parameters, the hash covers all of them."""
    digest = hashlib.sha1(json.dumps(parameters, sort_keys=True, default=str).encode()).hexdigest()[:8]
    slug = _slug(own)
    return f"{notebook}-{slug}-{digest}" if slug else f"{notebook}-{digest}"


def _find_notebook(name: Any, notebooks_dir: Path, where: str) -> tuple[str, Path]:
    available = sorted(p.stem for p in notebooks_dir.glob("*.ipynb"))
    stem = str(name).removesuffix(".ipynb")
    if not isinstance(name, str) or stem not in available:
        raise GridError(f"{where}: unknown notebook {name!r}; notebooks in {notebooks_dir}: "
                        f"{', '.join(available) or '(none)'}")
    return stem, notebooks_dir / f"{stem}.ipynb"


def parse_grid(spec: Any, *, name: str = "grid", output: str | Path | None = None,
               overrides: Mapping[str, Any] | None = None, workers: int | None = None) -> Grid:
    """Validate a grid (the parsed YAML) and expand it into runs; raises `GridError` on any problem.

    `output` and `workers` replace the grid's own; `overrides` set parameters of every run whose
    notebook declares them (each must be declared by at least one), after all the grid's values.
    """
    if not isinstance(spec, Mapping):
        raise GridError(f"{name}: expected a mapping with the keys {', '.join(GRID_KEYS)}")
    _check_keys(spec, GRID_KEYS, name)
    output = output if output is not None else spec.get("output")
    if output is None or not str(output).strip():
        raise GridError(f"{name}: 'output' (the folder for runs, results.csv and report.html) is required")
    notebooks_dir = Path(spec.get("notebooks_dir") or "notebooks").absolute()
    if not notebooks_dir.is_dir():
        raise GridError(f"{name}: notebooks_dir {notebooks_dir} is not a folder")
    workers = workers if workers is not None else spec.get("workers", 2)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise GridError(f"{name}: workers must be a positive integer, got {workers!r}")
    defaults = _mapping(spec.get("defaults"), f"{name}: defaults")
    overrides = _mapping(overrides, "overrides")
    raw_runs = spec.get("runs")
    if not isinstance(raw_runs, list) or not raw_runs:
        raise GridError(f"{name}: 'runs' must be a non-empty list of runs (each with a 'notebook')")

    runs: list[Run] = []
    seen: dict[str, int] = {}
    used_defaults: set[str] = set()
    used_overrides: set[str] = set()
    output = Path(output).absolute()
    for number, raw in enumerate(raw_runs, 1):
        where = f"{name}: run #{number}"
        if not isinstance(raw, Mapping) or "notebook" not in raw:
            raise GridError(f"{where}: expected a mapping with a 'notebook' key, got {raw!r}")
        _check_keys(raw, RUN_KEYS, where)
        notebook, path = _find_notebook(raw["notebook"], notebooks_dir, where)
        where = f"{where} ({notebook})"
        declared = notebook_parameters(path)
        if not declared:
            raise GridError(f"{where}: the notebook has no cell tagged 'parameters'")
        own = _mapping(raw.get("parameters"), f"{where}: parameters")
        axes = _mapping(raw.get("grid"), f"{where}: grid")
        for key in [*own, *axes]:
            if key in RESERVED_PARAMETERS:
                raise GridError(f"{where}: {key!r} is set by the runner (each run writes into its own folder; "
                                "the batch keeps one run cache)")
            if key not in declared:
                raise GridError(f"{where}: unknown parameter {key!r}; {notebook} declares: {', '.join(declared)}")
        both = set(own) & set(axes)
        if both:
            raise GridError(f"{where}: {sorted(both)[0]!r} is in both 'parameters' and 'grid'")
        for key, values in axes.items():
            if not isinstance(values, list) or not values:
                raise GridError(f"{where}: grid.{key} must be a non-empty list of values, got {values!r}")
        base = {k: v for k, v in defaults.items() if k in declared and k not in RESERVED_PARAMETERS}
        forced = {k: v for k, v in overrides.items() if k in declared}
        used_defaults |= set(base)
        used_overrides |= set(forced)
        for combination in itertools.product(*axes.values()):
            point = {**dict(zip(axes, combination)), **own}  # grid axes first: they tell the runs apart
            parameters = {**base, **point, **forced}
            rid = run_id(notebook, point, parameters)
            if rid in seen:
                raise GridError(f"{where}: same notebook and parameters as run #{seen[rid]} ({rid})")
            seen[rid] = number
            runs.append(Run(notebook, path, parameters, rid, output / "runs" / rid,
                            output / "cache" if "cache_dir" in declared else None))
    for kind, given, used in (("defaults", defaults, used_defaults), ("overrides", overrides, used_overrides)):
        unused = [k for k in given if k not in used]
        if unused:
            raise GridError(f"{name}: {kind} parameter {unused[0]!r} is not a parameter of any notebook in the grid"
                            + (" (it is set by the runner)" if unused[0] in RESERVED_PARAMETERS else ""))
    return Grid(name=name, description=str(spec.get("description") or ""), output=output,
                notebooks_dir=notebooks_dir, workers=workers, runs=tuple(runs))


def load_grid(path: str | Path, **options: Any) -> Grid:
    """Read a grid YAML file and validate it (`parse_grid`'s keyword options apply)."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise GridError(f"cannot read grid file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise GridError(f"{path}: not valid YAML: {exc}") from None
    return parse_grid(spec, name=str(path), **options)


# ---------------------------------------------------------------------------------------------
# One run (on a Dask worker)


def _uses_this_python(argv: list[str]) -> bool:
    """Whether a kernel spec's command runs `sys.executable`'s environment.

    jupyter_client replaces a bare ``python``/``python3`` by `sys.executable`; otherwise the
    executable must sit in the same ``bin`` folder (symlinks are not resolved: a venv's python
    is a link to the system one).
    """
    if not argv:
        return False
    bare = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
    if argv[0] in bare:
        return True
    return os.path.dirname(os.path.abspath(argv[0])) == os.path.dirname(os.path.abspath(sys.executable))


@functools.cache
def ensure_kernel() -> str:
    """A Jupyter kernel name that runs this interpreter: ``python3`` if it does, else `KERNEL_NAME`,
    installed into ``sys.prefix`` (``share/jupyter/kernels``) on first use."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    for name in ("python3", KERNEL_NAME):
        try:
            if _uses_this_python(manager.get_kernel_spec(name).argv):
                return name
        except NoSuchKernel:
            continue
    from ipykernel.kernelspec import install

    install(manager, kernel_name=KERNEL_NAME, display_name="Python 3 (piggylab)", prefix=sys.prefix)
    if not _uses_this_python(manager.get_kernel_spec(KERNEL_NAME).argv):
        raise RuntimeError(f"a kernel spec named {KERNEL_NAME!r} elsewhere on the Jupyter path runs another Python; "
                           f"remove it (jupyter kernelspec remove {KERNEL_NAME})")
    return KERNEL_NAME


def _error_text(exc: BaseException) -> tuple[str, str]:
    """(one line, full text) for a failed run; a notebook error shows the cell's traceback."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        summary = f"{exc.ename}: {exc.evalue} (cell {exc.exec_count})"
        return summary, summary + "\n\n" + _ANSI.sub("", "\n".join(exc.traceback)) + "\n"
    summary = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return summary, "".join(traceback.format_exception(exc))


def record_failure(run: Run, summary: str, details: str, seconds: float = 0.0) -> RunOutcome:
    """Mark a run failed: ``error.txt``, ``run.json``, and no ``metrics.json`` left behind."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    if (run.run_dir / "metrics.json").exists():
        (run.run_dir / "metrics.json").replace(run.run_dir / "metrics.failed.json")
    atomic_write_text(run.run_dir / "error.txt", details if details.strip() else summary + "\n")
    info = json.loads((run.run_dir / "run.json").read_text()) if (run.run_dir / "run.json").exists() else {}
    write_json(run.run_dir / "run.json", {**_run_info(run), **info, "status": "failed", "error": summary,
                                           "seconds": round(seconds, 2), "finished": _now()})
    return RunOutcome(run.run_id, run.notebook, "failed", seconds, summary)


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _run_info(run: Run) -> dict[str, Any]:
    return {"run_id": run.run_id, "notebook": run.notebook, "notebook_path": str(run.notebook_path),
            "parameters": run.injected}


def execute_run(run: Run) -> RunOutcome:
    """Execute one run with papermill into its folder (the function Dask workers call).

    Never raises for a notebook problem: a failure is recorded (`record_failure`) and returned.
    The notebook runs with its own folder as working directory, as in JupyterLab.
    """
    import papermill

    run.run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("error.txt", "metrics.failed.json"):
        (run.run_dir / stale).unlink(missing_ok=True)
    write_json(run.run_dir / "run.json", {**_run_info(run), "status": "running", "started": _now(),
                                           "host": socket.gethostname()})
    start = time.perf_counter()
    try:
        # A fresh context: jupyter_core keeps its event loop in a context variable, and Dask's
        # in-process workers copy one context into every thread, so two runs would share a loop.
        contextvars.Context().run(
            papermill.execute_notebook, str(run.notebook_path), str(run.run_dir / "executed.ipynb"),
            parameters=run.injected, kernel_name=ensure_kernel(), language="python",
            cwd=str(run.notebook_path.parent), progress_bar=False, extra_arguments=KERNEL_ARGUMENTS)
    except Exception as exc:  # a failed run is recorded, never raised: the batch goes on
        return record_failure(run, *_error_text(exc), time.perf_counter() - start)
    seconds = time.perf_counter() - start
    if not run.done:
        problem = "the notebook finished but wrote no metrics.json into output_dir"
        return record_failure(run, problem, problem, seconds)
    try:
        read_metrics(run.run_dir / "metrics.json")
    except MetricsError as exc:
        return record_failure(run, str(exc), str(exc), seconds)
    info = json.loads((run.run_dir / "run.json").read_text())
    write_json(run.run_dir / "run.json", {**info, "status": "ok", "seconds": round(seconds, 2), "finished": _now()})
    return RunOutcome(run.run_id, run.notebook, "ok", seconds)


# ---------------------------------------------------------------------------------------------
# The batch (on the client)


def _has_dashboard() -> bool:
    """Dask serves its dashboard only when bokeh is installed."""
    return importlib.util.find_spec("bokeh") is not None


@contextlib.contextmanager
def dask_client(scheduler: str = "local", workers: int = 2) -> Iterator[Any]:
    """A `distributed.Client`: on a new LocalCluster (`local`: `workers` processes, one thread
    each, BLAS/OpenMP threads = cores // workers; `local-threads`: threads in this process) or
    connected to a running scheduler at the address `scheduler` (e.g. ``tcp://gpu-node:8786``)."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler not in LOCAL_SCHEDULERS:
        with Client(scheduler, timeout="30s") as client:
            yield client
        return
    processes = scheduler == "local"
    options: dict[str, Any] = {}
    if processes:
        threads = max(1, (os.cpu_count() or 1) // workers)
        options["env"] = {name: str(threads) for name in THREAD_VARIABLES}
    dashboard = ":0" if _has_dashboard() else None
    nanny_log = logging.getLogger("distributed.nanny")
    level = nanny_log.level
    try:
        with dask.config.set(LOCAL_WORKER_CONFIG), LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=processes, dashboard_address=dashboard,
                **options) as cluster:
            with Client(cluster) as client:
                yield client
            # The work is done: a worker process slow to exit on a loaded machine is killed, quietly.
            nanny_log.setLevel(logging.ERROR)
    finally:
        nanny_log.setLevel(level)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="run", desc="runs", file=sys.stderr, dynamic_ncols=True)


def lock_holder(output: Path) -> dict[str, Any] | None:
    """What the batch holding `output` (or the last one, if it was killed) wrote beside the
    lock: ``pid``, ``host``, ``started``; None if nothing is there."""
    try:
        return json.loads((output / HOLDER_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _holder_text(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "another batch (it has not written its process id yet)"
    return f"the batch of process {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"


def _process_gone(holder: dict[str, Any] | None) -> bool:
    """Whether the holder's process ran on this host and no longer exists."""
    if holder is None or holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, KeyError, TypeError, ValueError):  # alive but not ours, or an unreadable record
        return False
    return False


@contextlib.contextmanager
def batch_lock(output: Path, log: Any = print) -> Iterator[None]:
    """Hold the output folder `output` for one batch: its ``batch.lock`` (a `filelock.FileLock`,
    which the OS releases when its holder dies) and, beside it, ``batch.lock.json`` naming this
    process (written atomically, removed at the end).

    Raises `BatchBusy`, naming the holder's process id, host and start time, when another batch
    holds the folder. A lock whose holder was killed is free: it is taken over, and `log` says
    which batch left it.
    """
    from filelock import FileLock, Timeout

    output.mkdir(parents=True, exist_ok=True)
    lock = FileLock(output / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = lock_holder(output)
        gone = " (that process is gone, but a process it started still holds the lock)" if _process_gone(holder) else ""
        raise BatchBusy(f"{output} is in use by {_holder_text(holder)}{gone}; wait for it to finish (or stop it), "
                        "or give this batch another output folder") from None
    try:
        stale = lock_holder(output)
        if stale is not None:
            log(f"taking over {output}: its lock was left by {_holder_text(stale)}, which ended without "
                "releasing it (killed?)")
        write_json(output / HOLDER_FILE, {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()})
        yield
    finally:
        (output / HOLDER_FILE).unlink(missing_ok=True)
        lock.release()


def run_batch(grid: Grid | str | Path, *, scheduler: str = "local", workers: int | None = None,
              progress: bool = True, report: bool = True) -> BatchResult:
    """Run every unfinished run of the grid on Dask, then write ``results.csv`` and ``report.html``.

    `grid` is a `Grid` or a grid file's path; `workers` replaces the grid's (LocalCluster only).
    Runs whose ``metrics.json`` exists are skipped; a failing run is recorded and the batch goes
    on. Prints one line per finished run and a progress bar to stderr when `progress`. The batch
    holds the output folder throughout (`batch_lock`): raises `BatchBusy` if another batch does.
    """
    if not isinstance(grid, Grid):
        grid = load_grid(grid)
    log = functools.partial(print, file=sys.stderr) if progress else (lambda *_: None)
    with batch_lock(grid.output, log):
        return _run_grid(grid, scheduler, workers or grid.workers, progress, report, log)


def _run_grid(grid: Grid, scheduler: str, workers: int, progress: bool, report: bool, log: Any) -> BatchResult:
    """`run_batch`'s work, done while it holds the output folder."""
    from distributed import as_completed

    earlier = json.loads((grid.output / "batch.json").read_text()).get("runs", []) \
        if (grid.output / "batch.json").exists() else []
    write_json(grid.output / "batch.json", {"name": grid.name, "description": grid.description, "updated": _now(),
                                             "runs": list(dict.fromkeys([*earlier, *(r.run_id for r in grid.runs)]))})
    outcomes = {r.run_id: RunOutcome(r.run_id, r.notebook, "skipped") for r in grid.runs if r.done}
    pending = [r for r in grid.runs if not r.done]
    log(f"{len(grid.runs)} runs in {grid.name}: {len(outcomes)} already done, {len(pending)} to run -> {grid.output}")
    if pending:
        with dask_client(scheduler, workers) as client:
            if _has_dashboard():
                log(f"Dask dashboard: {client.dashboard_link}")
            futures = {client.submit(execute_run, run, pure=False): run for run in pending}
            with _progress(len(pending), progress) as bar:
                for future in as_completed(futures):
                    run = futures[future]
                    try:
                        outcome = future.result()
                    except Exception as exc:  # the worker itself died (memory, a crash): record and go on
                        outcome = record_failure(run, *_error_text(exc))
                    outcomes[run.run_id] = outcome
                    detail = f"{outcome.seconds:.1f}s" if outcome.status == "ok" else \
                        f"{outcome.error}  (see {run.run_dir / 'error.txt'})"
                    if progress:
                        bar.write(f"{outcome.status:>6}  {run.run_id}  {detail}", file=sys.stderr)
                    bar.update()
                    bar.set_postfix(failed=sum(o.status == "failed" for o in outcomes.values()))
    result = BatchResult(outcomes=[outcomes[r.run_id] for r in grid.runs])
    if report:
        result.report = build_report(grid.output)
        result.results_csv = grid.output / "results.csv"
    return result
