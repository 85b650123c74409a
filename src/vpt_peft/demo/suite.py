"""The demo's methods as the sweep runs them: the papers' protocol in miniature on the digits tasks.

Each method is a :class:`~vpt_peft.reproduce.protocol.MethodSpec` with a small grid taken from the papers' lr
grid, so the demo selects its learning rates the way the papers do (train -> val, last-epoch top-1, ties toward
the smaller lr), retrains on train+val for two seeds and reports test top-1, through
:func:`vpt_peft.reproduce.sweep.run_sweep` like ``vpt-peft sweep``. After the sweep every final adapter is
reloaded onto a fresh backbone and must reproduce its recorded test accuracy exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from peft import PeftModel

from .. import FourierPromptConfig, KVPromptConfig, VisualPromptConfig
from ..reproduce.protocol import FINAL, MethodSpec
from ..reproduce.report import TaskResult
from ..reproduce.store import TrialStore
from ..reproduce.sweep import Entry
from ..reproduce.trial import SweepSettings, base_model, task_data
from ..training import evaluate
from .digits import DIGIT_TASKS

PROMPTS = 10
"""Prompt tokens per layer for every prompt method (the papers' small settings)."""

GRIDS: dict[str, tuple[float, ...]] = {
    "linear-probe": (25.0, 10.0),
    "full-ft": (0.05, 0.01),
    "vpt-shallow": (5.0, 2.5),
    "vpt-deep": (2.5, 1.0),
    "vfpt": (2.5, 1.0),
    "e2vpt": (2.5, 1.0),
}
"""Two neighbouring values of the papers' lr grid per method (base lr for batch 256), around where a wider
search on the noisy and inverted tasks found each method's best; weight decay 0."""


def _config(method: str, group: str) -> tuple[Any, dict[str, Any]]:
    """(config class, fields) of a demo method; VFPT's Fourier share follows the paper's rule (spec §2.3):
    natural tasks 0.5, specialized/structured 1.0."""
    deep = {"num_prompts": PROMPTS, "deep": True}
    return {
        "linear-probe": (VisualPromptConfig, {"num_prompts": 0}),
        "full-ft": (None, {}),
        "vpt-shallow": (VisualPromptConfig, {"num_prompts": PROMPTS}),
        "vpt-deep": (VisualPromptConfig, deep),
        "vfpt": (FourierPromptConfig, {**deep, "fourier_ratio": 0.5 if group == "natural" else 1.0}),
        "e2vpt": (KVPromptConfig, {"num_prompts": PROMPTS, "num_kv_prompts": 5}),
    }[method]


def demo_entries(
    tasks: Sequence[str], *, epochs: int, warmup_epochs: int, seeds: tuple[int, ...], batch_size: int = 64
) -> list[Entry]:
    """Every demo method on every task, as sweep entries."""
    entries = []
    for task in tasks:
        for method, lr_grid in GRIDS.items():
            config_cls, config = _config(method, DIGIT_TASKS[task].group)
            prune = method == "e2vpt"
            spec = MethodSpec(
                name=method,
                config_cls=config_cls,
                config=config,
                lr_grid=lr_grid,
                wd_grid=(0.0,),
                batch_size=batch_size,
                epochs=epochs,
                warmup_epochs=warmup_epochs,
                seeds=seeds,
                prune={"rewind": "initial", "importance": "signed"} if prune else None,
                prune_grid=((0.5, 0.25),) if prune else (),
            )
            entries.append(Entry(task, spec))
    return entries


def check_reloads(rows: Sequence[Mapping[str, Any]], settings: SweepSettings) -> int:
    """Reload every final adapter onto a fresh backbone; each must score exactly its recorded test accuracy."""
    from transformers import AutoModelForImageClassification

    store, checked = TrialStore(settings.output), 0
    for row in rows:
        if row["stage"] != FINAL:
            continue
        data = task_data(settings, row["task"], row["seed"])
        folder = store.adapter_dir(row["trial"])
        if (folder / "adapter_config.json").exists():
            model = PeftModel.from_pretrained(base_model(settings.model, data, "image-classification"), folder)
        else:  # full fine-tuning saved the whole model
            model = AutoModelForImageClassification.from_pretrained(folder)
        accuracy = evaluate(model, data.splits["test"], settings.eval_batch_size)
        if accuracy != row["accuracy"]:
            raise RuntimeError(f"{folder} scores {accuracy} after reloading; the trial recorded {row['accuracy']}.")
        checked += 1
    return checked


def format_table(results: Sequence[TaskResult]) -> str:
    """The final results as a fixed-width text table (what the demo prints)."""
    head = f"{'method':<14}{'task':<13}{'group':<13}{'test top-1':>16}{'lr':>7}{'trainable %':>13}{'train ms/img':>14}"
    lines = [head, "-" * len(head)]
    for r in results:
        accuracy = f"{100 * r.mean:.1f} ± {100 * r.std:.1f}"
        lines.append(
            f"{r.method:<14}{r.task:<13}{r.group:<13}{accuracy:>16}{r.lr:>7g}{r.trainable_pct:>13.2f}"
            f"{r.train_ms[0]:>14.2f}"
        )
    return "\n".join(lines)


def adapter_folder(settings: SweepSettings, rows: Sequence[Mapping[str, Any]], task: str, method: str) -> Path:
    """The first final adapter of (task, method), e.g. for attention maps."""
    row = next(r for r in rows if r["stage"] == FINAL and r["task"] == task and r["method"] == method)
    return TrialStore(settings.output).adapter_dir(row["trial"])
