"""What every lab notebook shares: its parameters checked, its sizes, its run function, its outputs.

A notebook's set-up is three lines::

    lab = pl.Lab("01_quickstart", globals(), {"task": TASKS})   # checks, sizes, prints
    net = lab.network()                                         # the backbone, wrapped
    data = lab.data(task)                                       # the task's splits

`Lab` checks the parameters every notebook shares (`PARAMETER_RULES`) and the notebook's own,
stopping with `ParameterError` naming the parameter and what it accepts; resolves the data
size, epochs and batch size; makes the training configs of its recipe (`Lab.spec`); trains
runs through `piggylab.experiments.run` with the batch's run cache (`cache_dir`), each
checkpointed in ``output_dir/checkpoints`` until it finishes (a killed notebook, run again,
resumes its unfinished run from its last epoch); and writes
its outputs into `output_dir`: `Lab.table` (CSV), `Lab.show` (HTML figures), `Lab.learned` (the "What we learned"
cell: the paper's claims checked on the notebook's rows, `piggylab.claims`, and its findings,
`piggylab.findings`) and `Lab.finish` (metrics.json), the files the batch runner collects::

    {"notebook": "01_quickstart", "parameters": {...},
     "results": [{"task": "greek", "method": "piggyback", "label": ..., "accuracy": 0.91, ...}, ...],
     "timings": {"total_s": 12.3, ...}, "environment": {...}}

Files are written atomically (`piggylab.io`). This module trains nothing itself.
"""

from __future__ import annotations

import json
import math
import platform
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from .backbones import load_backbone
from .cache import RunCache
from .datasets import TaskData, load_data
from .experiments import RECIPES, RunResult, RunSpec, compare, resolve_sizes, run, train_config
from .io import atomic_write_bytes
from .masked import MaskConfig
from .piggyback import PiggybackNet
from .train import TrainConfig, resolve_device


class ParameterError(ValueError):
    """A notebook parameter of the wrong type or with a value that is not allowed."""


def check_parameters(values: Mapping[str, Any], allowed: Mapping[str, Any]) -> None:
    """Check notebook parameters; raise `ParameterError` naming the parameter and what is allowed.

    `allowed` maps a name to a type (``int``, ``float``, ``str``, ``bool``, ``list``), a tuple
    of types, a set/list/tuple of allowed *values* (strings, numbers) or a callable returning
    True for good values, e.g. ``{"epochs": int, "mask_kind": {"binary", "ternary"}}``.
    A float parameter accepts ints; no numeric parameter accepts a bool or NaN.
    """
    for name, rule in allowed.items():
        if name not in values:
            raise ParameterError(f"parameter {name!r} is missing")
        value = values[name]
        if isinstance(rule, type) or (isinstance(rule, tuple) and all(isinstance(r, type) for r in rule)):
            types = rule if isinstance(rule, tuple) else (rule,)
            if float in types:
                types = (*types, int)
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = isinstance(value, types) and not (bool not in types and isinstance(value, bool))
            if ok and numeric and isinstance(value, float) and math.isnan(value):
                ok = False
            if not ok:
                names = " or ".join(t.__name__ for t in (rule if isinstance(rule, tuple) else (rule,)))
                raise ParameterError(f"parameter {name!r} must be {names}, got {value!r} ({type(value).__name__})")
        elif callable(rule):
            if not rule(value):
                raise ParameterError(f"parameter {name!r} has a value that is not allowed: {value!r} "
                                     f"({getattr(rule, '__doc__', None) or 'see the notebook'})")
        else:
            choices = list(rule)
            values_to_check = value if isinstance(value, (list, tuple)) else [value]
            bad = [v for v in values_to_check if v not in choices]
            if bad:
                raise ParameterError(f"parameter {name!r} has unknown value {bad[0]!r}; allowed: {', '.join(map(str, choices))}")


def environment() -> dict[str, str]:
    """Versions and device of this run, for metrics.json."""
    import torch

    from . import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "piggylab": __version__,
            "platform": platform.platform(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "threads": str(torch.get_num_threads())}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def write_metrics(output_dir: str | Path, notebook: str, parameters: Mapping[str, Any],
                  results: pd.DataFrame | Iterable[Mapping[str, Any]], timings: Mapping[str, float]) -> Path:
    """Write metrics.json; `results` rows must each name a `task` and a `method`."""
    rows = results.to_dict("records") if isinstance(results, pd.DataFrame) else [dict(r) for r in results]
    missing = [r for r in rows if "task" not in r or "method" not in r]
    if missing:
        raise ValueError(f"every result row needs 'task' and 'method': {missing[0]}")
    document = {"notebook": notebook, "parameters": parameters, "results": rows, "timings": timings,
                "environment": environment()}
    text = json.dumps(_jsonable(document), indent=2, allow_nan=False)
    return atomic_write_bytes(Path(output_dir) / "metrics.json", text.encode())


def write_table(table: pd.DataFrame, output_dir: str | Path, name: str) -> Path:
    """Write a table as `<name>.csv` in `output_dir`."""
    return atomic_write_bytes(Path(output_dir) / f"{name}.csv", table.to_csv(index=False).encode())


def write_figure(figure, output_dir: str | Path, name: str) -> Path:
    """Write a plotly figure as standalone `<name>.html` (plotly.js once, beside it: works offline)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    html = figure.to_html(include_plotlyjs="directory", full_html=True)
    if not (output_dir / "plotly.min.js").exists():
        from plotly.offline import get_plotlyjs

        atomic_write_bytes(output_dir / "plotly.min.js", get_plotlyjs().encode())
    return atomic_write_bytes(output_dir / f"{name}.html", html.encode())


# -- the parameters every notebook shares ---------------------------------------------------------

def positive_int(value: Any) -> bool:
    """an integer >= 1"""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def count(value: Any) -> bool:
    """an integer >= 0"""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def positive_number(value: Any) -> bool:
    """a number > 0"""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and value == value


def fraction(value: Any) -> bool:
    """a number in (0, 1]"""
    return positive_number(value) and value <= 1


def prune_fraction(value: Any) -> bool:
    """a number in [0, 1)"""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1


def known_backbone(value: Any) -> bool:
    """'tiny' or a torchvision classifier name such as 'resnet50', 'vgg16', 'densenet121'"""
    import torchvision

    return isinstance(value, str) and (value == "tiny" or value in torchvision.models.list_models(module=torchvision.models))


def known_device(value: Any) -> bool:
    """'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps'"""
    return isinstance(value, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value) is not None


def optional(rule: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """`rule`, or None."""

    def check(value: Any) -> bool:
        return value is None or rule(value)

    check.__doc__ = f"{rule.__doc__}, or None"
    return check


def optional_str(value: Any) -> bool:
    """a string, or None"""
    return value is None or isinstance(value, str)


def list_of(choices: Iterable[str], *, empty: bool = False) -> Callable[[Any], bool]:
    """A rule for a list of distinct values out of `choices` (non-empty unless `empty`)."""
    choices = tuple(choices)

    def check(value: Any) -> bool:
        return isinstance(value, list) and (empty or len(value) > 0) and len(set(value)) == len(value) \
            and all(v in choices for v in value)

    check.__doc__ = f"a{' ' if empty else ' non-empty '}list of distinct values out of {', '.join(map(repr, choices))}"
    return check


def positive_numbers(value: Any) -> bool:
    """a non-empty list of numbers > 0"""
    return isinstance(value, list) and len(value) > 0 and all(positive_number(v) for v in value)


PARAMETER_RULES: dict[str, Any] = {
    "backbone": known_backbone, "weights": optional_str, "weights_path": optional_str, "data_root": optional_str,
    "data_scale": optional(fraction), "recipe": RECIPES, "epochs": optional(positive_int),
    "batch_size": optional(positive_int), "device": known_device, "seed": int, "smoke": bool, "output_dir": str,
    "cache_dir": optional_str,
}
"""Rules for the parameters every notebook shares (see `check_parameters`)."""


# -- one notebook run ----------------------------------------------------------------------------

class Lab:
    """One run of a lab notebook; see the module docstring.

    `namespace` is the notebook's ``globals()`` after its parameters cell; `rules` its own
    parameters' rules, checked with the shared `PARAMETER_RULES` (``shared=False``: only
    `smoke` and `output_dir` are shared, for notebooks that train no target task, such as the
    backbone's pretraining). Attributes: `parameters` (the checked values), `smoke`, `seed`,
    `device`, `output_dir` and, for shared notebooks, `recipe`, `data_scale`, `epochs`,
    `batch_size` and `cache` (a `RunCache` in `cache_dir`, or None).
    """

    def __init__(self, name: str, namespace: Mapping[str, Any], rules: Mapping[str, Any] | None = None, *,
                 shared: bool = True) -> None:
        rules = {**(PARAMETER_RULES if shared else {"smoke": bool, "output_dir": str}), **(rules or {})}
        check_parameters(namespace, rules)
        self.name = name
        self.parameters = {key: namespace[key] for key in rules}
        p = self.parameters
        self.smoke, self.output_dir = p["smoke"], Path(p["output_dir"])
        self.seed, self.device = p.get("seed", 0), p.get("device", "auto")
        self.started = time.perf_counter()
        self._backbone: nn.Module | None = None
        self.cache: RunCache | None = None
        if not shared:
            return
        self.recipe = p["recipe"]
        self.data_scale, self.epochs, self.batch_size = resolve_sizes(
            p["recipe"], smoke=p["smoke"], data_scale=p["data_scale"], epochs=p["epochs"], batch_size=p["batch_size"],
            embedded=p["data_root"] is None)
        self.cache = RunCache(p["cache_dir"]) if p["cache_dir"] else None
        print(f"{p['backbone']} backbone, recipe {p['recipe']}: data_scale {self.data_scale}, {self.epochs} epochs, "
              f"batch size {self.batch_size}, on {resolve_device(self.device)}"
              + (f"; finished runs are reused from {p['cache_dir']}" if self.cache else ""))

    # -- what the notebook runs on -----------------------------------------------------------
    def backbone(self) -> nn.Module:
        """The `backbone` parameter's model with its `weights` (loaded once)."""
        if self._backbone is None:
            p = self.parameters
            self._backbone = load_backbone(p["backbone"], p["weights"], weights_path=p["weights_path"])
        return self._backbone

    def network(self) -> PiggybackNet:
        """A new `PiggybackNet` over the backbone."""
        return PiggybackNet(self.backbone(), backbone_name=self.parameters["backbone"])

    def data(self, task: str) -> TaskData:
        """The task's splits: embedded (generated) or, with `data_root`, a paper dataset."""
        return load_data(task, root=self.parameters["data_root"], seed=self.seed, scale=self.data_scale)

    def config(self, method: str, **overrides: Any) -> TrainConfig:
        """The recipe's `TrainConfig` of `method`, at the notebook's epochs, device and seed."""
        return train_config(method, self.recipe, **{"epochs": self.epochs, "device": self.device, "seed": self.seed,
                                                    **overrides})

    def spec(self, method: str, *, label: str | None = None, mask: MaskConfig | None = None,
             bn_mode: str | None = None, **overrides: Any) -> RunSpec:
        """A `RunSpec` of `method` by the recipe (`config`), with its mask and BN mode (piggyback
        and classifier-only: the backbone's frozen BN unless `bn_mode` is ``task``)."""
        if bn_mode is None and method != "finetune":
            bn_mode = "frozen"
        return RunSpec(self.config(method, bn_mode=bn_mode, **overrides), mask or MaskConfig(), label)

    @property
    def checkpoints(self) -> Path:
        """Where the notebook's runs keep their checkpoints: ``output_dir/checkpoints``."""
        return self.output_dir / "checkpoints"

    def run(self, net: PiggybackNet, data: TaskData, spec: RunSpec, **options: Any) -> RunResult:
        """`piggylab.experiments.run` with the notebook's batch size, the batch's cache and a
        checkpoint in `checkpoints` (a killed run resumes from its last epoch)."""
        return run(net, data, spec, batch_size=self.batch_size, cache=self.cache, checkpoint_dir=self.checkpoints,
                   **options)

    def compare(self, net: PiggybackNet, data: TaskData, specs: Sequence[RunSpec], **options: Any
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """`piggylab.experiments.compare` with the notebook's batch size, the batch's cache and
        checkpoints in `checkpoints`."""
        return compare(net, data, specs, batch_size=self.batch_size, cache=self.cache,
                       checkpoint_dir=self.checkpoints, **options)

    # -- what it writes ----------------------------------------------------------------------
    def show(self, figure: Any, name: str) -> None:
        """Display a plotly figure and write it as `output_dir/<name>.html`."""
        write_figure(figure, self.output_dir, name)
        figure.show()

    def table(self, frame: pd.DataFrame, name: str) -> pd.DataFrame:
        """Write a table as `output_dir/<name>.csv` and return it (the cell then displays it)."""
        write_table(frame, self.output_dir, name)
        return frame

    def learned(self, results: pd.DataFrame, claims: Sequence[str] = (), findings: Sequence[str] = ()) -> list[str]:
        """Display "What we learned": the paper's `claims` (ids, C1...) checked on this notebook's
        `results` by `piggylab.claims`, the functions behind the batch's claims table, then the
        notebook's own `findings` (sentences from `piggylab.findings`). Returns the lines shown."""
        from IPython.display import Markdown, display

        from .claims import lines as claim_lines

        shown = claim_lines(results, claims) + list(findings)
        prefix = ["*Smoke run: tiny data and one epoch, so these numbers only show that everything runs.*"] \
            if self.smoke else []
        if claims:
            prefix.append("The paper's claims, checked on this notebook's runs (the batch report checks them on "
                          "all of a batch's runs):")
        display(Markdown("\n".join(prefix + [f"- {line}" for line in shown])))
        return shown

    def finish(self, results: pd.DataFrame, **timings: float) -> Path:
        """Write metrics.json (`results`' rows, this run's parameters and timings)."""
        timings = {"total_s": time.perf_counter() - self.started,
                   "train_s": float(results["train_s"].sum()) if "train_s" in results else 0.0, **timings}
        path = write_metrics(self.output_dir, self.name, self.parameters, results, timings)
        print(f"{timings['total_s']:.0f} s in all; metrics, tables and figures are in {self.output_dir}")
        return path
