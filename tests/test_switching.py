"""Task switching over flat weights: the merged weights are exactly ``W * mask`` of the
active task, whatever happened before (switches, new masks, casts, in-place changes)."""

import pytest
import torch

import piggylab as pl
from piggylab.masks import apply_mask


def random_masks(net, zero_fraction, seed, kind="binary"):
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for layer in net.masked_layers:
        u = torch.rand(net.original_weight(layer).shape, generator=g)
        mask = u >= zero_fraction
        masks[layer] = mask if kind == "binary" else mask.to(torch.int8) - (u < zero_fraction / 2).to(torch.int8)
    return masks


def frozen_net(backbone, kinds=("binary", "binary")):
    net = pl.PiggybackNet(backbone)
    for i, kind in enumerate(kinds):
        name = f"t{i}"
        net.add_task(name, 3, mask=pl.MaskConfig(kind=kind), seed=i)
        net.set_masks(name, random_masks(net, 0.3, seed=i, kind=kind))
    return net.eval()


def assert_merged(net, task):
    """Every layer computes with exactly the task's masked original weight."""
    for layer, (module, attr) in net.masked_layers.items():
        expected = apply_mask(net.original_weight(layer), net.parametrization(layer).mask(task))
        assert torch.equal(getattr(module, attr), expected), layer


def test_weights_are_views_of_one_flat_tensor_and_unchanged(backbone):
    net = pl.PiggybackNet(backbone)
    originals = [net.original_weight(layer) for layer in net.masked_layers]
    storages = {w.untyped_storage().data_ptr() for w in originals}
    assert storages == {net._flat.flat.untyped_storage().data_ptr()}
    for layer, weight in zip(net.masked_layers, originals):
        assert torch.equal(weight, backbone.get_submodule(layer).weight), layer


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
    for task in ("t0", "t1"):  # each task's masks are kept once: views of one flat mask
        storages = {net.parametrization(layer).mask(task).untyped_storage().data_ptr() for layer in net.masked_layers}
        assert len(storages) == 1


def test_new_masks_of_the_active_task_are_used(backbone):
    net = frozen_net(backbone)
    net.set_task("t0")
    net.set_masks("t0", random_masks(net, 0.5, seed=9))
    assert_merged(net, "t0")


def test_a_cast_or_an_in_place_change_of_the_weights_is_followed(backbone):
    net = frozen_net(backbone)
    net.set_task("t1")
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    net.double()
    with torch.no_grad():
        net(x)
    assert net._flat.flat.dtype == torch.float64 and net._flat.intact()
    assert_merged(net, "t1")
    with torch.no_grad():
        net.original_weight(next(iter(net.masked_layers))).mul_(2)
        net(x)
    assert_merged(net, "t1")


def test_removing_the_active_task_switches_to_another(backbone):
    net = frozen_net(backbone)
    net.set_task("t0")
    net.remove_task("t0")
    assert net.active_task == "t1"
    assert_merged(net, "t1")


def test_weights_of_mixed_dtypes_are_refused(backbone):
    backbone.conv1.weight.data = backbone.conv1.weight.data.double()
    with pytest.raises(ValueError, match="one device and dtype"):
        pl.PiggybackNet(backbone)


def test_a_deep_copy_switches_on_its_own_weights(backbone):
    import copy

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
    assert all(torch.equal(net.parametrization(layer).mask("t0"), expected[layer]) for layer in net.masked_layers)
    assert_merged(net, "t0")


@pytest.mark.parametrize("kind", ["binary", "ternary"])
def test_both_ways_of_merging_give_the_masked_weights(kind):
    from piggylab.switching import masked_copy

    g = torch.Generator().manual_seed(0)
    weights = torch.randn(1000, generator=g)
    u = torch.rand(1000, generator=g)
    mask = u > 0.3 if kind == "binary" else (u > 0.3).to(torch.int8) - (u < 0.15).to(torch.int8)
    expected = apply_mask(weights, mask)
    for via_floats in (True, False):  # a CPU's way and the one-kernel way other devices take
        assert torch.equal(masked_copy(torch.empty_like(weights), weights, mask, via_floats=via_floats), expected)


def test_a_merged_weight_is_read_without_calling_the_parametrization(backbone):
    """A frozen task's layers read their merged view directly; a task in training goes
    through the parametrization (and gets a weight with a gradient)."""
    net = frozen_net(backbone)
    layer, (module, attr) = next(iter(net.masked_layers.items()))
    calls = []
    net.parametrization(layer).register_forward_hook(lambda *args: calls.append(1))
    net.set_task("t0")
    assert getattr(module, attr) is net._state.merged[net.parametrization(layer).slot] and not calls
    net.add_task("new", 3)
    weight = getattr(module, attr)
    assert calls and weight.requires_grad
    assert torch.equal(weight, net.original_weight(layer))  # all-ones mask at the start
