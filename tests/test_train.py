import math

import pandas as pd
import pytest
import torch

import piggylab as pl
from conftest import synthetic_loader


def _net(backbone, *tasks, **task_kwargs):
    net = pl.PiggybackNet(backbone, backbone_name="tiny-test")
    for task in tasks:
        net.add_task(task, 3, **task_kwargs)
    return net


def _logits(net, task, x):
    net.set_task(task)
    net.eval()
    with torch.no_grad():
        return net(x)


def test_piggyback_learns_and_returns_history(backbone, loaders):
    net = _net(backbone, "a")
    steps, epochs = [], []
    config = pl.TrainConfig("piggyback", epochs=3, lr=1e-2, lr_scores=1e-2)
    model, history = pl.fit_task(net, "a", *loaders, config, progress=False, callbacks={
        "on_step_end": lambda t, r: steps.append(r["step"]), "on_epoch_end": lambda t, r: epochs.append(r["epoch"])})
    assert model is net and isinstance(history, pd.DataFrame)
    assert list(history.columns) == ["epoch", "step", "loss", "train_acc", "val_acc", "lr", "wall_time", "sparsity"]
    assert history["epoch"].tolist() == [1, 2, 3] and steps == list(range(1, 13)) and epochs == [1, 2, 3]
    assert history["val_acc"].iloc[-1] > 0.6  # three classes: chance is 1/3
    assert 0 < history["sparsity"].iloc[-1] < 0.5
    assert net.is_frozen("a")  # only the thresholded mask is kept


def test_the_trainer_trains_any_module_from_its_parameter_groups(loaders):
    torch.manual_seed(0)
    model = pl.tiny_resnet(num_classes=3, widths=(8, 16, 32))
    head, body = list(model.fc.parameters()), [p for n, p in model.named_parameters() if not n.startswith("fc.")]
    frozen = [p.detach().clone() for p in body]
    history = pl.Trainer(pl.TrainConfig(epochs=2), progress=False).fit(
        model.requires_grad_(True), [{"params": head, "lr": 1e-2}], *loaders)
    assert list(history.columns) == ["epoch", "step", "loss", "train_acc", "val_acc", "lr", "wall_time"]
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert all(torch.equal(a, b) for a, b in zip(frozen, body))  # only the group's parameters moved


def test_same_seed_same_history_on_cpu(backbone, loaders):
    def run():
        torch.manual_seed(0)
        net = _net(backbone, "a")
        return pl.train(net, "a", *loaders, epochs=2, seed=3, progress=False).drop(columns="wall_time")
    pd.testing.assert_frame_equal(run(), run())


def test_backbone_and_other_tasks_are_bit_identical_after_training(backbone, loaders):
    x = torch.randn(8, 3, 32, 32)
    net = _net(backbone, "a", "b", task_bn=False)
    net.add_task("c", 3, task_bn=True)
    pl.train(net, "a", *loaders, epochs=1, lr_scores=1e-2, progress=False)
    before_state = {k: v.clone() for k, v in net.backbone_state().items()}
    before_a = _logits(net, "a", x)
    pl.train(net, "b", *loaders, epochs=1, lr_scores=1e-2, progress=False)
    pl.train(net, "c", *loaders, epochs=1, lr_scores=1e-2, progress=False)
    pl.train(net, "c", *loaders, epochs=1, method="finetune", progress=False)
    assert torch.equal(_logits(net, "a", x), before_a)
    assert all(torch.equal(before_state[k], v) for k, v in net.backbone_state().items())


def test_task_order_does_not_matter(backbone):
    x = torch.randn(8, 3, 32, 32)
    data = {"a": (synthetic_loader(1), None), "b": (synthetic_loader(5), None)}

    def results(order):
        net = pl.PiggybackNet(backbone)
        for task in order:  # tasks added, and trained, in the given order
            net.add_task(task, 3, task_bn=True, seed=0)
        for task in order:
            pl.train(net, task, *data[task], epochs=1, seed=0, lr_scores=1e-2, progress=False)
        return {task: _logits(net, task, x) for task in "ab"}

    first, second = results("ab"), results("ba")
    assert torch.equal(first["a"], second["a"]) and torch.equal(first["b"], second["b"])


def test_classifier_only_trains_the_head_only(backbone, loaders):
    net = _net(backbone, "a")
    head_before = net.heads.heads["a"].weight.clone()
    pl.train(net, "a", *loaders, method="classifier", epochs=1, progress=False)
    assert net.is_frozen("a") and all(mask.all() for mask in net.masks("a").values())  # the mask stays all ones
    assert not torch.equal(head_before, net.heads.heads["a"].weight)


def test_finetune_trains_a_separate_copy(backbone, loaders):
    net = _net(backbone, "a")
    before = {k: v.clone() for k, v in net.backbone_state().items()}
    model, _ = pl.fit_task(net, "a", *loaders, pl.TrainConfig("finetune", epochs=1), progress=False)
    assert all(torch.equal(before[k], v) for k, v in net.backbone_state().items())
    assert type(model) is type(backbone)
    trained = dict(model.named_parameters())
    assert not torch.equal(trained["conv1.weight"], net.original_weight("conv1"))


def test_task_bn_mode_trains_a_copy_and_keeps_shared_statistics(backbone, loaders):
    net = _net(backbone, "a")
    shared = {k: v.clone() for k, v in net.backbone_state().items() if "running" in k}
    pl.train(net, "a", *loaders, epochs=1, bn_mode="task", progress=False)
    assert net.tasks["a"].task_bn
    bn = dict(net.batchnorms())["bn1"]
    assert not torch.equal(bn.per_task["a"].running_mean, bn.shared.running_mean)
    assert all(torch.equal(shared[k], v) for k, v in net.backbone_state().items() if "running" in k)


def test_nan_loss_stops_with_the_step(backbone):
    x = torch.randn(64, 3, 32, 32)
    x[40] = math.nan
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(64, dtype=torch.long)), batch_size=16)
    net = _net(backbone, "a")
    with pytest.raises(pl.TrainingDiverged, match="at step 3"):
        pl.train(net, "a", loader, epochs=1, progress=False)


def test_bad_input(backbone, loaders):
    net = _net(backbone, "a")
    with pytest.raises(KeyError, match="known tasks: a"):
        pl.train(net, "missing", *loaders, progress=False)
    with pytest.raises(ValueError, match="piggyback, finetune, classifier"):
        pl.TrainConfig("sgd-everything")
    with pytest.raises(ValueError, match="lr"):
        pl.TrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match="on_step_end"):
        pl.Trainer().add_callback("on_party", print)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="epochs must be a positive integer"):
            pl.TrainConfig(epochs=bad)


def test_paper_recipe():
    recipe = pl.paper_recipe("piggyback")
    assert (recipe.lr, recipe.lr_scores, recipe.epochs, recipe.decay_epochs, recipe.lr_decay) == (1e-4, 1e-4, 30, (15,), 0.1)
    assert recipe.optimizer_name == "adam"
    assert pl.paper_recipe("finetune").optimizer_name == "sgd"
    assert pl.paper_recipe("piggyback", epochs=2).epochs == 2


def test_lr_schedule_decays(backbone, loaders):
    net = _net(backbone, "a")
    history = pl.train(net, "a", *loaders, epochs=3, lr=1e-3, decay_epochs=(2,), progress=False)
    assert history["lr"].tolist() == pytest.approx([1e-3, 1e-3, 1e-4])


def test_device_auto_resolves():
    assert pl.resolve_device("auto").type in {"cuda", "mps", "cpu"}
    assert pl.resolve_device("cpu").type == "cpu"


def test_optimizers_are_fused_where_pytorch_has_a_fused_kernel():
    weight = torch.nn.Parameter(torch.randn(4, 3))
    adam = pl.make_optimizer("adam", [{"params": [weight], "lr": 0.1}])
    sgd = pl.make_optimizer("sgd", [weight], lr=0.1, momentum=0.5)
    assert adam.defaults["fused"] and sgd.defaults["fused"] and sgd.defaults["momentum"] == 0.5
    assert adam.param_groups[0]["lr"] == 0.1
    elsewhere = torch.nn.Parameter(torch.randn(4, 3, device="meta"))
    assert not pl.make_optimizer("adam", [elsewhere]).defaults["fused"]
    weight.grad = torch.ones_like(weight)
    before = weight.detach().clone()
    adam.step()
    assert torch.allclose(weight.detach(), before - 0.1)  # Adam's first step: lr * sign(grad)
    with pytest.raises(ValueError, match="adam, sgd"):
        pl.make_optimizer("lbfgs", [weight])


def test_a_head_warm_up_keeps_the_scores_still_then_trains_them(backbone, loaders):
    net = _net(backbone, "a")
    start = {layer: masks.scores["a"].detach().clone() for layer, masks, _ in net.masked_weights()}
    moved = []

    def after_epoch(trainer, row):
        moved.append(any(not torch.equal(start[layer], masks.scores["a"]) for layer, masks, _ in net.masked_weights()))

    head = net.heads.heads["a"].weight.detach().clone()
    pl.fit_task(net, "a", *loaders, pl.TrainConfig(epochs=2, warmup_epochs=1, lr_scores=1e-2, freeze_at_end=False),
                progress=False, callbacks={"on_epoch_end": after_epoch})
    assert moved == [False, True]  # the scores wait one epoch, then train
    assert not torch.equal(head, net.heads.heads["a"].weight)
    for bad in (2, -1, 1.5):
        with pytest.raises(ValueError, match="warmup_epochs"):
            pl.TrainConfig(epochs=2, warmup_epochs=bad)


def _stop_at(step: int):
    """An on_step_end callback asking the trainer to stop once `step` is done."""
    return lambda trainer, record: record["step"] == step and trainer.stop()


def test_a_stop_ends_the_run_after_the_current_step_with_the_partial_epoch_recorded(backbone, loaders, tmp_path):
    net = _net(backbone, "a")
    steps, epochs = [], []
    trainer = pl.Trainer(pl.TrainConfig(epochs=3, lr_scores=1e-2), progress=False)
    trainer.add_callback("on_step_end", lambda t, r: steps.append(r["step"]))
    trainer.add_callback("on_step_end", _stop_at(6))  # 4 batches an epoch: step 6 is the middle of epoch 2
    trainer.add_callback("on_epoch_end", lambda t, r: epochs.append(r["epoch"]))
    model, groups = net.training_groups("a", "piggyback", lr=1e-2, lr_scores=1e-2)
    checkpoint = tmp_path / "a.ckpt"
    history = trainer.fit(model, groups, *loaders, checkpoint=checkpoint)

    assert trainer.stopped and steps == [1, 2, 3, 4, 5, 6] and epochs == [1, 2]
    assert history["epoch"].tolist() == [1, 2] and history["step"].tolist() == [4, 6]
    assert history["val_acc"].notna().all() and 0 < history["train_acc"].iloc[-1] <= 1
    from piggylab.checkpoints import read_checkpoint
    assert read_checkpoint(checkpoint)[1]["epoch"] == 1  # the partial epoch is not a resumable one

    fresh = pl.Trainer(pl.TrainConfig(epochs=2, lr_scores=1e-2), progress=False)
    fresh.stop()  # a request made before fit starts is dropped: each fit starts afresh
    assert len(fresh.fit(model, groups, *loaders)) == 2 and not fresh.stopped


def test_a_stop_at_an_epochs_last_step_keeps_that_epoch_whole(backbone, loaders):
    net = _net(backbone, "a")
    model, history = pl.fit_task(net, "a", *loaders, pl.TrainConfig(epochs=3), progress=False,
                                 callbacks={"on_step_end": _stop_at(4)})
    assert history["step"].tolist() == [4] and net.is_frozen("a")  # what it trained is frozen into its mask


def test_a_stop_from_another_thread_ends_the_run(backbone, loaders):
    import threading

    net = _net(backbone, "a")
    trainer = pl.Trainer(pl.TrainConfig(epochs=50), progress=False)
    started = threading.Event()
    trainer.add_callback("on_step_end", lambda t, r: started.set())
    model, groups = net.training_groups("a", "piggyback", lr=1e-2, lr_scores=1e-2)
    worker = threading.Thread(target=trainer.fit, args=(model, groups, *loaders))
    worker.start()
    assert started.wait(60)
    trainer.stop()
    worker.join(60)
    assert not worker.is_alive() and trainer.stopped and len(trainer.history) < 50


def test_recalibrate_batchnorm_is_the_plain_average_over_the_loader():
    torch.manual_seed(0)
    conv, bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)
    model = torch.nn.Sequential(conv, bn).eval()
    bn.running_mean.fill_(5.0)
    bn.running_var.fill_(9.0)
    x = torch.randn(32, 3, 8, 8) * 2 + 1
    dataset = torch.utils.data.TensorDataset(x, torch.zeros(32, dtype=torch.long))
    loader = torch.utils.data.DataLoader(dataset, batch_size=8)
    weight = conv.weight.detach().clone()
    assert pl.recalibrate_batchnorm(model, [bn], loader, device="cpu") == 32
    with torch.no_grad():
        batches = [conv(part) for part in x.split(8)]
    expected_mean = torch.stack([y.mean((0, 2, 3)) for y in batches]).mean(0)
    expected_var = torch.stack([y.var((0, 2, 3), unbiased=True) for y in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected_mean)
    torch.testing.assert_close(bn.running_var, expected_var)
    assert bn.momentum == 0.1 and not model.training and torch.equal(conv.weight, weight)  # nothing else changed


def test_task_bn_statistics_are_re_estimated_with_the_final_mask(backbone, loaders):
    """The trained task BN's statistics are those of its final mask (train.py's docstring): a
    fresh re-estimate changes them by rounding only; without `recalibrate_bn`, by far more.
    Compared: the first BN's mean, the one statistic that does not depend on how the shuffled
    batches are made up (a variance averages within-batch spreads; a later layer's input
    passes through the batch statistics of the layers before it)."""
    change = {}
    for recalibrate in (True, False):
        torch.manual_seed(0)
        net = _net(backbone, "a")
        config = pl.TrainConfig("piggyback", epochs=2, lr=1e-2, lr_scores=1e-2, bn_mode="task",
                                recalibrate_bn=recalibrate)
        pl.fit_task(net, "a", *loaders, config, progress=False)
        assert 0 < pl.overall_sparsity(net, "a")  # the mask moved
        first = dict(net.batchnorms())["bn1"].per_task["a"]
        trained = first.running_mean.clone()
        pl.recalibrate_batchnorm(net, [first], loaders[0], device="cpu")  # 4 batches of 32 images
        change[recalibrate] = float((trained - first.running_mean).abs().max())
    assert change[True] < 1e-5 < 1e-2 < change[False], change
