"""Choose the embedded recipe on the validation splits: every candidate on every embedded task.

For each (method, BN mode) of `CANDIDATES` (a few learning rates, a head warm-up), this trains
every candidate on every embedded target task from the committed tiny backbone, at the
notebooks' default sizes (`piggylab.experiments.EMBEDDED_SCALE`, the recipe's epochs and batch
size), and writes one row per run to ``--out`` (CSV): validation and test accuracy, sparsity,
the first- and last-third sparsity and the run's settings. Per (method, BN mode), the candidate
with the best mean *validation* accuracy over the tasks is marked ``chosen``; the test split
plays no part in the choice. `piggylab.experiments.EMBEDDED_RECIPES` holds the chosen ones
and data/recipes.csv the committed run of this script.

    python scripts/choose_recipes.py --jobs 2          # 55 runs; 21-25 minutes on 2 idle cores

Each run trains in its own worker process with one thread (generated data is cached per
process, so a fresh process per run keeps the runs independent).
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

CANDIDATES: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("classifier", "frozen"): [{"lr": 1e-2}, {"lr": 3e-2}],
    ("piggyback", "frozen"): [{"lr_scores": 1e-4, "warmup_epochs": 0}, {"lr_scores": 1e-4, "warmup_epochs": 1},
                              {"lr_scores": 2e-4, "warmup_epochs": 1}, {"lr_scores": 3e-4, "warmup_epochs": 1}],
    ("piggyback", "task"): [{"lr_scores": 2e-4, "warmup_epochs": 0}, {"lr_scores": 5e-4, "warmup_epochs": 0},
                            {"lr_scores": 5e-4, "warmup_epochs": 1}],
    ("finetune", "task"): [{"lr": 1e-3, "optimizer": "adam"}, {"lr": 3e-2, "optimizer": "sgd"}],
}
"""Candidate settings per (method, BN mode), each on top of the recipe's defaults (which are the
chosen candidates, so every candidate names each setting that its siblings change)."""

COLUMNS = ["task", "method", "bn_mode", "candidate", "val_accuracy", "accuracy", "sparsity", "first_third_sparsity",
           "last_third_sparsity", "steps", "train_s"]


def train_candidate(task: str, method: str, bn_mode: str, candidate: dict[str, Any], seed: int) -> dict[str, Any]:
    """One run of `candidate` on `task` (in a fresh worker process with one thread)."""
    import torch

    torch.set_num_threads(1)
    import piggylab as pl
    from piggylab import experiments
    from piggylab.datasets import load_data

    data = load_data(task, seed=seed, scale=experiments.EMBEDDED_SCALE)
    config = experiments.train_config(method, bn_mode=bn_mode, device="cpu", seed=seed, **candidate)
    net = pl.PiggybackNet(pl.load_backbone("tiny"), backbone_name="tiny")
    row = experiments.run(net, data, experiments.RunSpec(config),
                          batch_size=experiments.RECIPE_BATCH_SIZE["embedded"]).row
    return {"task": task, "method": method, "bn_mode": bn_mode,
            "candidate": ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in candidate.items()),
            **{k: row[k] for k in COLUMNS[4:]}}


def choose(results: pd.DataFrame) -> pd.DataFrame:
    """Mark, per (method, BN mode), the candidate with the best mean validation accuracy over the tasks
    (ties: the first listed)."""
    mean = results.groupby(["method", "bn_mode", "candidate"], sort=False)["val_accuracy"].mean().rename("mean_val")
    best = mean.groupby(level=["method", "bn_mode"], sort=False).idxmax()
    chosen = set(best)
    return results.join(mean, on=["method", "bn_mode", "candidate"]).assign(
        chosen=[(m, b, c) in chosen for m, b, c in zip(results["method"], results["bn_mode"], results["candidate"])])


def main(argv: list[str] | None = None) -> int:
    from piggylab.datasets import EMBEDDED_TASKS
    from piggylab.io import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="*", default=list(EMBEDDED_TASKS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at a time, one process and thread each")
    parser.add_argument("--out", type=Path, default=Path("data/recipes.csv"))
    args = parser.parse_args(argv)
    jobs = [(task, method, bn_mode, candidate, args.seed) for (method, bn_mode), candidates in CANDIDATES.items()
            for candidate in candidates for task in args.tasks]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1) as pool:
        rows = list(pool.map(train_candidate, *zip(*jobs)))
    results = choose(pd.DataFrame(rows, columns=COLUMNS))
    atomic_write_text(args.out, results.to_csv(index=False))
    summary = results[results["chosen"]].groupby(["method", "bn_mode", "candidate"], sort=False)["mean_val"].first()
    print(summary.to_string())
    print(f"{len(results)} runs in {(time.perf_counter() - start) / 60:.1f} min -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
