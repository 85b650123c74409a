"""What the papers' full sweeps cost: images trained per method and benchmark, FLOPs per image, GPU-hours.

The model is arithmetic on the protocol (:mod:`.protocol`) and the presets: every (lr, wd) cell trains for 100
epochs on train800 (FGVC: its train split), every final seed for 100 epochs on train+val, E2VPT adds its
scoring run and one run per pruning candidate. Evaluation passes (one val pass per cell, one test pass per
seed) are left out: they are forward-only and under 1 % of the training work. Time per image comes from FLOPs
(ViT-B/16, the sequence grown by the prompts) and an assumed sustained accelerator throughput, because the
machine that wrote this has no GPU; ``bench/sweep_cost.py`` measures the CPU step time of the same model to
check the FLOP count's proportions, and prints the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import recipes
from .protocol import OFFICIAL_PRUNE_GRID, VPT_SEEDS, recipe_method

VTAB_TRAIN, VTAB_TRAINVAL = 800, 1000
FGVC_SPLITS = {
    "cub": (5394, 600),
    "nabirds": (21536, 2393),
    "oxford-flowers": (1020, 1020),
    "stanford-dogs": (10800, 1200),
    "stanford-cars": (7329, 815),
}
"""(train, val) images of the FGVC splits the VPT code uses (its data-preparation notes; test sets not needed)."""

PATCHES, WIDTH, LAYERS = 196, 768, 12
TRAIN_PASSES = 2.0
"""A prompt-tuning step costs about two forward passes: backward computes input gradients through every frozen
layer but no weight gradients (full fine-tuning would be about three)."""


def forward_flops(tokens: int, kv_tokens: int = 0) -> float:
    """FLOPs (multiply and add counted apart) of one ViT-B/16 forward pass with ``tokens`` in the sequence and
    ``kv_tokens`` extra keys/values per layer (E2VPT): projections and MLP 24·n·d², attention 4·n·(n+kv)·d."""
    n, d = tokens, WIDTH
    per_layer = 24 * n * d * d + 4 * n * (n + kv_tokens) * d
    return LAYERS * per_layer + 2 * PATCHES * 3 * 16 * 16 * d


def sequence(method: str, task: str) -> tuple[int, int]:
    """(tokens, extra key-values) of ``method``'s preset on ``task``: CLS + patches + prompts."""
    config = recipes.preset(method, task).config
    return 1 + PATCHES + config.get("num_prompts", 0), config.get("num_kv_prompts", 0)


@dataclass(frozen=True)
class TaskWorkload:
    """Training images of one task's sweep, by stage, and the FLOPs of one training image."""

    task: str
    tune_images: int
    prune_images: int
    final_images: int
    train_flops: float
    longest_trial_images: int

    @property
    def images(self) -> int:
        return self.tune_images + self.prune_images + self.final_images


def task_workload(method: str, task: str, official_pruning: bool = False) -> TaskWorkload:
    """The images ``method``'s full protocol trains on ``task`` (the preset's grid, 100 epochs, 5 seeds)."""
    spec = recipe_method(method, task)
    train, trainval = (VTAB_TRAIN, VTAB_TRAINVAL) if task not in FGVC_SPLITS else _fgvc(task)
    cells = len(spec.lr_grid) * len(spec.wd_grid)
    candidates = len(OFFICIAL_PRUNE_GRID) if official_pruning else len(spec.prune_grid)
    prune_runs = 0 if spec.prune is None else 1 + candidates
    tokens, kv = sequence(method, task)
    return TaskWorkload(
        task,
        tune_images=cells * spec.epochs * train,
        prune_images=prune_runs * spec.epochs * train,
        final_images=len(VPT_SEEDS) * spec.epochs * trainval,
        train_flops=TRAIN_PASSES * forward_flops(tokens, kv),
        longest_trial_images=spec.epochs * trainval,
    )


def _fgvc(task: str) -> tuple[int, int]:
    train, val = FGVC_SPLITS[task]
    return train, train + val


def gpu_hours(workloads: list[TaskWorkload], sustained_tflops: float) -> float:
    """Accelerator-hours to train every image of ``workloads`` at ``sustained_tflops`` (10^12 FLOP/s)."""
    return sum(w.images * w.train_flops for w in workloads) / (sustained_tflops * 1e12) / 3600


def parallel_hours(workloads: list[TaskWorkload], sustained_tflops: float, gpus: int) -> float:
    """Wall-clock hours on ``gpus`` accelerators, one trial each (Ray): each stage's trials are independent,
    so a stage takes its work / gpus, but never less than its longest trial; the stages run one after another
    (tune, then E2VPT's scoring and candidates, then the final seeds)."""
    per_second = sustained_tflops * 1e12
    longest = max(w.longest_trial_images * w.train_flops for w in workloads) / per_second
    total = 0.0
    for stage in ("tune_images", "prune_images", "final_images"):
        work = sum(getattr(w, stage) * w.train_flops for w in workloads) / per_second
        if work:
            total += max(work / gpus, min(longest, work))
    return total / 3600


def benchmark_tasks(benchmark: str) -> tuple[str, ...]:
    """The recipes' task names of a benchmark: ``vtab-1k`` (19) or ``fgvc`` (5)."""
    if benchmark == "fgvc":
        return recipes.FGVC
    if benchmark == "vtab-1k":
        return recipes.VTAB_NATURAL + recipes.VTAB_SPECIALIZED + recipes.VTAB_STRUCTURED
    raise ValueError(f"benchmark must be 'vtab-1k' or 'fgvc', got {benchmark!r}.")


def sweep_workloads(method: str, benchmark: str, official_pruning: bool = False) -> list[TaskWorkload]:
    return [task_workload(method, task, official_pruning) for task in benchmark_tasks(benchmark)]


def round_up(hours: float) -> float:
    """Hours to two significant figures, rounded up (a budget, not a promise)."""
    if hours <= 0:
        return 0.0
    scale = 10 ** (math.floor(math.log10(hours)) - 1)
    return math.ceil(hours / scale) * scale
