"""The demo's digits tasks as a benchmark of the sweep: ``digits`` (the demo's) and ``digits-small`` (smoke tests).

Importing this module registers both, so ``vpt-peft sweep --benchmark digits`` runs offline. The roles mirror
VTAB-1k's: ``train``/``val`` split the training pool (as 800/200 split 1000), ``trainval`` is all of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from ..reproduce.tasks import Benchmark, LoadOptions, TaskData, TaskInfo, register_benchmark
from ..training import LabelledTensors
from .digits import DIGIT_TASKS, digits_task

DOWNSTREAM_TASKS = ("noisy", "inverted", "orientation", "loops")


def _digits_loader(
    benchmark: str, train_size: int, val_size: int, test_size: Optional[int]
) -> Callable[[str, LoadOptions], TaskData]:
    """The protocol's roles for digits tasks: ``train``/``val`` split a pool of ``train_size`` training images
    (as VTAB-1k's 800/200 split its 1000), ``trainval`` is the whole pool."""

    def load(name: str, options: LoadOptions) -> TaskData:
        (x, y), (x_test, y_test), task = digits_task(name, size=options.image_size, train_size=train_size)
        cut = train_size - val_size
        splits = {
            "train": LabelledTensors(x[:cut], y[:cut]),
            "val": LabelledTensors(x[cut:], y[cut:]),
            "trainval": LabelledTensors(x, y),
            "test": LabelledTensors(x_test[:test_size], y_test[:test_size]),
        }
        info = TaskInfo(benchmark, name, task.group, task.num_labels)
        return TaskData(info, splits, [str(label) for label in range(task.num_labels)])

    return load


BENCHMARK_SIZES = {"digits": (500, 100, None), "digits-small": (120, 30, 200)}
"""Training pool, validation and test sizes: ``digits`` is the demo's (400 train / 100 val / 399 test images per
task), ``digits-small`` the smoke tests' (90 / 30 / 200)."""


GROUPS = {
    g: tuple(t for t in DOWNSTREAM_TASKS if DIGIT_TASKS[t].group == g) for g in ("natural", "specialized", "structured")
}
for _name, (_train, _val, _test) in BENCHMARK_SIZES.items():
    register_benchmark(
        Benchmark(
            _name,
            DOWNSTREAM_TASKS,
            _digits_loader(_name, _train, _val, _test),
            f"The demo's miniature VTAB: shifted scikit-learn digits, {_train - _val} train / {_val} val (offline).",
            groups=GROUPS,
        )
    )
