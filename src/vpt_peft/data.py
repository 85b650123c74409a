"""Image datasets for the Trainer and the CLI: a Hub id, a local folder, or the built-in digits.

:func:`load_image_dataset` goes through ``datasets.load_dataset`` (a Hub id, or ``imagefolder`` for a local
folder) and :class:`ImageClassificationCollator` applies the model's image processor per batch, so raw PIL
columns reach the collator and the Trainer never drops them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .demo.digits import DEFAULT_MEAN, DEFAULT_STD, digits_dataset


def load_image_dataset(
    source: str, eval_split: Optional[str] = None, test_size: float = 0.2, seed: int = 0
) -> tuple[Any, Any, str, str, list[str]]:
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
    if image_column is not None and label_column is None and os.path.isdir(source):
        raise ValueError(_folder_layout_problem(Path(source)))
    if image_column is None or label_column is None:
        raise ValueError(f"{source!r} needs an image column and a label column; it has {list(features)}.")
    feature = features[label_column]
    names = list(feature.names) if isinstance(feature, ClassLabel) else sorted({str(v) for v in train[label_column]})
    return train, evaluation, image_column, label_column, names


def _folder_layout_problem(root: Path) -> str:
    """Why an image folder gave no labels: the classes are its sub-folders, and a classifier needs two."""
    split_names = {"train", "test", "validation", "val"}
    top = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    parent = next((d for d in top if d.name in split_names), root)
    classes = sorted(d.name for d in parent.iterdir() if d.is_dir() and not d.name.startswith("."))
    layout = f"put each class's images in {root}/<class name>/ (or {root}/train/<class name>/)"
    if not classes:
        return f"{root} has its images directly inside, with no class sub-folders, so they have no labels: {layout}."
    return f"{parent} has one class sub-folder ({classes[0]!r}); a classifier needs at least two classes: {layout}."


def image_processor_for(model_path: str, image_size: int) -> Any:
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
        images = [rgb_image(example[self.image_column]) for example in examples]
        batch = {"pixel_values": self.processor(images=images, return_tensors="pt")["pixel_values"]}
        if self.label_column is not None and self.label_column in examples[0]:
            batch["labels"] = torch.tensor([int(example[self.label_column]) for example in examples])
        return batch


def rgb_image(image: Any):
    """An RGB PIL image from a PIL image, a numpy array or a file path (what image columns and split files hold)."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        image = Image.open(image)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return image.convert("RGB")


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy with numpy (the ``evaluate`` library cannot load its metrics offline)."""
    return float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())
