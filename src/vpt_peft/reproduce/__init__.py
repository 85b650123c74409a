"""The papers' benchmark protocols as commands: task data, sweeps over the official grids, and reports.

:mod:`.tasks` is the contract between the data loaders (VTAB-1k, FGVC, CLIP few-shot, the demo's miniature
tasks) and the sweep that trains on them: a benchmark registers a loader, the sweep asks for a task's splits by
protocol role. Importing this package registers :mod:`.vtab`, :mod:`.fgvc` and :mod:`.fewshot`; they import
PIL and ``datasets`` only when a task is loaded.
"""

from . import fewshot, fgvc, vtab
from .files import BenchmarkDataError
from .tasks import (
    BENCHMARKS,
    ROLES,
    Benchmark,
    LoadOptions,
    TaskData,
    TaskInfo,
    find_task,
    load_task,
    register_benchmark,
)

__all__ = [
    "BENCHMARKS",
    "ROLES",
    "Benchmark",
    "BenchmarkDataError",
    "LoadOptions",
    "TaskData",
    "TaskInfo",
    "fewshot",
    "fgvc",
    "find_task",
    "load_task",
    "register_benchmark",
    "vtab",
]
