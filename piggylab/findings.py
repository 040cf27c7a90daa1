"""The notebooks' "What we learned" sentences, computed from their result tables.

Each function takes the tables a notebook made and returns its findings, one sentence each,
beyond the paper's claims (`piggylab.claims` checks those, and `piggylab.notebook.Lab.learned`
shows both). A finding states a number and what it means; it never asserts what the numbers
do not show. Fractions are printed as percentages, differences in points. This module computes
text only: it trains, draws and writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .analysis import FINETUNED_MEMORY, PIGGYBACK_MEMORY, MaskOverlap, depth_thirds
from .plots import human_bytes


def _by_label(results: pd.DataFrame) -> pd.DataFrame:
    return results.drop_duplicates("label").set_index("label")


def _points(a: float, b: float) -> str:
    return f"{(a - b) * 100:+.1f} points"


def methods(results: pd.DataFrame) -> list[str]:
    """One task trained several ways (notebook 01): each method's test accuracy and how far
    piggyback is from the others."""
    r = _by_label(results)
    lines = [", ".join(f"{label} {acc:.1%}" for label, acc in r["accuracy"].items()) + " test accuracy on "
             f"`{results['task'].iloc[0]}` (one test image is {1 / r['test_images'].iloc[0]:.1%})."]
    if {"piggyback", "piggyback + task BN"} <= set(r.index):
        lines.append(f"Task BN moved piggyback by {_points(r.loc['piggyback + task BN', 'accuracy'], r.loc['piggyback', 'accuracy'])}"
                     f" and its mask switched off {r.loc['piggyback + task BN', 'sparsity']:.2%} of the weights, "
                     f"against {r.loc['piggyback', 'sparsity']:.2%} with the backbone's frozen BN.")
    return lines


def depth(layers: pd.DataFrame) -> list[str]:
    """Where in depth a mask changed the network (paper §5, Fig. 3)."""
    first, last = depth_thirds(layers)
    trend = "more" if last > first else "fewer"
    return [f"The mask switched off {first:.2%} of the weights per layer in the first third of the layers and "
            f"{last:.2%} in the last third: {trend} changes in depth."]


def storage(results: pd.DataFrame) -> list[str]:
    """What each method stores per task, against a fine-tuned copy."""
    r = _by_label(results)["storage_bytes"]
    if "finetune" not in r or "piggyback" not in r:
        return []
    return [f"Storage per task: piggyback {human_bytes(r['piggyback'])}, fine-tuning {human_bytes(r['finetune'])} "
            f"({r['finetune'] / r['piggyback']:.0f}x more)."]


def init_schemes(results: pd.DataFrame) -> list[str]:
    """Score inits (notebook 02): where each started and ended."""
    return [f"`{row.label}` started with {row.initial_sparsity:.0%} of the mask off and ended at "
            f"{row.accuracy:.1%} test accuracy with {row.sparsity:.2%} zeros." for row in results.itertuples()]


def ternary(results: pd.DataFrame) -> list[str]:
    """Binary against ternary masks (notebook 03): accuracy, negated weights, storage."""
    lines = []
    for task, rows in results.groupby("task", sort=False):
        r = _by_label(rows)
        if {"binary", "ternary"} <= set(r.index):
            b, t = r.loc["binary"], r.loc["ternary"]
            lines.append(f"`{task}`: ternary {t['accuracy']:.1%} vs binary {b['accuracy']:.1%} "
                         f"({_points(t['accuracy'], b['accuracy'])}); the ternary mask negated {t['negated']:.2%} "
                         f"of the weights and zeroed {t['sparsity']:.2%}; its task file is "
                         f"{t['storage_bytes'] / b['storage_bytes']:.1f}x the binary one.")
    return lines


def batchnorm(results: pd.DataFrame) -> list[str]:
    """Frozen against task BN (notebook 04): how much of the gap to fine-tuning task BN closed."""
    lines = []
    for task, rows in results.groupby("task", sort=False):
        r = _by_label(rows)["accuracy"]
        if not {"piggyback", "piggyback + task BN"} <= set(r.index):
            continue
        line = f"`{task}`: task BN {r['piggyback + task BN']:.1%} vs frozen BN {r['piggyback']:.1%}"
        if "finetune" in r and r["finetune"] > r["piggyback"]:
            closed = (r["piggyback + task BN"] - r["piggyback"]) / (r["finetune"] - r["piggyback"])
            line += f", fine-tuning {r['finetune']:.1%}: task BN closed {closed:.0%} of the gap"
        lines.append(line + ".")
    bn = results[results["label"] == "piggyback + task BN"]["storage_bytes"].mean()
    frozen = results[results["label"] == "piggyback"]["storage_bytes"].mean()
    if bn == bn and frozen == frozen:
        lines.append(f"Task BN adds {human_bytes(bn - frozen)} per task to a {human_bytes(frozen)} task file.")
    return lines


def sparsity(results: pd.DataFrame, layers: pd.DataFrame, storage_table: pd.DataFrame) -> list[str]:
    """Sparsity by task, threshold, init and depth, and the entropy-coded storage (notebook 05)."""
    main = results[results["label"] == "piggyback"].set_index("task")["sparsity"]
    lines = ["Sparsity by task, near to far: " + ", ".join(f"`{t}` {s:.2%}" for t, s in main.items()) + "."]
    per_task = [depth_thirds(group) for _, group in layers.groupby("task", sort=False)]
    first = sum(f for f, _ in per_task) / len(per_task)
    last = sum(v for _, v in per_task) / len(per_task)
    lines.append(f"Averaged over the tasks, the first third of the layers lost {first:.2%} of their weights and the "
                 f"last third {last:.2%}.")
    variants = results[results["label"] != "piggyback"]
    lines += [f"`{row.task}` with {row.label}: {row.sparsity:.2%} zeros, {row.accuracy:.1%} test accuracy."
              for row in variants.itertuples()]
    ratio = (storage_table["rice_bytes"] / storage_table["packed_bytes"]).mean()
    lines.append(f"Entropy coding made the task files {ratio:.0%} of the 1-bit packing on average.")
    return lines


def multitask(totals: pd.DataFrame) -> list[str]:
    """Total storage of k tasks, piggyback against one fine-tuned network each (notebook 06)."""
    last = totals[totals["tasks"] == totals["tasks"].max()].set_index("approach")["bytes"]
    piggyback, finetuned = last["piggyback: backbone + task files"], last["one fine-tuned network per task"]
    return [f"{totals['tasks'].max()} tasks cost {human_bytes(piggyback)} with piggyback (one backbone plus a task "
            f"file each) against {human_bytes(finetuned)} as separate fine-tuned networks: "
            f"{finetuned / piggyback:.1f}x less."]


def many_tasks(memory: pd.DataFrame, totals: pd.DataFrame, mixed: pd.DataFrame, speed: Mapping[str, Any],
               export_difference: float, overlap: MaskOverlap, rss: Mapping[str, float] | None = None) -> list[str]:
    """Many tasks on one backbone (notebook 09): the bytes the frozen tasks hold in memory
    (`memory`: `task_memory`; `totals`: `memory_totals`; `rss`: the `frozen_tasks` probe of
    `piggylab.bench`, if measured), a mixed batch's accuracy (`mixed_accuracy`) and speed
    (`mixed_batch_speed`), an exported task's largest output difference to the network, and
    whether far tasks switch off the weights near ones do (`MaskOverlap.far_vs_near`)."""
    n = len(memory)
    last = totals[totals["tasks"] == n].set_index("approach")["bytes"]
    piggyback, finetuned = last[PIGGYBACK_MEMORY], last[FINETUNED_MEMORY]
    held = memory["total_bytes"].sum()
    lines = [f"{n} frozen tasks in memory hold {human_bytes(held / n)} each on average (the mask at "
             f"{memory['mask_bits_per_weight'].mean():.2f} bits per masked weight, the head and any batchnorm), "
             f"{human_bytes(held)} together beside the {human_bytes(piggyback - held)} they share (the backbone and the "
             f"active task's merged weights): {human_bytes(piggyback)} in all against {human_bytes(finetuned)} for {n} "
             f"fine-tuned networks, {finetuned / piggyback:.0f}x less."]
    if rss is not None:
        lines.append(f"Measured as the resident memory of a fresh process adding as many frozen tasks (random masks, "
                     f"same architecture): {human_bytes(rss['rss_bytes'])} per task, for "
                     f"{human_bytes(rss['tensor_bytes'])} of tensors.")
    same = bool((mixed["alone"] == mixed["mixed"]).all())
    accuracies = ", ".join(f"`{r.task}` {r.mixed:.1%}" + ("" if r.mixed == r.alone else f" (alone {r.alone:.1%})")
                           for r in mixed.itertuples())
    lines.append(f"Served in batches that mix the {len(mixed)} trained tasks' test images, "
                 + ("every task kept the test accuracy it has alone: " if same else "some tasks' test accuracy "
                    "differs from the one they have alone: ") + accuracies + ".")
    rate, gain = speed["images_per_s"], speed["speedup_over_one_by_one"]
    lines.append(f"`predict` served a mixed batch at {rate['predict']['median']:.0f} images/s against "
                 f"{rate['one_by_one']['median']:.0f} calling the tasks one image at a time "
                 f"({gain['predict']['median']:.1f}x; grouped by task without the exactness: "
                 f"{rate['grouped_inexact']['median']:.0f} images/s).")
    lines.append("The exported task, loaded into a fresh model of the backbone's own class from its safetensors file, "
                 + ("computes exactly the network's logits (largest difference 0)." if export_difference == 0 else
                    f"computes the network's logits to within {export_difference:.2g} (largest difference)."))
    return lines + [overlap.far_vs_near()]


def comparison_table(results: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    """Test accuracy (%) per task (rows, in `tasks`' order, then the mean) and label (columns)."""
    table = results.pivot_table(index="task", columns="label", values="accuracy", sort=False).reindex(tasks) * 100
    table.loc["mean"] = table.mean()
    return table.round(2).reset_index()


def baselines(results: pd.DataFrame, packnet_config: Any) -> list[str]:
    """The baselines' means and PackNet's share of the weights (notebook 08)."""
    mean = results.groupby("label", sort=False)["accuracy"].mean()
    lines = ["Mean test accuracy over the tasks: " + ", ".join(f"{label} {a:.1%}" for label, a in mean.items()) + "."]
    fraction = packnet_config.prune_fraction
    tasks = results["task"].nunique()
    shares = ", ".join(f"{(1 - fraction) * fraction ** k:.1%}" for k in range(tasks))
    lines.append(f"With a prune fraction of {fraction:g}, PackNet's tasks own, turn by turn, {shares} of the prunable "
                 "weights: each later task builds on the weights its predecessors chose and froze.")
    per_task = results.groupby("label", sort=False)["storage_bytes"].mean()
    lines.append("Storage each task adds: " + ", ".join(f"{label} {human_bytes(b)}" for label, b in per_task.items())
                 + ".")
    return lines


def pretraining(info: Mapping[str, Any], checkpoints: pd.DataFrame, checkpoint: str | Path) -> list[str]:
    """The pretraining run (notebook 00): source-task accuracy, size, where it was written."""
    lines = [f"The backbone reached {info['test_accuracy']:.1%} test accuracy on the {info['num_classes']}-class "
             f"source task (chance {1 / info['num_classes']:.1%}) in {info['wall_time_s']:.0f} s on {info['device']}.",
             f"It has {info['parameters']:,} parameters; the checkpoint was written to `{checkpoint}` (fingerprint "
             f"`{info['fingerprint']}`: task files record it, so a mask cannot be loaded onto another backbone)."]
    committed = checkpoints[checkpoints["checkpoint"] == "committed"]
    if len(committed):
        lines.append(f"The committed checkpoint reaches {committed['accuracy'].iloc[0]:.1%}: this run is "
                     f"{_points(info['test_accuracy'], committed['accuracy'].iloc[0])} from it.")
    return lines


def explorer(runs: pd.DataFrame, layers: Mapping[int, pd.DataFrame]) -> list[str]:
    """The explorer's runs (notebook 07): the best finished run, where the last piggyback mask
    changed, and each sweep's best cell. Stopped and failed runs are counted, not compared."""
    done = runs[runs["status"] == "done"]
    if done.empty:
        return ["No run finished yet."]
    best = done.loc[done["accuracy"].idxmax()]
    ended = ", ".join(f"{n} {status}" for status, n in runs["status"].value_counts().items() if status != "done")
    lines = [f"{len(done)} finished run(s){f' ({ended} not compared)' if ended else ''}; the most accurate was "
             f"#{best['run']} ({best['method']} on {best['task']}), {best['accuracy']:.1%} test accuracy."]
    piggyback = done[done["method"] == "piggyback"]
    if len(piggyback):
        last = piggyback.iloc[-1]
        lines += [f"Run #{last['run']} switched off {last['sparsity']:.2%} of the masked weights."]
        if last["run"] in layers:
            lines += depth(layers[last["run"]])
    for number, cells in done.dropna(subset=["sweep"]).groupby("sweep"):
        top = cells.loc[cells["val_accuracy"].idxmax()]
        lines.append(f"Sweep #{int(number)} ({len(cells)} finished runs): validation accuracy from "
                     f"{cells['val_accuracy'].min():.1%} to {cells['val_accuracy'].max():.1%}, best at "
                     f"{top['sweep_values']}; mask sparsity from {cells['sparsity'].min():.2%} to "
                     f"{cells['sparsity'].max():.2%}.")
    return lines
