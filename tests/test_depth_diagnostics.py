"""scripts/depth_diagnostics.py's summaries on a small hand-made layers table (no training)."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "depth_diagnostics.py"


@pytest.fixture(scope="module")
def diagnostics():
    spec = importlib.util.spec_from_file_location("depth_diagnostics", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def layers(variant: str, epochs: int, zeros: dict[str, tuple[int, int, int]]) -> pd.DataFrame:
    """Three layers (100, 100 and 800 weights) per task, with the given zeros per layer."""
    return pd.DataFrame([{"variant": variant, "epochs": epochs, "task": task, "layer": f"conv{i}", "weights": weights,
                          "zeros": z, "sparsity": z / weights, "val_accuracy": 0.5}
                         for task, per_layer in zeros.items()
                         for i, (weights, z) in enumerate(zip((100, 100, 800), per_layer))])


def test_by_distance_weighs_layers_by_their_weights_and_ranks_the_tasks_against_their_order(diagnostics):
    near_to_far = layers("committed", 6, {"near": (10, 0, 0), "middle": (0, 0, 20), "far": (0, 0, 80)})
    # A longer run where the middle task ends up the least sparse: the order breaks.
    longer = layers("longer", 18, {"near": (0, 0, 40), "middle": (0, 0, 10), "far": (0, 0, 80)})
    table = diagnostics.by_distance(pd.concat([near_to_far, longer]), ["near", "middle", "far"])
    assert table.loc[("committed", 6), ["near", "middle", "far"]].tolist() == [1.0, 2.0, 8.0]
    assert table.loc[("committed", 6), "spearman"] == pytest.approx(1.0)
    assert table.loc[("longer", 18), "spearman"] == pytest.approx(0.5)
    # The mean of the layers' fractions would rank `near` (10% in its first layer) above `middle`.
    thirds = diagnostics.thirds(near_to_far).set_index("task")
    assert thirds.loc["near", "last_minus_first"] == pytest.approx(-10.0)
    assert thirds.loc["far", "last_minus_first"] == pytest.approx(10.0)
