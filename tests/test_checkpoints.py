"""Checkpoints and resume: `Trainer.fit(checkpoint=, resume=)` and what passes it through
(`fit_task`, `train`, `experiments.run`); the file itself is `piggylab.checkpoints`."""

import json

import pandas as pd
import pytest
import torch
from conftest import synthetic_loader
from kill_support import kill_when_paused
from safetensors import safe_open
from torch.utils.data import DataLoader

import piggylab as pl
from piggylab import experiments
from piggylab.checkpoints import CheckpointError, read_checkpoint

CONFIG = {"epochs": 3, "lr_scores": 1e-2, "decay_epochs": (1,), "bn_mode": "task", "device": "cpu"}
"""Three epochs of four steps, the learning rate decayed after the first, task BN: every part of
a run's state (scores, head, BN statistics, Adam's moments, the schedule, the RNGs) matters."""


class Stop(Exception):
    """Raised by a callback to stop a run in the middle of an epoch, in this process."""


def stop_at(step: int) -> dict:
    def callback(trainer, record):
        if record["step"] == step:
            raise Stop
    return {"on_step_end": callback}


def make_net(seed: int = 0, task: str = "a") -> pl.PiggybackNet:
    torch.manual_seed(seed)
    net = pl.PiggybackNet(pl.tiny_resnet(num_classes=10, widths=(8, 16, 32), blocks=1), backbone_name="tiny-test")
    net.add_task(task, 3, seed=0)
    return net


def fit(net: pl.PiggybackNet, checkpoint=None, *, resume: bool = False, task: str = "a", callbacks=None,
        **overrides) -> pd.DataFrame:
    config = pl.TrainConfig(**{**CONFIG, **overrides})
    return pl.fit_task(net, task, synthetic_loader(1), synthetic_loader(2), config, progress=False,
                       callbacks=callbacks, checkpoint=checkpoint, resume=resume)[1]


def assert_same_run(history, net, reference_history, reference_net, task: str = "a") -> None:
    """Same history (but wall time) and bit-identical mask and head."""
    pd.testing.assert_frame_equal(history.drop(columns="wall_time"), reference_history.drop(columns="wall_time"))
    masks, reference = net.masks(task), reference_net.masks(task)
    assert all(torch.equal(masks[layer], reference[layer]) for layer in reference)
    assert all(torch.equal(a, b) for a, b in zip(net.task_state(task).values(), reference_net.task_state(task).values()))


def test_a_run_killed_mid_epoch_resumes_to_the_same_history_and_mask(tmp_path):
    checkpoint = tmp_path / "a.ckpt"
    kill_when_paused(f"""
        from kill_support import pause
        from test_checkpoints import fit, make_net
        fit(make_net(), {str(checkpoint)!r}, callbacks={{"on_step_end": lambda t, r: r["step"] == 6 and pause()}})
    """)
    _, header = read_checkpoint(checkpoint)
    assert (header["epoch"], header["step"], len(header["history"])) == (1, 4, 1)  # killed in epoch 2, at step 6

    torch.manual_seed(1234)  # whatever this process did before: the checkpoint's RNG states win
    resumed_net = make_net()
    resumed = fit(resumed_net, checkpoint, resume=True)
    reference_net = make_net()
    reference = fit(reference_net)
    assert resumed["epoch"].tolist() == [1, 2, 3] and resumed["lr"].tolist() == pytest.approx([1e-2, 1e-3, 1e-3])
    assert_same_run(resumed, resumed_net, reference, reference_net)
    assert resumed_net.is_frozen("a")  # frozen once the whole run is done
    assert read_checkpoint(checkpoint)[1]["epoch"] == 3


def test_the_checkpoint_holds_the_run_state_in_safetensors_and_json(tmp_path):
    checkpoint = tmp_path / "a.ckpt"
    net = make_net()
    with pytest.raises(Stop):
        fit(net, checkpoint, callbacks=stop_at(6))
    with safe_open(str(checkpoint), "pt") as file:  # a plain safetensors file: nothing to unpickle
        keys, header = set(file.keys()), json.loads(file.metadata()["checkpoint"])
    scores = {f"tensor/{name}" for name, p in net.named_parameters() if name.endswith("scores.a")}
    assert scores and scores <= keys
    assert {"tensor/backbone.fc.heads.a.weight", "tensor/backbone.bn1.per_task.a.running_mean", "rng/torch",
            "rng/generator/0"} <= keys
    assert any(k.startswith("optimizer/") and k.endswith("/exp_avg_sq") for k in keys)  # Adam's moments
    assert header["identity"]["task"] == "a" and header["identity"]["backbone"] == net.fingerprint()
    assert header["identity"]["config"]["lr_scores"] == 1e-2 and "device" not in header["identity"]["config"]
    assert header["scheduler"]["last_epoch"] == 1 and header["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3)
    head_and_bn, trained_scores = header["groups"]  # the groups of `training_groups`, by the model's names
    assert "backbone.fc.heads.a.weight" in head_and_bn and {f"tensor/{n}" for n in trained_scores} == scores
    assert not net.is_frozen("a")  # stopped runs are not frozen


def test_another_task_backbone_or_configuration_is_refused_by_name(tmp_path):
    checkpoint = tmp_path / "greek.ckpt"
    fit(make_net(task="greek"), checkpoint, task="greek", epochs=1, lr_scores=2e-4)
    cases = [
        (make_net(task="fonts"), {"task": "fonts"}, "was made for task 'greek', not 'fonts'"),
        (make_net(seed=1, task="greek"), {"task": "greek"},
         f"was made for backbone {make_net(task='greek').fingerprint()}, not {make_net(seed=1).fingerprint()}"),
        (make_net(task="greek"), {"task": "greek", "lr_scores": 1e-4}, "was made with lr_scores 0.0002, not 0.0001"),
    ]
    for net, settings, message in cases:
        scores = {name: p.detach().clone() for name, p in net.named_parameters() if "scores" in name}
        with pytest.raises(CheckpointError, match=message):
            fit(net, checkpoint, resume=True, **{"epochs": 1, "lr_scores": 2e-4, **settings})
        task = settings["task"]
        assert not net.is_frozen(task)  # the task is untouched and still trainable
        assert all(torch.equal(p, scores[name]) for name, p in net.named_parameters() if "scores" in name)
    with pytest.raises(CheckpointError, match="made with epochs 1, not 2; with lr 0.01, not 0.02: it is another run's"):
        fit(make_net(task="greek"), checkpoint, resume=True, task="greek", lr_scores=2e-4, epochs=2, lr=2e-2)


def test_a_damaged_checkpoint_is_refused_and_resume_false_starts_afresh(tmp_path):
    checkpoint = tmp_path / "a.ckpt"
    checkpoint.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        fit(make_net(), checkpoint, resume=True, epochs=1)
    fresh = fit(make_net(), checkpoint, resume=False, epochs=1)  # overwritten, not read
    assert read_checkpoint(checkpoint)[1]["history"][0]["loss"] == fresh["loss"].iloc[0]
    absent = tmp_path / "none-yet.ckpt"
    net = make_net()
    assert len(fit(net, absent, resume=True, epochs=1)) == 1 and absent.exists()  # no checkpoint: a normal start


def test_a_finished_run_resumes_to_its_result_without_training(tmp_path):
    checkpoint = tmp_path / "a.ckpt"
    first_net = make_net()
    first = fit(first_net, checkpoint)
    steps = []
    again_net = make_net()
    again = fit(again_net, checkpoint, resume=True, callbacks={"on_step_end": lambda t, r: steps.append(r)})
    assert steps == []
    assert_same_run(again, again_net, first, first_net)


def test_a_plain_module_with_sgd_resumes_exactly(tmp_path):
    def run(checkpoint=None, resume=False, stop=None):
        torch.manual_seed(0)
        model = pl.tiny_resnet(num_classes=3, widths=(8, 16, 32))
        config = pl.TrainConfig("finetune", epochs=2, lr=1e-2, optimizer="sgd", decay_epochs=(1,), device="cpu")
        trainer = pl.Trainer(config, progress=False)
        if stop:
            trainer.add_callback("on_step_end", stop_at(stop)["on_step_end"])
        shuffled_by_torch = DataLoader(synthetic_loader(1).dataset, batch_size=32, shuffle=True)  # no generator of its own
        history = trainer.fit(model, [{"params": list(model.parameters()), "lr": 1e-2}], shuffled_by_torch,
                              synthetic_loader(2), describe="fine-tuning", checkpoint=checkpoint, resume=resume)
        return history.drop(columns="wall_time"), model.state_dict()

    checkpoint = tmp_path / "plain.ckpt"
    with pytest.raises(Stop):
        run(checkpoint, stop=7)
    resumed, resumed_state = run(checkpoint, resume=True)
    reference, reference_state = run()
    pd.testing.assert_frame_equal(resumed, reference)
    assert all(torch.equal(resumed_state[k], reference_state[k]) for k in reference_state)  # BN statistics too

    torch.manual_seed(0)
    other = pl.tiny_resnet(num_classes=3, widths=(8, 16, 64))
    with pytest.raises(CheckpointError, match="was made for backbone"):
        pl.Trainer(pl.TrainConfig("finetune", epochs=2, lr=1e-2, optimizer="sgd", decay_epochs=(1,), device="cpu"),
                   progress=False).fit(other, [{"params": list(other.parameters()), "lr": 1e-2}], synthetic_loader(1),
                                       checkpoint=checkpoint, resume=True)


def test_experiments_run_resumes_from_its_checkpoint(tmp_path, backbone):
    class Data:
        name, num_classes, classes, origin = "toy", 3, ["a", "b", "c"], {"synthetic": "toy"}

        def sizes(self):
            return {"train": 128, "val": 128, "test": 128}

    def loaders():
        return synthetic_loader(1), synthetic_loader(2), synthetic_loader(3)

    spec = experiments.RunSpec(experiments.train_config("piggyback", epochs=2, device="cpu"))
    with pytest.raises(Stop):
        experiments.run(pl.PiggybackNet(backbone), Data(), spec, loaders=loaders(), checkpoint_dir=tmp_path,
                        callbacks=stop_at(6))
    [checkpoint] = tmp_path.glob("*.ckpt")  # a failed run leaves its checkpoint, named by the run's key
    assert read_checkpoint(checkpoint)[1]["epoch"] == 1
    resumed = experiments.run(pl.PiggybackNet(backbone), Data(), spec, loaders=loaders(), checkpoint_dir=tmp_path)
    assert not checkpoint.exists()  # a finished run leaves none
    reference = experiments.run(pl.PiggybackNet(backbone), Data(), spec, loaders=loaders())
    same = ["accuracy", "val_accuracy", "train_accuracy", "sparsity", "steps", "storage_bytes"]
    assert {k: resumed.row[k] for k in same} == {k: reference.row[k] for k in same}
    assert (resumed.row["resumed_epoch"], reference.row["resumed_epoch"]) == (1, 0)
    pd.testing.assert_frame_equal(resumed.history.drop(columns="wall_time"), reference.history.drop(columns="wall_time"))


def test_a_checkpoint_of_other_trained_tensors_is_refused(tmp_path):
    torch.manual_seed(0)
    model = pl.tiny_resnet(num_classes=3, widths=(8, 16, 32))
    trainer = pl.Trainer(pl.TrainConfig("finetune", epochs=1, device="cpu"), progress=False)
    head = [{"params": list(model.fc.parameters()), "lr": 1e-2}]
    checkpoint = tmp_path / "head.ckpt"
    trainer.fit(model, head, synthetic_loader(1), backbone="same", checkpoint=checkpoint)
    everything = [{"params": list(model.parameters()), "lr": 1e-2}]
    with pytest.raises(CheckpointError, match=r"trains other tensors than this run: 0 only in the checkpoint, "
                                              r"\d+ only in this run \(e.g. bn1.bias\)"):
        trainer.fit(model, everything, synthetic_loader(1), backbone="same", checkpoint=checkpoint, resume=True)
