"""The paper's claims, checked against a batch's results: the lab's claims table (C1-C10).

Each claim is a function of a results table (a batch's ``results.csv``, or one notebook's
result rows) returning a `Claim`: its id, the paper's statement and figure, what this batch
measured (mean ± std over seeds where there are several) and whether it is `shown`: "yes",
"no", or "not run" when the rows it needs are missing. `evaluate` gives all ten as a table,
`piggylab claims RUN_DIR` prints it and writes ``claims.csv``, the batch report opens with it,
and each notebook's "What we learned" calls the same functions on its own rows, so a
notebook and the report never disagree.

A margin counts only if it exceeds the seed-to-seed standard deviation of that margin (with
one seed, only its sign counts). Rows are picked by what they are, not by their labels:

- *piggyback*: binary mask, constant init 1e-2, tau 5e-3, on the pretrained backbone, with
  frozen BN (the paper's default) or task BN (§5.3); *piggyback (chosen)* takes, per task
  and seed, the BN mode with the higher validation accuracy (never the test one);
- *classifier* (frozen BN) and *finetune*, on the pretrained backbone;
- the variants of notebooks 02 (init), 03 (ternary), 05 (threshold), 06 (``order_check``,
  ``accuracy_change``), 08 (PackNet in two orders, backbone variants).

The tasks' order of distance from the source is `piggylab.datasets.EMBEDDED_TASKS`'.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .datasets import EMBEDDED_TASKS
from .io import atomic_write_text
from .masked import DEFAULT_SCALE, DEFAULT_THRESHOLD

SHOWN = ("yes", "no", "not run")
COLUMNS = ["claim", "paper", "measured", "shown"]
FAR_TASKS, NEAR_TASK = ("textured", "fonts"), "greek"


@dataclass(frozen=True)
class Claim:
    """One claim's verdict: id (C1...), the paper's statement and figure, what was measured, shown."""

    id: str
    paper: str
    measured: str
    shown: str

    def line(self) -> str:
        """One sentence for a notebook's "What we learned"."""
        verdict = {"yes": "shown here", "no": "**not shown here**", "not run": "not run here"}[self.shown]
        return f"**{self.id}** ({self.paper}): {self.measured}: {verdict}."


# -- picking rows ------------------------------------------------------------------------------------

def _column(frame: pd.DataFrame, name: str, default) -> pd.Series:
    return frame[name].fillna(default) if name in frame else pd.Series(default, index=frame.index)


def _close(series: pd.Series, value: float) -> pd.Series:
    return np.isclose(pd.to_numeric(series, errors="coerce").astype(float), value)


def standard(results: pd.DataFrame) -> pd.DataFrame:
    """The rows of the lab's standard runs, with a `kind` column: ``piggyback`` (frozen BN),
    ``piggyback + task BN``, ``classifier`` and ``finetune``, on the pretrained backbone and in
    no order experiment; one row per (kind, task, seed), averaging repeats of the same run."""
    if results.empty or "method" not in results:
        return pd.DataFrame(columns=["kind", "task", "seed", "accuracy", "val_accuracy"])
    r = results
    pretrained = _column(r, "backbone_variant", "pretrained") == "pretrained"
    plain_mask = ((_column(r, "mask_kind", "binary") == "binary") & (_column(r, "init", "constant") == "constant")
                  & _close(_column(r, "init_scale", DEFAULT_SCALE["constant"]), DEFAULT_SCALE["constant"])
                  & _close(_column(r, "threshold", DEFAULT_THRESHOLD), DEFAULT_THRESHOLD))
    no_order = _column(r, "order", "") == ""
    bn = _column(r, "bn_mode", "frozen")
    kinds = pd.Series(None, index=r.index, dtype=object)
    kinds[(r["method"] == "piggyback") & plain_mask & (bn == "frozen")] = "piggyback"
    kinds[(r["method"] == "piggyback") & plain_mask & (bn == "task")] = "piggyback + task BN"
    kinds[(r["method"] == "classifier") & (bn == "frozen")] = "classifier"
    kinds[r["method"] == "finetune"] = "finetune"
    picked = r[kinds.notna() & pretrained & no_order].assign(kind=kinds, seed=_column(r, "seed", 0))
    numeric = [c for c in ("accuracy", "val_accuracy", "sparsity", "first_third_sparsity", "last_third_sparsity",
                           "classes") if c in picked]
    return picked.groupby(["kind", "task", "seed"], as_index=False)[numeric].mean()


def chosen_piggyback(results: pd.DataFrame) -> pd.DataFrame:
    """Per task and seed, the piggyback run (frozen or task BN) with the higher validation accuracy."""
    s = standard(results)
    pig = s[s["kind"].isin(["piggyback", "piggyback + task BN"])]
    if pig.empty:
        return pig
    best = pig.sort_values("val_accuracy", ascending=False, kind="stable").groupby(["task", "seed"]).head(1)
    return best.assign(kind="piggyback (chosen)")


def table(results: pd.DataFrame, kinds: Sequence[str] | None = None, value: str = "accuracy") -> pd.DataFrame:
    """Task x seed table of `value` per kind: ``{kind: DataFrame(index=task, columns=seed)}`` flattened
    into one frame with a (kind, task) index."""
    s = pd.concat([standard(results), chosen_piggyback(results)], ignore_index=True)
    if kinds is not None:
        s = s[s["kind"].isin(kinds)]
    return s.pivot_table(index=["kind", "task"], columns="seed", values=value)


# -- margins over seeds ------------------------------------------------------------------------------

def _seeds(values: pd.Series) -> str:
    """`values` (fractions) in points, mean ± std over seeds (just the value for one seed)."""
    values = values.dropna() * 100
    if len(values) == 0:
        return "-"
    return f"{values.mean():.1f}" if len(values) == 1 else f"{values.mean():.1f} ± {values.std(ddof=1):.1f}"


def beats(margins: pd.Series, threshold: float = 0.0) -> bool:
    """Whether per-seed `margins` show a margin above `threshold`: their mean exceeds it by more
    than their seed-to-seed std (one seed: just exceeds it)."""
    margins = margins.dropna()
    if margins.empty:
        return False
    spread = margins.std(ddof=1) if len(margins) > 1 else 0.0
    return bool(margins.mean() - threshold > spread) if len(margins) > 1 else bool(margins.mean() > threshold)


def _per_task(results: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Accuracy of kinds `a` and `b` per (task, seed), on the tasks and seeds both have."""
    s = pd.concat([standard(results), chosen_piggyback(results)], ignore_index=True)
    wide = s.pivot_table(index=["task", "seed"], columns="kind", values="accuracy")
    return wide[[a, b]].dropna() if {a, b} <= set(wide.columns) else pd.DataFrame(columns=[a, b])


def _tasks(frame: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(frame.index.get_level_values("task")))
    return [t for t in EMBEDDED_TASKS if t in present] + [t for t in present if t not in EMBEDDED_TASKS]


def _not_run(cid: str, paper: str, what: str) -> Claim:
    return Claim(cid, paper, f"needs {what}", "not run")


def _verdict(ok: bool) -> str:
    return "yes" if ok else "no"


# -- the claims ---------------------------------------------------------------------------------------

def c1(results: pd.DataFrame) -> Claim:
    """§4, Table 1: piggyback beats classifier-only on every task, by at least 10 points on the mean."""
    paper = "§4, Table 1: piggyback > classifier-only on every target task, mean gain ≥ 10 points"
    wide = _per_task(results, "piggyback", "classifier")
    if wide.empty:
        return _not_run("C1", paper, "piggyback and classifier-only runs")
    gain = wide["piggyback"] - wide["classifier"]
    per_task = {t: gain.xs(t, level="task") for t in _tasks(wide)}
    mean_gain = gain.groupby(level="seed").mean()
    losing = [t for t, g in per_task.items() if not beats(g)]
    ok = not losing and beats(mean_gain, 0.10)
    measured = (f"mean gain {_seeds(mean_gain)} points; per task " + ", ".join(f"{t} {_seeds(g)}" for t, g in per_task.items())
                + (f"; not above classifier-only on {', '.join(losing)}" if losing else ""))
    return Claim("C1", paper, measured, _verdict(ok))


def c2(results: pd.DataFrame) -> Claim:
    """§4, §5.3: piggyback (BN mode chosen per task on validation) is within 3 points of fine-tuning on the mean."""
    paper = "§4, §5.3: piggyback (frozen or task BN, chosen on validation) within 3 points of fine-tuning, mean over tasks"
    wide = _per_task(results, "piggyback (chosen)", "finetune")
    if wide.empty:
        return _not_run("C2", paper, "piggyback and fine-tuning runs")
    gap = (wide["finetune"] - wide["piggyback (chosen)"]).groupby(level="seed").mean()
    means = wide.groupby(level="seed").mean()
    ok = beats(0.03 - gap)
    return Claim("C2", paper, f"fine-tuning {_seeds(means['finetune'])}, piggyback {_seeds(means['piggyback (chosen)'])}: "
                              f"gap {_seeds(gap)} points", _verdict(ok))


def c3(results: pd.DataFrame) -> Claim:
    """The baseline is real: fine-tuning beats classifier-only everywhere; both methods reach 3x chance."""
    paper = "the baseline is real: fine-tuning > classifier-only on every task; fine-tuning and piggyback ≥ 3x chance"
    wide = _per_task(results, "finetune", "classifier")
    pig = _per_task(results, "piggyback (chosen)", "finetune")
    s = standard(results)
    if wide.empty or pig.empty or "classes" not in s:
        return _not_run("C3", paper, "fine-tuning, classifier-only and piggyback runs")
    chance = 1.0 / s.groupby("task")["classes"].first()
    gain = {t: (wide["finetune"] - wide["classifier"]).xs(t, level="task") for t in _tasks(wide)}
    reached = {(kind, t): frame[kind].xs(t, level="task") / chance[t]
               for kind, frame in (("finetune", wide), ("piggyback (chosen)", pig)) for t in _tasks(frame)}
    losing = [t for t, g in gain.items() if not beats(g)]
    low = [f"{kind} on {t}" for (kind, t), ratio in reached.items() if not beats(ratio, 3.0)]
    (kind, task), lowest = min(reached.items(), key=lambda item: item[1].mean())
    measured = (f"fine-tuning minus classifier-only: {', '.join(f'{t} {_seeds(g)}' for t, g in gain.items())}; "
                f"lowest {lowest.mean():.1f}x chance ({kind} on {task})")
    problems = ([f"fine-tuning not above classifier-only on {', '.join(losing)}"] if losing else []) + \
        ([f"below 3x chance: {', '.join(low)}"] if low else [])
    return Claim("C3", paper, measured + ("; " + "; ".join(problems) if problems else ""), _verdict(not problems))


def c4(results: pd.DataFrame) -> Claim:
    """§5.3: task BN gains over frozen BN on the far tasks, by more than on the near task."""
    paper = f"§5.3: task BN gains over frozen BN on the far tasks ({', '.join(FAR_TASKS)}), more than on {NEAR_TASK}"
    wide = _per_task(results, "piggyback + task BN", "piggyback")
    if wide.empty or not {NEAR_TASK, *FAR_TASKS} <= set(_tasks(wide)):
        return _not_run("C4", paper, f"frozen- and task-BN piggyback on {NEAR_TASK}, {', '.join(FAR_TASKS)}")
    gain = wide["piggyback + task BN"] - wide["piggyback"]
    near = gain.xs(NEAR_TASK, level="task")
    far = {t: gain.xs(t, level="task") for t in FAR_TASKS}
    ok = all(beats(g) and beats(g - near) for g in far.values())
    return Claim("C4", paper, f"gain {', '.join(f'{t} {_seeds(g)}' for t, g in far.items())} vs {NEAR_TASK} "
                              f"{_seeds(near)} points", _verdict(ok))


def _variant_rows(results: pd.DataFrame, *, bn_mode: str | None = "frozen", **where) -> pd.DataFrame:
    """Piggyback rows on the pretrained backbone, in no order experiment, with batchnorm `bn_mode`
    (None: either), matching `where` (column -> value)."""
    if results.empty or "method" not in results:
        return results.iloc[:0]
    r = results[(results["method"] == "piggyback") & (_column(results, "backbone_variant", "pretrained") == "pretrained")
                & (_column(results, "order", "") == "")]
    if bn_mode is not None:
        r = r[_column(r, "bn_mode", "frozen") == bn_mode]
    for column, value in where.items():
        series = _column(r, column, np.nan)
        r = r[_close(series, value)] if isinstance(value, float) else r[series == value]
    return r.assign(seed=_column(r, "seed", 0), bn_mode=_column(r, "bn_mode", "frozen"))


def _paired(results: pd.DataFrame, column: str, a: str, b: str, **where) -> pd.DataFrame:
    """Piggyback runs that differ only in `column` (`a` against `b`; either BN mode), matched on
    task, BN mode and seed: one row per match with the two accuracies and `b`'s row's other columns."""
    rows = {v: _variant_rows(results, bn_mode=None, **{column: v}, **where) for v in (a, b)}
    keys = ["task", "bn_mode", "seed"]
    mean = {v: r.groupby(keys).mean(numeric_only=True) for v, r in rows.items()}
    joined = mean[b].join(mean[a][["accuracy"]].rename(columns={"accuracy": f"accuracy_{a}"}), how="inner")
    return joined.rename(columns={"accuracy": f"accuracy_{b}"}).reset_index()


def _where(pairs: pd.DataFrame) -> str:
    return ", ".join(f"{task} ({bn} BN)" for task, bn in pairs[["task", "bn_mode"]].drop_duplicates().itertuples(index=False))


def c5(results: pd.DataFrame) -> Claim:
    """§3: constant score init beats uniform init by at least 20 points."""
    paper = "§3: constant init beats uniform init by ≥ 20 points"
    pairs = _paired(results, "init", "constant", "uniform", mask_kind="binary", threshold=DEFAULT_THRESHOLD,
                    init_scale=DEFAULT_SCALE["uniform"])
    if pairs.empty:
        return _not_run("C5", paper, "constant- and uniform-init runs on one task")
    by_seed = pairs.groupby("seed")[["accuracy_constant", "accuracy_uniform"]].mean()
    margin = by_seed["accuracy_constant"] - by_seed["accuracy_uniform"]
    return Claim("C5", paper, f"{_where(pairs)}: constant {_seeds(by_seed['accuracy_constant'])}, uniform "
                              f"{_seeds(by_seed['accuracy_uniform'])}: margin {_seeds(margin)} points",
                 _verdict(beats(margin, 0.20)))


def c6(results: pd.DataFrame) -> Claim:
    """§3: ternary masks are within 2 points (or the seed std) of binary ones, with weights actually negated."""
    paper = "§3: ternary within 2 points (or the seed std) of binary, with ≥ 0.1% of the weights negated"
    pairs = _paired(results, "mask_kind", "binary", "ternary", init="constant", threshold=DEFAULT_THRESHOLD)
    if pairs.empty:
        return _not_run("C6", paper, "binary and ternary runs on the same task")
    diff = (pairs["accuracy_ternary"] - pairs["accuracy_binary"]).groupby(pairs["seed"]).mean()
    negated = pairs.groupby("seed")["negated"].mean()
    spread = diff.std(ddof=1) if len(diff) > 1 else 0.0
    ok = abs(diff.mean()) <= max(0.02, spread) and negated.mean() >= 0.001
    return Claim("C6", paper, f"{_where(pairs)}: ternary minus binary {_seeds(diff)} points; "
                              f"{negated.mean():.2%} of the weights negated", _verdict(ok))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    rx, ry = pd.Series(x).rank(), pd.Series(y).rank()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def c7(results: pd.DataFrame) -> Claim:
    """§5, Table 6, Fig. 3: sparsity follows the tasks' distance, grows with tau, and grows with depth."""
    paper = ("§5, Table 6, Fig. 3: sparsity's Spearman correlation with the tasks' distance ≥ 0.8; sparsity grows "
             "with tau; the last third of the layers sparser than the first")
    s = standard(results)
    pig = s[(s["kind"] == "piggyback") & s["task"].isin(EMBEDDED_TASKS)]
    thresholds = _variant_rows(results, mask_kind="binary", init="constant")
    if pig["task"].nunique() < 3 or "first_third_sparsity" not in pig:
        return _not_run("C7", paper, "frozen-BN piggyback on at least three embedded tasks")
    order = {t: i for i, t in enumerate(EMBEDDED_TASKS)}
    rho = pig.groupby("seed").apply(lambda g: spearman([order[t] for t in g["task"]], g["sparsity"]),
                                    include_groups=False)
    depth = pig.groupby("seed").apply(lambda g: (g["last_third_sparsity"] - g["first_third_sparsity"]).mean(),
                                      include_groups=False)
    parts = [f"Spearman {rho.mean():.2f}" + (f" ± {rho.std(ddof=1):.2f}" if len(rho) > 1 else ""),
             f"last minus first third {_seeds(depth)} points"]
    ok = bool((rho >= 0.8).all()) and beats(depth)
    tau_tasks = thresholds.groupby("task")["threshold"].nunique()
    tau_tasks = list(tau_tasks[tau_tasks >= 2].index)
    if tau_tasks:
        grows = []
        for task in tau_tasks:
            by_tau = thresholds[thresholds["task"] == task].groupby(["seed", "threshold"])["sparsity"].mean()
            grows += [bool(np.all(np.diff(by_tau.xs(seed, level="seed").to_numpy()) > 0))
                      for seed in by_tau.index.get_level_values("seed").unique()]
        parts.append(f"sparsity grows with tau on {', '.join(tau_tasks)} in {sum(grows)} of {len(grows)} runs")
        ok = ok and all(grows)
    else:
        parts.append("no threshold variants")
        ok = False
    return Claim("C7", paper, "; ".join(parts), _verdict(ok))


def c8(results: pd.DataFrame) -> Claim:
    """§4: PackNet's mean is below piggyback's; PackNet depends on task order, piggyback does not."""
    paper = "§4: PackNet's mean below piggyback's; PackNet depends on task order, piggyback bit-identical in both"
    if results.empty or "method" not in results:
        return _not_run("C8", paper, "PackNet runs in two orders")
    pack = results[results["method"] == "packnet"].assign(seed=lambda f: _column(f, "seed", 0))
    check = results[_column(results, "order_check", "") != ""] if "order_check" in results else results.iloc[:0]
    pig = chosen_piggyback(results)
    if pack.empty or _column(pack, "order", "").nunique() < 2 or pig.empty or check.empty:
        return _not_run("C8", paper, "PackNet in two orders, piggyback runs and a piggyback order check")
    pack_mean = pack.groupby("seed")["accuracy"].mean()
    pig_mean = pig[pig["task"].isin(pack["task"])].groupby("seed")["accuracy"].mean()
    by_order = pack.pivot_table(index=["seed", "task"], columns="order", values="accuracy")
    spread = (by_order.max(axis=1) - by_order.min(axis=1)).groupby(level="seed").mean()
    identical = bool((check["order_check"] == "identical").all())
    ok = beats(pig_mean - pack_mean) and bool((spread > 0).all()) and identical
    return Claim("C8", paper, f"PackNet {_seeds(pack_mean)} vs piggyback {_seeds(pig_mean)}; PackNet's accuracy moves "
                              f"by {_seeds(spread)} points per task between the orders; piggyback "
                              f"{'bit-identical' if identical else 'NOT identical'} in another order",
                 _verdict(ok))


def c9(results: pd.DataFrame) -> Claim:
    """§5.1: masks need a well-initialised backbone: pretrained > early checkpoint > random."""
    paper = "§5.1: pretrained > early checkpoint > random backbone"
    if results.empty or "backbone_variant" not in results:
        return _not_run("C9", paper, "piggyback over the pretrained, early and random backbones")
    r = results[(results["method"] == "piggyback") & results["backbone_variant"].notna()].assign(
        seed=lambda f: _column(f, "seed", 0))
    tasks = set.intersection(*[set(r[r["backbone_variant"] == v]["task"]) for v in ("pretrained", "early", "random")]) \
        if {"early", "random"} <= set(r["backbone_variant"]) else set()
    if not tasks:
        return _not_run("C9", paper, "piggyback over the pretrained, early and random backbones on one task")
    r = r[r["task"].isin(tasks) & (_column(r, "experiment", "") == "backbone_init")]
    mean = r.pivot_table(index="seed", columns="backbone_variant", values="accuracy")
    ok = beats(mean["pretrained"] - mean["early"]) and beats(mean["early"] - mean["random"])
    return Claim("C9", paper, f"{', '.join(sorted(tasks))}: pretrained {_seeds(mean['pretrained'])}, early "
                              f"{_seeds(mean['early'])}, random {_seeds(mean['random'])}", _verdict(ok))


def c10(results: pd.DataFrame) -> Claim:
    """§1: nothing is forgotten: no task's accuracy changes when others are added."""
    paper = "§1: nothing forgotten: 0.00 points of change for any task after the others are added"
    if results.empty or "accuracy_change" not in results or results["accuracy_change"].isna().all():
        return _not_run("C10", paper, "notebook 06's accuracy after each task is added")
    change = results["accuracy_change"].dropna()
    return Claim("C10", paper, f"largest change of any task {change.max() * 100:.2f} points over "
                               f"{change.size} tasks", _verdict(bool((change == 0).all())))


CLAIMS: dict[str, Callable[[pd.DataFrame], Claim]] = {
    "C1": c1, "C2": c2, "C3": c3, "C4": c4, "C5": c5, "C6": c6, "C7": c7, "C8": c8, "C9": c9, "C10": c10}


def check(results: pd.DataFrame, ids: Sequence[str] | None = None, seed: int | None = None) -> list[Claim]:
    """The verdicts of the claims `ids` (default all, `CLAIMS`) on `results` (one seed's rows only, if given).
    A table a claim cannot read is reported as ``not run`` with the reason, never raised."""
    ids = list(CLAIMS) if ids is None else list(ids)
    unknown = [cid for cid in ids if cid not in CLAIMS]
    if unknown:
        raise ValueError(f"unknown claim(s) {', '.join(unknown)}; choose among {', '.join(CLAIMS)}")
    if seed is not None and "seed" in results:
        results = results[_column(results, "seed", 0) == seed]
    verdicts = []
    for cid in ids:
        claim = CLAIMS[cid]
        try:
            verdicts.append(claim(results))
        except (KeyError, ValueError, IndexError) as error:  # a malformed table: reported, not raised
            verdicts.append(Claim(cid, claim.__doc__.splitlines()[0], f"could not be evaluated: {error}", "not run"))
    return verdicts


def evaluate(results: pd.DataFrame, seed: int | None = None) -> pd.DataFrame:
    """Every claim on `results` (`check`): a table with `COLUMNS`."""
    return pd.DataFrame([{"claim": c.id, "paper": c.paper, "measured": c.measured, "shown": c.shown}
                         for c in check(results, seed=seed)], columns=COLUMNS)


def lines(results: pd.DataFrame, ids: Sequence[str]) -> list[str]:
    """One "What we learned" sentence per claim of `ids`, checked on `results` (a notebook's own rows):
    the same functions as the batch's claims table, so a notebook and the report never disagree."""
    return [claim.line() for claim in check(results, ids)]


def text_table(claims: pd.DataFrame) -> str:
    """The claims table as plain text for a terminal: per claim its verdict, statement and measurement."""
    width = max(len(s) for s in SHOWN)
    lines = []
    for r in claims.itertuples():
        lines += [f"{r.claim:<4} {r.shown:<{width}}  {r.paper}", f"{'':<{width + 6}}measured: {r.measured}"]
    shown = claims["shown"].value_counts()
    lines.append(", ".join(f"{shown.get(s, 0)} {s}" for s in SHOWN))
    return "\n".join(lines)


def write_claims(run_dir: str | Path, seed: int | None = None) -> tuple[str, Path]:
    """Evaluate every claim on the batch in `run_dir` (its runs' metrics.json, `piggylab.report.collect`;
    only `seed`'s runs if given), write ``claims.csv`` (``claims-seedN.csv``) there and return
    ``(text table, path)``."""
    from .report import collect

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no batch output folder at {run_dir}")
    claims = evaluate(collect(run_dir).results, seed=seed)
    name = "claims.csv" if seed is None else f"claims-seed{seed}.csv"
    path = atomic_write_text(run_dir / name, claims.to_csv(index=False))
    return text_table(claims), path


def markdown(frame: pd.DataFrame) -> str:
    """A table as Markdown (the claims table, a results table); a named index becomes the first column."""
    if frame.index.name is not None:
        frame = frame.reset_index()
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def results_table(results: pd.DataFrame, value: str = "accuracy", kinds: Sequence[str] | None = None) -> pd.DataFrame:
    """`value` (a fraction, shown in %) per task and standard run kind, mean ± std over seeds, with the
    mean over the tasks: data/README's results table (`kinds` default: classifier, piggyback with
    frozen, task and chosen BN, fine-tuning)."""
    s = pd.concat([standard(results), chosen_piggyback(results)], ignore_index=True)
    kinds = kinds or ["classifier", "piggyback", "piggyback + task BN", "piggyback (chosen)", "finetune"]
    out = {}
    for kind in kinds:
        part = s[s["kind"] == kind]
        if part.empty:
            continue
        out[kind] = {t: _seeds(part[part["task"] == t][value]) for t in dict.fromkeys(part["task"])}
        out[kind]["mean"] = _seeds(part.groupby("seed")[value].mean())
    frame = pd.DataFrame(out)
    order = [t for t in EMBEDDED_TASKS if t in frame.index] + [t for t in frame.index if t not in EMBEDDED_TASKS]
    return frame.reindex(order).rename_axis("task")
