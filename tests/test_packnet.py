"""PackNet: packing tasks by pruning, isolation of earlier tasks, the index, order dependence."""

import math

import pytest
import torch
import torchvision

import piggylab as pl
from conftest import synthetic_loader
from piggylab.packnet import PackNet, PackNetConfig, check_fraction, train_packnet

FAST = PackNetConfig(epochs=1, retrain_epochs=1, lr=1e-2, device="cpu", prune_fraction=0.5)


def _logits(net, task, x):
    net.set_task(task)
    net.eval()
    with torch.no_grad():
        return net(x)


def _pack(backbone, names, config=FAST, **kwargs):
    net = PackNet(backbone, **kwargs)
    histories = []
    for i, name in enumerate(names):
        net.add_task(name, 3, seed=i)
        histories.append(train_packnet(net, name, synthetic_loader(10 + i, n=64), synthetic_loader(20 + i, n=32),
                                       config, progress=False))
    return net, histories


def test_earlier_tasks_and_their_weights_are_unchanged_by_later_tasks(backbone):
    x = torch.randn(8, 3, 32, 32)
    net, _ = _pack(backbone, ["a"])
    before = _logits(net, "a", x)
    owned = {layer: net.weight(layer).detach().clone() for layer in net.masked_layers}
    index = net.task_index()
    for i, name in enumerate(["b", "c"], start=1):
        net.add_task(name, 3, seed=i)
        train_packnet(net, name, synthetic_loader(10 + i, n=64), None, FAST, progress=False)
        assert torch.equal(_logits(net, "a", x), before)
    for layer, weight in owned.items():
        mine = index[layer] == 1
        assert torch.equal(net.weight(layer)[mine], weight[mine])
        assert torch.equal(net.task_index()[layer][mine], index[layer][mine])  # nobody takes task a's weights
        assert not torch.equal(net.weight(layer), weight)  # but the freed ones were trained by b and c
    assert not torch.equal(_logits(net, "b", x)[:, :3], _logits(net, "c", x)[:, :3])


def test_free_weights_shrink_by_the_prune_fraction_exactly_per_layer(backbone):
    fractions = [0.5, 0.3, 0.0]
    net = PackNet(backbone)
    expected = {layer: net.weight(layer).numel() for layer in net.masked_layers}
    assert net.free_fraction() == 1.0
    for k, fraction in enumerate(fractions, start=1):
        net.add_task(f"t{k}", 3, seed=k)
        history = train_packnet(net, f"t{k}", synthetic_loader(k, n=32), None,
                                PackNetConfig(epochs=1, retrain_epochs=0, prune_fraction=fraction, device="cpu"),
                                progress=False)
        kept = {layer: n - round(fraction * n) for layer, n in expected.items()}
        expected = {layer: n - kept[layer] for layer, n in expected.items()}
        assert net.free_counts() == expected
        index = net.task_index()
        assert all(int((index[layer] == k).sum()) == kept[layer] for layer in net.masked_layers)
        assert all(index[layer].dtype == torch.uint8 for layer in net.masked_layers)
        assert all(not net.weight(layer)[index[layer] == 0].any() for layer in net.masked_layers)  # pruned = zero
        assert net.task(f"t{k}").free_after == sum(expected.values())
        assert history["phase"].tolist() == ["train"]
    assert net.free_fraction() == 0.0  # prune_fraction 0: the last task keeps every free weight
    assert net.index_bits == math.ceil(math.log2(len(fractions) + 1)) == 2


def test_history_storage_and_frozen_bn(backbone):
    net, (history,) = _pack(backbone, ["a"], bn_mode="frozen")
    assert list(history.columns) == ["phase", "epoch", "step", "loss", "train_acc", "val_acc", "lr", "wall_time"]
    assert history["phase"].tolist() == ["train", "retrain"] and history["step"].tolist() == [2, 4]
    assert history["lr"].tolist() == pytest.approx([1e-2, 1e-3])  # retraining at lr * lr_decay
    assert all(not bn.per_task for _, bn in net.batchnorms())
    shared = {k: v.clone() for k, v in backbone.state_dict().items() if "bn" in k or "downsample.1" in k}
    current = net.backbone_state()
    assert all(torch.equal(current[k], v) for k, v in shared.items())  # frozen BN: the backbone's statistics
    table = net.storage_table()
    assert table.loc[0, "bn_bytes"] == 0 and table.loc[0, "head_bytes"] == 4 * (32 * 3 + 3)
    assert table.loc[0, "owned_fraction"] == pytest.approx(0.5, abs=1e-3)
    assert table.loc[0, "index_bytes"] == math.ceil(net.num_weights / 8)


def test_prunes_the_same_weights_piggyback_masks():
    model = torchvision.models.resnet18(weights=None)
    assert PackNet(model).num_weights == pl.PiggybackNet(model).num_masked_weights


def test_task_order_changes_packnet_but_not_piggyback(backbone):
    x = torch.randn(8, 3, 32, 32)
    loaders = {"a": (synthetic_loader(1, n=64), synthetic_loader(2, n=32)),
               "b": (synthetic_loader(3, n=64, classes=3), synthetic_loader(4, n=32))}
    seeds = {"a": 5, "b": 6}

    def piggyback(order):
        net = pl.PiggybackNet(backbone)
        for name in order:
            net.add_task(name, 3, seed=seeds[name])
            pl.train(net, name, *loaders[name], epochs=1, lr_scores=1e-2, seed=seeds[name], device="cpu",
                     progress=False)
        return {name: _logits(net, name, x) for name in order}

    def packnet(order):
        net = PackNet(backbone)
        for name in order:
            net.add_task(name, 3, seed=seeds[name])
            train_packnet(net, name, *loaders[name], PackNetConfig(epochs=1, retrain_epochs=0, lr=1e-2,
                                                                   seed=seeds[name], device="cpu"), progress=False)
        return {name: _logits(net, name, x) for name in order}, net.task_index()

    forward, backward = piggyback("ab"), piggyback("ba")
    assert all(torch.equal(forward[n], backward[n]) for n in "ab")
    (forward, index_ab), (backward, index_ba) = packnet("ab"), packnet("ba")
    assert not any(torch.equal(forward[n], backward[n]) for n in "ab")
    assert any(not torch.equal(index_ab[layer], index_ba[layer]) for layer in index_ab)


def test_bad_input_errors(backbone):
    net = PackNet(backbone)
    with pytest.raises(KeyError, match="unknown task 'x'"):
        net.set_task("x")
    with pytest.raises(RuntimeError, match="no active task"):
        net(torch.randn(1, 3, 32, 32))
    for bad in (1.0, -0.1, 1.5, True, "0.5", float("nan")):
        with pytest.raises(ValueError, match=r"prune_fraction must be a number in \[0, 1\)"):
            PackNetConfig(prune_fraction=bad)
        with pytest.raises(ValueError, match="prune_fraction"):
            check_fraction(bad)
    with pytest.raises(ValueError, match="unknown bn_mode 'shared'; choose one of frozen, task"):
        PackNet(backbone, bn_mode="shared")
    with pytest.raises(ValueError, match="unknown optimizer"):
        PackNetConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="epochs"):
        PackNetConfig(epochs=0)
    net.add_task("a", 3)
    with pytest.raises(ValueError, match="already exists"):
        net.add_task("a", 3)
    with pytest.raises(ValueError, match="train task 'a'"):
        net.add_task("b", 3)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        net.prune("a", 1.0)
    train_packnet(net, "a", synthetic_loader(1, n=32), None, FAST, progress=False)
    with pytest.raises(ValueError, match="already trained"):
        train_packnet(net, "a", synthetic_loader(1, n=32), None, FAST, progress=False)
    with pytest.raises(ValueError, match="already pruned"):
        net.prune("a", 0.5)
