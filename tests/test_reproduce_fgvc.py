"""FGVC in VPT's layout: image folders per dataset, sorted contiguous labels, train+val, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vpt_peft.recipes.presets import FGVC
from vpt_peft.reproduce import ROLES, BenchmarkDataError, find_task, load_task
from vpt_peft.reproduce.fgvc import FGVC_TASKS, contiguous_ids
from vpt_peft.reproduce.transforms import IMAGENET_MEAN, IMAGENET_STD, FgvcTransform

from .benchmark_fixtures import FGVC_CLASS_IDS, FGVC_SIZES, build_fgvc


@pytest.fixture
def fgvc(tmp_path):
    return build_fgvc(tmp_path / "fgvc")


def read(path):
    return json.loads(path.read_text())


def test_the_five_datasets_map_to_the_recipe_presets():
    assert tuple(info.preset_task for info in FGVC_TASKS.values()) == FGVC
    assert find_task("stanford-dogs") == ("fgvc", "StanfordDogs")
    assert {name: info.num_classes for name, info in FGVC_TASKS.items()} == {
        "CUB_200_2011": 200,
        "nabirds": 555,
        "OxfordFlower": 102,
        "StanfordDogs": 120,
        "StanfordCars": 196,
    }


def test_released_class_ids_are_numbered_from_0_in_sorted_order():
    assert contiguous_ids({12, 3, 7}) == {3: 0, 7: 1, 12: 2}


@pytest.mark.parametrize("dataset", ["CUB_200_2011", "StanfordCars"])
def test_roles_sizes_and_labels(fgvc, dataset):
    """CUB keeps images under images/, Cars in the dataset folder itself; ids 1, 4, 9 load as 0, 1, 2."""
    task = load_task("fgvc", dataset, root=str(fgvc), image_size=8)
    sizes = {**FGVC_SIZES, "trainval": FGVC_SIZES["train"] + FGVC_SIZES["val"]}
    assert {role: len(task.splits[role]) for role in ROLES} == sizes
    assert task.info.num_classes == len(FGVC_CLASS_IDS) and task.info.preset_task == FGVC_TASKS[dataset].preset_task
    label_of = {cid: index for index, cid in enumerate(FGVC_CLASS_IDS)}
    for split in ("train", "val", "test"):
        assert task.splits[split].labels == [label_of[cid] for cid in read(fgvc / dataset / f"{split}.json").values()]
    assert task.splits["trainval"].labels == task.splits["train"].labels + task.splits["val"].labels


def test_evaluation_roles_centre_crop_and_training_roles_augment(fgvc):
    task = load_task("fgvc", "CUB_200_2011", root=str(fgvc), image_size=8)
    image = Image.open(fgvc / "CUB_200_2011" / "images" / "test" / "000.png").convert("RGB")
    assert torch.equal(
        task.splits["test"][0]["pixel_values"], FgvcTransform(8, IMAGENET_MEAN, IMAGENET_STD, False)(image)
    )
    for role in ("train", "trainval"):
        assert task.splits[role].transform == FgvcTransform(8, IMAGENET_MEAN, IMAGENET_STD, train=True)
    assert task.splits["val"].transform.train is False


def test_a_class_id_that_train_never_uses_is_refused(fgvc):
    path = fgvc / "CUB_200_2011" / "val.json"
    path.write_text(json.dumps({**read(path), "val/000.png": 77}))
    with pytest.raises(BenchmarkDataError, match=r"val\.json has class ids \[77\] that train\.json never uses"):
        load_task("fgvc", "CUB_200_2011", root=str(fgvc))


def test_non_integer_ids_and_broken_json_are_refused(fgvc):
    path = fgvc / "StanfordCars" / "test.json"
    path.write_text(json.dumps({"test/000.png": "4"}))
    with pytest.raises(BenchmarkDataError, match="integer class ids; 'test/000.png' has '4'"):
        load_task("fgvc", "StanfordCars", root=str(fgvc))
    path.write_text("{not json")
    with pytest.raises(BenchmarkDataError, match=r"test\.json is not valid JSON"):
        load_task("fgvc", "StanfordCars", root=str(fgvc))


def test_missing_split_files_and_images_are_named(fgvc):
    (fgvc / "StanfordCars" / "val" / "001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) listed in .*val\.json are missing: .*val/001\.png"):
        load_task("fgvc", "StanfordCars", root=str(fgvc))
    (fgvc / "CUB_200_2011" / "test.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"test\.json does not exist: FGVC needs"):
        load_task("fgvc", "CUB_200_2011", root=str(fgvc))


def test_fixed_splits_take_no_shots(fgvc):
    with pytest.raises(ValueError, match="few-shot benchmark only"):
        load_task("fgvc", "CUB_200_2011", root=str(fgvc), classes="base")
