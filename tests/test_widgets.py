"""The explorer (`piggylab.widgets`) driven headlessly, and notebook 07 under papermill.

The widgets are used the way a user would: set their values, press Train, Stop or Sweep
(`Button.click()`, which returns at once: the run trains in a worker thread), then read the
status line, the figures' data, the runs table and the files in the explorer's folder.
"""

import json
import math
import time
from pathlib import Path

import ipywidgets as widgets
import pandas as pd
import papermill
import pytest
import torch

import piggylab as pl
from piggylab import findings
from piggylab.explorer_figures import MAX_GROWTH_LINES, growth_lines
from piggylab.widgets import (CSS_CLASSES, KNOBS, RUN_COLUMNS, Explorer, ExplorerBusy, RunSettings, Sweep, is_sweep,
                              recipe_rates)

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = math.ceil(60 / 32)  # 2% of greek's 3000 training images, batches of 32


def make_explorer(folder=None) -> Explorer:
    """An explorer over a very small backbone and 2% of the data: a run takes about a second."""
    torch.manual_seed(0)
    backbone = pl.tiny_resnet(num_classes=10, widths=(8, 16, 32), blocks=1)
    return Explorer(backbone, folder=folder, tasks=("greek", "sketch"), scale=0.02, batch_size=32, device="cpu",
                    refresh_s=0.0)


@pytest.fixture
def explorer(tmp_path) -> Explorer:
    explorer = make_explorer(tmp_path / "explorer")
    yield explorer
    explorer.stop()
    explorer.wait(60)


def click(explorer: Explorer, **settings) -> None:
    """Set the controls, press Train and wait for the run to end (the click itself does not wait)."""
    explorer.set(**settings)
    explorer.train_button.click()
    assert explorer.wait(120), "the run did not end within two minutes"


def until(condition, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.02)


def walk(widget: widgets.Widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from walk(child)


def loss_points(explorer: Explorer) -> int:
    """Points on the loss curve of the latest run (0 before its traces exist)."""
    return len(explorer.curve.data[-2].x) if explorer.curve.data else 0


def filled(trace) -> int:
    return sum(v is not None for row in trace.z for v in row)


def test_a_click_trains_a_run_in_the_background_and_shows_it(explorer):
    click(explorer, task="greek", mask_kind="ternary", epochs=2, bn_mode="task", lr_scores=1e-2)

    assert explorer.error is None, explorer.error
    assert explorer.status.value.count("done: run #1") == 1
    assert not explorer.train_button.disabled and explorer.stop_button.disabled and not explorer.busy
    runs = explorer.runs
    assert list(runs.columns[:len(RUN_COLUMNS)]) == RUN_COLUMNS and len(runs) == 1
    run = runs.iloc[0]
    assert (run["task"], run["method"], run["mask_kind"], run["epochs"], run["bn_mode"], run["status"]) == (
        "greek", "piggyback", "ternary", 2, "task", "done")
    assert run["steps"] == 2 * STEPS_PER_EPOCH and pd.isna(run["sweep"]) and pd.isna(run["error"])
    assert 0.0 <= run["accuracy"] <= 1.0 and 0.0 < run["sparsity"] <= 1.0
    loss, accuracy = explorer.curve.data
    assert list(loss.x) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert list(accuracy.x) == [1, 2] and all(0 <= a <= 1 for a in accuracy.y)
    assert loss.name == "#1 greek (piggyback, ternary mask)"
    bars = explorer.sparsity_figure.data[0]
    assert len(bars.x) == len(explorer.net.masked_layers) == len(explorer.layers[1])
    assert "run #1" in explorer.sparsity_figure.layout.title.text
    assert "ternary" in explorer.runs_table.value and "done" in explorer.runs_table.value
    assert explorer.net.task("greek-1").task_bn


def test_stop_ends_the_run_after_the_current_step_and_keeps_it_as_stopped(explorer):
    explorer.set(epochs=100, lr_scores=1e-2)
    started = time.perf_counter()
    explorer.train_button.click()
    returned = time.perf_counter() - started
    assert explorer.busy and explorer.train_button.disabled and explorer.sweep_button.disabled
    assert not explorer.stop_button.disabled
    assert returned < 1.0, f"a click on Train kept the kernel busy for {returned:.1f} s"
    with pytest.raises(ExplorerBusy, match="press Stop, or wait"):
        explorer.train()
    until(lambda: loss_points(explorer) >= 3, "three steps on the live curve")
    assert "training #1" in explorer.status.value  # the status line follows the run while the kernel is free

    clicked = time.perf_counter()
    explorer.stop_button.click()
    until(lambda: explorer.status.value.find("stopped: run #1") >= 0, "the status line to say stopped")
    latency = time.perf_counter() - clicked
    assert explorer.wait(30)
    print(f"Stop latency (headless, click to 'stopped' in the status line): {latency:.3f} s")
    assert latency < 30, f"Stop took {latency:.1f} s to end the run"

    run = explorer.runs.iloc[0]
    total = 100 * STEPS_PER_EPOCH
    assert run["status"] == "stopped" and 3 <= run["steps"] < total and 0 <= run["accuracy"] <= 1
    assert f"after step {run['steps']} of {total}" in explorer.status.value
    assert len(explorer.curve.data[0].x) == run["steps"]  # the curve shows every step it trained
    assert explorer.net.is_frozen("greek-1")  # what it trained so far is kept, as a mask
    assert "stopped" in explorer.runs_table.value and explorer.results().empty
    assert not explorer.train_button.disabled and explorer.stop_button.disabled
    explorer.stop()  # nothing to stop: no effect
    click(explorer, epochs=1)  # the next run trains whole and gets the next number
    assert list(explorer.runs["status"]) == ["stopped", "done"] and list(explorer.runs["run"]) == [1, 2]


def test_a_sweep_fills_both_heatmaps_and_writes_its_csv(explorer, tmp_path):
    explorer.set(epochs=1)
    table = explorer.sweep({"lr_scores": "1e-3, 1e-2", "threshold": [5e-3, 8e-3]})

    accuracy, sparsity = explorer.sweep_figure.data
    assert filled(accuracy) == filled(sparsity) == 4
    assert list(accuracy.x) == ["0.001", "0.01"] and list(accuracy.y) == ["0.005", "0.008"]
    assert (accuracy.zmin, accuracy.zmax, sparsity.zmin) == (0, 1, 0) and sparsity.zmax > max(
        v for row in sparsity.z for v in row)
    runs = explorer.runs
    assert list(runs["sweep"]) == [1] * 4 and list(runs["status"]) == ["done"] * 4
    assert list(runs["sweep_values"]) == ["lr_scores=0.001, threshold=0.005", "lr_scores=0.01, threshold=0.005",
                                          "lr_scores=0.001, threshold=0.008", "lr_scores=0.01, threshold=0.008"]
    assert sparsity.z[1][1] == pytest.approx(runs["sparsity"].iloc[3])  # (x, y) = (0.01, 0.008): the 4th run
    assert explorer.status.value.count("done: sweep #1, 4 runs") == 1 and "best validation accuracy" in \
        explorer.status.value
    written = pd.read_csv(tmp_path / "explorer" / "sweep-1.csv")
    assert list(written.columns[:2]) == ["lr_scores", "threshold"] and len(written) == 4
    assert list(written["lr_scores"]) == [1e-3, 1e-2, 1e-3, 1e-2] and list(written["run"]) == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(written[["lr_scores", "threshold", "run", "val_accuracy"]],
                                  table[["lr_scores", "threshold", "run", "val_accuracy"]], check_dtype=False)
    assert any("Sweep #1 (4 finished runs)" in line for line in findings.explorer(runs, explorer.layers))


def test_stop_ends_a_sweep(explorer):
    explorer.set(epochs=100)
    explorer.sweep({"threshold": [5e-3, 8e-3, 1.2e-2]}, wait=False)
    until(lambda: loss_points(explorer) >= 2, "the sweep's first steps")
    explorer.stop_button.click()
    assert explorer.wait(60)

    assert explorer.status.value.count("stopped: sweep #1 after 1 of 3 runs") == 1, explorer.status.value
    assert list(explorer.runs["status"]) == ["stopped"]  # the other cells never started
    accuracy, _ = explorer.sweep_figure.data
    assert filled(accuracy) == 0 and accuracy.text[0][0] == "stopped"


def test_bad_sweeps_are_refused_naming_the_problem(explorer):
    for knobs, message in (
            ({"lr": [1e-3], "lr_scores": [1e-3], "threshold": [5e-3]}, "at most 2 knobs; got 3"),
            ({"momentum": [0.9]}, "unknown knob 'momentum'; a sweep can vary lr, lr_scores"),
            ({"threshold": "5e-3, abc"}, "values of 'threshold' must be numbers, got 'abc'"),
            ({"threshold": [5e-3, True]}, "must be numbers, got True"),
            ({"lr": [1e-3, float("nan")]}, "finite numbers"),
            ({"epochs": [1, 2.5]}, "whole numbers >= 1, got 2.5"),
            ({"threshold": ""}, "at least one value for knob 'threshold'"),
            ({"threshold": [5e-3, 5e-3]}, "repeat 0.005"),
            ({}, "choose a knob to sweep"),
            ({"lr": [1e-3, -1.0]}, "sweep cell lr=-1: lr must be a positive finite number")):
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            explorer.sweep(knobs)
    explorer.set(method="classifier")
    with pytest.raises(ValueError, match="'lr_scores' is a piggyback setting: method 'classifier'"):
        explorer.sweep({"lr_scores": [1e-3]})
    explorer.set(method="piggyback")
    explorer.sweep_controls["knob_1"].value = explorer.sweep_controls["knob_2"].value = "lr"
    explorer.sweep_controls["values_1"].value = explorer.sweep_controls["values_2"].value = "1e-3"
    explorer.sweep_button.click()  # from a click: in the status line, nothing trains
    assert "error" in explorer.status.value and "chosen twice" in explorer.status.value
    assert not explorer.busy and explorer.runs.empty
    assert Sweep.parse({"lr": "1e-3 1e-2", "epochs": [1, 2]}).size == 4
    assert is_sweep({"threshold": [5e-3]}) and not is_sweep({"threshold": ["x"]}) and not is_sweep([5e-3])


def test_runs_are_kept_on_disk_and_come_back_in_a_new_explorer(explorer, tmp_path):
    click(explorer, epochs=1, lr_scores=1e-2)
    explorer.set(epochs=100)
    explorer.train(wait=False)
    until(lambda: len(explorer.curve.data) == 4 and loss_points(explorer) >= 1, "the second run's first step")
    explorer.stop()
    explorer.wait(60)
    folder = tmp_path / "explorer"
    assert sorted(p.name for p in folder.iterdir()) == ["growth.csv", "layers.csv", "runs.csv"]

    again = make_explorer(folder)  # as after a kernel restart: a new explorer on the same folder
    columns = ["run", "status", "task", "method", "steps", "accuracy", "sparsity"]
    pd.testing.assert_frame_equal(again.runs[columns], explorer.runs[columns], check_dtype=False)
    assert "2 run(s) restored" in again.status.value and again.runs_table.value == explorer.runs_table.value
    pd.testing.assert_frame_equal(again.layer_table(), explorer.layer_table(), check_dtype=False)
    assert len(again.growth) == len(explorer.growth) > 0
    assert again.mask_run.value == 2 and "not in memory" in again.mask_figure.layout.title.text
    assert len(again.growth_figure.data) == len(explorer.net.masked_layers)  # the growth is kept, a line per layer
    again.set(epochs=1)
    assert again.train()["run"] == 3  # numbered after the restored runs
    assert list(pd.read_csv(folder / "runs.csv")["run"]) == [1, 2, 3]

    (folder / "runs.csv").write_text("not,an,explorer\n1,2,3\n")
    with pytest.raises(ValueError, match="runs.csv is not an explorer table: it has no column"):
        make_explorer(folder)


def test_the_mask_view_shows_which_weights_are_off_and_how_sparsity_grew(explorer):
    click(explorer, epochs=2, lr_scores=1e-2)

    layer = explorer.mask_layer.value
    weight = explorer.net.original_weight(layer)
    assert weight.numel() == max(explorer.net.original_weight(n).numel() for n in explorer.net.masked_layers)
    mask = explorer.net.masks("greek-1")[layer]
    heatmap = explorer.mask_figure.data[0]
    assert len(heatmap.z) == weight.shape[0] and len(heatmap.z[0]) == weight[0].numel()  # filters as rows
    off = float((heatmap.z == 0).mean())
    assert off == pytest.approx(1 - mask.float().mean().item()) and f"{off:.2%} of its" in \
        explorer.mask_figure.layout.title.text
    explorer.mask_layer.value = "conv1"  # another layer: the view follows
    assert len(explorer.mask_figure.data[0].z) == explorer.net.original_weight("conv1").shape[0]
    assert "Mask of conv1" in explorer.mask_figure.layout.title.text

    lines = explorer.growth_figure.data
    assert len(lines) == len(explorer.net.masked_layers)  # a line per layer, epoch by epoch
    assert all(list(line.x) == [1, 2] for line in lines)
    assert max(line.line.width for line in lines) == 4 and next(l for l in lines if l.line.width == 4).name == "conv1"
    growth = explorer.growth
    last = growth[growth["epoch"] == 2].set_index("layer")["sparsity"]
    assert last.to_dict() == pytest.approx(explorer.layers[1].set_index("layer")["sparsity"].to_dict())
    assert explorer.growth_figure.layout.yaxis.range[0] == 0


def test_growth_draws_groups_of_layers_in_deep_networks():
    growth = pd.DataFrame([{"run": 1, "epoch": e, "step": e, "layer": f"l{d}", "depth": d, "kind": "conv",
                            "weights": 10 * (d + 1), "zeros": d, "sparsity": d / (10 * (d + 1))}
                           for e in (1, 2) for d in range(30)])
    lines = growth_lines(growth)
    assert lines["line"].nunique() == MAX_GROWTH_LINES
    first = lines[(lines["line"] == "layers 0–2") & (lines["epoch"] == 1)].iloc[0]
    assert first["layers"] == "l0, l1, l2" and first["sparsity"] == pytest.approx((0 + 1 + 2) / (10 + 20 + 30))


def test_axes_start_at_zero_for_a_run_without_zeros(explorer):
    click(explorer, method="classifier", epochs=1)

    assert explorer.runs["sparsity"].iloc[0] == 0.0 and pd.isna(explorer.runs["mask_kind"].iloc[0])
    assert list(explorer.sparsity_figure.layout.yaxis.range) == [0, 0.01]
    assert list(explorer.curve.layout.yaxis2.range) == [0, 1]  # validation accuracy: 0 to 100%
    assert "no piggyback mask" in explorer.growth_figure.layout.title.text


def test_an_error_in_the_run_shows_in_the_status_line(explorer, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr("piggylab.experiments.evaluate", broken)
    click(explorer, epochs=1)

    assert "RuntimeError: evaluation broke" in explorer.status.value and "traceback" in explorer.status.value
    assert explorer.error == "RuntimeError: evaluation broke"
    run = explorer.runs.iloc[0]
    assert run["status"] == "failed" and run["error"] == "RuntimeError: evaluation broke"
    assert not explorer.net.tasks and not explorer.train_button.disabled
    assert explorer.curve.data[0].name.endswith("(failed)") and len(explorer.curve.data[0].x) > 0
    with pytest.raises(RuntimeError, match="evaluation broke"):
        explorer.train(raise_errors=True)
    monkeypatch.undo()
    click(explorer, epochs=1)  # the next run works and gets the next number
    assert list(explorer.runs["status"]) == ["failed", "failed", "done"] and explorer.error is None


def test_bad_settings_are_refused_before_anything_trains(explorer):
    click(explorer, threshold=-1.0, epochs=1)

    assert "error" in explorer.status.value and "threshold" in explorer.status.value
    assert explorer.error.startswith("ValueError") and "threshold" in explorer.error
    assert explorer.runs.empty and not explorer.net.tasks and not explorer.train_button.disabled
    with pytest.raises(ValueError, match="threshold"):
        explorer.train()


def test_controls_follow_the_method_the_bn_mode_and_the_init(explorer):
    controls = explorer.controls
    explorer.set(method="classifier")
    assert all(controls[n].disabled for n in ("mask_kind", "init", "scale", "threshold", "lr_scores"))
    assert not controls["bn_mode"].disabled and controls["lr"].value == pytest.approx(recipe_rates("classifier",
                                                                                                   "frozen")["lr"])
    explorer.set(method="piggyback", bn_mode="task")
    assert controls["lr_scores"].value == pytest.approx(recipe_rates("piggyback", "task")["lr_scores"])
    explorer.set(bn_mode="frozen", init="weight")
    assert not controls["mask_kind"].disabled and controls["scale"].value == 1.0
    explorer.set(init="uniform", scale=0.02)
    assert explorer.settings == RunSettings(task="greek", init="uniform", scale=0.02)
    with pytest.raises(KeyError, match="unknown control"):
        explorer.set(colour="red")


def test_every_part_has_its_css_class_and_description(explorer):
    classes = {c for w in walk(explorer.widget) for c in getattr(w, "_dom_classes", ())}
    assert set(CSS_CLASSES.values()) <= classes
    for name in ("task", "method", "mask_kind", "epochs", "bn_mode"):
        assert explorer.controls[name].description
    assert (explorer.train_button.description, explorer.stop_button.description,
            explorer.sweep_button.description) == ("Train", "Stop", "Sweep")
    assert [label for label, _ in explorer.sweep_controls["knob_1"].options][1:] == list(KNOBS.values())
    bundle = explorer._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == explorer.widget.model_id


@pytest.mark.slow
def test_notebook_07_runs_with_smoke_settings(tmp_path):
    out = tmp_path / "out"
    papermill.execute_notebook(str(ROOT / "notebooks" / "07_explorer.ipynb"), str(tmp_path / "07.ipynb"),
                               parameters={"smoke": True, "output_dir": str(out)}, kernel_name="python3",
                               cwd=str(tmp_path), progress_bar=False)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["notebook"] == "07_explorer" and metrics["parameters"]["smoke"] is True
    results = metrics["results"]
    assert [(r["task"], r["method"], r["sweep"]) for r in results] == [
        ("greek", "classifier", None), ("greek", "piggyback", None), *[("greek", "piggyback", 1)] * 4]
    assert all(r["status"] == "done" and 0 <= r["accuracy"] <= 1 and 0 <= r["sparsity"] <= 1 for r in results)
    for name in ("runs.csv", "layer_sparsity.csv", "sparsity_growth.csv", "training_curves.html", "sweep.html",
                 "mask.html", "sparsity_growth.html", "explorer/runs.csv", "explorer/sweep-1.csv"):
        assert (out / name).stat().st_size > 0, name
    assert len(pd.read_csv(out / "explorer" / "sweep-1.csv")) == 4


@pytest.mark.slow
def test_notebook_07_rejects_a_bad_parameter(tmp_path):
    for bad, name in (({"methods": ["packnet"]}, "'methods'"), ({"sweep": {"threshold": ["high"]}}, "'sweep'")):
        with pytest.raises(papermill.PapermillExecutionError, match=name):
            papermill.execute_notebook(str(ROOT / "notebooks" / "07_explorer.ipynb"), str(tmp_path / "07.ipynb"),
                                       parameters={"smoke": True, "output_dir": str(tmp_path), **bad},
                                       kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
