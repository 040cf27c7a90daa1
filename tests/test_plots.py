"""Plots: figures from piggylab's DataFrames, and live training curves outside Jupyter."""

import pandas as pd
import plotly.graph_objects as go
import pytest

import piggylab as pl
from piggylab import plots


def _history(run: str, epochs: int = 3) -> pd.DataFrame:
    return pd.DataFrame({"epoch": range(1, epochs + 1), "step": [4 * e for e in range(1, epochs + 1)],
                         "loss": [1.0 / e for e in range(1, epochs + 1)], "train_acc": 0.5, "val_acc": 0.4,
                         "lr": 1e-3, "wall_time": 1.0, "sparsity": 0.01, "run": run})


def test_training_curves_one_line_per_run_and_metric():
    histories = pd.concat([_history("a"), _history("b")])
    fig = plots.training_curves(histories, ("loss", "val_acc", "sparsity"))
    assert isinstance(fig, go.Figure) and len(fig.data) == 6
    val = [t for t in fig.data if t.xaxis == "x2"]
    assert list(val[0].y) == pytest.approx([40.0] * 3)  # fractions drawn in %
    with pytest.raises(ValueError, match="unknown metric"):
        plots.training_curves(histories, ("accuracy",))


def test_bars_heatmap_depth_and_matrix():
    results = pd.DataFrame({"task": ["t1", "t1", "t2", "t2"], "method": ["piggyback", "finetune"] * 2,
                            "label": ["piggyback + task BN", "finetune"] * 2,
                            "accuracy": [0.8, 0.9, 0.5, 0.6], "storage_bytes": [1e5, 3e6, 1e5, 3e6]})
    acc = plots.percent_bars(results)
    assert {t.name for t in acc.data} == {"piggyback + task BN", "finetune"}  # runs are told apart by label
    assert max(max(t.y) for t in acc.data) == pytest.approx(90.0)
    storage = plots.storage_bars(results)
    assert storage.layout.yaxis.type == "log"
    assert "2.9 MiB" in storage.data[1].text
    layers = pd.DataFrame({"layer": ["conv1", "fc", "conv1", "fc"], "depth": [0, 1, 0, 1], "task": ["a", "a", "b", "b"],
                           "weights": [10, 20, 10, 20], "sparsity": [0.0, 0.1, 0.2, 0.3]})
    heat = plots.sparsity_heatmap(layers)
    assert list(heat.data[0].x) == ["a", "b"] and list(heat.data[0].y) == ["conv1", "fc"]
    assert heat.data[0].z[1][1] == pytest.approx(30.0)
    assert len(plots.sparsity_by_depth(layers).data) == 2
    matrix = pd.DataFrame({"after": ["a", "b", "b"], "task": ["a", "a", "b"], "accuracy": [0.5, 0.5, 0.7]})
    assert plots.accuracy_matrix(matrix).data[0].z.shape == (2, 2)


def test_human_bytes():
    assert plots.human_bytes(512) == "512 B"
    assert plots.human_bytes(1536) == "1.5 KiB"
    assert plots.human_bytes(3 * 1024**3) == "3.0 GiB"


def test_live_curve_records_and_draws_outside_jupyter():
    live = plots.LiveCurve(every_s=0.0)
    live.show()  # no IPython kernel: nothing shown, nothing fails
    callbacks = live.callbacks("run a")
    for step in range(1, 5):
        callbacks["on_step_end"](None, {"epoch": 1 + (step > 2), "step": step, "loss": 1.0 / step})
        if step % 2 == 0:
            callbacks["on_epoch_end"](None, _history("x").iloc[step // 2 - 1].drop("run").to_dict() | {"step": step})
    fig = live.figure()
    loss, val = fig.data
    assert list(loss.x) == [1, 2, 3, 4] and loss.name == "run a"
    assert list(val.x) == [2, 4]


def test_live_curve_with_a_trainer(backbone, loaders):
    net = pl.PiggybackNet(backbone)
    net.add_task("toy", 3)
    live = plots.LiveCurve(("loss", "val_acc", "sparsity"))
    pl.fit_task(net, "toy", *loaders, pl.TrainConfig(epochs=2, device="cpu"), progress=False,
                callbacks=live.callbacks("toy"))
    assert len(live.epochs) == 2 and len(live.steps) == 2 * len(loaders[0])
    assert len(live.figure().data) == 3
