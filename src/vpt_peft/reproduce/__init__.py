"""The papers' benchmark protocols as commands: task data, sweeps over the official grids, and reports.

:mod:`.tasks` is the contract between the data loaders (VTAB-1k, FGVC, CLIP few-shot, the demo's miniature
tasks) and the sweep that trains on them: a benchmark registers a loader, the sweep asks for a task's splits by
protocol role.
"""

from .tasks import BENCHMARKS, ROLES, Benchmark, LoadOptions, TaskData, TaskInfo, load_task, register_benchmark

__all__ = ["BENCHMARKS", "ROLES", "Benchmark", "LoadOptions", "TaskData", "TaskInfo", "load_task", "register_benchmark"]
