"""What the CLI reads and writes besides the adapter itself, and its user-facing error type."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..atomic import atomic_write, resolve

LABELS_FILE = "labels.json"


class CLIError(Exception):
    """A user-facing problem: printed as one line, exit status 1."""


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(num_examples / batch_size))


def read_labels(adapter: Path) -> list[str]:
    path = resolve(adapter / LABELS_FILE)  # the committed copy if a save was interrupted mid-commit
    if not path.exists():
        raise CLIError(f"{adapter} has no {LABELS_FILE}: point at a folder written by 'vpt-peft train'")
    return json.loads(path.read_text())["labels"]


def read_run_info(adapter: Path) -> dict[str, Any]:
    """Everything ``train`` recorded next to the labels (base model, dataset, method, columns)."""
    return json.loads(resolve(adapter / LABELS_FILE).read_text())


def write_labels(folder: Path, labels: list[str], extra: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / LABELS_FILE, json.dumps({"labels": labels, **extra}, indent=2))
