"""A plain PyTorch training loop that follows the papers' recipe, and the demo's embedded foundation model.

The HF ``Trainer`` is the route for real datasets (see :mod:`vpt_peft.cli`); this loop exists for small
in-memory tensors, where it is faster and shows the recipe in a dozen lines: SGD from
:func:`vpt_peft.recipes.make_optimizer`, the epoch-level warm-up + cosine, per-epoch test accuracy.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import recipes
from ..atomic import new_folder

Tensors = tuple[torch.Tensor, torch.Tensor]


def cache_dir() -> Path:
    """Where the demo keeps its pretrained backbone: ``$VPT_PEFT_CACHE``, default ``~/.cache/vpt_peft``."""
    return Path(os.environ.get("VPT_PEFT_CACHE", Path.home() / ".cache" / "vpt_peft"))


@dataclass
class FitResult:
    """What one run produced: per-epoch loss and test accuracy, and the wall-clock training time."""

    losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    seconds: float = 0.0


@torch.no_grad()
def evaluate(model: nn.Module, data: Tensors, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(pixel_values, labels)``, in eval mode."""
    was_training = model.training
    model.eval()
    x, y = data
    correct = sum(
        (model(pixel_values=xb).logits.argmax(-1) == yb).sum().item()
        for xb, yb in zip(x.split(batch_size), y.split(batch_size))
    )
    model.train(was_training)
    return correct / len(y)


def fit(
    model: nn.Module,
    train: Tensors,
    test: Optional[Tensors],
    *,
    epochs: int,
    base_lr: float,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    warmup_epochs: int = 0,
    seed: int = 0,
    desc: str = "training",
    optimizer_fn: Optional[Callable[[nn.Module], torch.optim.Optimizer]] = None,
) -> FitResult:
    """Train with the VPT recipe (SGD, lr x batch/256, epoch-level warm-up + cosine); evaluate every epoch.

    ``optimizer_fn`` replaces the SGD recipe (the demo pretrains its backbone with AdamW, as ViTs are).
    """
    optimizer = (
        optimizer_fn(model) if optimizer_fn else recipes.make_optimizer(model, base_lr, weight_decay, batch_size)
    )
    scheduler = recipes.epoch_scheduler(optimizer, warmup_epochs, epochs)
    generator = torch.Generator().manual_seed(seed)
    x, y = train
    result, start = FitResult(), time.perf_counter()
    model.train()
    bar = tqdm(range(epochs), desc=desc, leave=False)
    for _ in bar:
        total = 0.0
        for batch in torch.randperm(len(y), generator=generator).split(batch_size):
            loss = model(pixel_values=x[batch], labels=y[batch]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.item() * len(batch)
        scheduler.step()
        result.losses.append(total / len(y))
        if test is not None:
            result.accuracies.append(evaluate(model, test))
            bar.set_postfix(loss=f"{result.losses[-1]:.3f}", acc=f"{result.accuracies[-1]:.3f}")
    result.seconds = time.perf_counter() - start
    model.eval()
    return result


def pretrained_digits_vit(
    epochs: int = 30, image_size: int = 16, folder: Optional[Path] = None
) -> tuple[nn.Module, Path]:
    """The demo's foundation model: a 4-layer ViT pretrained on plain digits, cached after the first run.

    Returns the model loaded from the cache folder (so every caller starts from the same saved weights) and
    that folder, which ``from_pretrained`` reuses for each fresh copy.
    """
    from transformers import ViTConfig, ViTForImageClassification

    from .digits import digits_task

    folder = folder or cache_dir() / f"digits-vit-{image_size}px-{epochs}ep"
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        config = ViTConfig(
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=128,
            image_size=image_size,
            patch_size=4,
            num_labels=10,
            hidden_dropout_prob=0.0,
        )
        model = ViTForImageClassification(config)
        train, test, _ = digits_task("plain", size=image_size)
        adamw = lambda m: torch.optim.AdamW(m.parameters(), lr=2e-3, weight_decay=0.05)  # noqa: E731
        fit(
            model,
            train,
            test,
            epochs=epochs,
            base_lr=0.0,
            batch_size=64,
            warmup_epochs=1,
            desc="pretraining the foundation model",
            optimizer_fn=adamw,
        )
        with new_folder(folder) as staging:  # the cache appears complete or not at all
            model.save_pretrained(staging)
    return ViTForImageClassification.from_pretrained(folder).eval(), folder


def fresh_backbone(folder: Path, num_labels: int, seed: int = 0) -> nn.Module:
    """A new copy of the frozen foundation model from ``folder`` with a fresh ``num_labels``-way head.

    The head is replaced after loading (rather than ``ignore_mismatched_sizes``) so that loading stays quiet
    and the head's initialisation depends on ``seed`` only.
    """
    from transformers import ViTForImageClassification

    model = ViTForImageClassification.from_pretrained(folder)
    torch.manual_seed(seed)
    model.classifier = nn.Linear(model.config.hidden_size, num_labels)
    model.config.num_labels = num_labels
    return model.eval()
