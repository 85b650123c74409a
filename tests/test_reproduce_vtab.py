"""VTAB-1k: the task table, the folder and Hub layouts, and the errors that stop a sweep before it starts."""

from __future__ import annotations

import pickle

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vpt_peft.recipes.presets import VTAB_NATURAL, VTAB_SPECIALIZED, VTAB_STRUCTURED
from vpt_peft.reproduce import BENCHMARKS, ROLES, BenchmarkDataError, find_task, load_task
from vpt_peft.reproduce.transforms import IMAGENET_MEAN, IMAGENET_STD, VtabTransform
from vpt_peft.reproduce.vtab import HUB_SPLITS, VTAB_TASKS

from .benchmark_fixtures import VTAB_SIZES, build_vtab, build_vtab_hub

SIZES = {"train": VTAB_SIZES["train800"], "val": VTAB_SIZES["val200"], "test": VTAB_SIZES["test"]}
SIZES["trainval"] = SIZES["train"] + SIZES["val"]


@pytest.fixture
def vtab(tmp_path):
    return build_vtab(tmp_path / "vtab")


def test_the_19_tasks_map_to_the_recipe_presets_by_group():
    groups = BENCHMARKS["vtab-1k"].groups
    for group, presets in (
        ("Natural", VTAB_NATURAL),
        ("Specialized", VTAB_SPECIALIZED),
        ("Structured", VTAB_STRUCTURED),
    ):
        assert tuple(VTAB_TASKS[task].preset_task for task in groups[group]) == presets
    assert len(VTAB_TASKS) == 19 and sum(len(tasks) for tasks in groups.values()) == 19
    assert find_task("cifar100") == ("vtab-1k", "cifar") and find_task("smallnorb-ele") == ("vtab-1k", "smallnorb_ele")
    counts = {name: info.num_classes for name, info in VTAB_TASKS.items()}
    assert counts["cifar"] == 100 and counts["caltech101"] == 102 and counts["kitti"] == 4 and counts["dmlab"] == 6


def test_folder_layout_gives_the_four_roles_with_their_split_sizes(vtab):
    task = load_task("vtab-1k", "dtd", root=str(vtab), image_size=8)
    assert task.info == VTAB_TASKS["dtd"] and task.info.group == "Natural"
    assert {role: len(task.splits[role]) for role in ROLES} == SIZES
    assert task.splits["train"].labels == [0, 1, 0, 1] and task.splits["trainval"].labels[4:] == [0, 1]


def test_every_role_gets_the_plain_resize_without_augmentation(vtab):
    task = load_task("vtab-1k", "cifar", root=str(vtab), image_size=8)
    image = Image.open(vtab / "cifar" / "images" / "train800" / "001.png").convert("RGB")
    want = VtabTransform(8, IMAGENET_MEAN, IMAGENET_STD)(image)
    for role in ("train", "trainval"):
        example = task.splits[role][1]
        assert example["labels"] == 1 and torch.equal(example["pixel_values"], want)


def test_hub_dataset_with_the_vtab_split_names_loads_like_the_folders(tmp_path, vtab):
    hub = build_vtab_hub(tmp_path / "hub")
    from_hub = load_task("vtab-1k", "dtd", root=str(hub), image_size=8)
    from_folder = load_task("vtab-1k", "dtd", root=str(vtab), image_size=8)
    assert {role: len(from_hub.splits[role]) for role in ROLES} == SIZES
    for role in ROLES:
        assert from_hub.splits[role].labels == from_folder.splits[role].labels
    assert torch.equal(from_hub.splits["test"][2]["pixel_values"], from_folder.splits["test"][2]["pixel_values"])


def test_a_task_saved_with_save_to_disk_loads_from_its_folder(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = {"image": [Image.new("RGB", (5, 4), (9, 9, 9))] * 2, "label": [0, 3]}
    DatasetDict({split: Dataset.from_dict(rows) for split in HUB_SPLITS.values()}).save_to_disk(tmp_path / "kitti")
    task = load_task("vtab-1k", "kitti", root=str(tmp_path), image_size=4)
    assert task.splits["val"].labels == [0, 3] and task.splits["val"][0]["pixel_values"].shape == (3, 4, 4)


def test_a_hub_dataset_without_a_vtab_split_is_refused(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = {"image": [Image.new("RGB", (5, 4))], "label": [0]}
    DatasetDict({"train": Dataset.from_dict(rows)}).save_to_disk(tmp_path / "kitti")
    with pytest.raises(BenchmarkDataError, match="no split.*train800"):
        load_task("vtab-1k", "kitti", root=str(tmp_path))


def test_a_missing_split_file_is_named(vtab):
    (vtab / "dtd" / "val200.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"dtd/val200\.txt does not exist"):
        load_task("vtab-1k", "dtd", root=str(vtab))


def test_missing_images_are_counted_and_the_first_named(vtab):
    for name in ("000.png", "002.png"):
        (vtab / "dtd" / "images" / "test" / name).unlink()
    with pytest.raises(
        FileNotFoundError, match=r"2 image\(s\) listed in .*test\.txt are missing: .*000\.png, .*002\.png"
    ):
        load_task("vtab-1k", "dtd", root=str(vtab))


def test_a_label_beyond_the_class_count_is_refused(vtab):
    (vtab / "dtd").rename(vtab / "kitti")  # kitti has 4 classes
    (vtab / "kitti" / "test.txt").write_text("images/test/000.png 4\n")
    with pytest.raises(BenchmarkDataError, match=r"test\.txt has labels \[4\] outside 0\.\.3"):
        load_task("vtab-1k", "kitti", root=str(vtab))


def test_a_malformed_line_is_named_with_its_number(vtab):
    (vtab / "dtd" / "train800.txt").write_text("images/train800/000.png 0\nimages/train800/001.png one\n")
    with pytest.raises(BenchmarkDataError, match=r"train800\.txt:2: expected 'relative/image/path label'"):
        load_task("vtab-1k", "dtd", root=str(vtab))


def test_unknown_tasks_options_and_roots_are_refused(tmp_path, vtab):
    with pytest.raises(ValueError, match="no task 'cifar100'"):
        load_task("vtab-1k", "cifar100", root=str(vtab))
    with pytest.raises(ValueError, match="shots and classes apply to the few-shot benchmark only"):
        load_task("vtab-1k", "dtd", root=str(vtab), shots=4)
    with pytest.raises(ValueError, match="needs root="):
        load_task("vtab-1k", "dtd")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_task("vtab-1k", "dtd", root=str(tmp_path / "nowhere"))


def test_splits_batch_with_a_dataloader_and_pickle_for_worker_processes(vtab):
    task = load_task("vtab-1k", "cifar", root=str(vtab), image_size=8)
    batch = next(iter(DataLoader(task.splits["test"], batch_size=3)))
    assert batch["pixel_values"].shape == (3, 3, 8, 8) and batch["labels"].tolist() == [0, 1, 0]
    copy = pickle.loads(pickle.dumps(task.splits["test"]))
    assert torch.equal(copy[1]["pixel_values"], task.splits["test"][1]["pixel_values"])


def test_an_unknown_preset_task_is_refused():
    with pytest.raises(ValueError, match="no registered benchmark task maps to preset task 'cifar10'"):
        find_task("cifar10")
