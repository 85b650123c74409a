"""Data for the demo and the CLI: a miniature VTAB built from scikit-learn's digits, and image datasets for the Trainer.

The digits ship inside scikit-learn, so the demo needs no download. They are split once (seeded) into a
pretraining pool, on which the small "foundation model" learns plain digits, and a downstream pool, from
which every shifted task draws its few hundred training and test images, as VTAB-1k tasks do. The tasks
mimic VTAB's groups: a *natural* shift (sensor noise), a *specialized* one (a new imaging modality:
inverted, rotated scans) and two *structured* ones whose labels are geometry or counting, not the digit.

For real data, :func:`load_image_dataset` goes through ``datasets.load_dataset`` (a Hub id, or
``imagefolder`` for a local folder) and :class:`ImageClassificationCollator` applies the model's image
processor per batch, so raw PIL columns reach the collator and the Trainer never drops them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
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


def digits_dataset(name: str = "plain", size: int = 32, seed: int = 0):
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


def load_image_dataset(source: str, eval_split: Optional[str] = None, test_size: float = 0.2, seed: int = 0):
    """``(train, eval, image_column, label_column, label_names)`` for a Hub id, a local folder, or ``digits[:task]``.

    A folder goes through the ``imagefolder`` builder (class sub-folders, optional train/test split folders).
    Without an evaluation split, ``test_size`` of the training split is held out (seeded).
    """
    from datasets import ClassLabel, DatasetDict, Image, load_dataset

    if source == "digits" or source.startswith("digits:"):
        splits = digits_dataset(source.partition(":")[2] or "noisy", seed=seed)
    elif os.path.isdir(source):
        splits = load_dataset("imagefolder", data_dir=source)
    else:
        splits = load_dataset(source)
    if not isinstance(splits, DatasetDict) or "train" not in splits:
        raise ValueError(f"{source!r} has no 'train' split (found {list(splits)}).")
    eval_split = eval_split or next((s for s in ("validation", "val", "test") if s in splits), None)
    train = splits["train"]
    if eval_split is None:
        held = train.train_test_split(test_size=test_size, seed=seed)
        train, evaluation = held["train"], held["test"]
    elif eval_split not in splits:
        raise ValueError(f"{source!r} has no split {eval_split!r} (found {list(splits)}).")
    else:
        evaluation = splits[eval_split]
    features = train.features
    image_column = next((k for k, v in features.items() if isinstance(v, Image)), None)
    label_column = next((k for k, v in features.items() if isinstance(v, ClassLabel)), None)
    label_column = label_column or next((k for k in ("label", "labels") if k in features), None)
    if image_column is None or label_column is None:
        raise ValueError(f"{source!r} needs an image column and a label column; it has {list(features)}.")
    feature = features[label_column]
    names = list(feature.names) if isinstance(feature, ClassLabel) else sorted({str(v) for v in train[label_column]})
    return train, evaluation, image_column, label_column, names


def image_processor_for(model_path: str, image_size: int):
    """The model's own image processor, else a documented default: resize to ``image_size``, mean/std 0.5."""
    from transformers import ViTImageProcessor

    try:
        return _saved_image_processor(model_path)
    except (OSError, ValueError):
        return ViTImageProcessor(
            size={"height": image_size, "width": image_size}, image_mean=DEFAULT_MEAN, image_std=DEFAULT_STD
        )


def _saved_image_processor(model_path: str):
    import transformers
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(model_path)
    except ImportError:
        # transformers 5.9-5.17 without torchvision make AutoImageProcessor a placeholder that only raises. The
        # class the checkpoint names still loads: transformers swaps in its PIL twin (and says so).
        from transformers.image_processing_utils import ImageProcessingMixin

        saved, _ = ImageProcessingMixin.get_image_processor_dict(model_path)
        name = saved.get("image_processor_type") or "ViTImageProcessor"
        return getattr(transformers, name, transformers.ViTImageProcessor).from_dict(saved)


class ImageClassificationCollator:
    """Turn raw examples (PIL image + label) into ``pixel_values``/``labels`` batches with the image processor.

    Doing the transform here rather than in ``with_transform`` is what lets the Trainer run with
    ``remove_unused_columns=False`` without ever seeing, or dropping, the raw ``image`` column.
    """

    def __init__(self, processor: Any, image_column: str = "image", label_column: Optional[str] = "label") -> None:
        self.processor, self.image_column, self.label_column = processor, image_column, label_column

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        images = [_rgb(example[self.image_column]) for example in examples]
        batch = {"pixel_values": self.processor(images=images, return_tensors="pt")["pixel_values"]}
        if self.label_column is not None and self.label_column in examples[0]:
            batch["labels"] = torch.tensor([int(example[self.label_column]) for example in examples])
        return batch


def _rgb(image: Any):
    from PIL import Image

    if isinstance(image, (str, Path)):
        image = Image.open(image)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return image.convert("RGB")


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy with numpy (the ``evaluate`` library cannot load its metrics offline)."""
    return float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())
