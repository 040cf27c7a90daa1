"""What a notebook run leaves behind: checked parameters, metrics.json, CSV tables, HTML figures.

Every lab notebook validates its parameters with `check_parameters` in its first cells and
writes its outputs with the `write_*` functions into its `output_dir`, which is what the batch
runner (`piggylab.batch`) collects. metrics.json has the shape::

    {"notebook": "01_quickstart", "parameters": {...},
     "results": [{"task": "greek", "method": "piggyback", "accuracy": 0.91, ...}, ...],
     "timings": {"total_s": 12.3, ...}, "environment": {...}}

Files are written atomically (temporary file, then rename). This module runs nothing.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .storage import atomic_write_bytes


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
