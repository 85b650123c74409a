"""The optimiser and schedule VPT, VFPT and E2VPT share (VFPT and E2VPT copied VPT's solver).

SGD with momentum 0.9, one parameter group per tensor with weight decay on everything but the head bias,
learning rate ``base_lr * batch_size / 256`` with ``base_lr`` and the weight decay picked on a validation split
from :data:`LR_GRID` x :data:`WD_GRID`, and an epoch-level schedule: linear warm-up over 10 epochs starting
from lr 0 at epoch 0, then a half cosine to 0 at epoch 100.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from .roles import HEAD_BIAS, parameter_roles

LR_GRID: tuple[float, ...] = (50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05)
"""Base learning rates (for batch 256) searched per task; FGVC drops the last one."""
WD_GRID: tuple[float, ...] = (0.01, 1e-3, 1e-4, 0.0)
WARMUP_EPOCHS = 10
EPOCHS = 100
MOMENTUM = 0.9
REFERENCE_BATCH = 256


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The linear scaling rule the official code applies to every grid value."""
    return base_lr * batch_size / REFERENCE_BATCH


def warmup_cosine(epoch: int, warmup_epochs: int = WARMUP_EPOCHS, epochs: int = EPOCHS) -> float:
    """Multiplier of the lr in ``epoch`` (0-based): ``epoch / warmup`` during warm-up, then a half cosine."""
    if epoch < warmup_epochs:
        return epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(1, epochs - warmup_epochs)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def epoch_scheduler(
    optimizer: torch.optim.Optimizer, warmup_epochs: int = WARMUP_EPOCHS, epochs: int = EPOCHS
) -> LambdaLR:
    """The official schedule: step it once per epoch, after the epoch (epoch 0 trains at lr 0)."""
    return LambdaLR(optimizer, lambda epoch: warmup_cosine(epoch, warmup_epochs, epochs))


def step_scheduler(
    optimizer: torch.optim.Optimizer, steps_per_epoch: int, warmup_epochs: int = WARMUP_EPOCHS, epochs: int = EPOCHS
) -> LambdaLR:
    """The same schedule stepped once per optimizer step (what the HF ``Trainer`` does with a scheduler).

    The lr stays constant within an epoch, as in the official code, so a Trainer run follows the papers' curve.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch!r}.")
    return LambdaLR(optimizer, lambda step: warmup_cosine(step // steps_per_epoch, warmup_epochs, epochs))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """One group per trainable tensor (as the official code), weight decay 0 on the classifier's bias."""
    roles = parameter_roles(model)
    return [
        {"params": [param], "weight_decay": 0.0 if roles[name] == HEAD_BIAS else weight_decay, "name": name}
        for name, param in model.named_parameters()
        if param.requires_grad
    ]


def make_optimizer(model: nn.Module, base_lr: float, weight_decay: float, batch_size: int) -> torch.optim.SGD:
    """SGD (momentum 0.9, no Nesterov) over the trainable tensors at ``base_lr * batch_size / 256``."""
    groups = param_groups(model, weight_decay)
    if not groups:
        raise ValueError("The model has no trainable parameters: call get_peft_model first.")
    return torch.optim.SGD(groups, lr=scaled_lr(base_lr, batch_size), momentum=MOMENTUM)
