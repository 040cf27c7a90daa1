"""The lab's main tables from a batch of the embedded grid run for several seeds.

    for seed in 0 1 2; do piggylab batch grids/embedded.yaml --set seed=$seed; done
    python scripts/embedded_results.py runs/embedded     # writes runs/embedded/tables.md

reads every run of the batch folder (`piggylab.report.collect`) and writes, as Markdown:

- the results table of data/README.md: test accuracy (%) per embedded task and standard method
  (classifier-only, piggyback with frozen and with task BN, piggyback with the BN mode chosen on
  validation, fine-tuning), mean ± std over the seeds, and the mean over the tasks
  (`piggylab.claims.results_table`);
- the mask sparsity (%) of both piggyback runs, the same way;
- the claims table of each seed and of all seeds together (`piggylab.claims.evaluate`).

It trains nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from piggylab import claims
from piggylab.io import atomic_write_text
from piggylab.report import collect


def seed_tables(results: pd.DataFrame) -> str:
    """The Markdown document: results, sparsity and the claims per seed and over all seeds."""
    seeds = sorted(int(s) for s in results["seed"].dropna().unique())
    parts = [f"Seeds: {', '.join(map(str, seeds))}.", "", "## Test accuracy (%), mean ± std over the seeds", "",
             claims.markdown(claims.results_table(results)), "", "## Mask sparsity (%), mean ± std over the seeds", "",
             claims.markdown(claims.results_table(results, value="sparsity",
                                                  kinds=["piggyback", "piggyback + task BN"]))]
    for seed in [*seeds, None]:
        title = "all seeds (a margin counts only above its seed-to-seed std)" if seed is None else f"seed {seed}"
        parts += ["", f"## Claims, {title}", "", claims.markdown(claims.evaluate(results, seed=seed))]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("batch", type=Path, help="the batch folder (grids/embedded.yaml's output: runs/embedded)")
    parser.add_argument("--out", type=Path, help="Markdown file (default: BATCH/tables.md)")
    args = parser.parse_args(argv)
    text = seed_tables(collect(args.batch).results)
    path = atomic_write_text(args.out or args.batch / "tables.md", text)
    print(text)
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
