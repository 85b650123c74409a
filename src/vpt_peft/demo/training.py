"""The demo's embedded foundation model: a small ViT pretrained on plain digits, cached, and fresh copies of it.

Training itself is :func:`vpt_peft.training.fit`, the loop the sweeps run too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..atomic import new_folder
from ..training import fit


def cache_dir() -> Path:
    """Where the demo keeps its pretrained backbone: ``$VPT_PEFT_CACHE``, default ``~/.cache/vpt_peft``."""
    return Path(os.environ.get("VPT_PEFT_CACHE", Path.home() / ".cache" / "vpt_peft"))


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
