"""Task switching and merged inference of whichever piggylab comes first on sys.path.

For before/after comparisons across commits in one sitting (this box is noisy), e.g.:

    git worktree add /tmp/old <commit>
    for i in 1 2 3; do for tree in /tmp/old .; do PYTHONPATH=$tree python benchmarks/before_after.py; done; done

Prints one JSON line: `set_task` between two frozen resnet50 tasks with 5% random zeros
(ms), one copy of the same weights as one flat tensor (ms), and merged resnet18 inference
(64x64, batch 32) as a fraction of the plain backbone's throughput (median of 5 rounds).
Uses only names that every version of the benchmark module has had.
"""

import json
import statistics
import time

import torch

from piggylab import bench
from piggylab.network import PiggybackNet


def median_seconds(run, reps: int = 15, warmup: int = 3) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    net = PiggybackNet(bench.build_backbone("resnet50"))
    for seed in (1, 2):
        net.add_task(f"t{seed}", 10)
        net.set_masks(f"t{seed}", bench.random_masks(net, 0.05, seed=seed))
        net.set_task(f"t{seed}")
    flat = torch.cat([net.original_weight(layer).reshape(-1) for layer in net.masked_layers])
    copy = torch.empty_like(flat)

    def switch() -> None:
        net.set_task("t2" if net.active_task == "t1" else "t1")

    out = {"switch_ms": 1e3 * median_seconds(switch), "flat_copy_ms": 1e3 * median_seconds(lambda: copy.copy_(flat))}
    del net
    plain = bench.build_backbone("resnet18").eval()
    net = PiggybackNet(plain).eval()
    net.add_task("c", 10)
    net.freeze_task("c")
    x = torch.randn(32, 3, 64, 64)

    def infer(model):
        def run() -> None:
            with torch.inference_mode():
                model(x)
        return run

    ratios = [median_seconds(infer(plain), 5, 1) / median_seconds(infer(net), 5, 1) for _ in range(5)]
    out["infer_merged_over_plain"] = statistics.median(ratios)
    print(json.dumps({k: round(v, 3) for k, v in out.items()}))


if __name__ == "__main__":
    main()
