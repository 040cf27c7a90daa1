"""Experiments: recipes, one-task runs and their result rows, and the notebooks' parameter rules."""

import pytest
from conftest import synthetic_loader

import piggylab as pl
from piggylab import experiments, plots
from piggylab.runs import ParameterError, check_parameters


class _Data:
    """Just enough of a TaskData for run_method: a name, class count and the three splits."""

    def __init__(self, name: str = "toy") -> None:
        self.name, self.num_classes, self.classes = name, 3, ["a", "b", "c"]
        self.loaders = (synthetic_loader(1), synthetic_loader(2), synthetic_loader(3))


def test_train_config_recipes():
    embedded = experiments.train_config("piggyback", epochs=6, device="cpu")
    assert (embedded.epochs, embedded.decay_epochs, embedded.lr_scores) == (6, (4,), 2e-4)
    assert experiments.train_config("finetune").optimizer_name == "sgd"
    paper = experiments.train_config("piggyback", "paper")
    assert (paper.epochs, paper.decay_epochs, paper.lr) == (30, (15,), 1e-4)
    assert experiments.train_config("classifier", epochs=1).decay_epochs == ()
    with pytest.raises(ValueError, match="recipe"):
        experiments.train_config("piggyback", "imagenet")


def test_resolve_sizes():
    common = {"data_scale": None, "epochs": None, "batch_size": None, "embedded_scale": 0.3}
    assert experiments.resolve_sizes("embedded", smoke=False, embedded=True, **common) == (0.3, 4, 64)
    assert experiments.resolve_sizes("paper", smoke=False, embedded=False, **common) == (1.0, 30, 32)
    assert experiments.resolve_sizes("paper", smoke=True, embedded=False, **common) == (0.02, 1, 32)
    assert experiments.resolve_sizes("embedded", smoke=False, embedded=True,
                                     **{**common, "epochs": 2})[1] == 2


def test_run_method_rows(backbone):
    data = _Data()
    net = pl.PiggybackNet(backbone, backbone_name="test")
    rows = {}
    for method in ("classifier", "piggyback", "finetune"):
        config = experiments.train_config(method, epochs=1, device="cpu")
        rows[method], history = experiments.run_method(net, data, config, name=f"toy-{method}", loaders=data.loaders)
        assert list(history["run"]) == [method] and 0 <= rows[method]["accuracy"] <= 1
    assert set(net.tasks) == {"toy-classifier", "toy-piggyback"}  # fine-tuning trains a copy, not a task
    assert net.is_frozen("toy-classifier") and rows["classifier"]["sparsity"] == 0
    assert rows["classifier"]["storage_bytes"] < rows["piggyback"]["storage_bytes"] < rows["finetune"]["storage_bytes"]
    assert rows["finetune"]["task_bn"] is True
    uniform = experiments.train_config("piggyback", epochs=1, device="cpu")
    row, _ = experiments.run_method(net, data, uniform, name="toy-uniform", loaders=data.loaders,
                                    mask=pl.MaskConfig(init="uniform"))
    assert row["initial_sparsity"] > 0.5  # U(-1e-2, 1e-2) against tau 5e-3: about 75% zeros


def test_a_task_trains_the_same_whatever_the_network_holds(backbone):
    data = _Data()
    config = experiments.train_config("piggyback", epochs=1, device="cpu", seed=3)
    alone = pl.PiggybackNet(backbone)
    crowded = pl.PiggybackNet(backbone)
    experiments.run_method(crowded, _Data("other"), config, loaders=data.loaders)
    a, _ = experiments.run_method(alone, data, config, loaders=data.loaders)
    b, _ = experiments.run_method(crowded, data, config, loaders=data.loaders)
    assert a["accuracy"] == b["accuracy"]
    assert all((x == y).all() for x, y in zip(alone.masks("toy").values(), crowded.masks("toy").values()))


def test_compare_methods_labels_and_histories(backbone, monkeypatch):
    data = _Data()
    monkeypatch.setattr(experiments, "make_loaders", lambda *a, **k: data.loaders)
    net = pl.PiggybackNet(backbone)
    live = plots.LiveCurve()
    runs = {"frozen BN": {"config": experiments.train_config("piggyback", epochs=1, device="cpu")},
            "task BN": {"config": experiments.train_config("piggyback", epochs=1, device="cpu"), "task_bn": True}}
    results, histories = experiments.compare_methods(net, data, runs, live=live)
    assert list(results["method"]) == ["frozen BN", "task BN"]
    assert list(results["name"]) == ["toy-frozen_BN", "toy-task_BN"] and list(results["task_bn"]) == [False, True]
    assert set(histories["run"]) == {"frozen BN", "task BN"}
    assert {e["run"] for e in live.epochs} == {"toy: frozen BN", "toy: task BN"}


def test_accuracy_after_each(backbone):
    data = _Data()
    net = pl.PiggybackNet(backbone)
    experiments.run_method(net, data, experiments.train_config("classifier", epochs=1, device="cpu"), loaders=data.loaders)
    rows = experiments.accuracy_after_each(net, ["toy"], {"toy": data.loaders[2]}, device="cpu")
    assert rows == [{"task": "toy", "accuracy": pl.evaluate(net, data.loaders[2], task="toy", device="cpu")}]


@pytest.mark.parametrize(("name", "value", "message"), [
    ("epochs", "three", "an integer >= 1, or None"),
    ("epochs", 0, "an integer >= 1"),
    ("data_scale", 1.5, "a number in (0, 1]"),
    ("backbone", "resnet51", "torchvision classifier"),
    ("device", "gpu", "'cuda:<index>'"),
    ("recipe", "fast", "allowed: embedded, paper"),
    ("smoke", "yes", "must be bool"),
])
def test_parameter_rules_name_the_parameter(name, value, message):
    good = {"backbone": "tiny", "weights": "DEFAULT", "weights_path": None, "data_root": None, "data_scale": None,
            "recipe": "embedded", "epochs": None, "batch_size": None, "device": "auto", "seed": 0, "smoke": False,
            "output_dir": "out"}
    check_parameters(good, experiments.PARAMETER_RULES)
    check_parameters({**good, "backbone": "resnet50", "device": "cuda:1", "epochs": 30}, experiments.PARAMETER_RULES)
    with pytest.raises(ParameterError, match=repr(name)) as error:
        check_parameters({**good, name: value}, experiments.PARAMETER_RULES)
    assert message in str(error.value)


def test_list_rules():
    kinds = experiments.non_empty_list_of(pl.MASK_KINDS)
    assert kinds(["binary", "ternary"]) and not kinds([]) and not kinds(["binary", "binary"])
    assert not kinds("binary") and not kinds(["quaternary"])
    assert "'binary', 'ternary'" in kinds.__doc__
    assert experiments.positive_numbers([1e-3, 2]) and not experiments.positive_numbers([1, -1])
    assert not experiments.positive_numbers([]) and not experiments.positive_numbers([True])


def test_task_name():
    assert experiments.task_name("greek", "task BN") == "greek-task_BN"
    assert experiments.task_name("greek", "tau 0.002") == "greek-tau_0_002"
