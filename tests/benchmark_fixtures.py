"""Miniature benchmark folders in the real layouts, for tests that load or sweep them offline.

Each builder writes a few tiny PNGs and the split files of one layout under ``root`` and returns ``root``, to
pass as ``LoadOptions.root`` / ``load_task(..., root=...)``:

- :func:`build_vtab` -- VTAB-1k folders (``<root>/<task>/train800.txt`` ...), tasks ``cifar`` and ``dtd``;
- :func:`build_vtab_hub` -- the same tasks as a Hub-style dataset repo (README configs + parquet), which
  ``datasets.load_dataset(root, task)`` reads offline;
- :func:`build_fgvc` -- VPT's FGVC folders (``<root>/<dataset>/{train,val,test}.json``), ``CUB_200_2011``
  (images under ``images/``) and ``StanfordCars`` (images in the folder itself), class ids 1-based and with gaps;
- :func:`build_coop` -- CoOp folders with ``split_zhou_<Name>.json``, ``caltech101`` and ``eurosat``.

Every image of class ``c`` is a flat colour (:func:`class_colour`) plus a little seeded noise, so a tiny model
can learn the task in a few steps: the sweep's end-to-end tests train on these. Use from a test module as
``from .benchmark_fixtures import build_vtab`` with pytest's ``tmp_path`` (or ``tmp_path_factory`` for a
module-scoped fixture, since building takes a few hundred milliseconds).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

VTAB_FIXTURE_TASKS = ("cifar", "dtd")
VTAB_SIZES = {"train800": 4, "val200": 2, "test": 3}
"""Images per split in each miniature VTAB task (train800val200 lists train800 then val200)."""

FGVC_FIXTURE_TASKS = ("CUB_200_2011", "StanfordCars")
FGVC_CLASS_IDS = (1, 4, 9)
"""The released (non-contiguous) class ids of the miniature FGVC datasets; they load as 0, 1, 2."""
FGVC_SIZES = {"train": 6, "val": 3, "test": 3}

COOP_FIXTURE_TASKS = {"caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
                      "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json")}  # fmt: skip
COOP_CLASSES = ("apple", "bicycle", "cloud", "dolphin", "eagle")
"""Five classes, so base-to-novel splits 3 + 2."""
COOP_PER_CLASS = {"train": 5, "val": 4, "test": 2}

IMAGE_SIZE = (12, 10)
"""Width, height of every fixture image: not square, so resizes and crops are visible in tests."""


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct RGB colour per class."""
    return ((70 * label + 40) % 256, (150 * label + 90) % 256, (220 - 50 * label) % 256)


def _seed(*parts: object) -> int:
    """A noise seed that is the same in every process (``hash`` of a str is not)."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def write_image(path: Path, label: int, seed: int, size: tuple[int, int] = IMAGE_SIZE) -> None:
    """A PNG of ``class_colour(label)`` with +-8 of seeded noise."""
    from PIL import Image

    noise = np.random.default_rng(seed).integers(-8, 9, size=(size[1], size[0], 3))
    pixels = np.clip(np.array(class_colour(label)) + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def build_vtab(root: Path, tasks: tuple[str, ...] = VTAB_FIXTURE_TASKS, classes: int = 2) -> Path:
    """VTAB-1k folders: per task, ``VTAB_SIZES`` images per split, labels cycling over ``classes``."""
    for task in tasks:
        folder = root / task
        lines = {}
        for split, count in VTAB_SIZES.items():
            lines[split] = []
            for i in range(count):
                relative = f"images/{split}/{i:03d}.png"
                write_image(folder / relative, i % classes, seed=_seed(task, split, i))
                lines[split].append(f"{relative} {i % classes}")
        lines["train800val200"] = lines["train800"] + lines["val200"]
        for split, listed in lines.items():
            (folder / f"{split}.txt").write_text("\n".join(listed) + "\n")
    return root


def build_vtab_hub(root: Path, tasks: tuple[str, ...] = VTAB_FIXTURE_TASKS, classes: int = 2) -> Path:
    """The miniature VTAB tasks as a Hub dataset repo: one config per task, one parquet file per split."""
    from datasets import Dataset, Features, Image, Value
    from PIL import Image as PILImage

    source = build_vtab(root / "_images", tasks, classes)
    configs = []
    for task in tasks:
        files = []
        for split in ("train800", "val200", "train800val200", "test"):
            pairs = [line.rsplit(" ", 1) for line in (source / task / f"{split}.txt").read_text().splitlines()]
            images = [PILImage.open(source / task / path).convert("RGB") for path, _ in pairs]
            features = Features({"image": Image(), "label": Value("int64")})
            rows = Dataset.from_dict({"image": images, "label": [int(label) for _, label in pairs]}, features=features)
            rows.to_parquet(str(root / task / f"{split}.parquet"))
            files.append(f"    - split: {split}\n      path: {task}/{split}.parquet")
        configs.append(f"- config_name: {task}\n  data_files:\n" + "\n".join(files))
    (root / "README.md").write_text("---\nconfigs:\n" + "\n".join(configs) + "\n---\n")
    return root


def build_fgvc(root: Path, tasks: tuple[str, ...] = FGVC_FIXTURE_TASKS) -> Path:
    """FGVC folders: ``FGVC_SIZES`` images per split, class ids cycling over ``FGVC_CLASS_IDS``."""
    image_folders = {"CUB_200_2011": "images", "nabirds": "images", "StanfordDogs": "Images"}
    for task in tasks:
        images = root / task / image_folders.get(task, "")
        for split, count in FGVC_SIZES.items():
            annotations = {}
            for i in range(count):
                label = i % len(FGVC_CLASS_IDS)
                relative = f"{split}/{i:03d}.png"
                write_image(images / relative, label, seed=_seed(task, split, i))
                annotations[relative] = FGVC_CLASS_IDS[label]
            (root / task / f"{split}.json").write_text(json.dumps(annotations))
    return root


def build_coop(root: Path, tasks: tuple[str, ...] = tuple(COOP_FIXTURE_TASKS)) -> Path:
    """CoOp folders: ``COOP_PER_CLASS`` images per class and split of ``COOP_CLASSES``, in split_zhou files."""
    for task in tasks:
        folder, image_folder, split_file = COOP_FIXTURE_TASKS[task]
        splits = {}
        for split, per_class in COOP_PER_CLASS.items():
            splits[split] = []
            for label, name in enumerate(COOP_CLASSES):
                for i in range(per_class):
                    relative = f"{name}/{split}_{i}.png"
                    write_image(root / folder / image_folder / relative, label, seed=_seed(task, split, label, i))
                    splits[split].append([relative, label, name])
        (root / folder / split_file).write_text(json.dumps(splits))
    return root
