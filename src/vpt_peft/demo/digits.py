"""The demo's data: a miniature VTAB built from scikit-learn's digits.

The digits ship inside scikit-learn, so the demo needs no download. They are split once (seeded) into a
pretraining pool, on which the small "foundation model" learns plain digits, and a downstream pool, from
which every shifted task draws its few hundred training and test images, as VTAB-1k tasks do. The tasks
mimic VTAB's groups: a *natural* shift (sensor noise), a *specialized* one (a new imaging modality:
inverted, rotated scans) and two *structured* ones whose labels are geometry or counting, not the digit.
:mod:`vpt_peft.demo.benchmark` registers them as the ``digits`` benchmark, for ``vpt-peft sweep``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)
"""Normalisation used when a model folder has no image processor: [0, 1] pixels to [-1, 1], as ViT's."""

# Closed loops drawn by each digit: a counting task (VTAB's Clevr-count in miniature) with new labels.
LOOPS = (1, 0, 0, 0, 1, 0, 1, 0, 2, 1)


@dataclass(frozen=True)
class DigitsTask:
    """A shift of the digits: ``transform`` maps (N, 8, 8) images in [0, 1] and labels to the task's."""

    name: str
    group: str
    description: str
    num_labels: int
    transform: Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def _noisy(x, y, g):
    return (x + 0.35 * torch.randn(x.shape, generator=g)).clamp(0, 1), y


def _inverted(x, y, g):
    return 1.0 - torch.rot90(x, 1, dims=(1, 2)), y


def _orientation(x, y, g):
    k = torch.randint(0, 4, (len(x),), generator=g)
    return torch.stack([torch.rot90(img, int(r), dims=(0, 1)) for img, r in zip(x, k)]), k


def _loops(x, y, g):
    return x, torch.tensor(LOOPS)[y]


DIGIT_TASKS: dict[str, DigitsTask] = {
    task.name: task
    for task in (
        DigitsTask(
            "plain", "pretraining", "the digits themselves (the foundation model's data)", 10, lambda x, y, g: (x, y)
        ),
        DigitsTask("noisy", "natural", "digits under strong pixel noise", 10, _noisy),
        DigitsTask("inverted", "specialized", "inverted, rotated digits: a new imaging modality", 10, _inverted),
        DigitsTask(
            "orientation", "structured", "which of 4 rotations was applied (labels are geometry)", 4, _orientation
        ),
        DigitsTask(
            "loops", "structured", "how many closed loops the digit has, 0-2 (re-labelled: counting)", 3, _loops
        ),
    )
}


def _digits_pool(pool: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    half = len(y) // 2
    index = order[:half] if pool == "pretrain" else order[half:]
    return x[index], y[index]


def to_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, h, w) images in [0, 1] to the (N, 3, size, size) pixel values a ViT takes, in [-1, 1]."""
    x = F.interpolate(images[:, None], size=size, mode="bilinear", align_corners=False).clamp(0, 1)
    return (x.repeat(1, 3, 1, 1) - DEFAULT_MEAN[0]) / DEFAULT_STD[0]


def digits_task(
    name: str, size: int = 16, train_size: Optional[int] = 500, seed: int = 0
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], DigitsTask]:
    """``(train, test, task)`` with ``(pixel_values, labels)`` tensors; ``plain`` uses the pretraining pool."""
    if name not in DIGIT_TASKS:
        raise ValueError(f"Unknown digits task {name!r}; available: {', '.join(DIGIT_TASKS)}.")
    task = DIGIT_TASKS[name]
    x, y = _digits_pool("pretrain" if name == "plain" else "downstream", seed)
    x, y = task.transform(x, y, torch.Generator().manual_seed(seed + 1))
    pixels = to_pixels(x, size)
    cut = train_size if train_size is not None and name != "plain" else int(0.8 * len(y))
    return (pixels[:cut], y[:cut]), (pixels[cut:], y[cut:]), task


def digits_dataset(name: str = "plain", size: int = 32, seed: int = 0) -> Any:
    """A task as a ``datasets.DatasetDict`` of RGB PIL images (``image``, ``label``), as a folder would load."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    train, test, task = digits_task(name, size=size, seed=seed)
    features = Features({"image": Image(), "label": ClassLabel(num_classes=task.num_labels)})

    def split(pixels: torch.Tensor, labels: torch.Tensor):
        from PIL import Image as PILImage

        rgb = ((pixels * DEFAULT_STD[0] + DEFAULT_MEAN[0]) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        images = [PILImage.fromarray(array) for array in rgb]
        return Dataset.from_dict({"image": images, "label": labels.tolist()}, features=features)

    return DatasetDict(train=split(*train), test=split(*test))
