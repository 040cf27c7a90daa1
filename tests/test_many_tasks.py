"""Many tasks on one backbone: frozen masks held at 1 bit per weight, batches that mix tasks
(each sample exactly as alone), and how the tasks' masks overlap."""

import math
import re

import pandas as pd
import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import TensorDataset

import piggylab as pl
from piggylab import analysis, bench, experiments, findings, masked, plots
from piggylab.datasets import TaskData
from piggylab.masked import pack_mask, packed_size, unpack_by_table, unpack_mask, unpack_mask_into
from conftest import random_masks


# -- 1. frozen masks packed in memory -------------------------------------------------------------
@pytest.mark.parametrize("kind", ["binary", "ternary"])
@pytest.mark.parametrize("numel", [1, 7, 8, 9, 4099])
def test_masks_unpack_straight_into_the_merged_buffer(kind, numel):
    """The in-place unpackings (numpy's for binary on the CPU, the table lookup elsewhere) give
    `unpack_mask`'s values, up to a last, partly filled byte."""
    g = torch.Generator().manual_seed(numel)
    u = torch.rand(numel, generator=g)
    mask = u > 0.3 if kind == "binary" else (u > 0.3).to(torch.int8) - (u < 0.1).to(torch.int8)
    packed = pack_mask(mask, kind)
    expected = unpack_mask(packed, kind, (numel,)).float()
    for unpack in (unpack_mask_into, unpack_by_table):
        assert torch.equal(unpack(torch.full((numel,), 7.0), packed, kind), expected)


def test_a_switch_merges_exactly_weight_times_mask_signed_zeros_included(backbone):
    net = pl.PiggybackNet(backbone)
    net.add_task("b", 3, masks=random_masks(net, 0.3, 0))
    net.add_task("t", 3, mask=pl.MaskConfig(kind="ternary"), masks=random_masks(net, 0.3, 1, "ternary"))
    for task in ("b", "t", "b"):
        net.set_task(task)
        for layer, masks, weight in net.masked_weights():
            expected = weight * masks.mask(task, net.task(task).mask)
            assert torch.equal(masks.merged.view(torch.int32), expected.view(torch.int32)), layer  # bit for bit


def test_frozen_tasks_hold_one_bit_per_weight_and_nothing_else(backbone):
    net = pl.PiggybackNet(backbone)
    net.add_task("first", 3, masks=random_masks(net, 0.05, 0))
    held = bench._held_tensor_bytes(net)
    net.add_task("b", 3, masks=random_masks(net, 0.05, 1), activate=False)
    net.add_task("t", 4, mask=pl.MaskConfig(kind="ternary"), masks=random_masks(net, 0.05, 2, "ternary"), activate=False)
    memory = analysis.task_memory(net).set_index("task")
    assert bench._held_tensor_bytes(net) - held == memory.loc[["b", "t"], "total_bytes"].sum()  # nothing held besides
    layers = len(net.masked_layers)
    for task, bits in (("b", 1), ("t", 2)):
        row = memory.loc[task]
        assert row["scores_bytes"] == 0 and row["bn_bytes"] == 0
        assert bits * net.num_masked_weights <= 8 * row["mask_bytes"] < bits * net.num_masked_weights + 8 * layers
        assert row["head_bytes"] == 4 * (32 * net.task(task).num_classes + net.task(task).num_classes)
    for _, masks, weight in net.masked_weights():
        assert masks.packed["b"].dtype == torch.uint8 and masks.packed["b"].numel() == packed_size(weight.numel(), "binary")
    shared = analysis.shared_memory(net)
    assert shared["merged"] == 4 * net.num_masked_weights  # the active task's merged weights: one copy, shared


def test_resnet50_holds_at_most_1_1x_one_bit_per_weight_per_frozen_task():
    """20 frozen tasks on resnet50 (the benchmark's `tasks` section measures RSS too): each
    adds its packed masks and its head, at most 1.1x the 1 bit per masked weight."""
    torch.manual_seed(0)
    net = pl.PiggybackNet(torchvision.models.resnet50(num_classes=10), backbone_name="resnet50")
    g = torch.Generator().manual_seed(0)

    def packed_random():
        return {layer: torch.randint(0, 256, (packed_size(w.numel(), "binary"),), dtype=torch.uint8, generator=g)
                for layer, _, w in net.masked_weights()}

    net.add_task("first", 10, masks=packed_random(), packed=True)
    held = bench._held_tensor_bytes(net)
    for i in range(20):
        net.add_task(f"t{i}", 10, masks=packed_random(), packed=True, activate=False)
    per_task = (bench._held_tensor_bytes(net) - held) / 20
    assert per_task <= 1.1 * net.num_masked_weights / 8
    assert net.num_masked_weights / 8 <= per_task


@pytest.mark.parametrize("fmt", ["packed", "rice"])
def test_task_files_load_straight_into_the_packed_form(backbone, tmp_path, monkeypatch, fmt):
    net = pl.PiggybackNet(backbone, backbone_name="tiny")
    net.add_task("a", 3, masks=random_masks(net, 0.1, 0))
    path = pl.save_task(net, "a", tmp_path / "a.safetensors", fmt)

    def no_scores(*args, **kwargs):
        raise AssertionError("a loaded task must not make scores")

    monkeypatch.setattr(masked, "init_scores", no_scores)
    fresh = pl.PiggybackNet(backbone, backbone_name="tiny")
    pl.load_task(fresh, path)
    assert fresh.is_frozen("a")
    for (_, masks, _), (_, original, _) in zip(fresh.masked_weights(), net.masked_weights()):
        assert not masks.scores and torch.equal(masks.packed["a"], original.packed["a"])


def test_masks_given_to_add_task_are_checked_before_anything_is_added(backbone):
    net = pl.PiggybackNet(backbone)
    masks = random_masks(net, 0.1, 0)
    masks[next(iter(masks))] = torch.ones(2, dtype=torch.bool)
    with pytest.raises(ValueError, match="shape"):
        net.add_task("a", 3, masks=masks)
    with pytest.raises(KeyError, match="no mask"):
        net.add_task("a", 3, masks={})
    assert not net.tasks and all(not m.scores and not m.packed for _, m, _ in net.masked_weights())


def test_memory_totals_add_each_task_to_what_the_tasks_share(backbone):
    net = pl.PiggybackNet(backbone)
    for i in range(12):
        net.add_task(f"t{i}", 3, masks=random_masks(net, 0.05, i), activate=i == 0)
    totals = analysis.memory_totals(net).set_index(["tasks", "approach"])["bytes"]
    assert sorted({k for k, _ in totals.index}) == [1, 10, 12]
    held, shared = analysis.task_memory(net)["total_bytes"], sum(analysis.shared_memory(net).values())
    assert totals[(10, analysis.PIGGYBACK_MEMORY)] == shared + held[:10].sum()
    assert totals[(12, analysis.FINETUNED_MEMORY)] == 12 * analysis.finetuned_bytes(net, "t0")


@pytest.mark.parametrize("kind", ["binary", "ternary"])
def test_a_copy_with_weights_switched_off_is_a_distinct_frozen_task(backbone, kind):
    net = pl.PiggybackNet(backbone)
    net.add_task("a", 3, mask=pl.MaskConfig(kind=kind), masks=random_masks(net, 0.1, 0, kind), task_bn=True, seed=0)
    experiments.copy_task(net, net, "a", name="same")
    for seed, name in ((1, "b"), (1, "b_again"), (2, "c")):
        experiments.copy_task(net, net, "a", name=name, switch_off=0.2, seed=seed)
    source, kept, switched = net.masks("a"), 0, 0
    for layer, mask in source.items():
        copy = net.masks("b")[layer]
        assert torch.equal(net.masks("same")[layer], mask) and torch.equal(net.masks("b_again")[layer], copy)
        assert torch.equal(copy[copy != 0], mask[copy != 0])  # only zeros added
        kept, switched = kept + int((mask != 0).sum()), switched + int(((mask != 0) & (copy == 0)).sum())
    assert switched / kept == pytest.approx(0.2, abs=0.02)
    assert any(not torch.equal(net.masks("c")[layer], net.masks("b")[layer]) for layer in source)
    for name in ("same", "b"):
        assert net.is_frozen(name) and net.task(name).task_bn and net.task(name).mask.kind == kind
        assert all(torch.equal(v, net.task_state("a")[k]) for k, v in net.task_state(name).items())


# -- 2. mixed-task batches ---------------------------------------------------------------------------
def mixed_net(backbone):
    """Four tasks: frozen binary, frozen ternary with its own BN, frozen, and one still in training."""
    net = pl.PiggybackNet(backbone)
    net.add_task("a", 3, masks=random_masks(net, 0.2, 0), seed=0)
    net.add_task("b", 5, mask=pl.MaskConfig(kind="ternary"), masks=random_masks(net, 0.2, 1, "ternary"), task_bn=True,
                 seed=1)
    net.add_task("c", 4, masks=random_masks(net, 0.4, 2), seed=2)
    net.add_task("d", 2, mask=pl.MaskConfig(init="uniform"), seed=3)  # scores, not frozen
    with torch.no_grad():  # a task BN that differs from the backbone's
        for _, bn in net.batchnorms():
            bn.per_task["b"].running_mean.uniform_(-0.5, 0.5)
    return net.eval()


def assert_each_sample_as_alone(net, x, tasks):
    active = net.active_task
    out = net.forward_tasks(x, tasks)
    assert net.active_task == active
    assert isinstance(out, list) and len(out) == len(tasks)
    for i, task in enumerate(tasks):
        net.set_task(task)
        with torch.no_grad():
            alone = net(x[i : i + 1])[0]
        assert out[i].shape == (net.task(task).num_classes,)
        assert torch.equal(out[i], alone), (i, task)
    net.set_task(active)
    return out


def test_each_sample_of_a_mixed_batch_is_computed_exactly_as_alone(backbone):
    net = mixed_net(backbone)
    x = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tasks = ["a", "b", "c", "d", "b", "a", "a", "c", "d", "b", "b", "a"]
    with torch.no_grad():
        out = assert_each_sample_as_alone(net, x, tasks)
        predicted = net.predict(x, tasks)
    assert predicted.dtype == torch.int64 and predicted.tolist() == [int(o.argmax()) for o in out]
    with torch.enable_grad():  # also with autograd on (frozen tasks and the one with scores)
        assert all(torch.equal(a, b) for a, b in zip(net.forward_tasks(x, tasks), out))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_models_mixed_batches_are_exact(name):
    torch.manual_seed(0)
    net = pl.PiggybackNet(torchvision.models.get_model(name, num_classes=10))
    for i, task in enumerate(("p", "q")):
        net.add_task(task, 3 + i, masks=random_masks(net, 0.1, i))
    x = torch.randn(6, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_each_sample_as_alone(net.eval(), x, ["p", "q", "q", "p", "q", "p"])


class TinyAttention(nn.Module):
    """Patches, self-attention (batch first) and a classifier: what ViT's blocks do, small."""

    def __init__(self):
        super().__init__()
        self.patches = nn.Conv2d(3, 16, 8, stride=8)
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
        self.mlp = nn.Linear(16, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        tokens = tokens + self.attention(tokens, tokens, tokens, need_weights=False)[0]
        return self.fc(self.mlp(tokens).mean(1))


def test_attention_models_mixed_batches_are_exact():
    torch.manual_seed(0)
    net = pl.PiggybackNet(TinyAttention())
    assert "attention.in_proj_weight" in net.masked_layers
    for i, task in enumerate(("p", "q")):
        net.add_task(task, 3 + i, masks=random_masks(net, 0.2, i))
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_each_sample_as_alone(net.eval(), x, ["p", "q", "p", "p", "q"])


def test_samples_are_grouped_one_switch_and_one_pass_per_task(backbone, monkeypatch):
    net = mixed_net(backbone)
    passes, switches = [], []
    net.backbone.register_forward_hook(lambda module, args, out: passes.append(len(args[0])))
    set_task = net.set_task
    monkeypatch.setattr(net, "set_task", lambda task: switches.append(task) or set_task(task))
    x = torch.randn(7, 3, 32, 32)
    with torch.no_grad():
        net.forward_tasks(x, ["c", "a", "c", "c", "a", "b", "c"])
    assert sorted(passes) == [1, 2, 4]
    assert switches[:3] == ["c", "a", "b"] and switches[3:] in ([], [net.active_task])  # then back to the active task
    assert all(not layer.samples_apart for layer in [*net._layers.values(), net.heads])


def test_mixed_batches_of_test_images_keep_each_tasks_accuracy_alone(backbone):
    net = mixed_net(backbone)
    g = torch.Generator().manual_seed(0)
    data = {task: TaskData(task, None, None, TensorDataset(torch.randn(n, 3, 32, 32, generator=g),
                                                           torch.randint(0, classes, (n,), generator=g)),
                           [str(c) for c in range(classes)], "", "")
            for task, n, classes in (("a", 20, 3), ("b", 13, 5), ("c", 7, 4))}
    images = experiments.task_test_images(data, per_task=10)
    assert [len(x) for x, _ in images.values()] == [10, 10, 7]
    assert torch.equal(images["b"][0], data["b"].test.tensors[0][:10])
    x, y, owners = experiments.mixed_test_batch(images, seed=0)
    assert sorted(owners) == ["a"] * 10 + ["b"] * 10 + ["c"] * 7 and owners[:10] != sorted(owners)[:10]
    table = experiments.mixed_accuracy(net, images, batch_size=8, device="cpu").set_index("task")
    assert table["test_images"].tolist() == [10, 10, 7]
    for task, (task_x, labels) in images.items():
        net.set_task(task)
        with torch.no_grad():
            expected = float((net(task_x).argmax(1) == labels).float().mean())
        assert table.loc[task, "alone"] == pytest.approx(expected) and table.loc[task, "mixed"] == table.loc[task, "alone"]


def test_unknown_tasks_are_refused_before_anything_runs(backbone):
    net = mixed_net(backbone)
    net.set_task("c")
    passes = []
    net.backbone.register_forward_hook(lambda module, args, out: passes.append(1))
    x = torch.randn(3, 3, 32, 32)
    with pytest.raises(KeyError, match=r"unknown task\(s\) 'nope'.*known tasks: a, b, c, d"):
        net.forward_tasks(x, ["a", "nope", "b"])
    with pytest.raises(KeyError, match="nope"):
        net.predict(x, ["a", "nope", "b"])
    with pytest.raises(ValueError, match="2 task names for 3 samples"):
        net.forward_tasks(x, ["a", "b"])
    assert not passes and net.active_task == "c"


# -- 4. mask overlap ---------------------------------------------------------------------------------
def off_sets(net, task):
    """Per masked weight, the set of flat indices the task switches off."""
    return {layer: set(torch.nonzero(mask.reshape(-1) == 0).flatten().tolist()) for layer, mask in net.masks(task).items()}


def test_mask_overlap_counts_jaccard_chance_and_common_weights(backbone):
    net = pl.PiggybackNet(backbone)
    for i, zeros in enumerate((0.1, 0.3, 0.2)):
        net.add_task(f"t{i}", 3, masks=random_masks(net, zeros, i % 2))  # t0 and t2: the same random field
    overlap = pl.mask_overlap(net)
    assert overlap.tasks == ["t0", "t1", "t2"]
    sets = {t: off_sets(net, t) for t in overlap.tasks}
    pairs = overlap.pairs.set_index(["task_a", "task_b", "layer"])
    for a, b in (("t0", "t1"), ("t0", "t2"), ("t1", "t2")):
        total_both = total_either = 0
        for layer, weights in ((layer, w.numel()) for layer, _, w in net.masked_weights()):
            both, either = len(sets[a][layer] & sets[b][layer]), len(sets[a][layer] | sets[b][layer])
            row = pairs.loc[(a, b, layer)]
            assert (row["off_both"], row["off_either"]) == (both, either)
            assert row["jaccard"] == pytest.approx(both / either)
            na, nb = len(sets[a][layer]), len(sets[b][layer])
            assert row["chance"] == pytest.approx(na * nb / weights / (na + nb - na * nb / weights))
            total_both, total_either = total_both + both, total_either + either
        assert pairs.loc[(a, b, "overall"), "jaccard"] == pytest.approx(total_both / total_either)
    assert pairs.loc[("t0", "t2", "overall"), "jaccard"] == pytest.approx(0.5, abs=0.05)  # t0's zeros are half of t2's
    assert pairs.loc[("t0", "t1", "overall"), "jaccard"] < 2 * pairs.loc[("t0", "t1", "overall"), "chance"]
    common = overlap.common.set_index("layer")
    for layer in net.masked_layers:
        assert common.loc[layer, "off_every"] == len(sets["t0"][layer] & sets["t1"][layer] & sets["t2"][layer])
    assert common.loc["overall", "off_every"] == common.drop("overall")["off_every"].sum()
    grid = overlap.matrix()
    assert list(grid.index) == list(grid.columns) == overlap.tasks
    assert (grid.to_numpy() == grid.to_numpy().T).all() and (grid.to_numpy().diagonal() == 1).all()


def test_far_tasks_sentence_follows_the_numbers(backbone):
    net = pl.PiggybackNet(backbone)
    for task, zeros, field in (("near0", 0.10, 0), ("near1", 0.09, 0), ("mid", 0.1, 0), ("far0", 0.1, 1), ("far1", 0.1, 2)):
        net.add_task(task, 3, masks=random_masks(net, zeros, field))
    different = pl.mask_overlap(net).far_vs_near()
    assert different.startswith("The far tasks (far0, far1) switch off different weights from the near ones (near0, near1)")
    same = pl.mask_overlap(net).far_vs_near(["near0", "far0", "mid", "far1", "near1"])
    assert "switch off largely the same weights as the near ones (near0, far0)" in same
    assert len(re.findall(r"\b[01]\.\d\d\b", same)) == 3  # far-near, near-near and chance Jaccard indices
    assert pl.mask_overlap(net, ["near0"]).far_vs_near().startswith("One task")


def test_mask_overlap_refuses_unknown_tasks_and_draws_a_heatmap(backbone):
    net = pl.PiggybackNet(backbone)
    net.add_task("a", 3, masks=random_masks(net, 0.1, 0))
    net.add_task("b", 3)  # still training: its mask is all ones
    with pytest.raises(KeyError, match="nope"):
        pl.mask_overlap(net, ["a", "nope"])
    overlap = pl.mask_overlap(net)
    assert overlap.pairs.set_index("layer").loc["overall", "off_both"] == 0
    grid = overlap.matrix()
    assert grid.loc["a", "a"] == 1 and math.isnan(grid.loc["b", "b"]) and grid.loc["a", "b"] == 0
    fig = plots.overlap_heatmap(overlap)
    assert fig.data[0].type == "heatmap" and list(fig.data[0].x) == ["a", "b"]


def test_many_tasks_findings_say_what_the_numbers_show(backbone):
    net = pl.PiggybackNet(backbone)
    for i in range(3):
        net.add_task(f"t{i}", 3, masks=random_masks(net, 0.1, i))
    memory, totals, overlap = analysis.task_memory(net), analysis.memory_totals(net), pl.mask_overlap(net)
    speed = {"images_per_s": {k: {"median": v} for k, v in (("one_by_one", 20.0), ("predict", 50.0),
                                                             ("grouped_inexact", 80.0))},
             "speedup_over_one_by_one": {"predict": {"median": 2.5}}}
    same = pd.DataFrame({"task": ["t0", "t1"], "test_images": [10, 10], "alone": [0.5, 0.7], "mixed": [0.5, 0.7]})
    lines = findings.many_tasks(memory, totals, same, speed, 0.0, overlap)
    assert lines[0].startswith(f"3 frozen tasks in memory hold {plots.human_bytes(memory['total_bytes'].mean())} each")
    assert "every task kept the test accuracy it has alone" in lines[1] and "50 images/s against 20" in lines[2]
    assert "(largest difference 0)" in lines[3] and lines[4] == overlap.far_vs_near()
    lines = findings.many_tasks(memory, totals, same.assign(mixed=[0.5, 0.6]), speed, 1e-6, overlap,
                                rss={"rss_bytes": 5120, "tensor_bytes": 4096})
    assert "5.0 KiB per task, for 4.0 KiB of tensors" in lines[1]
    assert "differs" in lines[2] and "`t1` 60.0% (alone 70.0%)" in lines[2] and "to within 1e-06" in lines[4]
