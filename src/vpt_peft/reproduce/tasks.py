"""What a benchmark task gives the sweep: labelled image tensors by protocol role, and what the task is.

The papers tune on one split and report on another (VTAB-1k: train800 -> val200 to pick lr and weight decay,
then train800val200 -> test; FGVC: train -> val, then train+val -> test; CLIP few-shot: K shots per class ->
val, then test). The sweep only speaks of the four roles in :data:`ROLES`; each benchmark maps them to its
own split files. Train roles apply the benchmark's training augmentation, the others its evaluation transform.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from torch.utils.data import Dataset

ROLES = ("train", "val", "trainval", "test")
"""Protocol roles: tune on ``train`` and select on ``val``; retrain on ``trainval`` and report on ``test``."""


@dataclass(frozen=True)
class TaskInfo:
    """One benchmark task: its name as distributed, the recipe preset it maps to, its group and class count."""

    benchmark: str
    name: str
    group: str
    num_classes: int
    preset_task: Optional[str] = None


@dataclass(frozen=True)
class LoadOptions:
    """How to read a task: where from (a folder or a Hub dataset id), at what size, normalised how.

    ``normalization="official"`` uses the mean/std of the official code for the benchmark (ImageNet's for VPT's
    ViT, CLIP's for few-shot); ``"processor"`` takes them from ``processor`` (the backbone's image processor).
    ``shots``/``seed`` draw a K-shot training set (few-shot benchmarks), cached under ``cache_dir`` (default: the
    dataset's folder) so every run of a seed sees the same shots; ``classes`` picks the base or novel half of the
    classes (base-to-novel generalisation).
    """

    root: Optional[str] = None
    image_size: int = 224
    normalization: str = "official"
    processor: Any = None
    shots: Optional[int] = None
    seed: int = 1
    classes: str = "all"
    cache_dir: Optional[str] = None


@dataclass
class TaskData:
    """A loaded task: ``splits[role]`` yields ``{"pixel_values": FloatTensor[C, H, W], "labels": int}``."""

    info: TaskInfo
    splits: Mapping[str, Dataset]
    class_names: Optional[list[str]] = None


@dataclass(frozen=True)
class Benchmark:
    """A family of tasks sharing a layout and a protocol (``"vtab-1k"``, ``"fgvc"``, ``"fewshot"``, ...)."""

    name: str
    tasks: tuple[str, ...]
    load: Callable[[str, LoadOptions], TaskData]
    description: str = ""
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    infos: Mapping[str, TaskInfo] = field(default_factory=dict)
    """What each task is before it is loaded (group, class count, preset), for planning and reports."""


BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    """Make ``benchmark`` available to :func:`load_task`, ``vpt-peft sweep`` and ``vpt-peft report``."""
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def find_task(preset_task: str) -> tuple[str, str]:
    """``(benchmark, task)`` of a recipe preset's task name (``"cifar100"`` -> ``("vtab-1k", "cifar")``)."""
    for benchmark in BENCHMARKS.values():
        for info in benchmark.infos.values():
            if info.preset_task == preset_task:
                return benchmark.name, info.name
    known = sorted(i.preset_task for b in BENCHMARKS.values() for i in b.infos.values() if i.preset_task)
    raise ValueError(f"no registered benchmark task maps to preset task {preset_task!r}; known: {known}.")


def load_task(benchmark: str, task: str, **options: Any) -> TaskData:
    """The splits of ``task`` in ``benchmark`` (options: the fields of :class:`LoadOptions`)."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {tuple(BENCHMARKS)}, got {benchmark!r}.")
    known = BENCHMARKS[benchmark]
    if task not in known.tasks:
        raise ValueError(f"{benchmark} has no task {task!r}; its tasks are {known.tasks}.")
    return known.load(task, LoadOptions(**options))
