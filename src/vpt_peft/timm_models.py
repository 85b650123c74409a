"""Using timm models with vpt_peft: their preprocessing, batches and the Trainer's loss (timm is not imported).

A timm ``VisionTransformer`` takes the image tensor as its one argument, ``x``, and returns the logits tensor; it
has no HF config, image processor or loss. The call convention vpt_peft documents (docs/guides/timm.md):

* preprocessing comes from the model's own ``pretrained_cfg`` (:func:`timm_preprocessing`,
  :class:`TimmImageCollator`), the values timm's ``resolve_data_config`` reads;
* batches name the input ``x``, so ``PeftModel`` passes it straight to ``forward(x)`` (peft's passthrough);
* the Trainer gets ``compute_loss_func=classification_loss``, which it calls with the logits and the labels it
  took out of the batch (the model never sees ``labels``).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_INPUT_SIZE = (3, 224, 224)


def timm_preprocessing(model: nn.Module) -> dict[str, Any]:
    """``mean``, ``std``, ``input_size`` (C, H, W) and ``interpolation`` from the model's ``pretrained_cfg``.

    A model built from keyword arguments (no pretrained tag) has no ``pretrained_cfg``: ImageNet statistics,
    bicubic, at the size its patch embedding was built for (224 when it does not say).
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    embed = getattr(model, "patch_embed", None)
    own_size = getattr(embed, "img_size", None)
    default_size = (getattr(model, "in_chans", 3), *own_size) if own_size else DEFAULT_INPUT_SIZE
    return {
        "mean": tuple(cfg.get("mean", IMAGENET_MEAN)),
        "std": tuple(cfg.get("std", IMAGENET_STD)),
        "input_size": tuple(cfg.get("input_size", default_size)),
        "interpolation": cfg.get("interpolation", "bicubic"),
    }


class TimmImageCollator:
    """Batches ``{"x": images, "labels": ...}`` for a timm model: resized to its input size, normalised by its mean
    and std (:func:`timm_preprocessing`). Examples are ``{image_column: PIL image, label_column: int}``."""

    _RESAMPLING = {"bicubic": 3, "bilinear": 2, "nearest": 0}

    def __init__(self, model: nn.Module, image_column: str = "image", label_column: str = "label") -> None:
        self.preprocessing = timm_preprocessing(model)
        self.image_column, self.label_column = image_column, label_column

    def pixels(self, image: Any) -> torch.Tensor:
        """One image as the model's normalised ``(C, H, W)`` float tensor."""
        channels, height, width = self.preprocessing["input_size"]
        resample = self._RESAMPLING.get(self.preprocessing["interpolation"], 3)
        image = image.convert("RGB" if channels == 3 else "L").resize((width, height), resample=resample)
        array = np.asarray(image, dtype=np.float32).reshape(height, width, channels) / 255.0
        mean, std = (np.asarray(self.preprocessing[k], dtype=np.float32) for k in ("mean", "std"))
        return torch.from_numpy(((array - mean) / std).transpose(2, 0, 1).copy())

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        return {
            "x": torch.stack([self.pixels(e[self.image_column]) for e in examples]),
            "labels": torch.tensor([int(e[self.label_column]) for e in examples]),
        }


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: Optional[int] = None
) -> torch.Tensor:
    """Cross-entropy on a timm model's logits: the Trainer's ``compute_loss_func`` (summed and divided by
    ``num_items_in_batch`` when the Trainer accumulates gradients, as HF models' own losses do)."""
    if num_items_in_batch is None:
        return F.cross_entropy(logits, labels)
    return F.cross_entropy(logits, labels, reduction="sum") / num_items_in_batch
