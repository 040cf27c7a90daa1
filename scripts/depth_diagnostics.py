"""Why the embedded suite misses C7's depth trend: frozen-BN piggyback under four variants, and
how consistent each layer's score gradients are.

The paper (§5, Fig. 3) finds that a task's mask changes more weights in the deeper layers. On
the embedded tasks, frozen-BN piggyback changes *more* in the first third of the layers
(data/README.md, "The misses"). This script tests the explanations one at a time, each a
frozen-BN piggyback run with the embedded recipe (``--seed``, 0 by default; the notebooks' sizes) per task:

- ``committed``: the committed tiny backbone, as in the demo;
- ``deeper``: a 15-conv backbone (widths 24/48/96, two blocks per stage), pretrained with the
  committed recipe (``--deeper-backbone`` reuses a checkpoint; about 7.5 minutes to make one);
- ``target-bn``: the committed backbone with its BN statistics re-estimated on the target's
  training images first, so that frozen BN sees no shift in low-level statistics;
- ``longer``: ``--longer-factor`` times the epochs (3 by default; several factors, one run each).

It also measures, per layer, the sign consistency of the score gradients after the head's
warm-up, mean over weights of ``|E[g]| / sqrt(E[g^2])`` over 40 batches: Adam's expected step
per weight, relative to its lr, with frozen and with task BN.

    python scripts/depth_diagnostics.py --jobs 2      # about 15 minutes on 2 idle cores, and 7.5
                                                      # more to pretrain the deeper backbone
    python scripts/depth_diagnostics.py --variants longer --longer-factor 9 --seed 1
                                                      # the paper's step scale: 20-25 min per seed
    python scripts/depth_diagnostics.py --variants committed longer --longer-factor 3 5 9
                                                      # C7's parts by the number of steps: 50 min

Writes ``layers.csv`` (one row per run and layer) and ``consistency.csv`` into ``--out`` and
prints the first- and last-third summaries, then per variant and number of epochs each task's
overall sparsity and its Spearman correlation with the tasks' order (``--tasks``, near to far):
C7's other part, which a change that fixes the depth trend could break.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

VARIANTS = ("committed", "deeper", "target-bn", "longer")
DEEPER = {"widths": (24, 48, 96), "blocks": 2}
CONSISTENCY_BATCHES = 40


def _setup(task: str, backbone: str | None, seed: int):
    """In a worker: one thread; the lab's modules, `task`'s data, a tiny backbone and the training loader."""
    import torch

    torch.set_num_threads(1)
    import piggylab as pl
    from piggylab import experiments
    from piggylab.backbones import load_tiny_backbone
    from piggylab.datasets import load_data, make_loaders

    data = load_data(task, seed=seed, scale=experiments.EMBEDDED_SCALE)
    train = make_loaders(data, experiments.RECIPE_BATCH_SIZE["embedded"])[0]
    return pl, experiments, data, load_tiny_backbone(backbone), train


def train_variant(variant: str, task: str, deeper: str, epochs_factor: int, seed: int) -> pd.DataFrame:
    """One frozen-BN piggyback run of `variant` on `task` for `epochs_factor` times the recipe's epochs:
    its per-layer sparsity and accuracies."""
    import torch

    from piggylab.analysis import layer_sparsity
    from piggylab.train import recalibrate_batchnorm

    pl, experiments, data, backbone, train = _setup(task, deeper if variant == "deeper" else None, seed)
    if variant == "target-bn":
        with torch.no_grad():
            recalibrate_batchnorm(backbone, [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)],
                                  train, device="cpu")
    epochs = epochs_factor * experiments.RECIPE_EPOCHS["embedded"]
    config = experiments.train_config("piggyback", bn_mode="frozen", device="cpu", seed=seed, epochs=epochs)
    net = pl.PiggybackNet(backbone, backbone_name="tiny")
    row = experiments.run(net, data, experiments.RunSpec(config), batch_size=train.batch_size).row
    return layer_sparsity(net, row["name"]).assign(variant=variant, task=task, epochs=config.epochs,
                                                   val_accuracy=row["val_accuracy"], accuracy=row["accuracy"])


def gradient_consistency(task: str, bn_mode: str, seed: int) -> pd.DataFrame:
    """Per masked layer, the mean over its weights of |E[g]| / sqrt(E[g^2]) for the score gradients,
    after a one-epoch head warm-up (the embedded recipe's), over `CONSISTENCY_BATCHES` batches."""
    import torch
    import torch.nn.functional as F

    pl, experiments, data, backbone, train = _setup(task, None, seed)
    torch.manual_seed(seed)
    net = pl.PiggybackNet(backbone, backbone_name="tiny")
    net.add_task(task, data.num_classes, task_bn=bn_mode == "task", seed=seed)
    net.train()
    head_lr = experiments.EMBEDDED_RECIPES[("piggyback", bn_mode)]["lr"]
    head = torch.optim.Adam(net.task_parameters(task, scores=False, bn=False), lr=head_lr)
    for x, y in train:
        head.zero_grad()
        F.cross_entropy(net(x), y).backward()
        head.step()
    scores = net.task_parameters(task, head=False, bn=False)
    first = [torch.zeros_like(s) for s in scores]
    second = [torch.zeros_like(s) for s in scores]
    for x, y in itertools.islice(train, CONSISTENCY_BATCHES):
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
        for m1, m2, s in zip(first, second, scores):
            m1 += s.grad
            m2 += s.grad ** 2
    rows = [{"task": task, "bn_mode": bn_mode, "layer": name, "depth": depth,
             "consistency": float((m1.abs() / (m2 * CONSISTENCY_BATCHES).sqrt().clamp_min(1e-30)).mean())}
            for depth, (name, m1, m2) in enumerate(zip(net.masks(task), first, second))]
    return pd.DataFrame(rows)


def thirds(layers: pd.DataFrame) -> pd.DataFrame:
    """First- and last-third sparsity per run (`piggylab.analysis.depth_thirds`), in points."""
    from piggylab.analysis import depth_thirds

    rows = []
    for (variant, epochs, task), run in layers.groupby(["variant", "epochs", "task"], sort=False):
        first, last = depth_thirds(run)
        rows.append({"variant": variant, "task": task, "epochs": epochs, "layers": len(run),
                     "val": run["val_accuracy"].iloc[0],
                     "first_third": 100 * first, "last_third": 100 * last, "last_minus_first": 100 * (last - first)})
    return pd.DataFrame(rows)


def by_distance(layers: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    """Per variant and number of epochs: each task's overall sparsity in % (zeros over all its masked
    weights, as `piggylab.analysis.overall_sparsity`) and its Spearman correlation with the order of
    `tasks` (near to far), as C7 computes it (`piggylab.claims.spearman`)."""
    from piggylab.claims import spearman

    totals = layers.groupby(["variant", "epochs", "task"], sort=False)[["zeros", "weights"]].sum()
    sparsity = (100 * totals["zeros"] / totals["weights"]).unstack("task")[tasks]
    order = list(range(len(tasks)))
    return sparsity.assign(spearman=[spearman(order, row) for row in sparsity.to_numpy()])


def main(argv: list[str] | None = None) -> int:
    from piggylab.datasets import EMBEDDED_TASKS
    from piggylab.io import atomic_write_text
    from piggylab.pretrain import pretrain_tiny_backbone

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="*", default=list(EMBEDDED_TASKS))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--deeper-backbone", type=Path, default=None,
                        help="a checkpoint of the deeper backbone (default: pretrain one into --out)")
    parser.add_argument("--longer-factor", type=int, nargs="+", default=[3],
                        help="the `longer` variant's epochs, x the recipe's (one run per factor and task)")
    parser.add_argument("--seed", type=int, default=0, help="the data's and the runs' seed")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at a time, one process and thread each")
    parser.add_argument("--out", type=Path, default=Path("runs/depth-diagnostics"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    deeper = args.deeper_backbone or args.out / "deeper.safetensors"
    if "deeper" in args.variants and not deeper.exists():
        pretrain_tiny_backbone(output=deeper, **DEEPER)
    runs = [(variant, task, str(deeper), factor, args.seed) for variant in args.variants
            for factor in (args.longer_factor if variant == "longer" else [1]) for task in args.tasks]
    probes = [(task, bn_mode, args.seed) for task in args.tasks for bn_mode in ("frozen", "task")]
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1) as pool:
        layers = pd.concat(pool.map(train_variant, *zip(*runs)), ignore_index=True)
        consistency = pd.concat(pool.map(gradient_consistency, *zip(*probes)), ignore_index=True)
    atomic_write_text(args.out / "layers.csv", layers.to_csv(index=False))
    atomic_write_text(args.out / "consistency.csv", consistency.to_csv(index=False))
    print(thirds(layers).round(2).to_string(index=False))
    print(by_distance(layers, args.tasks).round(2).to_string())
    print(consistency.pivot_table("consistency", ["task", "bn_mode"], "depth", sort=False).round(2).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
