"""The papers' protocol as data: what a method trains with, which trials a sweep runs, and how it picks.

VPT, VFPT and E2VPT share one protocol (spec §1.6, §2.3, §3.4): every (lr, wd) cell of the grid trains on
``train`` and is scored on ``val`` by its last-epoch top-1; the best cell (ties toward the smaller lr) is
retrained on ``trainval`` once per official seed and scored on ``test``. E2VPT inserts its pruning stages
between the two (spec §3.3): one run at the best cell scores the prompts, each pruning candidate is rewound
and retrained on ``train`` -> ``val``, and the best candidate's masks are used for the final runs. DPT (spec
§4.5) trains at its released learning rates: a one-cell grid, so there is nothing to select and no tuning run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from .. import recipes

VPT_SEEDS = (42, 44, 82, 100, 800)
"""Final-run seeds of the VPT family's code (spec §1.6; the papers say "three runs", the code runs these five)."""
DPT_SEEDS = (1, 2, 3)
"""DPT's few-shot seeds (spec §4.5): each seed also draws its own K-shot training set."""
DPT_LR = 0.01
DPT_WEIGHT_DECAY = 5e-4
"""DPT's released visual-prompt/CAVPT lr and weight decay (spec §4.5); its text context keeps lr 0.002."""

OFFICIAL_PRUNE_GRID = tuple((t / 100, s / 100) for t in range(10, 100, 10) for s in range(10, 100, 10))
"""E2VPT's full candidate set (spec §3.3 step 4): 10-90 % of the tokens x 10-90 % of the segments."""

TUNE, SCORES, REWIND, FINAL = "tune", "scores", "rewind", "final"
STAGE_ROLES = {TUNE: ("train", "val"), SCORES: ("train", "val"), REWIND: ("train", "val"), FINAL: ("trainval", "test")}
"""Per stage, the role trained on and the role scored on (:data:`vpt_peft.reproduce.tasks.ROLES`)."""

SOLVERS = ("sgd", "dual-prompt")


@dataclass(frozen=True)
class MethodSpec:
    """One method as a sweep runs it on one task: its adapter config, grids, schedule, seeds and solver.

    ``config_cls=None`` is full fine-tuning. ``config`` holds the config's fields; a dual-encoder method also
    gets the task's class names and the base model's tokenizer when the trial builds it. ``prune`` (E2VPT)
    holds :func:`vpt_peft.tuners.e2vpt.pruning.apply_pruning` options (``rewind``) and ``importance``;
    ``prune_grid`` the (token ratio, segment ratio) candidates tried.
    """

    name: str
    config_cls: Optional[type]
    config: Mapping[str, Any]
    lr_grid: tuple[float, ...]
    wd_grid: tuple[float, ...]
    batch_size: int
    epochs: int
    warmup_epochs: int
    seeds: tuple[int, ...]
    solver: str = "sgd"
    base_model: str = "image-classification"
    prune: Optional[Mapping[str, Any]] = None
    prune_grid: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}.")
        for name in ("lr_grid", "wd_grid", "seeds"):
            if not getattr(self, name):
                raise ValueError(f"{self.name}: {name} is empty; give at least one value.")
        if self.prune is not None and not self.prune_grid:
            raise ValueError(f"{self.name}: a pruning method needs at least one (token, segment) ratio in prune_grid.")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"{self.name}: epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}.")

    def make_config(self, class_names: Optional[Sequence[str]] = None, model_path: Optional[str] = None) -> Any:
        """The peft config for one trial (None: full fine-tuning)."""
        if self.config_cls is None:
            return None
        fields = dict(self.config)
        if self.base_model == "dual-encoder":
            if not class_names:
                raise ValueError(f"{self.name} classifies with text prompts: the task must give its class names.")
            fields.update(class_names=list(class_names), tokenizer_name_or_path=model_path)
        return self.config_cls(**fields)


@dataclass(frozen=True)
class Shrink:
    """Command-line overrides of the official protocol, for smoke runs (None: the preset's value)."""

    epochs: Optional[int] = None
    warmup_epochs: Optional[int] = None
    lr_grid: Optional[tuple[float, ...]] = None
    wd_grid: Optional[tuple[float, ...]] = None
    seeds: Optional[tuple[int, ...]] = None
    batch_size: Optional[int] = None
    prune_grid: Optional[tuple[tuple[float, float], ...]] = None


def recipe_method(method: str, preset_task: Optional[str], shrink: Shrink = Shrink()) -> MethodSpec:
    """The registered recipe ``method`` on a task (its preset name, or None for the code defaults)."""
    recipe = recipes.get_recipe(method)
    dual = recipe.base_model == "dual-encoder"
    preset = recipe.presets(None if dual or preset_task not in recipes.TASKS else preset_task)
    epochs = shrink.epochs or preset.epochs
    warmup = preset.warmup_epochs if shrink.warmup_epochs is None else shrink.warmup_epochs
    return MethodSpec(
        name=method,
        config_cls=recipe.config_cls,
        config=dict(preset.config),
        lr_grid=shrink.lr_grid or ((DPT_LR,) if dual else preset.lr_grid),
        wd_grid=shrink.wd_grid or ((DPT_WEIGHT_DECAY,) if dual else preset.wd_grid),
        batch_size=shrink.batch_size or preset.batch_size,
        epochs=epochs,
        warmup_epochs=min(warmup, epochs - 1),
        seeds=shrink.seeds or (DPT_SEEDS if dual else VPT_SEEDS),
        solver="dual-prompt" if dual else "sgd",
        base_model=recipe.base_model,
        prune=None if preset.prune is None else {"rewind": "initial", "importance": preset.prune["importance"]},
        prune_grid=() if preset.prune is None else (shrink.prune_grid or _preset_candidate(preset.prune)),
    )


def _preset_candidate(prune: Mapping[str, Any]) -> tuple[tuple[float, float], ...]:
    return ((prune["token_ratio"], prune["segment_ratio"]),)


@dataclass(frozen=True)
class Trial:
    """One training run of the protocol; ``id`` names its row and its adapter folder, so a rerun finds it."""

    benchmark: str
    task: str
    method: str
    stage: str
    lr: float
    wd: float
    seed: int
    prune: Optional[tuple[float, float]] = None

    @property
    def id(self) -> str:
        parts = [self.stage, f"lr{self.lr:g}", f"wd{self.wd:g}", f"seed{self.seed}"]
        if self.prune is not None:
            parts.append(f"prune{self.prune[0]:g}x{self.prune[1]:g}")
        name = "/".join((self.benchmark, self.task, self.method, "-".join(parts)))
        return re.sub(r"[^A-Za-z0-9_.=/-]", "_", name)

    @property
    def roles(self) -> tuple[str, str]:
        return STAGE_ROLES[self.stage]


def grid_trials(benchmark: str, task: str, spec: MethodSpec) -> list[Trial]:
    """The tuning stage: every (lr, wd) cell on train -> val, at the first seed (none for a one-cell grid)."""
    if len(spec.lr_grid) * len(spec.wd_grid) == 1:
        return []
    return [
        Trial(benchmark, task, spec.name, TUNE, lr, wd, spec.seeds[0]) for lr in spec.lr_grid for wd in spec.wd_grid
    ]


def select_cell(rows: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """The official rule (spec §1.6): best last-epoch val top-1; ties toward the smaller lr.

    The spec names no rule for equal lr and accuracy; the larger weight decay wins then (the more regularised
    of two equal runs), so the choice never depends on the order the trials finished in.
    """
    if not rows:
        raise ValueError("No tuning trial has finished: nothing to select from.")
    best = max(rows, key=lambda r: (r["accuracy"], -r["lr"], r["wd"]))
    return best["lr"], best["wd"]


def select_candidate(rows: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """E2VPT's rule (spec §3.3 step 6): best last-epoch val top-1; ties toward more pruning (tokens, then segments)."""
    if not rows:
        raise ValueError("No rewind trial has finished: nothing to select from.")
    best = max(rows, key=lambda r: (r["accuracy"], r["prune"][0], r["prune"][1]))
    return tuple(best["prune"])
