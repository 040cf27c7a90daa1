"""Experiments: recipes, one-task runs and their result rows, the run cache, the order check."""

import json
import threading

import pytest
import torch
from conftest import synthetic_loader

import piggylab as pl
from piggylab import experiments, plots
from piggylab.cache import RunCache


class _Data:
    """Just enough of a TaskData for `run`: a name, origin, sizes, class count and the three splits."""

    def __init__(self, name: str = "toy") -> None:
        self.name, self.num_classes, self.classes = name, 3, ["a", "b", "c"]
        self.origin = {"synthetic": name}
        self.loaders = (synthetic_loader(1), synthetic_loader(2), synthetic_loader(3))
        self.test = self.loaders[2].dataset

    def sizes(self) -> dict:
        return {"train": 128, "val": 128, "test": 128}


def _spec(method: str, **overrides) -> experiments.RunSpec:
    mask = overrides.pop("mask", pl.MaskConfig())
    return experiments.RunSpec(experiments.train_config(method, epochs=1, device="cpu", **overrides), mask)


def test_train_config_recipes():
    embedded = experiments.train_config("piggyback", epochs=6, device="cpu")
    assert embedded.epochs == 6 and embedded.decay_epochs == (4,)
    recipes = experiments.EMBEDDED_RECIPES
    assert embedded.lr_scores == recipes[("piggyback", "frozen")]["lr_scores"] and embedded.bn_mode is None
    task_bn = experiments.train_config("piggyback", bn_mode="task")
    assert task_bn.lr_scores == recipes[("piggyback", "task")]["lr_scores"] and task_bn.bn_mode == "task"
    assert experiments.train_config("finetune").optimizer_name == recipes[("finetune", "task")]["optimizer"]
    assert experiments.train_config("classifier", bn_mode="task").lr == recipes[("classifier", "frozen")]["lr"]
    assert experiments.train_config("piggyback", epochs=1).warmup_epochs == 0  # no warm-up longer than the run
    paper = experiments.train_config("piggyback", "paper")
    assert (paper.epochs, paper.decay_epochs, paper.lr) == (30, (15,), 1e-4)
    assert experiments.train_config("classifier", epochs=1).decay_epochs == ()
    with pytest.raises(ValueError, match="recipe"):
        experiments.train_config("piggyback", "imagenet")


def test_resolve_sizes():
    common = {"data_scale": None, "epochs": None, "batch_size": None}
    embedded = experiments.resolve_sizes("embedded", smoke=False, embedded=True, **common)
    assert embedded == (experiments.EMBEDDED_SCALE, experiments.RECIPE_EPOCHS["embedded"],
                        experiments.RECIPE_BATCH_SIZE["embedded"])
    assert experiments.resolve_sizes("paper", smoke=False, embedded=False, **common) == (1.0, 30, 32)
    assert experiments.resolve_sizes("paper", smoke=True, embedded=False, **common) == (0.02, 1, 32)
    assert experiments.resolve_sizes("embedded", smoke=False, embedded=True, **{**common, "epochs": 2})[1] == 2


def test_run_rows(backbone):
    data = _Data()
    net = pl.PiggybackNet(backbone, backbone_name="test")
    rows = {}
    for method in ("classifier", "piggyback", "finetune"):
        result = experiments.run(net, data, _spec(method), task=f"toy-{method}", loaders=data.loaders)
        rows[method] = result.row
        assert list(result.history["label"]) == [method] and 0 <= result.row["accuracy"] <= 1
        assert result.row["method"] == result.row["label"] == method and not result.cached
    assert set(net.tasks) == {"toy-classifier", "toy-piggyback"}  # fine-tuning trains a copy, not a task
    assert net.is_frozen("toy-classifier") and rows["classifier"]["sparsity"] == 0
    assert rows["classifier"]["storage_bytes"] < rows["piggyback"]["storage_bytes"] < rows["finetune"]["storage_bytes"]
    assert rows["finetune"]["bn_mode"] == "task" and rows["piggyback"]["bn_mode"] == "frozen"
    uniform = experiments.run(net, data, _spec("piggyback", mask=pl.MaskConfig(init="uniform")), task="toy-uniform",
                              loaders=data.loaders)
    assert uniform.row["initial_sparsity"] > 0.5  # U(-1e-2, 1e-2) against tau 5e-3: about 75% zeros


def test_a_task_trains_the_same_whatever_the_network_holds(backbone):
    data = _Data()
    spec = _spec("piggyback", seed=3)
    alone, crowded = pl.PiggybackNet(backbone), pl.PiggybackNet(backbone)
    experiments.run(crowded, _Data("other"), spec, loaders=data.loaders)
    a = experiments.run(alone, data, spec, loaders=data.loaders).row
    b = experiments.run(crowded, data, spec, loaders=data.loaders).row
    assert a["accuracy"] == b["accuracy"]
    assert all(torch.equal(x, y) for x, y in zip(alone.masks("toy").values(), crowded.masks("toy").values()))


def test_the_cache_trains_a_run_once_and_a_changed_setting_trains_again(backbone, tmp_path, monkeypatch):
    data = _Data()
    monkeypatch.setattr(experiments, "make_loaders", lambda *a, **k: data.loaders)
    cache = RunCache(tmp_path / "cache")
    first = experiments.run(pl.PiggybackNet(backbone), data, _spec("piggyback"), cache=cache)
    again_net = pl.PiggybackNet(backbone)
    again = experiments.run(again_net, data, _spec("piggyback"), cache=cache)
    assert not first.cached and again.cached and again.row == first.row
    relabelled = experiments.run(pl.PiggybackNet(backbone), data, experiments.RunSpec(_spec("piggyback").config,
                                                                                     label="binary"), cache=cache)
    assert relabelled.cached and relabelled.row["label"] == "binary"  # the same run, named by this spec
    assert set(relabelled.history["label"]) == {"binary"}
    explicit = pl.MaskConfig(scale=pl.MaskConfig().init_scale)  # the default init scale, named
    assert experiments.run(pl.PiggybackNet(backbone), data, _spec("piggyback", mask=explicit), cache=cache).cached
    assert again_net.is_frozen("toy")  # the task was loaded from its task file, mask and head included
    assert again.history.equals(first.history)
    entries = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(entries) == 1 and json.loads((entries[0] / "spec.json").read_text())["config"]["method"] == "piggyback"
    changed = experiments.run(pl.PiggybackNet(backbone), data, _spec("piggyback", lr_scores=3e-4), cache=cache)
    seed = experiments.run(pl.PiggybackNet(backbone), data, _spec("piggyback", seed=1), cache=cache)
    mask = experiments.run(pl.PiggybackNet(backbone), data, _spec("piggyback", mask=pl.MaskConfig(threshold=6e-3)),
                           cache=cache)
    assert not (changed.cached or seed.cached or mask.cached)
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 4
    torch.manual_seed(1)  # training reseeds the global RNG: draw other weights explicitly
    other_backbone = pl.tiny_resnet(num_classes=10, widths=(8, 16, 32))
    assert not experiments.run(pl.PiggybackNet(other_backbone), data, _spec("piggyback"), cache=cache).cached


def test_the_cache_key_follows_the_code_version(backbone, tmp_path, monkeypatch):
    from piggylab import cache as cache_module

    data = _Data()
    monkeypatch.setattr(experiments, "make_loaders", lambda *a, **k: data.loaders)
    cache = RunCache(tmp_path)
    experiments.run(pl.PiggybackNet(backbone), data, _spec("classifier"), cache=cache)
    monkeypatch.setattr(cache_module, "code_version", lambda: "edited")
    assert not experiments.run(pl.PiggybackNet(backbone), data, _spec("classifier"), cache=cache).cached


def test_compare_labels_and_histories(backbone, monkeypatch):
    data = _Data()
    monkeypatch.setattr(experiments, "make_loaders", lambda *a, **k: data.loaders)
    net = pl.PiggybackNet(backbone)
    live = plots.LiveCurve()
    specs = [_spec("piggyback", bn_mode="frozen"), _spec("piggyback", bn_mode="task")]
    results, histories = experiments.compare(net, data, specs, live=live)
    assert list(results["method"]) == ["piggyback", "piggyback"]
    assert list(results["label"]) == ["piggyback", "piggyback + task BN"]
    assert list(results["name"]) == ["toy-piggyback", "toy-piggyback_task_BN"]
    assert list(results["bn_mode"]) == ["frozen", "task"]
    assert set(histories["label"]) == {"piggyback", "piggyback + task BN"}
    assert {e["run"] for e in live.epochs} == {"toy: piggyback", "toy: piggyback + task BN"}


def test_order_check_finds_the_same_mask_when_trained_last(backbone, monkeypatch):
    data, other = _Data(), _Data("other")
    monkeypatch.setattr(experiments, "make_loaders", lambda *a, **k: data.loaders)
    net = pl.PiggybackNet(backbone)
    spec = _spec("piggyback", lr_scores=1e-2)
    experiments.run(net, data, spec)
    experiments.run(net, other, spec)
    row = experiments.order_check(net, backbone, data, spec)
    assert row["order_check"] == "identical" and row["order"] == "trained last" and row["tasks_before"] == 1
    assert row["sparsity"] > 0  # the mask moved, so the check compares something


def test_copy_task_refuses_another_backbone(backbone):
    net = pl.PiggybackNet(backbone)
    net.add_task("a", 3)
    net.freeze_task("a")
    copy = pl.PiggybackNet(backbone)
    experiments.copy_task(net, copy, "a")
    x = torch.randn(2, 3, 32, 32)
    net.eval(), copy.eval()
    net.set_task("a"), copy.set_task("a")
    assert torch.equal(net(x), copy(x))
    torch.manual_seed(1)
    with pytest.raises(ValueError, match="different backbones"):
        experiments.copy_task(net, pl.PiggybackNet(pl.tiny_resnet(num_classes=10, widths=(8, 16, 32))), "a")


def test_accuracy_after_each(backbone):
    data = _Data()
    net = pl.PiggybackNet(backbone)
    experiments.run(net, data, _spec("classifier"), loaders=data.loaders)
    rows = experiments.accuracy_after_each(net, ["toy"], {"toy": data.loaders[2]}, device="cpu")
    assert rows == [{"task": "toy", "accuracy": pl.evaluate(net, data.loaders[2], task="toy", device="cpu")}]


def test_task_name():
    assert experiments.task_name("greek", "task BN") == "greek-task_BN"
    assert experiments.task_name("greek", "tau 0.002") == "greek-tau_0_002"


def test_a_run_a_callback_stops_says_so_and_is_not_cached(backbone, tmp_path, monkeypatch):
    data = _Data()
    monkeypatch.setattr(experiments, "make_loaders", lambda *a, **k: data.loaders)
    cache = RunCache(tmp_path / "cache")
    stop = {"on_step_end": lambda trainer, record: record["step"] == 2 and trainer.stop()}
    stopped = experiments.run(pl.PiggybackNet(backbone), data, _spec("piggyback"), cache=cache, callbacks=stop)
    assert stopped.row["status"] == "stopped" and stopped.row["steps"] == 2 and len(stopped.history) == 1
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]  # a partial run is never reused
    done = experiments.run(pl.PiggybackNet(backbone), data, _spec("piggyback"), cache=cache)
    assert not done.cached and done.row["status"] == "done" and done.row["steps"] == len(data.loaders[0])


def test_compare_over_tasks_trains_what_no_one_else_is_training_first(backbone, tmp_path, monkeypatch):
    from filelock import FileLock

    from piggylab.cache import run_key

    data, other = _Data(), _Data("other")
    monkeypatch.setattr(experiments, "make_loaders", lambda *a, **k: data.loaders)
    cache, net = RunCache(tmp_path), pl.PiggybackNet(backbone)
    specs = [_spec("classifier"), _spec("piggyback")]
    busy = FileLock(str(tmp_path / f"{run_key(experiments._spec_record(net, data, specs[0], 32))}.lock"),
                    thread_local=False)
    busy.acquire()  # as if another notebook were training toy's classifier-only run
    backstop = threading.Timer(60, busy.release)  # a compare that waits at once fails (below) rather than hangs
    backstop.start()

    class Trained:  # enough of a LiveCurve: records the order runs train in; the first one ends the other's run
        order: list[str] = []

        def callbacks(self, run):
            def on_epoch_end(trainer, record):
                self.order.append(run)
                busy.release()
            return {"on_epoch_end": on_epoch_end}

        def add_history(self, run, history):
            self.order.append(f"read {run}")

    live = Trained()
    rows, histories = experiments.compare(net, [data, other], specs, cache=cache, live=live)
    assert live.order == ["other: classifier", "toy: piggyback", "other: piggyback", "toy: classifier"]
    assert list(zip(rows["task"], rows["method"])) == [("toy", "classifier"), ("toy", "piggyback"),
                                                      ("other", "classifier"), ("other", "piggyback")]
    assert list(histories["task"].unique()) == ["toy", "other"]
    backstop.cancel()
