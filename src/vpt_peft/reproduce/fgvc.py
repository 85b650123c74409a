"""The five FGVC datasets in the layout of the official VPT release.

::

    <root>/<dataset>/train.json   {"relative/image/path.jpg": class_id, ...}   role "train" (90 % of the train set)
    <root>/<dataset>/val.json     the held-out 10 %                            role "val"
    <root>/<dataset>/test.json    the official test set                        role "test"
    images below <root>/<dataset>/<image folder>: "images" (CUB_200_2011, nabirds), "Images" (StanfordDogs),
    the dataset folder itself (StanfordCars, OxfordFlower)

Class ids as released are not contiguous (NABirds) or count from 1 (CUB); like the official loader, the ids
found in train.json are sorted and numbered from 0, and val/test must use only those ids. ``trainval`` is
train followed by val.
"""

from __future__ import annotations

import os

from .files import (
    BenchmarkDataError,
    ImageFiles,
    LabelledItem,
    read_json,
    require_images,
    require_plain_options,
)
from .tasks import Benchmark, LoadOptions, TaskData, TaskInfo, register_benchmark
from .transforms import IMAGENET_MEAN, IMAGENET_STD, FgvcTransform, mean_std

BENCHMARK = "fgvc"

# (folder name as released, recipe preset name, image folder inside it, classes)
_DATASET_TABLE = (
    ("CUB_200_2011", "cub", "images", 200),
    ("nabirds", "nabirds", "images", 555),
    ("OxfordFlower", "oxford-flowers", "", 102),
    ("StanfordDogs", "stanford-dogs", "Images", 120),
    ("StanfordCars", "stanford-cars", "", 196),
)

FGVC_TASKS: dict[str, TaskInfo] = {
    name: TaskInfo(BENCHMARK, name, "FGVC", n, preset) for name, preset, _, n in _DATASET_TABLE
}
"""The five datasets by folder name (``num_classes`` as released; a loaded task counts the ids in train.json)."""

IMAGE_FOLDERS = {name: images for name, _, images, _ in _DATASET_TABLE}

SPLIT_FILES = ("train", "val", "test")


def read_annotations(path: str) -> dict[str, int]:
    """The ``{relative image path: class id}`` mapping of one split file."""
    fix = "FGVC needs train.json, val.json and test.json in each dataset folder (docs/reproducing.md, 'Data layouts')."
    annotations = read_json(path, fix)
    if not isinstance(annotations, dict):
        raise BenchmarkDataError(f"{path} must map image paths to class ids, got a {type(annotations).__name__}.")
    bad = [(image, cid) for image, cid in annotations.items() if isinstance(cid, bool) or not isinstance(cid, int)]
    if bad:
        raise BenchmarkDataError(f"{path} maps images to integer class ids; {bad[0][0]!r} has {bad[0][1]!r}.")
    return annotations


def contiguous_ids(class_ids: set[int]) -> dict[int, int]:
    """The released class ids, sorted, numbered from 0: the official loader's label map."""
    return {cid: index for index, cid in enumerate(sorted(class_ids))}


def _items(annotations: dict[str, int], image_folder: str, label_map: dict[int, int], path: str) -> list[LabelledItem]:
    unknown = sorted({cid for cid in annotations.values() if cid not in label_map})
    if unknown:
        raise BenchmarkDataError(
            f"{path} has class ids {unknown[:5]} that train.json never uses; a class must have training images "
            "(check that the split files come from the same release)."
        )
    return [(os.path.join(image_folder, image), label_map[cid]) for image, cid in annotations.items()]


def load_fgvc(task: str, options: LoadOptions) -> TaskData:
    """train/val/trainval/test of an FGVC dataset: random crop + flip for training roles, centre crop otherwise."""
    require_plain_options(options, BENCHMARK)
    if not options.root:
        raise ValueError(
            "fgvc needs root=: the folder holding <dataset>/train.json, val.json and test.json "
            "(docs/reproducing.md, 'Data layouts')."
        )
    folder = os.path.join(options.root, task)
    image_folder = os.path.join(folder, IMAGE_FOLDERS[task])
    annotations = {split: read_annotations(os.path.join(folder, f"{split}.json")) for split in SPLIT_FILES}
    label_map = contiguous_ids(set(annotations["train"].values()))
    items = {}
    for split in SPLIT_FILES:
        path = os.path.join(folder, f"{split}.json")
        items[split] = _items(annotations[split], image_folder, label_map, path)
        require_images((image for image, _ in items[split]), path)
    mean, std = mean_std(options.normalization, options.processor, (IMAGENET_MEAN, IMAGENET_STD))
    train_transform = FgvcTransform(options.image_size, mean, std, train=True)
    eval_transform = FgvcTransform(options.image_size, mean, std, train=False)
    released = FGVC_TASKS[task]
    info = TaskInfo(BENCHMARK, task, released.group, len(label_map), released.preset_task)
    splits = {
        "train": ImageFiles(items["train"], train_transform),
        "val": ImageFiles(items["val"], eval_transform),
        "trainval": ImageFiles(items["train"] + items["val"], train_transform),
        "test": ImageFiles(items["test"], eval_transform),
    }
    return TaskData(info=info, splits=splits)


FGVC = register_benchmark(
    Benchmark(
        name=BENCHMARK,
        tasks=tuple(FGVC_TASKS),
        load=load_fgvc,
        description="FGVC (5 fine-grained datasets, VPT's splits): train -> val, train+val -> test.",
        groups={"FGVC": tuple(FGVC_TASKS)},
        infos=FGVC_TASKS,
    )
)
