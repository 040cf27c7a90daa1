"""Collect a batch's `metrics.json` files into `results.csv` and a self-contained `report.html`.

The input is a batch output folder as `piggylab.batch` writes it::

    OUTPUT/batch.json               the grid's run ids and description (optional)
    OUTPUT/runs/RUN_ID/run.json     what was run: notebook, parameters, status, seconds
    OUTPUT/runs/RUN_ID/metrics.json the notebook's results (present only for a finished run)
    OUTPUT/runs/RUN_ID/error.txt    why the run failed (present only for a failed run)

The report opens with the claims table (`piggylab.claims`, also written as ``claims.csv``),
then has tables (pandas) and plotly figures per notebook (accuracy per task and
method, sparsity per task, storage per method on a log scale), the failed and unfinished
runs, and every run's parameters. plotly.js is inlined once in the page, so it opens from
disk in a browser with no server and no network. This module neither runs notebooks nor
knows about Dask: that is `piggylab.batch`.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from .io import atomic_write_text

BASE_COLUMNS = ["run_id", "notebook", "task", "method", "accuracy", "sparsity", "storage_bytes"]
"""The first columns of `results.csv`; result fields a notebook adds follow, then `param.NAME`."""

PARAM_PREFIX = "param."
OUTPUT_SUFFIXES = (".csv", ".html", ".json")
"""What a run's folder lists in the report: the notebook's tables, figures and metrics."""
AVERAGED_OVER = {"seed", "output_dir", "device"}
"""Parameters whose different values are repetitions of one configuration, not variants of it."""


class MetricsError(ValueError):
    """A `metrics.json` that does not follow the lab's schema."""


@dataclass(frozen=True)
class Collected:
    """Everything a batch produced: one row per result (`results`) and one per run (`runs`)."""

    results: pd.DataFrame
    runs: pd.DataFrame


def read_metrics(path: str | Path) -> dict[str, Any]:
    """Load and check a notebook's `metrics.json`: a mapping whose `results` is a list of
    mappings that each have `task` and `method` (and an `accuracy` in [0, 1] when present)."""
    path = Path(path)
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MetricsError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("results"), list):
        raise MetricsError(f"{path}: expected an object with a 'results' list")
    for i, row in enumerate(metrics["results"]):
        if not isinstance(row, dict) or "task" not in row or "method" not in row:
            raise MetricsError(f"{path}: results[{i}] needs 'task' and 'method'")
        accuracy = row.get("accuracy")
        if accuracy is not None and not (isinstance(accuracy, (int, float)) and 0 <= accuracy <= 1):
            raise MetricsError(f"{path}: results[{i}].accuracy must be a number in [0, 1], got {accuracy!r}")
    return metrics


def _cell_value(value: Any) -> Any:
    """Parameters as CSV cells: lists and mappings become JSON text."""
    return json.dumps(value) if isinstance(value, (list, dict, tuple)) else value


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _first_error_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "failed"


def collect(output: str | Path) -> Collected:
    """Read every run folder under `output/runs` (only the grid's runs when `batch.json` lists them).

    A run is `ok` when it has a valid `metrics.json`, `failed` when it has an `error.txt` or an
    invalid `metrics.json`, `incomplete` when it started but neither finished nor failed (an
    interrupted batch), and `pending` when `batch.json` lists it but it never started.
    """
    output = Path(output)
    batch = _read_json(output / "batch.json")
    run_ids = batch.get("runs") or sorted(p.name for p in (output / "runs").glob("*") if p.is_dir())
    result_rows, run_rows = [], []
    for run_id in run_ids:
        run_dir = output / "runs" / run_id
        info = _read_json(run_dir / "run.json")
        notebook = info.get("notebook", run_id.split("-")[0])
        parameters = {k: v for k, v in (info.get("parameters") or {}).items() if k != "output_dir"}
        outputs = sorted(p.name for p in run_dir.glob("*") if p.suffix in OUTPUT_SUFFIXES) if run_dir.is_dir() else []
        row = {"run_id": run_id, "notebook": notebook, "status": "pending", "seconds": info.get("seconds"),
               "error": "", "parameters": parameters, "path": f"runs/{run_id}", "outputs": outputs}
        if (run_dir / "metrics.json").exists():
            try:
                metrics = read_metrics(run_dir / "metrics.json")
            except MetricsError as exc:
                row.update(status="failed", error=str(exc))
            else:
                row["status"] = "ok"
                all_parameters = {**parameters, **{k: v for k, v in (metrics.get("parameters") or {}).items()
                                                   if k != "output_dir"}}
                row["environment"] = metrics.get("environment") or {}
                for result in metrics["results"]:
                    result_rows.append({"run_id": run_id, "notebook": metrics.get("notebook", notebook), **result,
                                        **{PARAM_PREFIX + k: _cell_value(v) for k, v in sorted(all_parameters.items())}})
        elif (run_dir / "error.txt").exists():
            row.update(status="failed", error=_first_error_line((run_dir / "error.txt").read_text()))
        elif run_dir.exists():
            row["status"] = "incomplete"
        run_rows.append(row)
    results = pd.DataFrame(result_rows)
    extra = [c for c in results.columns if c not in BASE_COLUMNS and not c.startswith(PARAM_PREFIX)]
    params = sorted(c for c in results.columns if c.startswith(PARAM_PREFIX))
    results = results.reindex(columns=BASE_COLUMNS + extra + params)
    return Collected(results=results, runs=pd.DataFrame(run_rows, columns=[
        "run_id", "notebook", "status", "seconds", "error", "parameters", "path", "outputs", "environment"]))


# ---------------------------------------------------------------------------------------------
# HTML


def _fmt(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if column == "seconds" or column.endswith("_s"):
        return f"{value:,.1f}"
    if "bytes" in column:
        return f"{value:,.0f}"
    if isinstance(value, int) or float(value).is_integer():
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:g}"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"


def _table(frame: pd.DataFrame, *, raw_html: Mapping[str, list[str]] | None = None) -> str:
    """An HTML table; cells are escaped except the columns given in `raw_html` (already HTML)."""
    raw_html = raw_html or {}
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for i, (_, row) in enumerate(frame.iterrows()):
        cells = [raw_html[c][i] if c in raw_html else html.escape(_fmt(str(c), row[c])) for c in frame.columns]
        body.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
            "</div>")


def _labels(frame: pd.DataFrame) -> pd.Series:
    """Each row's label in the report: its `label` (its `method` where it has none), plus the
    parameters that take several values for one task (seeds and the like excluded: those are
    averaged over), e.g. ``piggyback (scale=0.01)``. A parameter that only picks the task
    (``task=greek``) is left out: the task is already on the axis. Rows with one label are
    averaged in the report, so a run repeating a (task, label) gets ``#2``..."""
    varying = [c for c in frame.columns if c.startswith(PARAM_PREFIX) and c[len(PARAM_PREFIX):] not in AVERAGED_OVER
               and (frame[c].astype(str).groupby(frame["task"]).nunique() > 1).any()]
    label = frame["method"].astype(str)
    if "label" in frame:
        label = frame["label"].where(frame["label"].notna(), label).astype(str)
    if varying:
        suffix = frame[varying].astype(str).apply(
            lambda row: ", ".join(f"{c[len(PARAM_PREFIX):]}={v}" for c, v in row.items()), axis=1)
        label = label + " (" + suffix + ")"
    # (task, label) names a row within a run; should a run repeat one, its rows stay apart.
    repeat = label.groupby([frame["run_id"], frame["task"], label], sort=False).cumcount()
    return label.where(repeat == 0, label + " #" + (repeat + 1).astype(str))


def _summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean of every numeric result per task, method and label, the accuracy's spread and the run count."""
    numeric = [c for c in frame.columns if c not in BASE_COLUMNS[:4] and not c.startswith(PARAM_PREFIX)
               and c != "label" and pd.api.types.is_numeric_dtype(frame[c]) and frame[c].notna().any()]
    groups = frame.groupby(["task", "method", "label"], sort=False)
    summary = groups[numeric].mean() if numeric else pd.DataFrame(index=groups.size().index)
    if "accuracy" in numeric:
        summary.insert(numeric.index("accuracy") + 1, "accuracy_std", groups["accuracy"].std().fillna(0.0))
    summary["runs"] = groups["run_id"].nunique()
    return summary.reset_index()


def _figures(notebook: str, summary: pd.DataFrame) -> list[go.Figure]:
    """Accuracy per task and method, sparsity per task, storage per method (log scale)."""
    figures = []
    bars = {"x": "task", "color": "label", "barmode": "group"}
    if "accuracy" in summary and summary["accuracy"].notna().any():
        error = "accuracy_std" if (summary["runs"] > 1).any() else None
        fig = px.bar(summary, y="accuracy", error_y=error, title=f"{notebook}: test accuracy per task and method", **bars)
        fig.update_yaxes(range=[0, 1])
        figures.append(fig)
    if "sparsity" in summary and summary["sparsity"].notna().any():
        fig = px.bar(summary.dropna(subset=["sparsity"]), y="sparsity", title=f"{notebook}: mask sparsity per task "
                     "(fraction of zeros)", **bars)
        fig.update_yaxes(rangemode="tozero")
        figures.append(fig)
    stored = summary[summary["storage_bytes"] > 0] if "storage_bytes" in summary else summary.iloc[:0]
    if not stored.empty:
        fig = px.bar(stored, x="label", y="storage_bytes", color="task", barmode="group", log_y=True,
                     labels={"storage_bytes": "bytes per task"},
                     title=f"{notebook}: storage per task and method (log scale)")
        # Bars start at a power of ten below the smallest, so near-equal sizes look near-equal.
        low, high = math.log10(stored["storage_bytes"].min()), math.log10(stored["storage_bytes"].max())
        fig.update_yaxes(range=[math.floor(low - 0.1), high + 0.1])
        figures.append(fig)
    for fig in figures:
        fig.update_layout(height=420, margin={"t": 60, "b": 40})
    return figures


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td { white-space: nowrap; }
.scroll { overflow-x: auto; }
.failed { color: #b00020; } .ok { color: #1b7e3c; }
.shown-yes { color: #1b7e3c; font-weight: bold; } .shown-no { color: #b00020; font-weight: bold; }
.shown-not-run { color: #777; }
#claims + p + .scroll td { white-space: normal; }
code, pre { font-size: 0.85rem; }
"""


def _html_page(title: str, sections: list[str]) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{_CSS}</style>\n"
            f'<script type="text/javascript">{get_plotlyjs()}</script>\n'
            f"</head>\n<body>\n<h1>{html.escape(title)}</h1>\n" + "\n".join(sections) + "\n</body>\n</html>\n")


def _link(href: str, text: str) -> str:
    return f'<a href="{html.escape(href)}">{html.escape(text)}</a>'


def _failures_section(runs: pd.DataFrame) -> str:
    bad = runs[runs["status"] != "ok"].reset_index(drop=True)
    if bad.empty:
        return '<h2>Failures</h2>\n<p class="ok">No failed or unfinished runs.</p>'
    links = [" ".join(_link(f"{path}/{name}", name) for name in ("executed.ipynb", "error.txt"))
             if status == "failed" else "" for path, status in zip(bad["path"], bad["status"])]
    table = bad[["run_id", "notebook", "status", "error"]].assign(files="")
    return ('<h2 class="failed">Failures</h2>\n<p>Failed runs keep their partly executed notebook and an '
            "<code>error.txt</code>; rerunning the batch retries them and every unfinished run.</p>\n"
            + _table(table, raw_html={"files": links}))


def _runs_section(runs: pd.DataFrame) -> str:
    table = pd.DataFrame({
        "run_id": runs["run_id"], "notebook": runs["notebook"], "status": runs["status"],
        "seconds": runs["seconds"],
        "parameters": [", ".join(f"{k}={v}" for k, v in p.items()) for p in runs["parameters"]],
    })
    links = [_link(f"{path}/executed.ipynb", run_id) for path, run_id in zip(runs["path"], runs["run_id"])]
    outputs = [" ".join(_link(f"{path}/{name}", name) for name in names) for path, names in zip(runs["path"], runs["outputs"])]
    return ("<details><summary><h2 style='display:inline'>All runs</h2></summary>\n"
            "<p>Each run's executed notebook, and the tables and figures it wrote.</p>\n"
            + _table(table.assign(outputs=""), raw_html={"run_id": links, "outputs": outputs}) + "</details>")


def _environment_section(runs: pd.DataFrame) -> str:
    environments = [env for env in runs.get("environment", []) if isinstance(env, dict) and env]
    if not environments:
        return ""
    env = pd.DataFrame([{"field": k, "value": _cell_value(v)} for k, v in environments[0].items()])
    return "<h2>Environment</h2>\n<p>As recorded by the first finished run.</p>\n" + _table(env)


def _claims_section(claims: pd.DataFrame) -> str:
    """The claims table (`piggylab.claims`), the report's first section."""
    shown = claims.assign(shown=[f'<span class="shown-{s.replace(" ", "-")}">{html.escape(s)}</span>'
                                 for s in claims["shown"]])
    return ("<h2 id=\"claims\">The paper's claims</h2>\n<p>Each claim of the paper checked against this batch's "
            f"results (also in {_link('claims.csv', 'claims.csv')}; <code>piggylab claims</code> prints it). Where "
            "there are several seeds a margin counts only if it is larger than its seed-to-seed standard "
            "deviation.</p>\n" + _table(shown, raw_html={"shown": list(shown["shown"])}))


def render_report(collected: Collected, *, title: str = "piggylab batch report", description: str = "",
                  claims: pd.DataFrame | None = None) -> str:
    """The report page as a string (see the module docstring for what it contains); it opens with
    the claims table (`claims`, default: evaluated on `collected`)."""
    from .claims import evaluate

    claims = evaluate(collected.results) if claims is None else claims
    results, runs = collected.results, collected.runs
    counts = runs["status"].value_counts()
    status = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "failed", "incomplete", "pending") if counts.get(s, 0))
    generated = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    sections = [f"<p>{html.escape(description)}</p>" if description else "", _claims_section(claims),
                f"<p>{len(runs)} runs: {html.escape(status or 'none')}. {len(results)} result rows in "
                f"{_link('results.csv', 'results.csv')}. Generated {html.escape(generated)}.</p>",
                _failures_section(runs)]
    if results.empty:
        sections.append("<p>No results yet.</p>")
    for notebook, frame in results.groupby("notebook", sort=False):
        frame = frame.assign(label=_labels(frame))
        summary = _summary(frame)
        notebook_runs = runs[runs["notebook"] == notebook]
        sections.append(f'<h2 id="{html.escape(str(notebook))}">{html.escape(str(notebook))}</h2>\n'
                        f"<p>Finished runs: {frame['run_id'].nunique()}, result rows: {len(frame)}, runs failed "
                        f"or not finished: {int((notebook_runs['status'] != 'ok').sum())}. Means over repeated runs "
                        "(seeds); <code>accuracy_std</code> is their standard deviation.</p>")
        sections.append(_table(summary))
        sections += [fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})
                     for fig in _figures(str(notebook), summary)]
    sections += [_runs_section(runs), _environment_section(runs)]
    return _html_page(title, [s for s in sections if s])


def build_report(output: str | Path, *, title: str | None = None) -> Path:
    """Write `output/results.csv` and `output/report.html` from the runs under `output`; returns the report's path."""
    output = Path(output)
    if not output.is_dir():
        raise FileNotFoundError(f"no batch output folder at {output}")
    collected = collect(output)
    atomic_write_text(output / "results.csv", collected.results.to_csv(index=False))
    from .claims import evaluate

    claims = evaluate(collected.results)
    atomic_write_text(output / "claims.csv", claims.to_csv(index=False))
    batch = _read_json(output / "batch.json")
    name = Path(batch.get("name") or output.name).name
    page = render_report(collected, title=title or f"piggylab batch report: {name}",
                         description=batch.get("description", ""), claims=claims)
    report = output / "report.html"
    atomic_write_text(report, page)
    return report
