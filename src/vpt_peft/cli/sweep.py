"""``vpt-peft sweep`` and ``vpt-peft report``: the papers' protocol on a benchmark, and its report.

The arguments are declared here (``add_commands``) next to what they do, so the protocol's options read in one
place; :mod:`vpt_peft.cli.parser` adds them to the other subcommands.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from .. import recipes
from .io import CLIError

BENCHMARK_MODULES = ("vpt_peft.reproduce", "vpt_peft.demo.benchmark")
"""Modules whose import registers benchmarks (the data loaders, the demo's digits)."""


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from error


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error


def _prune_grid(text: str) -> tuple[tuple[float, float], ...]:
    """``official`` (E2VPT's 9 x 9 candidates) or ``TOKENSxSEGMENTS,...`` ratios, e.g. ``0.5x0.25,0.3x0.5``."""
    from ..reproduce.protocol import OFFICIAL_PRUNE_GRID

    if text == "official":
        return OFFICIAL_PRUNE_GRID
    try:
        return tuple((float(t), float(s)) for t, s in (pair.split("x") for pair in text.split(",")))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected 'official' or TOKENSxSEGMENTS pairs, got {text!r}") from error


def add_commands(sub: argparse._SubParsersAction, formatter: type) -> None:
    sweep = sub.add_parser(
        "sweep",
        help="the papers' protocol: lr x wd grid on train -> val, retrain on train+val for the seeds, test",
        formatter_class=formatter,
    )
    sweep.add_argument("--benchmark", required=True, help="vtab-1k, fgvc, fewshot, or digits (built in, offline)")
    sweep.add_argument("--tasks", help="comma-separated task names (default: all of the benchmark's)")
    sweep.add_argument("--method", required=True, help=f"comma-separated recipes: {', '.join(recipes.recipe_names())}")
    sweep.add_argument("--model", required=True, help="Hub id or local folder of the base model")
    sweep.add_argument("--output", required=True, type=Path, help="folder of the trials, adapters and report")
    sweep.add_argument("--data-root", help="the benchmark's folder (or a Hub dataset id, where the loader takes one)")
    sweep.add_argument("--image-size", type=int, default=224, help="input resolution")
    sweep.add_argument(
        "--normalization",
        choices=("official", "processor"),
        default="official",
        help="the papers' mean/std, or the base model's image processor's",
    )
    sweep.add_argument("--shots", type=int, help="few-shot benchmarks: examples per class (each seed draws its own)")
    sweep.add_argument("--classes", default="all", choices=("all", "base", "novel"), help="few-shot class half")
    shrink = sweep.add_argument_group("shrinking the protocol (smoke runs; defaults are the papers')")
    shrink.add_argument("--epochs", type=int, help="training epochs (papers: 100)")
    shrink.add_argument("--warmup-epochs", type=int, help="linear warm-up epochs (papers: 10)")
    shrink.add_argument("--lr-grid", type=_floats, help="base lrs for batch 256, e.g. 1,0.1")
    shrink.add_argument("--wd-grid", type=_floats, help="weight decays, e.g. 0.001,0")
    shrink.add_argument("--seeds", type=_ints, help="final-run seeds (VPT family: 42,44,82,100,800; DPT: 1,2,3)")
    shrink.add_argument("--batch-size", type=int, help="batch size (default: the preset's)")
    shrink.add_argument("--max-train-steps", type=int, help="stop every training run after this many steps")
    shrink.add_argument("--prune-grid", type=_prune_grid, help="E2VPT: 'official' or pairs like 0.5x0.25,0.3x0.5")
    scale = sweep.add_argument_group("where trials run")
    scale.add_argument("--backend", choices=("inprocess", "ray"), default="inprocess", help="trial scheduler")
    scale.add_argument("--cpus-per-trial", type=float, default=1, help="Ray: CPUs per trial")
    scale.add_argument("--gpus-per-trial", type=float, default=0, help="Ray: GPUs per trial (0.5 packs two)")
    scale.add_argument("--ray-address", help="Ray: join this cluster ('auto' for the local head)")
    scale.add_argument("--max-concurrent-trials", type=int, help="Ray: cap on trials at once")
    scale.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per trial")

    report = sub.add_parser("report", help="Markdown + PNG report of a sweep, next to the papers' numbers")
    report.add_argument("output", type=Path, help="a folder written by 'vpt-peft sweep'")
    report.add_argument("--no-plots", action="store_true", help="write report.md only")


def _benchmark(name: str):
    from ..reproduce.tasks import BENCHMARKS

    for module in BENCHMARK_MODULES:
        importlib.import_module(module)
    if name not in BENCHMARKS:
        raise CLIError(f"unknown --benchmark {name!r}; registered: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def _backend(args: argparse.Namespace):
    from ..reproduce.backends import InProcessBackend, RayBackend

    if args.backend == "inprocess":
        return InProcessBackend()
    return RayBackend(args.cpus_per_trial, args.gpus_per_trial, args.ray_address, args.max_concurrent_trials)


def sweep(args: argparse.Namespace) -> None:
    from ..reproduce.protocol import Shrink, recipe_method
    from ..reproduce.report import write_report
    from ..reproduce.sweep import Entry, run_sweep
    from ..reproduce.trial import SweepSettings, task_data

    benchmark = _benchmark(args.benchmark)
    tasks = tuple(t for t in (args.tasks or ",".join(benchmark.tasks)).split(",") if t)
    unknown = [t for t in tasks if t not in benchmark.tasks]
    if unknown:
        raise CLIError(f"{benchmark.name} has no task {', '.join(unknown)}; its tasks: {', '.join(benchmark.tasks)}")
    methods = [m for m in args.method.split(",") if m]
    for method in methods:
        recipes.get_recipe(method)  # a clear error before any data is read
    load = dict(root=args.data_root, image_size=args.image_size, normalization=args.normalization)
    load.update(classes=args.classes, **({"shots": args.shots} if args.shots else {}))
    if args.normalization == "processor":
        from transformers import AutoImageProcessor

        load["processor"] = AutoImageProcessor.from_pretrained(args.model)
    settings = SweepSettings(
        model=args.model,
        benchmark=benchmark.name,
        output=args.output,
        load=load,
        max_train_steps=args.max_train_steps,
        num_workers=args.num_workers,
    )
    shrink = Shrink(
        epochs=args.epochs,
        warmup_epochs=args.warmup_epochs,
        lr_grid=args.lr_grid,
        wd_grid=args.wd_grid,
        seeds=args.seeds,
        batch_size=args.batch_size,
        prune_grid=args.prune_grid,
    )
    entries = []
    for task in tasks:
        info = task_data(settings, task, seed=1).info  # reads every task's split files now: errors come first
        entries += [Entry(task, recipe_method(method, info.preset_task, shrink)) for method in methods]
    rows = run_sweep(settings, entries, _backend(args))
    report, plots = write_report(rows, args.output)
    print(f"{len(rows)} trials recorded in {args.output / 'trials.csv'}; report: {report}")


def report(args: argparse.Namespace) -> None:
    from ..reproduce.report import write_report
    from ..reproduce.store import TrialStore

    if not (args.output / "trials").is_dir():
        raise CLIError(f"{args.output} has no trials/ folder: point at a folder written by 'vpt-peft sweep'")
    path, plots = write_report(TrialStore(args.output).rows(), args.output, plots=not args.no_plots)
    print(path.read_text())
    print(f"wrote {path}" + "".join(f", {p.name}" for p in plots))
