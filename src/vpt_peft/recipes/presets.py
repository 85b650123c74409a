"""The papers' recipes as presets, so a run can be reproduced without reading three code bases.

A *recipe* is what a user picks by name (``"vpt-deep"``, ``"vfpt"``, ``"e2vpt"``, ``"dpt"``; the CLI's
``--method``): its config class, the per-task settings the papers released (prompt counts, VFPT's Fourier share,
E2VPT's key-value count) and how it trains (optimiser, schedule). Each method registers its recipes from its own
package with :func:`register_recipe`; nothing here names a method. The per-task lr/wd were only released as
spreadsheets, so a preset carries the grids to search rather than one value.

>>> from vpt_peft import recipes
>>> p = recipes.preset("vpt-deep", task="cifar100")
>>> model = get_peft_model(model, p.make_config())
>>> optimizer = recipes.make_optimizer(model, base_lr=p.lr_grid[0], weight_decay=0.001, batch_size=p.batch_size)
>>> scheduler = recipes.epoch_scheduler(optimizer, p.warmup_epochs, p.epochs)   # scheduler.step() once per epoch
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from .schedules import EPOCHS, LR_GRID, WARMUP_EPOCHS, WD_GRID, make_optimizer, step_scheduler

# The papers' benchmark tasks (VTAB-1k groups and FGVC), as the per-task tables of the recipes name them.
VTAB_NATURAL = ("cifar100", "caltech101", "dtd", "flowers102", "pets", "svhn", "sun397")
VTAB_SPECIALIZED = ("pcam", "eurosat", "resisc45", "retinopathy")
VTAB_STRUCTURED = (
    "clevr-count",
    "clevr-dist",
    "dmlab",
    "kitti",
    "dsprites-loc",
    "dsprites-ori",
    "smallnorb-azi",
    "smallnorb-ele",
)
FGVC = ("cub", "nabirds", "oxford-flowers", "stanford-dogs", "stanford-cars")
TASKS = VTAB_NATURAL + VTAB_SPECIALIZED + VTAB_STRUCTURED + FGVC


def lr_grid_for(task: Optional[str]) -> tuple[float, ...]:
    """The base-lr grid of ``task``: FGVC drops the smallest value."""
    return LR_GRID[:-1] if task in FGVC else LR_GRID


@dataclass(frozen=True)
class Preset:
    """A method's config fields plus the optimisation hyper-parameters of the papers' recipe for one task."""

    method: str
    task: Optional[str]
    config: dict[str, Any]
    batch_size: int
    config_cls: type = field(default=type(None), repr=False)
    epochs: int = EPOCHS
    warmup_epochs: int = WARMUP_EPOCHS
    lr_grid: tuple[float, ...] = LR_GRID
    wd_grid: tuple[float, ...] = WD_GRID
    prune: Optional[dict[str, Any]] = field(default=None)

    def make_config(self, **overrides: Any) -> Any:
        """The peft config for this preset (``overrides`` win, e.g. ``num_prompts=20``)."""
        return self.config_cls(**{**self.config, **overrides})


TrainingSetup = tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, list]


def sgd_training(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    batch_size: int,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: int,
) -> TrainingSetup:
    """VPT's solver for a Trainer run: SGD at the scaled lr, warm-up + cosine stepped per optimizer step."""
    optimizer = make_optimizer(model, base_lr, weight_decay, batch_size)
    scheduler = step_scheduler(optimizer, steps_per_epoch, min(warmup_epochs, epochs - 1), epochs)
    return optimizer, scheduler, []


@dataclass(frozen=True)
class Recipe:
    """A named way to train a method: what ``preset(name, task)`` and the CLI's ``--method name`` give.

    ``presets(task)`` returns the config fields and batch size for a task (``None``: the code defaults).
    ``base_model`` says what the CLI loads: ``"image-classification"`` (a classifier with a new head) or
    ``"dual-encoder"`` (a CLIP-like model whose classes are text prompts, given ``class_names``).
    ``field_aliases`` maps the CLI's generic flags to this config's fields (``num_prompts`` -> ``visual_n_ctx``).
    ``training`` builds the optimiser, the per-step scheduler and any Trainer callbacks.
    """

    name: str
    config_cls: type
    presets: Callable[[Optional[str]], Preset]
    base_model: str = "image-classification"
    field_aliases: dict[str, str] = field(default_factory=dict)
    training: Callable[..., TrainingSetup] = sgd_training
    description: str = ""


RECIPES: dict[str, Recipe] = {}
"""Every registered recipe by name, in order of registration (the CLI's ``--method`` choices)."""


def register_recipe(recipe: Recipe) -> Recipe:
    """Make ``recipe`` available to :func:`preset`, the CLI and the test matrix (idempotent by name)."""
    RECIPES[recipe.name] = recipe
    return recipe


def recipe_names() -> tuple[str, ...]:
    return tuple(RECIPES)


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"method must be one of {recipe_names()}, got {name!r}.")
    return RECIPES[name]


def preset(method: str, task: Optional[str] = None) -> Preset:
    """The released recipe for ``method`` on ``task`` (a VTAB-1k or FGVC name), or the code defaults."""
    recipe = get_recipe(method)
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS} (or None for the code defaults), got {task!r}.")
    return recipe.presets(task)
