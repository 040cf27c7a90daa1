"""The batch runner (`piggylab.batch`), its command line and the report, on tiny fixture notebooks.

`tests/notebooks_fixture/ok_metrics.ipynb` writes a metrics.json like the lab's notebooks (and a
line in `log_file` per execution, to count re-runs); `fails.ipynb` writes a metrics.json, then
raises. Most batches run on in-process Dask workers (`local-threads`); one goes through the
real command line and a LocalCluster of worker processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from piggylab.batch import GridError, _uses_this_python, ensure_kernel, load_grid, parse_grid, run_batch
from piggylab.cli import main
from piggylab.report import build_report, collect

FIXTURES = Path(__file__).parent / "notebooks_fixture"
REPO = Path(__file__).resolve().parent.parent


def grid_spec(output: Path, runs: list[dict], **extra) -> dict:
    return {"output": str(output), "notebooks_dir": str(FIXTURES), "workers": 2, "runs": runs, **extra}


def write_grid(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# ---------------------------------------------------------------------------------------------
# Grid files


def test_grid_expands_into_runs_with_defaults_and_stable_ids(tmp_path):
    spec = grid_spec(tmp_path / "out", [
        {"notebook": "ok_metrics", "grid": {"task": ["alpha", "beta"], "seed": [0, 1]}, "parameters": {"accuracy": 0.7}},
        {"notebook": "fails.ipynb"},
    ], defaults={"smoke": True, "accuracy": 0.5})
    grid = parse_grid(spec)
    assert [r.notebook for r in grid.runs] == ["ok_metrics"] * 4 + ["fails"]
    assert grid.runs[0].parameters == {"smoke": True, "accuracy": 0.7, "task": "alpha", "seed": 0}
    assert grid.runs[4].parameters == {"smoke": True}  # `accuracy` is not a parameter of fails.ipynb
    assert grid.runs[0].run_id.startswith("ok_metrics-task=alpha-seed=0-accuracy=0.7-")
    assert len({r.run_id for r in grid.runs}) == 5
    assert [r.run_id for r in parse_grid(spec).runs] == [r.run_id for r in grid.runs]  # stable: resume finds them
    assert grid.runs[1].injected["output_dir"] == str(tmp_path / "out" / "runs" / grid.runs[1].run_id)

    forced = parse_grid(spec, overrides={"accuracy": 0.9}, workers=1)
    assert {r.parameters.get("accuracy") for r in forced.runs} == {0.9, None} and forced.workers == 1


@pytest.mark.parametrize("change, message", [
    ({"outptu": "x"}, r"unknown key 'outptu'; allowed keys: description, output, notebooks_dir"),
    ({"runs": [{"notebook": "ok_metrics", "params": {}}]}, r"run #1: unknown key 'params'; allowed keys: notebook"),
    ({"runs": [{"notebook": "ok_metrics"}, {"notebook": "nope"}]}, r"run #2: unknown notebook 'nope'; .*fails, ok_metrics"),
    ({"runs": [{"notebook": "ok_metrics", "parameters": {"taks": "a"}}]},
     r"run #1 \(ok_metrics\): unknown parameter 'taks'; ok_metrics declares: smoke, output_dir, seed"),
    ({"runs": [{"notebook": "ok_metrics", "grid": {"sed": [1, 2]}}]}, r"unknown parameter 'sed'"),
    ({"runs": [{"notebook": "ok_metrics", "parameters": {"output_dir": "/tmp"}}]}, r"'output_dir' is set by the runner"),
    ({"defaults": {"epochs": 3}}, r"defaults parameter 'epochs' is not a parameter of any notebook"),
    ({"runs": [{"notebook": "ok_metrics", "grid": {"seed": 3}}]}, r"grid.seed must be a non-empty list"),
    ({"runs": [{"notebook": "ok_metrics"}, {"notebook": "ok_metrics"}]}, r"run #2 .*same notebook and parameters as run #1"),
    ({"runs": []}, r"'runs' must be a non-empty list"),
    ({"workers": 0}, r"workers must be a positive integer"),
    ({"output": None}, r"'output' .* is required"),
])
def test_bad_grid_fails_before_anything_runs(tmp_path, capsys, change, message):
    spec = {**grid_spec(tmp_path / "out", [{"notebook": "ok_metrics"}]), **change}
    with pytest.raises(GridError, match=message):
        parse_grid(spec)
    assert main(["batch", str(write_grid(tmp_path / "bad.yaml", spec))]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_override_and_unreadable_grid_fail(tmp_path):
    spec = grid_spec(tmp_path / "out", [{"notebook": "ok_metrics"}])
    with pytest.raises(GridError, match="overrides parameter 'epochs'"):
        parse_grid(spec, overrides={"epochs": 1})
    with pytest.raises(GridError, match="cannot read grid file"):
        load_grid(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("runs: [\n")
    with pytest.raises(GridError, match="not valid YAML"):
        load_grid(tmp_path / "broken.yaml")


GRID_NOTEBOOKS = ("01_quickstart", "02_init_schemes", "03_ternary_vs_binary", "04_batchnorm_adaptation",
                  "05_sparsity", "06_multitask")


def test_shipped_grids_validate_against_the_lab_notebooks(monkeypatch):
    missing = [n for n in GRID_NOTEBOOKS if not (REPO / "notebooks" / f"{n}.ipynb").exists()]
    if missing:
        pytest.skip(f"notebooks not written yet: {', '.join(missing)}")
    monkeypatch.chdir(REPO)
    for name in ("embedded", "paper"):
        assert load_grid(REPO / "grids" / f"{name}.yaml").runs


def test_kernel_runs_this_python():
    from jupyter_client.kernelspec import KernelSpecManager

    assert _uses_this_python(KernelSpecManager().get_kernel_spec(ensure_kernel()).argv)
    assert _uses_this_python(["python"]) and _uses_this_python([sys.executable])
    assert not _uses_this_python(["/nonexistent/env/bin/python"])


# ---------------------------------------------------------------------------------------------
# Batches


@pytest.fixture(scope="module")
def failing_batch(tmp_path_factory):
    """Four runs on two in-process workers: two good ones, one that raises, one that writes no metrics."""
    root = tmp_path_factory.mktemp("failing")
    log = root / "executions.log"
    grid = parse_grid(grid_spec(root / "out", [
        {"notebook": "ok_metrics", "grid": {"task": ["alpha", "beta"]}},
        {"notebook": "fails", "parameters": {"task": "gamma"}},
        {"notebook": "ok_metrics", "parameters": {"task": "delta", "write_metrics": False}},
    ], defaults={"seed": 0, "log_file": str(log)}, description="a grid with failures"))
    return grid, run_batch(grid, scheduler="local-threads", progress=False), log


def test_batch_goes_on_past_failures_and_records_them(failing_batch):
    grid, result, log = failing_batch
    assert [o.status for o in result.outcomes] == ["ok", "ok", "failed", "failed"]
    failed = grid.runs[2].run_dir
    assert "ValueError: boom on task gamma" in (failed / "error.txt").read_text()
    assert "boom on task gamma" in (failed / "executed.ipynb").read_text()  # the partly executed notebook is kept
    assert not (failed / "metrics.json").exists() and (failed / "metrics.failed.json").exists()
    assert json.loads((failed / "run.json").read_text())["status"] == "failed"
    assert "wrote no metrics.json" in result.outcomes[3].error
    assert len(log_lines(log)) == 3  # the three ok_metrics runs each executed once

    results = pd.read_csv(result.results_csv)
    assert len(results) == 4 and set(results["task"]) == {"alpha", "beta"}
    assert set(results["method"]) == {"piggyback", "finetune"}
    assert results.columns[:7].tolist() == ["run_id", "notebook", "task", "method", "accuracy", "sparsity",
                                            "storage_bytes"]
    assert {"param.task", "param.seed"} <= set(results.columns)
    assert (grid.runs[0].run_dir / "table.csv").exists()  # the notebook's own outputs stay in its run folder


def test_report_content(failing_batch):
    grid, result, _ = failing_batch
    page = result.report.read_text()
    for text in ("alpha", "beta", "piggyback", "finetune", "a grid with failures", grid.runs[2].run_id,
                 "ValueError: boom on task gamma", "wrote no metrics.json", "test accuracy per task and method",
                 "mask sparsity per task", "storage per task and method (log scale)", "0.8000", "2,000,000"):
        assert text in page, text
    assert page.count('class="plotly-graph-div"') == 3
    assert page.count("* plotly.js v") == 1  # the bundle, inlined exactly once
    assert 'src="http' not in page and "<script src=" not in page  # nothing loaded from a CDN
    assert '"type":"log"' in page.replace(" ", "")  # storage on a log axis
    assert f'href="runs/{grid.runs[2].run_id}/error.txt"' in page
    assert f'href="runs/{grid.runs[0].run_id}/table.csv"' in page  # each run's own outputs are linked
    assert "piggyback (task=" not in page  # a parameter that only picks the task is not a variant


def test_resume_runs_only_what_is_missing(tmp_path):
    log = tmp_path / "executions.log"
    spec = grid_spec(tmp_path / "out", [{"notebook": "ok_metrics", "grid": {"task": ["alpha", "beta", "gamma"]}}],
                     defaults={"log_file": str(log)})
    grid = parse_grid(spec)
    first = run_batch(grid, scheduler="local-threads", progress=False)
    assert [o.status for o in first.outcomes] == ["ok"] * 3 and len(log_lines(log)) == 3

    # An interrupted batch: beta started but never finished; gamma was never started.
    (grid.runs[1].run_dir / "metrics.json").unlink()
    for path in grid.runs[2].run_dir.iterdir():
        path.unlink()
    grid.runs[2].run_dir.rmdir()
    kept = grid.runs[0].run_dir / "metrics.json"
    mtime = kept.stat().st_mtime_ns
    statuses = collect(grid.output).runs.set_index("run_id")["status"]
    assert statuses.tolist() == ["ok", "incomplete", "pending"]
    assert "1 incomplete" in build_report(grid.output).read_text()

    second = run_batch(parse_grid(spec), scheduler="local-threads", progress=False)
    assert [o.status for o in second.outcomes] == ["skipped", "ok", "ok"]
    assert log_lines(log)[3:] in (["beta 0", "gamma 0"], ["gamma 0", "beta 0"])
    assert kept.stat().st_mtime_ns == mtime
    assert len(pd.read_csv(second.results_csv)) == 6


def test_command_line_on_a_local_cluster_of_processes(tmp_path, capsys):
    log = tmp_path / "executions.log"
    grid = write_grid(tmp_path / "grid.yaml", grid_spec(tmp_path / "out", [
        {"notebook": "ok_metrics", "grid": {"task": ["alpha", "beta"]}}], defaults={"log_file": str(log)}))
    arguments = ["batch", str(grid), "--set", "accuracy=0.6", "--smoke"]
    assert main([*arguments, "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert dry.count("to run") == 2 and "accuracy=0.6" in dry and "smoke=True" in dry
    assert not log.exists()

    command = [sys.executable, "-m", "piggylab.cli", *arguments, "--workers", "1"]

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    report = Path(done.stdout.strip().splitlines()[-1].removeprefix("report: "))
    assert report == tmp_path / "out" / "report.html" and report.exists()
    assert "2 ran, 0 already done, 0 failed" in done.stdout and "ok_metrics-" in done.stderr
    assert sorted(log_lines(log)) == ["alpha 0", "beta 0"]
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert set(results["accuracy"].round(2)) == {0.6, 0.5} and results["param.smoke"].all()
    assert set(results["omp_threads"].dropna()) == {os.cpu_count()}  # one worker: all cores for its notebook
    # not Dask's MALLOC_TRIM_THRESHOLD_, which made every run 2.3x slower (batch.LOCAL_WORKER_CONFIG)
    assert set(results["malloc_trim"].dropna()) == {"unset"}

    (tmp_path / "out" / "results.csv").unlink()
    assert main(["report", str(tmp_path / "out"), "--title", "Rebuilt"]) == 0
    assert pd.read_csv(tmp_path / "out" / "results.csv").equals(results)
    assert "<title>Rebuilt</title>" in report.read_text()
    assert main(["report", str(tmp_path / "nowhere")]) == 2


# ---------------------------------------------------------------------------------------------
# The report, from hand-written run folders


def fake_run(output: Path, run_id: str, notebook: str, parameters: dict, results: list[dict] | str | None) -> None:
    run_dir = output / "runs" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"run_id": run_id, "notebook": notebook, "parameters": parameters}))
    if isinstance(results, str):
        (run_dir / "metrics.json").write_text(results)
    elif results is not None:
        (run_dir / "metrics.json").write_text(json.dumps({
            "notebook": notebook, "parameters": parameters, "results": results, "timings": {"total_s": 1.0},
            "environment": {"python": "3.11", "torch": "2.x", "device": "cpu", "piggylab": "0.1.0"}}))


def test_report_averages_seeds_and_labels_variants(tmp_path):
    for i, (scale, seed, accuracy) in enumerate([(0.01, 0, 0.6), (0.01, 1, 0.8), (0.1, 0, 0.5)]):
        fake_run(tmp_path, f"02_init-{i}", "02_init", {"scale": scale, "seed": seed},
                 [{"task": "greek", "method": "piggyback", "accuracy": accuracy, "epoch_s": 2.5}])
    fake_run(tmp_path, "01_quick-bad", "01_quick", {}, json.dumps({"results": [{"task": "greek"}]}))
    (tmp_path / "batch.json").write_text(json.dumps({"description": "hand made", "runs": [
        "02_init-0", "02_init-1", "02_init-2", "01_quick-bad", "01_quick-never"]}))

    collected = collect(tmp_path)
    assert collected.runs["status"].tolist() == ["ok", "ok", "ok", "failed", "pending"]
    assert "results[0] needs 'task' and 'method'" in collected.runs["error"][3]
    page = build_report(tmp_path).read_text()
    assert "piggyback (scale=0.01)" in page and "piggyback (scale=0.1)" in page
    assert "<td>0.7000</td><td>0.1414</td>" in page  # mean and std over the two seeds of scale=0.01
    assert "epoch_s" in page and "hand made" in page and "01_quick-never" in page
    assert "sparsity per task" not in page  # no sparsity reported: no empty figure


def test_report_summary_keeps_method_and_label_apart(tmp_path):
    from piggylab.report import _labels, _summary

    fake_run(tmp_path, "04_bn-0", "04_bn", {"seed": 0}, [
        {"task": "greek", "method": "piggyback", "label": "piggyback", "accuracy": 0.6},
        {"task": "greek", "method": "piggyback", "label": "piggyback + task BN", "accuracy": 0.7},
        {"task": "greek", "method": "finetune", "accuracy": 0.8}])  # no label: the method stands for it
    (tmp_path / "batch.json").write_text(json.dumps({"runs": ["04_bn-0"]}))
    frame = collect(tmp_path).results
    summary = _summary(frame.assign(label=_labels(frame)))
    assert summary[["task", "method", "label"]].values.tolist() == [
        ["greek", "piggyback", "piggyback"], ["greek", "piggyback", "piggyback + task BN"],
        ["greek", "finetune", "finetune"]]
    assert summary["accuracy"].tolist() == pytest.approx([0.6, 0.7, 0.8])
    page = build_report(tmp_path).read_text()
    assert "piggyback + task BN" in page and "piggyback #2" not in page  # two labels, not one method repeated
