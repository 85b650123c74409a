"""VTAB-1k as the community distributes it (no TensorFlow), or as a Hub dataset with the same splits.

Folder layout (what most PEFT-vision code reads)::

    <root>/<task>/train800.txt         800 lines "relative/image/path label"   role "train"
    <root>/<task>/val200.txt           200 lines                                role "val"
    <root>/<task>/train800val200.txt   the 1000 above                           role "trainval"
    <root>/<task>/test.txt             the full test set                        role "test"
    <root>/<task>/<images...>          paths relative to <root>/<task>/

Hub layout: ``datasets.load_dataset(root, task)`` (one config per task folder name) with the splits named in
:data:`HUB_SPLITS` and the columns ``image`` and ``label``; ``<root>/<task>/`` saved with
``DatasetDict.save_to_disk`` reads the same way. Labels count from 0 and must be below the task's class count.
"""

from __future__ import annotations

import os
from typing import Any

from .files import (
    BenchmarkDataError,
    ImageFiles,
    LabelledItem,
    RowImages,
    require_file,
    require_images,
    require_labels_below,
    require_plain_options,
)
from .tasks import Benchmark, LoadOptions, TaskData, TaskInfo, register_benchmark
from .transforms import IMAGENET_MEAN, IMAGENET_STD, VtabTransform, mean_std

BENCHMARK = "vtab-1k"

# (folder name as distributed, recipe preset name, group, classes)
_TASK_TABLE = (
    ("cifar", "cifar100", "Natural", 100),
    ("caltech101", "caltech101", "Natural", 102),
    ("dtd", "dtd", "Natural", 47),
    ("oxford_flowers102", "flowers102", "Natural", 102),
    ("oxford_iiit_pet", "pets", "Natural", 37),
    ("svhn", "svhn", "Natural", 10),
    ("sun397", "sun397", "Natural", 397),
    ("patch_camelyon", "pcam", "Specialized", 2),
    ("eurosat", "eurosat", "Specialized", 10),
    ("resisc45", "resisc45", "Specialized", 45),
    ("diabetic_retinopathy", "retinopathy", "Specialized", 5),
    ("clevr_count", "clevr-count", "Structured", 8),
    ("clevr_dist", "clevr-dist", "Structured", 6),
    ("dmlab", "dmlab", "Structured", 6),
    ("kitti", "kitti", "Structured", 4),
    ("dsprites_loc", "dsprites-loc", "Structured", 16),
    ("dsprites_ori", "dsprites-ori", "Structured", 16),
    ("smallnorb_azi", "smallnorb-azi", "Structured", 18),
    ("smallnorb_ele", "smallnorb-ele", "Structured", 9),
)

VTAB_TASKS: dict[str, TaskInfo] = {
    name: TaskInfo(BENCHMARK, name, group, classes, preset) for name, preset, group, classes in _TASK_TABLE
}
"""The 19 tasks by folder name."""

VTAB_GROUPS = {
    g: tuple(n for n, info in VTAB_TASKS.items() if info.group == g) for g in ("Natural", "Specialized", "Structured")
}

SPLIT_FILES = {"train": "train800.txt", "val": "val200.txt", "trainval": "train800val200.txt", "test": "test.txt"}
"""The split file of each protocol role in the folder layout."""

HUB_SPLITS = {"train": "train800", "val": "val200", "trainval": "train800val200", "test": "test"}
"""The split name of each protocol role in a Hub (or ``save_to_disk``) dataset."""


def read_image_list(path: str, folder: str) -> list[LabelledItem]:
    """The ``(absolute image path, label)`` pairs of a ``relative/path label`` file, images below ``folder``."""
    fix = f"VTAB-1k needs {os.path.basename(path)} in each task folder (docs/reproducing.md, 'Data layouts')."
    items = []
    with open(require_file(path, fix), encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            parts = line.strip().rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].isdigit():
                raise BenchmarkDataError(
                    f"{path}:{number}: expected 'relative/image/path label', got {line.strip()!r}."
                )
            items.append((os.path.join(folder, parts[0]), int(parts[1])))
    if not items:
        raise BenchmarkDataError(f"{path} lists no images: {fix}")
    return items


def _folder_splits(folder: str, info: TaskInfo, transform: VtabTransform) -> dict[str, ImageFiles]:
    splits = {}
    for role, filename in SPLIT_FILES.items():
        path = os.path.join(folder, filename)
        items = read_image_list(path, folder)
        require_labels_below((label for _, label in items), info.num_classes, path)
        require_images((image for image, _ in items), path)
        splits[role] = ImageFiles(items, transform)
    return splits


def _hub_splits(source: str, info: TaskInfo, transform: VtabTransform) -> dict[str, RowImages]:
    import datasets

    if os.path.isfile(os.path.join(source, "dataset_dict.json")):
        loaded = datasets.load_from_disk(source)
    else:
        loaded = datasets.load_dataset(source, info.name)
    missing = [split for split in HUB_SPLITS.values() if split not in loaded]
    if missing:
        raise BenchmarkDataError(
            f"{source} ({info.name}) has no split(s) {missing}; found {list(loaded)}. A VTAB-1k dataset needs the "
            f"splits {list(HUB_SPLITS.values())}."
        )
    splits = {}
    for role, split in HUB_SPLITS.items():
        rows = loaded[split]
        if not {"image", "label"} <= set(rows.column_names):
            raise BenchmarkDataError(
                f"{source} split {split!r} needs columns 'image' and 'label'; has {rows.column_names}."
            )
        splits[role] = RowImages(rows, transform)
        require_labels_below(splits[role].labels, info.num_classes, f"{source} split {split!r}")
    return splits


def _is_hub_id(root: str) -> bool:
    """``owner/name`` that is not a local path: what ``load_dataset`` fetches from the Hub."""
    return not os.path.exists(root) and not os.path.isabs(root) and root.count("/") == 1 and not root.startswith(".")


def task_source(root: str, task: str) -> tuple[str, str]:
    """``("folder", <root>/<task>)``, ``("hub", <root>/<task>)`` (saved with ``save_to_disk``) or ``("hub", root)``.

    A Hub dataset is an ``owner/name`` id that is not a local path, or a local copy of one (a folder with a
    README.md whose task folders hold no train800.txt).
    """
    folder = os.path.join(root, task)
    if os.path.isfile(os.path.join(folder, "dataset_dict.json")):
        return "hub", folder
    if os.path.isfile(os.path.join(folder, SPLIT_FILES["train"])):
        return "folder", folder
    if _is_hub_id(root) or os.path.isfile(os.path.join(root, "README.md")):
        return "hub", root
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root} does not exist: give root= the folder that holds the VTAB-1k task folders.")
    return "folder", folder


def load_vtab(task: str, options: LoadOptions) -> TaskData:
    """The four roles of a VTAB-1k task, resized to ``options.image_size`` and normalised (no augmentation)."""
    require_plain_options(options, BENCHMARK)
    if not options.root:
        raise ValueError(
            "vtab-1k needs root=: a folder holding <task>/train800.txt, val200.txt, train800val200.txt and "
            "test.txt, or a Hub dataset id with those splits (docs/reproducing.md, 'Data layouts')."
        )
    info = VTAB_TASKS[task]
    mean, std = mean_std(options.normalization, options.processor, (IMAGENET_MEAN, IMAGENET_STD))
    transform = VtabTransform(options.image_size, mean, std)
    kind, source = task_source(options.root, task)
    splits: dict[str, Any] = (_folder_splits if kind == "folder" else _hub_splits)(source, info, transform)
    return TaskData(info=info, splits=splits)


VTAB = register_benchmark(
    Benchmark(
        name=BENCHMARK,
        tasks=tuple(VTAB_TASKS),
        load=load_vtab,
        description="VTAB-1k (19 tasks, 1000 training images each): train800 -> val200, train800val200 -> test.",
        groups=VTAB_GROUPS,
        infos=VTAB_TASKS,
    )
)
