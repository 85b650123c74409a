"""CLIP few-shot classification (DPT, CoOp, CoCoOp) on the 11 datasets, in CoOp's folder layout.

Each dataset lives in ``<root>/<folder>/`` under the names CoOp's DATASETS.md gives (:data:`COOP_DATASETS`),
with its split in ``split_zhou_<Name>.json``: ``{"train"|"val"|"test": [[image path, label, class name], ...]}``,
image paths relative to the image folder. Two datasets have no such file, as in CoOp: FGVCAircraft reads the
dataset's own ``variants.txt`` and ``images_variant_{train,val,test}.txt`` (label = line of the variant in
``variants.txt``; image ``images/<id>.jpg``); ImageNet reads ``classnames.txt`` (``<wnid> <class name>`` per
line, label = line) and the class folders ``images/train/<wnid>/`` (train) and ``images/val/<wnid>/`` (val and
test, since ImageNet has no held-out validation set; CoOp does the same).

Protocol roles: ``train`` = ``shots`` images per class drawn from train with ``seed`` (all of train when
``shots`` is None); ``val`` = ``min(shots, 4)`` per class drawn from val (CoOp's rule); ``trainval`` = the same
K-shot training set, since the few-shot protocol retrains on the K shots only; ``test`` = the full test list.
Draws are cached in ``<cache_dir or dataset folder>/split_fewshot/shot_<K>-seed_<seed>.json`` (same format as
the split file), so a rerun, another process or another machine uses the same shots; delete it to redraw.

``classes="base"``/``"novel"`` keeps the first ``ceil(C/2)`` classes or the rest (CoCoOp's base-to-novel
split), relabelled from 0, in every role; the shots are drawn before the split, as CoCoOp does.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from typing import Any

from ..atomic import atomic_write
from ..recipes.dpt import few_shot_indices
from .files import BenchmarkDataError, ImageFiles, read_json, require_file, require_images, require_labels_below
from .tasks import Benchmark, LoadOptions, TaskData, TaskInfo, register_benchmark
from .transforms import CLIP_MEAN, CLIP_STD, ClipTransform, mean_std

BENCHMARK = "fewshot"
GROUP = "Few-shot"
VAL_SHOTS = 4
"""CoOp draws at most 4 validation images per class."""
CLASS_SUBSETS = ("all", "base", "novel")

Entry = tuple[str, int, str]
"""An image path (relative to the image folder), its label and its class name, as in CoOp's split files."""

# (task = CoOp's config name, folder, image folder inside it, split file or None, classes)
_DATASET_TABLE = (
    ("imagenet", "imagenet", "images", None, 1000),
    ("caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", 100),
    ("oxford_pets", "oxford_pets", "images", "split_zhou_OxfordPets.json", 37),
    ("stanford_cars", "stanford_cars", "", "split_zhou_StanfordCars.json", 196),
    ("oxford_flowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", 102),
    ("food101", "food-101", "images", "split_zhou_Food101.json", 101),
    ("fgvc_aircraft", "fgvc_aircraft", "images", None, 100),
    ("sun397", "sun397", "SUN397", "split_zhou_SUN397.json", 397),
    ("dtd", "dtd", "images", "split_zhou_DescribableTextures.json", 47),
    ("eurosat", "eurosat", "2750", "split_zhou_EuroSAT.json", 10),
    ("ucf101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", 101),
)

COOP_DATASETS = {task: (folder, images, split) for task, folder, images, split, _ in _DATASET_TABLE}
"""task -> (folder under root, image folder inside it, split file or None)."""

FEWSHOT_TASKS = {task: TaskInfo(BENCHMARK, task, GROUP, n) for task, *_, n in _DATASET_TABLE}
"""The 11 datasets by CoOp's config name (``num_classes`` of all classes; base/novel halve it)."""

SPLITS = ("train", "val", "test")


def _entry(raw: Any, where: str) -> Entry:
    ok = isinstance(raw, (list, tuple)) and len(raw) == 3 and isinstance(raw[0], str) and isinstance(raw[2], str)
    if not ok or isinstance(raw[1], bool) or not isinstance(raw[1], int):
        raise BenchmarkDataError(f"{where} must be [image path, integer label, class name], got {raw!r}.")
    return raw[0], raw[1], raw[2]


def read_split_file(path: str, splits: tuple[str, ...] = SPLITS) -> dict[str, list[Entry]]:
    """The ``splits`` of a CoOp split file (or of a cached draw, which has the same format)."""
    fix = "download CoOp's split_zhou_<Name>.json into the dataset folder (docs/reproducing.md, 'Data layouts')."
    data = read_json(path, fix)
    if not isinstance(data, dict) or any(not isinstance(data.get(split), list) for split in splits):
        raise BenchmarkDataError(f"{path} must hold the lists {list(splits)}: {fix}")
    return {split: [_entry(raw, f"{path}: {split}[{i}]") for i, raw in enumerate(data[split])] for split in splits}


def _read_lines(path: str, fix: str) -> list[str]:
    with open(require_file(path, fix), encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def read_aircraft(folder: str) -> dict[str, list[Entry]]:
    """FGVCAircraft's own variant files, as CoOp reads them."""
    fix = "FGVCAircraft needs the data/ files of fgvc-aircraft-2013b in fgvc_aircraft/ (CoOp's DATASETS.md)."
    labels = {name: label for label, name in enumerate(_read_lines(os.path.join(folder, "variants.txt"), fix))}
    splits = {}
    for split in SPLITS:
        path = os.path.join(folder, f"images_variant_{split}.txt")
        entries = []
        for number, line in enumerate(_read_lines(path, fix), 1):
            image, _, variant = line.partition(" ")
            if variant not in labels:
                raise BenchmarkDataError(f"{path}:{number}: variant {variant!r} is not in variants.txt.")
            entries.append((f"{image}.jpg", labels[variant], variant))
        splits[split] = entries
    return splits


def read_imagenet(folder: str) -> dict[str, list[Entry]]:
    """ImageNet's class folders, labelled by the line of each class in ``classnames.txt``."""
    fix = "ImageNet needs classnames.txt (lines '<wnid> <class name>') next to images/ (CoOp's DATASETS.md)."
    classes = [line.split(maxsplit=1) for line in _read_lines(os.path.join(folder, "classnames.txt"), fix)]
    splits: dict[str, list[Entry]] = {}
    for split, subfolder in (("train", "train"), ("test", "val")):
        entries = []
        for label, (wnid, name) in enumerate(classes):
            class_folder = os.path.join(folder, "images", subfolder, wnid)
            if not os.path.isdir(class_folder):
                raise FileNotFoundError(f"{class_folder} does not exist: every class of classnames.txt needs a folder.")
            entries += [(f"{subfolder}/{wnid}/{image}", label, name) for image in sorted(os.listdir(class_folder))]
        splits[split] = entries
    splits["val"] = splits["test"]
    return splits


def class_names(splits: dict[str, list[Entry]], source: str) -> list[str]:
    """The class name of each label 0..C-1; labels must be contiguous and each must have one name."""
    names: dict[int, str] = {}
    for entries in splits.values():
        for _, label, name in entries:
            if names.setdefault(label, name) != name:
                raise BenchmarkDataError(f"{source}: label {label} is called both {names[label]!r} and {name!r}.")
    if not names:
        raise BenchmarkDataError(f"{source} lists no images.")
    absent = sorted(set(range(max(names) + 1)) - set(names))
    if absent or min(names) < 0:
        raise BenchmarkDataError(
            f"{source}: labels must be 0..C-1 without gaps; {absent[:5]} are missing (labels found: "
            f"{min(names)}..{max(names)}). Relabel the split file contiguously."
        )
    return [names[label] for label in range(len(names))]


def draw_shots(entries: list[Entry], shots: int, seed: int, num_classes: int, source: str) -> list[Entry]:
    """``shots`` entries per class, drawn with ``seed``; every class must have that many."""
    counts = Counter(label for _, label, _ in entries)
    short = {label: counts[label] for label in range(num_classes) if counts[label] < shots}
    if short:
        label, have = next(iter(short.items()))
        raise BenchmarkDataError(
            f"{source}: {len(short)} class(es) have fewer than {shots} images (class {label} has {have}); "
            "choose fewer shots or complete the split."
        )
    return [entries[i] for i in few_shot_indices([label for _, label, _ in entries], shots, seed)]


def shots_cache_path(folder: str, options: LoadOptions) -> str:
    """Where the draw of ``options.shots`` and ``options.seed`` for the dataset in ``folder`` is cached."""
    name = f"shot_{options.shots}-seed_{options.seed}.json"
    return os.path.join(options.cache_dir or folder, "split_fewshot", name)


def cached_shots(
    splits: dict[str, list[Entry]], options: LoadOptions, cache: str, num_classes: int, source: str
) -> dict[str, list[Entry]]:
    """The K-shot train and val of ``options.seed``, read from ``cache`` or drawn and written there."""
    if os.path.isfile(cache):
        cached = read_split_file(cache, ("train", "val"))
        for split, entries in cached.items():
            require_labels_below(
                (label for _, label, _ in entries), num_classes, f"{cache} ({split}; delete it to redraw)"
            )
        return cached
    drawn = {
        "train": draw_shots(splits["train"], options.shots, options.seed, num_classes, f"{source} (train)"),
        "val": draw_shots(splits["val"], min(options.shots, VAL_SHOTS), options.seed, num_classes, f"{source} (val)"),
    }
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    atomic_write(cache, json.dumps({split: [list(entry) for entry in entries] for split, entries in drawn.items()}))
    return drawn


def class_subset(entries: list[Entry], num_classes: int, which: str) -> list[Entry]:
    """The entries of the base (first ``ceil(C/2)``) or novel classes, novel labels counted from 0."""
    if which == "all":
        return entries
    first_novel = math.ceil(num_classes / 2)
    if which == "base":
        return [entry for entry in entries if entry[1] < first_novel]
    return [(path, label - first_novel, name) for path, label, name in entries if label >= first_novel]


def class_names_subset(names: list[str], which: str) -> list[str]:
    """The class names of the base or novel half (``"all"``: every name)."""
    first_novel = math.ceil(len(names) / 2)
    return {"all": names, "base": names[:first_novel], "novel": names[first_novel:]}[which]


def _check_options(options: LoadOptions) -> None:
    if options.classes not in CLASS_SUBSETS:
        raise ValueError(f"classes must be one of {CLASS_SUBSETS}, got {options.classes!r}.")
    shots = options.shots
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 1):
        raise ValueError(f"shots must be an integer >= 1 (the papers use 1, 2, 4, 8, 16) or None, got {shots!r}.")
    if not options.root:
        raise ValueError("fewshot needs root=: the folder holding CoOp's dataset folders (docs/reproducing.md).")


def read_dataset(task: str, root: str) -> tuple[dict[str, list[Entry]], str, str]:
    """``(splits, dataset folder, source named in errors)`` of a CoOp dataset, from whichever files it uses."""
    folder_name, _, split_file = COOP_DATASETS[task]
    folder = os.path.join(root, folder_name)
    if task == "imagenet":
        return read_imagenet(folder), folder, os.path.join(folder, "classnames.txt")
    if task == "fgvc_aircraft":
        return read_aircraft(folder), folder, os.path.join(folder, "images_variant_*.txt")
    path = os.path.join(folder, split_file)
    return read_split_file(path), folder, path


def load_fewshot(task: str, options: LoadOptions) -> TaskData:
    """The K-shot roles of a CoOp dataset with its class names (DPT's text prompts need them)."""
    _check_options(options)
    splits, folder, source = read_dataset(task, options.root)
    names = class_names(splits, source)
    if options.shots is not None:
        cache = shots_cache_path(folder, options)
        splits = {**splits, **cached_shots(splits, options, cache, len(names), source)}
    image_folder = os.path.join(folder, COOP_DATASETS[task][1])
    by_role = {"train": splits["train"], "val": splits["val"], "trainval": splits["train"], "test": splits["test"]}
    mean, std = mean_std(options.normalization, options.processor, (CLIP_MEAN, CLIP_STD))
    datasets: dict[str, ImageFiles] = {}
    for role, entries in by_role.items():
        kept = class_subset(entries, len(names), options.classes)
        items = [(os.path.join(image_folder, path), label) for path, label, _ in kept]
        if role != "trainval":
            require_images((image for image, _ in items), f"{source} ({role})")
        datasets[role] = ImageFiles(
            items, ClipTransform(options.image_size, mean, std, train=role in ("train", "trainval"))
        )
    kept_names = class_names_subset(names, options.classes)
    info = TaskInfo(BENCHMARK, task, GROUP, len(kept_names))
    return TaskData(info=info, splits=datasets, class_names=kept_names)


FEWSHOT = register_benchmark(
    Benchmark(
        name=BENCHMARK,
        tasks=tuple(FEWSHOT_TASKS),
        load=load_fewshot,
        description="CLIP few-shot (CoOp's 11 datasets and splits): K shots per class -> val, K shots -> test.",
        groups={GROUP: tuple(FEWSHOT_TASKS)},
        infos=FEWSHOT_TASKS,
    )
)
