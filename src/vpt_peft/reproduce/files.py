"""Reading benchmark folders: image lists as datasets, and checks that fail before training, not during it.

A sweep runs for hours; an image missing from the disk or a label out of range must stop it at load time, with
every missing image counted at once and the file to fix named, rather than crash a trial halfway through.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from ..data import rgb_image
from .tasks import LoadOptions

MISSING_SHOWN = 5
"""How many missing images an error names (it always gives the total)."""


class BenchmarkDataError(ValueError):
    """A split file that cannot be read as the benchmark's layout (malformed line, bad label, unknown class)."""


LabelledItem = tuple[str, int]
"""An image's absolute path and its contiguous class id."""


class ImageFiles(Dataset):
    """Labelled images on disk, opened as RGB and transformed when read (``{"pixel_values", "labels"}``)."""

    def __init__(self, items: Sequence[LabelledItem], transform: Callable[[Any], torch.Tensor]) -> None:
        self.items, self.transform = list(items), transform

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.items[index]
        return {"pixel_values": self.transform(rgb_image(path)), "labels": label}


class RowImages(Dataset):
    """Rows of a ``datasets.Dataset`` (an image column and an integer label column), transformed when read."""

    def __init__(self, rows: Any, transform: Callable[[Any], torch.Tensor], image: str = "image", label: str = "label"):
        self.rows, self.transform, self.image, self.label = rows, transform, image, label

    @property
    def labels(self) -> list[int]:
        return [int(label) for label in self.rows[self.label]]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        return {"pixel_values": self.transform(rgb_image(row[self.image])), "labels": int(row[self.label])}


def require_file(path: str, fix: str) -> str:
    """``path`` if it is a file; otherwise a FileNotFoundError that names it and says how to provide it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: {fix}")
    return path


def require_images(paths: Iterable[str], listed_in: str) -> None:
    """Every listed image exists, else one FileNotFoundError with the count and the first few missing."""
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        shown = ", ".join(missing[:MISSING_SHOWN]) + (", ..." if len(missing) > MISSING_SHOWN else "")
        raise FileNotFoundError(
            f"{len(missing)} image(s) listed in {listed_in} are missing: {shown}. The paths are relative to the "
            "folder of the split file's images; download or extract the images there, or fix the split file."
        )


def read_json(path: str, fix: str) -> Any:
    """The JSON in ``path`` (which must exist), or a BenchmarkDataError naming the file and the parse error."""
    with open(require_file(path, fix), encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise BenchmarkDataError(f"{path} is not valid JSON ({error}): {fix}") from None


def require_labels_below(labels: Iterable[int], num_classes: int, source: str) -> None:
    """Every label is an integer in [0, num_classes), else a BenchmarkDataError naming ``source``."""
    bad = sorted({label for label in labels if not 0 <= label < num_classes})
    if bad:
        raise BenchmarkDataError(
            f"{source} has labels {bad[:MISSING_SHOWN]} outside 0..{num_classes - 1} (the task has {num_classes} "
            "classes): check that the file belongs to this task and that labels count from 0."
        )


def require_plain_options(options: LoadOptions, benchmark: str) -> None:
    """Benchmarks with fixed splits take neither ``shots`` nor ``classes``: say so rather than ignore them."""
    if options.shots is not None or options.classes != "all":
        raise ValueError(
            f"{benchmark} has fixed splits: shots and classes apply to the few-shot benchmark only "
            f"(got shots={options.shots!r}, classes={options.classes!r})."
        )
