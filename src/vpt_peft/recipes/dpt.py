"""DPT's recipe (the reference's Dassl solver): the epoch callback for the warm-up, the official optimizer and
schedule, few-shot sampling."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from ..engine.tuner import PromptTuner
from .roles import parameter_roles


def _tuner(model: nn.Module):
    """The tuner that keeps an epoch (DPT's), found by what it does rather than by its class."""
    tuner = next((m for m in model.modules() if isinstance(m, PromptTuner) and hasattr(m, "set_epoch")), None)
    if tuner is None:
        raise TypeError(f"{type(model).__name__} has no DPT adapter (get_peft_model(clip, DualPromptConfig(...))).")
    return tuner


def set_epoch(model: nn.Module, epoch: int) -> None:
    """Tell the DPT loss which (0-based) epoch runs, for the zero-shot-guided warm-up (plain loops)."""
    _tuner(model).set_epoch(epoch)


class DualPromptEpochCallback(TrainerCallback):
    """Keeps the DPT loss's epoch in step with ``transformers.Trainer`` (``callbacks=[DualPromptEpochCallback()]``)."""

    def on_epoch_begin(self, args: Any, state: Any, control: Any, model: nn.Module = None, **kwargs: Any) -> None:
        if model is not None:
            set_epoch(model, math.floor(state.epoch + 1e-6))


def dual_prompt_parameter_groups(
    model: nn.Module, lr_visual: float = 0.01, lr_text: float = 0.002, weight_decay: float = 5e-4
) -> list[dict]:
    """The reference's three optimizers as two parameter groups: [visual prompts + CAVPT, text context]."""
    visual, text = [], []
    roles = parameter_roles(model)
    for name, param in model.named_parameters():
        if param.requires_grad:
            (text if roles[name] == "text_prompt" else visual).append(param)
    groups = [
        dict(params=visual, lr=lr_visual, weight_decay=weight_decay, name="visual"),
        dict(params=text, lr=lr_text, weight_decay=weight_decay, name="text"),
    ]
    return [g for g in groups if g["params"]]


def dual_prompt_optimizer(
    model: nn.Module, lr_visual: float = 0.01, lr_text: float = 0.002, weight_decay: float = 5e-4, momentum: float = 0.9
) -> torch.optim.SGD:
    """SGD as the reference (Dassl): momentum 0.9, no Nesterov, weight decay 5e-4."""
    return torch.optim.SGD(dual_prompt_parameter_groups(model, lr_visual, lr_text, weight_decay), momentum=momentum)


def dual_prompt_scheduler(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps_per_epoch: int = 1,
    warmup_epochs: dict | None = None,
    warmup_lr: float = 1e-5,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Dassl's schedule per group: constant ``warmup_lr`` for the warm-up epochs (visual 10, text 1), then
    a cosine over ``epochs`` that restarts at the warm-up's end; the lr changes once per epoch."""
    warmup_epochs = warmup_epochs or {"visual": 10, "text": 1}

    def factor(group: dict):
        base, warm = group["lr"], warmup_epochs.get(group.get("name"), 0)

        def at(step: int) -> float:
            epoch = step // steps_per_epoch
            if epoch < warm:
                return warmup_lr / base
            return 0.5 * (1 + math.cos(math.pi * (epoch - warm) / epochs))

        return at

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(g) for g in optimizer.param_groups])


def dual_prompt_training(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    batch_size: int,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: int,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, list]:
    """DPT's recipe for a Trainer run: its own learning rates, warm-up and epoch callback (the VPT-style
    ``base_lr``/``weight_decay``/``warmup_epochs`` do not apply)."""
    optimizer = dual_prompt_optimizer(model)
    return optimizer, dual_prompt_scheduler(optimizer, epochs, steps_per_epoch), [DualPromptEpochCallback()]


def few_shot_indices(labels: Sequence[Any], shots: int, seed: int = 0) -> list[int]:
    """Indices (ascending) of ``shots`` examples per class, drawn with ``random.Random(seed)`` (CoOp's protocol).

    Classes are visited in sorted order, each drawing from its examples in dataset order, so the same labels,
    shots and seed always give the same draw. Classes with fewer than ``shots`` examples keep all of them.
    """
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots must be an integer >= 1, got {shots!r}.")
    by_class: dict[Any, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    rng = random.Random(seed)
    chosen = []
    for label in sorted(by_class):
        indices = by_class[label]
        chosen.extend(indices if len(indices) <= shots else rng.sample(indices, shots))
    return sorted(chosen)


def few_shot_subset(dataset: Any, shots: int, label_column: str = "label", seed: int = 0) -> Any:
    """A ``datasets.Dataset`` with ``shots`` examples per class (:func:`few_shot_indices`), in the dataset's order."""
    if label_column not in dataset.column_names:
        raise ValueError(f"label_column {label_column!r} is not a column of the dataset ({dataset.column_names}).")
    return dataset.select(few_shot_indices(dataset[label_column], shots, seed))
