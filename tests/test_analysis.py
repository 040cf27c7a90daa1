import torch

import piggylab as pl


def test_layer_sparsity_counts_zeros(backbone):
    net = pl.PiggybackNet(backbone)
    net.add_task("a", 3)
    first = net.layer_masks("conv1")
    with torch.no_grad():
        first.scores["a"].view(-1)[:10] = -1.0
    table = pl.layer_sparsity(net, "a")
    assert list(table.columns) == ["layer", "depth", "kind", "weights", "zeros", "sparsity"]
    assert table["layer"].tolist() == list(net.masked_layers)
    assert table.loc[0, "zeros"] == 10 and table["zeros"].sum() == 10
    assert table.loc[0, "sparsity"] == 10 / table.loc[0, "weights"]
    assert pl.overall_sparsity(net, "a") == 10 / net.num_masked_weights


def test_storage_table_compares_with_a_finetuned_copy(backbone):
    net = pl.PiggybackNet(backbone)
    net.add_task("a", 3)
    net.add_task("b", 3, task_bn=True)
    table = pl.storage_table(net).set_index("task")
    n = net.num_masked_weights
    assert table.loc["a", "packed_bytes"] > n / 8 and table.loc["a", "packed_bytes"] < table.loc["a", "finetuned_bytes"] / 10
    assert table.loc["b", "bn_bytes"] > 0 and table.loc["a", "bn_bytes"] == 0
    assert table.loc["a", "rice_bytes"] < table.loc["a", "packed_bytes"]  # an all-ones mask costs almost nothing
    assert table.loc["a", "finetuned_bytes"] >= 4 * n


def test_sparsity_by_task_stacks_tasks(backbone):
    net = pl.PiggybackNet(backbone)
    net.add_task("a", 3)
    net.add_task("b", 3)
    table = pl.sparsity_by_task(net)
    assert set(table["task"]) == {"a", "b"} and len(table) == 2 * len(net.masked_layers)
