"""Adapt one frozen backbone with every method, save and reload each result, and tabulate it (the demo's engine).

A *method* here is a recipe: a way to build the trainable model from a fresh copy of the backbone (a peft
config, or full fine-tuning), the base learning rate from the papers' grid, and an optional second phase
(E2VPT's prune-and-rewind). :func:`run_method` trains it on in-memory tensors with
:func:`vpt_peft.demo.training.fit`, saves it, loads it back onto another fresh copy, checks the reloaded model
predicts exactly the same, and returns one table row.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from peft import PeftModel, get_peft_model
from torch import nn

from .. import recipes
from ..atomic import atomic_open, atomic_write, staged_save
from ..recipes import HEAD, HEAD_BIAS
from .training import FitResult, Tensors, evaluate, fit, fresh_backbone

COLUMNS = ("method", "task", "group", "accuracy", "trainable", "trainable_pct", "adapter_bytes", "train_s")

HEAD_ROLES = (HEAD, HEAD_BIAS)


@dataclass(frozen=True)
class Method:
    """How to adapt the backbone: ``config`` builds a peft config (None = full fine-tuning)."""

    name: str
    config: Optional[Callable[[str], Any]]
    base_lr: float
    weight_decay: float = 0.0
    prune: Optional[dict[str, Any]] = None


def _trainable(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix in (".safetensors", ".bin"))


def _batches(data: Tensors, batch_size: int) -> list[dict[str, torch.Tensor]]:
    x, y = data
    return [{"pixel_values": xb, "labels": yb} for xb, yb in zip(x.split(batch_size), y.split(batch_size))]


def run_method(
    method: Method,
    task: str,
    group: str,
    num_labels: int,
    backbone_dir: Path,
    train: Tensors,
    test: Tensors,
    out_dir: Path,
    *,
    epochs: int,
    warmup_epochs: int,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[dict[str, Any], FitResult, nn.Module]:
    """Train ``method`` on ``task``, save it under ``out_dir``, reload it, verify it, return (row, curve, model)."""
    torch.manual_seed(seed)
    base = fresh_backbone(backbone_dir, num_labels, seed)
    model = base if method.config is None else get_peft_model(base, method.config(group))
    trainable, total = _trainable(model)
    schedule = dict(
        epochs=epochs,
        base_lr=method.base_lr,
        weight_decay=method.weight_decay,
        batch_size=batch_size,
        warmup_epochs=warmup_epochs,
        seed=seed,
    )
    start = time.perf_counter()
    curve = fit(model, train, test, desc=f"{task}: {method.name}", **schedule)
    if method.prune is not None:
        from ..tuners.e2vpt import effective_prompt_parameters, prune_prompts

        prune_prompts(model, _batches(train, batch_size), **method.prune)
        rewound = fit(model, train, test, desc=f"{task}: {method.name} (rewind)", **schedule)
        curve = FitResult(curve.losses + rewound.losses, curve.accuracies + rewound.accuracies)
        roles = recipes.parameter_roles(model)
        head = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and roles[n] in HEAD_ROLES)
        trainable = effective_prompt_parameters(model) + head
    seconds = time.perf_counter() - start
    accuracy = evaluate(model, test)
    folder = out_dir / "adapters" / task / method.name.replace(" ", "-")
    with staged_save(folder) as staging:  # a full fine-tune is a transformers model: stage it too
        model.save_pretrained(staging)
    _check_reload(model, folder, backbone_dir, num_labels, test, full=method.config is None)
    row = dict(
        method=method.name,
        task=task,
        group=group,
        accuracy=accuracy,
        trainable=trainable,
        trainable_pct=100 * trainable / total,
        adapter_bytes=_folder_bytes(folder),
        train_s=seconds,
    )
    return row, curve, model


def _check_reload(
    model: nn.Module, folder: Path, backbone_dir: Path, num_labels: int, test: Tensors, full: bool
) -> None:
    """Load the saved result onto a fresh backbone and require bit-identical logits on the test images."""
    if full:
        from transformers import AutoModelForImageClassification

        reloaded = AutoModelForImageClassification.from_pretrained(folder)
    else:
        reloaded = PeftModel.from_pretrained(fresh_backbone(backbone_dir, num_labels, seed=12345), folder)
    reloaded.eval()
    with torch.no_grad():
        same = torch.equal(reloaded(pixel_values=test[0][:64]).logits, model(pixel_values=test[0][:64]).logits)
    if not same:
        raise RuntimeError(f"The adapter saved in {folder} does not reproduce the trained model after reloading.")


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table (what the demo prints)."""
    head = (
        f"{'method':<14}{'task':<13}{'group':<13}{'accuracy':>9}{'trainable':>11}{'%':>8}{'adapter':>10}{'train s':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['method']:<14}{r['task']:<13}{r['group']:<13}{r['accuracy']:>9.3f}{r['trainable']:>11,}"
            f"{r['trainable_pct']:>8.2f}{_size(r['adapter_bytes']):>10}{r['train_s']:>9.1f}"
        )
    return "\n".join(lines)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def write_tables(rows: list[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """``results.csv`` (raw numbers) and ``results.md`` (a Markdown table) in ``out_dir``."""
    csv_path, md_path = out_dir / "results.csv", out_dir / "results.md"
    with atomic_open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "| method | task | group | accuracy | trainable | trainable % | adapter size | train time (s) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['method']} | {r['task']} | {r['group']} | {r['accuracy']:.3f} | {r['trainable']:,} | "
        f"{r['trainable_pct']:.2f} | {_size(r['adapter_bytes'])} | {r['train_s']:.1f} |"
        for r in rows
    ]
    atomic_write(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path


def verdicts(rows: list[dict[str, Any]], baseline: str = "linear probe") -> list[str]:
    """One honest line per task: which prompt methods beat the linear probe, and which lost to it."""
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = {r["method"]: r["accuracy"] for r in rows if r["task"] == task}
        if baseline not in mine:
            continue
        base = mine[baseline]
        won = [m for m, a in mine.items() if m not in (baseline, "full FT") and a > base]
        lost = [m for m, a in mine.items() if m not in (baseline, "full FT") and a <= base]
        best = max(mine, key=mine.get)
        lines.append(
            f"{task}: best {best} ({mine[best]:.3f}); beat the linear probe ({base:.3f}): "
            f"{', '.join(won) or 'none'}; did not: {', '.join(lost) or 'none'}"
        )
    return lines
