"""Task switching: a frozen task's layers compute exactly ``W * mask`` of the active task,
whatever happened before (switches, new masks, removals, casts, copies), from masks kept
at 1 bit per weight."""

import copy

import pytest
import torch

import piggylab as pl
from conftest import random_masks


def frozen_net(backbone, kinds=("binary", "binary")):
    net = pl.PiggybackNet(backbone)
    for i, kind in enumerate(kinds):
        name = f"t{i}"
        net.add_task(name, 3, mask=pl.MaskConfig(kind=kind), seed=i)
        net.set_masks(name, random_masks(net, 0.3, seed=i, kind=kind))
    return net.eval()


def assert_merged(net, task):
    """Every layer computes with exactly the task's masked original weight."""
    for layer, masks, weight in net.masked_weights():
        assert torch.equal(masks.merged, weight * masks.mask(task, net.task(task).mask)), layer


@pytest.mark.parametrize("kinds", [("binary", "binary"), ("ternary", "binary")])
def test_switching_gives_each_task_its_exact_weights_and_logits(backbone, kinds):
    net = frozen_net(backbone, kinds)
    x = torch.randn(4, 3, 32, 32)
    first = {}
    for task in ("t0", "t1", "t0", "t1", "t0"):
        net.set_task(task)
        assert_merged(net, task)
        with torch.no_grad():
            logits = net(x)
        assert torch.equal(logits, first.setdefault(task, logits))
    assert not torch.equal(first["t0"][:, :3], first["t1"][:, :3])


def test_frozen_masks_are_held_at_one_bit_per_weight(backbone):
    net = frozen_net(backbone, ("binary", "ternary"))
    for bits, task in ((1, "t0"), (2, "t1")):
        packed = sum(t.numel() * t.element_size() for t in net.packed_masks(task).values())
        assert packed * 8 <= bits * net.num_masked_weights + 8 * len(net.masked_layers)  # a padding byte per layer
    assert all(not masks.scores for _, masks, _ in net.masked_weights())


def test_new_masks_of_the_active_task_are_used(backbone):
    net = frozen_net(backbone)
    net.set_task("t0")
    net.set_masks("t0", random_masks(net, 0.5, seed=9))
    assert_merged(net, "t0")


def test_a_cast_is_followed_and_an_in_place_change_needs_a_switch(backbone):
    net = frozen_net(backbone)
    net.set_task("t1")
    net.double()
    assert_merged(net, "t1")
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        net(x)
        net.original_weight(next(iter(net.masked_layers))).mul_(2)  # the backbone is frozen: re-merge by hand
    net.set_task("t1")
    assert_merged(net, "t1")


def test_removing_the_active_task_switches_to_another(backbone):
    net = frozen_net(backbone)
    net.set_task("t0")
    net.remove_task("t0")
    assert net.active_task == "t1"
    assert_merged(net, "t1")
    assert all("t0" not in masks.packed for _, masks, _ in net.masked_weights())


def test_a_deep_copy_switches_on_its_own_weights(backbone):
    net = frozen_net(backbone)
    net.set_task("t0")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
        twin = copy.deepcopy(net)
        twin.set_task("t1")
        twin.set_task("t0")
        assert torch.equal(twin(x), before)
        twin.original_weight(next(iter(twin.masked_layers))).zero_()
        twin.set_task("t0")
        assert torch.equal(net(x), before) and not torch.equal(twin(x), before)
    assert_merged(twin, "t0")


def test_a_bad_mask_leaves_the_task_as_it_was(backbone):
    net = frozen_net(backbone)
    net.set_task("t0")
    masks = random_masks(net, 0.5, seed=9)
    last = list(net.masked_layers)[-1]
    masks[last] = masks[last][:1]
    with pytest.raises(ValueError, match="shape"):
        net.set_masks("t0", masks)
    del masks[last]
    with pytest.raises(KeyError, match="no mask"):
        net.set_masks("t0", masks)
    expected = random_masks(net, 0.3, seed=0)
    assert all(torch.equal(net.masks("t0")[layer], expected[layer]) for layer in net.masked_layers)
    assert_merged(net, "t0")


def test_a_frozen_task_reads_its_merged_weight_and_a_training_task_its_scores(backbone):
    net = frozen_net(backbone)
    net.set_task("t0")
    assert all(masks.merged is not None for _, masks, _ in net.masked_weights())
    net.add_task("new", 3)
    assert all(masks.merged is None for _, masks, _ in net.masked_weights())  # no stale copy while training
    x = torch.randn(2, 3, 32, 32)
    net.train()
    net(x).sum().backward()
    assert all(masks.scores["new"].grad is not None for _, masks, _ in net.masked_weights())
