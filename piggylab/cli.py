"""The ``piggylab`` command line: ``piggylab batch GRID.yaml``, ``piggylab report RUN_DIR``,
``piggylab claims RUN_DIR`` and ``piggylab export TASKFILE --backbone NAME --format FORMAT OUT``.

A thin argparse layer over `piggylab.batch.run_batch`, `piggylab.report.build_report` and
`piggylab.claims.write_claims`; the grid format and what a batch writes are documented in
`piggylab.batch`. Exit status: 0 when every run finished, 1 when some failed (the report lists
them), 2 for a bad grid or command line or an output folder another batch is using, 130 when
interrupted (rerun the same command to resume). ``claims`` always exits 0: it reports, it does
not fail. ``export`` (`piggylab.export.export_task_file`) exits 0 once the file is written, 2
for an unknown format, an existing OUT without ``--force``, a task file made for another
backbone or weights that are not here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import yaml


def _assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as YAML (``epochs=3``, ``smoke=true``, ``tasks=[a, b]``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not valid YAML ({exc})") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``piggylab`` command."""
    parser = argparse.ArgumentParser(prog="piggylab", description="Run and report grids of the lab's notebooks.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    batch = commands.add_parser("batch", help="run a grid of notebooks x parameters on Dask, then write the report",
                                description="Run every unfinished run of GRID (runs with a metrics.json are "
                                "skipped), keep going past failures, then write results.csv and report.html.")
    batch.add_argument("grid", metavar="GRID", help="grid file (YAML), e.g. grids/embedded.yaml")
    batch.add_argument("--scheduler", default="local", metavar="ADDRESS",
                       help="'local' (default: a LocalCluster of worker processes), 'local-threads' (workers in "
                       "this process) or a running scheduler's address, e.g. tcp://gpu-node:8786 (its workers "
                       "must see the same files)")
    batch.add_argument("--workers", type=int, metavar="N", help="LocalCluster workers (default: the grid's, else 2)")
    batch.add_argument("--output", metavar="DIR", help="output folder (default: the grid's 'output')")
    batch.add_argument("--set", dest="overrides", type=_assignment, action="append", default=[], metavar="KEY=VALUE",
                       help="set a parameter in every run whose notebook has it (VALUE is YAML); repeatable")
    batch.add_argument("--smoke", action="store_true", help="shorthand for --set smoke=true (tiny, fast runs)")
    batch.add_argument("--dry-run", action="store_true", help="list the runs and whether they are done; run nothing")
    batch.add_argument("--quiet", action="store_true", help="no progress bar or per-run lines")

    report = commands.add_parser("report", help="rebuild results.csv and report.html from a batch's output folder")
    report.add_argument("output", metavar="RUN_DIR", help="a batch's output folder (the grid's 'output')")
    report.add_argument("--title", help="page title")

    claims = commands.add_parser("claims", help="check the paper's claims (C1-C10) against a batch's results",
                                 description="Read RUN_DIR's results (results.csv, or its runs' metrics.json), "
                                 "print the claims table and write RUN_DIR/claims.csv. Always exits 0.")
    claims.add_argument("output", metavar="RUN_DIR", help="a batch's output folder (the grid's 'output')")
    claims.add_argument("--seed", type=int, metavar="N", help="only the runs of this seed (default: all, mean ± std)")

    export = commands.add_parser("export", help="export a task file as a plain model of the backbone's own class",
                                 description="Load TASKFILE over the backbone, bake the task's masks into its weights "
                                 "and write it as a plain model (the backbone's class, the task's batchnorm and head): "
                                 "a safetensors state dict, TorchScript, a torch.export program (pt2) or ONNX. The "
                                 "written file is loaded back and its largest output difference to the network is "
                                 "printed (ONNX: where onnxruntime is installed).")
    export.add_argument("task_file", metavar="TASKFILE", help="a task file written by save_task")
    export.add_argument("output", metavar="OUT", help="the file to write")
    export.add_argument("--backbone", required=True, metavar="NAME", help="the backbone the task was trained on: "
                        "tiny or a torchvision classifier (resnet50, vgg16, ...)")
    export.add_argument("--weights", default="DEFAULT", metavar="WEIGHTS",
                        help="the backbone's weights: a weights name (default DEFAULT; torchvision's e.g. "
                        "IMAGENET1K_V2, read from the torch cache, never downloaded), a weights file, or none "
                        "(random weights)")
    export.add_argument("--format", required=True, metavar="FORMAT", help="safetensors, torchscript, pt2 or onnx")
    export.add_argument("--image-size", type=int, metavar="N", help="the image size traced and checked "
                        "(default: 32 for tiny, else 224)")
    export.add_argument("--force", action="store_true", help="replace OUT if it exists")
    return parser


def _batch(args: argparse.Namespace) -> int:
    from .batch import load_grid, run_batch

    overrides = dict(args.overrides)
    if args.smoke:
        overrides["smoke"] = True
    grid = load_grid(args.grid, output=args.output, overrides=overrides, workers=args.workers)
    if args.dry_run:
        for run in grid.runs:
            params = " ".join(f"{k}={v}" for k, v in run.parameters.items())
            print(f"{'done' if run.done else 'to run':>6}  {run.run_id}  {params}")
        print(f"{len(grid.runs)} runs, {sum(r.done for r in grid.runs)} done; output: {grid.output}")
        return 0
    result = run_batch(grid, scheduler=args.scheduler, progress=not args.quiet)
    counts = {s: len(result.by_status(s)) for s in ("ok", "skipped", "failed")}
    print(f"{counts['ok']} ran, {counts['skipped']} already done, {counts['failed']} failed; results: {result.results_csv}")
    print(f"report: {result.report}")
    return 1 if counts["failed"] else 0


def _report(args: argparse.Namespace) -> int:
    from .report import build_report

    try:
        path = build_report(args.output, title=args.title)
    except FileNotFoundError as exc:
        print(f"piggylab report: error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


def _claims(args: argparse.Namespace) -> int:
    from .claims import write_claims

    try:
        table, path = write_claims(args.output, seed=args.seed)
    except FileNotFoundError as exc:
        print(f"piggylab claims: {exc}", file=sys.stderr)
        return 0
    print(table)
    print(f"claims: {path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export_task_file
    from .storage import TaskFileError

    try:
        weights = None if args.weights.lower() == "none" else args.weights
        result = export_task_file(args.task_file, args.output, backbone=args.backbone, weights=weights,
                                  fmt=args.format, image_size=args.image_size, force=args.force)
    except (TaskFileError, FileExistsError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"piggylab export: error: {exc}", file=sys.stderr)
        return 2
    checked = ("not checked (onnxruntime is not installed)" if result.max_difference is None
               else f"largest output difference to the network: {result.max_difference:.3g}")
    print(f"task {result.task!r} ({result.num_classes} classes) written to {result.path} "
          f"({result.format}, {result.bytes:,} bytes); {checked}")
    return 0


COMMANDS = {"batch": _batch, "report": _report, "claims": _claims, "export": _export}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``piggylab`` script; returns the exit status."""
    from .batch import BatchBusy, GridError

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (GridError, BatchBusy) as exc:
        print(f"piggylab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are kept; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
