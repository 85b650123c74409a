"""E2VPT's recipe (``e2vpt``): per-task prompt and key-value counts (the released commands)."""

from __future__ import annotations

from typing import Optional

from ...recipes import FGVC, TASKS, Preset, Recipe, lr_grid_for, register_recipe
from .config import KVPromptConfig

SETTINGS = {task: (10, 5) for task in TASKS}
SETTINGS.update(
    {
        "caltech101": (32, 5),
        "cifar100": (5, 5),
        "flowers102": (1, 1),
        "pcam": (10, 10),
        "dsprites-loc": (5, 5),
        "dsprites-ori": (5, 5),
    }
)
SETTINGS.update({task: (5, 5) for task in FGVC})

PRUNING = {"token_ratio": 0.5, "segment_ratio": 0.25, "importance": "signed", "rewind": "initial"}
"""A single point of the official search (10-90 % of tokens x segments, picked on validation): pass it to
:func:`vpt_peft.prune_prompts` after the first training run, then retrain."""


def e2vpt_preset(task: Optional[str]) -> Preset:
    prompts, kv = SETTINGS[task] if task else (5, 5)
    config = {"num_prompts": prompts, "num_kv_prompts": kv, "prompt_dropout": 0.1, "kv_dropout": 0.0}
    batch = 128 if task in FGVC else 64
    return Preset("e2vpt", task, config, batch, KVPromptConfig, lr_grid=lr_grid_for(task), prune=dict(PRUNING))


def register_recipes() -> None:
    register_recipe(Recipe("e2vpt", KVPromptConfig, e2vpt_preset, description="E2VPT, key-value prompts + pruning"))
