"""DPT's recipe (``dpt``): a CLIP-like model, class names as text prompts, the reference's own solver."""

from __future__ import annotations

from typing import Optional

from ...recipes import Preset, Recipe, dual_prompt_training, register_recipe
from .config import DualPromptConfig

BATCH_SIZE = 32
"""The released runs' batch size (spec §4.5)."""


def dpt_preset(task: Optional[str]) -> Preset:
    if task is not None:
        raise ValueError("dpt has no per-task presets (its recipe is one setting for every dataset); drop the task.")
    return Preset("dpt", None, {}, BATCH_SIZE, DualPromptConfig)


def register_recipes() -> None:
    register_recipe(
        Recipe(
            "dpt",
            DualPromptConfig,
            dpt_preset,
            base_model="dual-encoder",
            field_aliases={"num_prompts": "visual_n_ctx"},
            training=dual_prompt_training,
            description="DPT/CAVPT, text + class-aware visual prompts for CLIP",
        )
    )
