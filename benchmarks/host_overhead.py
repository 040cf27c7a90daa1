"""Host-side cost of piggylab's per-layer Python, where the kernels themselves cost next to nothing.

A GPU at small batches finishes its kernels sooner than eager PyTorch issues them, so there
every microsecond of Python per layer shows; on a CPU at real batch sizes it does not. This
measures that cost on any machine (single thread, tiny inputs), for the figures quoted in
`benchmarks/RESULTS.md`:

- `forward`: a merged frozen task's forward against the plain backbone's, resnet18 and
  resnet50 on one 8x8 image (their difference is the wrappers' cost), and the time of
  reading one masked layer's `weight`;
- `train`: forward and backward of a stack of 48 conv(8->8) layers with batchnorm on one
  4x4 image, for fine-tuning, piggyback (recomputing) and piggyback_keep, as extra
  microseconds per layer over fine-tuning.

    PYTHONPATH=<tree> python benchmarks/host_overhead.py     # one JSON line

Uses only names that every version of the benchmark module has had since the evening of
2026-11-24, so trees can be compared in one sitting.
"""

import json
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from before_after import median_seconds  # this folder's other harness (run as a script)
from piggylab import bench
from piggylab.network import PiggybackNet


def median_us(run: Callable[[], object], reps: int, warmup: int = 20) -> float:
    return median_seconds(run, reps, warmup) * 1e6


def forward_costs() -> dict:
    result = {}
    x = torch.randn(1, 3, 8, 8)
    for name in ("resnet18", "resnet50"):
        plain = bench.build_backbone(name, 32).eval()
        net = bench.build_net(name, torch.device("cpu"), image_size=32).eval()
        net.set_task("cls")
        with torch.inference_mode():
            rounds = [(median_us(lambda: net(x), 200), median_us(lambda: plain(x), 200)) for _ in range(3)]
        conv = net.backbone.layer1[0].conv1
        result[name] = {"merged_us": round(statistics.median(m for m, _ in rounds)),
                        "plain_us": round(statistics.median(p for _, p in rounds)),
                        "extra_us": round(statistics.median(m - p for m, p in rounds)),
                        "weight_read_us": round(median_us(lambda: conv.weight, 3000), 2)}
    return result


def conv_stack(depth: int = 48) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1)]
    for _ in range(depth - 1):
        layers += [nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, bias=False)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(8 * 16, 10))


def train_costs(depth: int = 48, rounds: int = 40) -> dict:
    x, y = torch.randn(1, 3, 4, 4), torch.tensor([1])
    models = {}
    for method in ("finetune", "piggyback", "piggyback_keep"):
        net = PiggybackNet(conv_stack(depth))
        net.add_task("pb", 10)
        model, _, task = bench.training_setup(net, method)
        if task is not None:
            bench.activate(net, method, task)
        models[method] = model

    def step(model: nn.Module) -> None:
        F.cross_entropy(model(x), y).backward()

    times: dict[str, list[float]] = {m: [] for m in models}
    for model in models.values():
        median_us(lambda: step(model), reps=1, warmup=5)
    for _ in range(rounds):  # interleaved
        for method, model in models.items():
            times[method].append(median_us(lambda: step(model), reps=1, warmup=0))
    us = {m: statistics.median(v) for m, v in times.items()}
    return {"layers": depth, **{f"{m}_us": round(v) for m, v in us.items()},
            **{f"{m}_extra_us_per_layer": round((us[m] - us["finetune"]) / depth, 1) for m in us if m != "finetune"}}


def main() -> None:
    torch.set_num_threads(1)
    print(json.dumps({"forward": forward_costs(), "train": train_costs()}))


if __name__ == "__main__":
    main()
