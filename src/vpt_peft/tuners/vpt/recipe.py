"""VPT's recipes: ``vpt-shallow`` and ``vpt-deep`` (per-task deep prompt counts from the paper's released runs)."""

from __future__ import annotations

from typing import Optional

from ...recipes import TASKS, Preset, Recipe, lr_grid_for, register_recipe
from .config import VisualPromptConfig

DEEP_PROMPTS = dict(
    zip(TASKS, (10, 10, 10, 1, 1, 50, 5, 100, 100, 10, 1, 50, 200, 100, 50, 10, 50, 200, 200, 10, 50, 5, 100, 200))
)

SHALLOW_PROMPTS = 5
"""Per-task VPT-shallow lengths were not released in a recoverable form: shallow uses the code default."""


def shallow_preset(task: Optional[str]) -> Preset:
    config = {"num_prompts": SHALLOW_PROMPTS, "deep": False}
    return Preset("vpt-shallow", task, config, 128, VisualPromptConfig, lr_grid=lr_grid_for(task))


def deep_preset(task: Optional[str]) -> Preset:
    prompts = DEEP_PROMPTS[task] if task else 5
    config = {"num_prompts": prompts, "deep": True, "prompt_dropout": 0.1}
    return Preset("vpt-deep", task, config, 128, VisualPromptConfig, lr_grid=lr_grid_for(task))


def register_recipes() -> None:
    register_recipe(Recipe("vpt-shallow", VisualPromptConfig, shallow_preset, description="VPT, prompts at the input"))
    register_recipe(Recipe("vpt-deep", VisualPromptConfig, deep_preset, description="VPT, prompts at every layer"))
