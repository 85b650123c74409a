"""CLIP few-shot in CoOp's layout: seeded K-shot draws and their cache, base-to-novel, class names, errors."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from vpt_peft.reproduce import ROLES, BenchmarkDataError, LoadOptions, load_task
from vpt_peft.reproduce.fewshot import COOP_DATASETS, FEWSHOT_TASKS, shots_cache_path
from vpt_peft.reproduce.transforms import CLIP_MEAN, CLIP_STD, ClipTransform

from .benchmark_fixtures import COOP_CLASSES, COOP_PER_CLASS, build_coop, write_image


@pytest.fixture
def coop(tmp_path):
    return build_coop(tmp_path / "coop")


def split_file(root, task="eurosat"):
    folder, _, name = COOP_DATASETS[task]
    return root / folder / name


def drawn_images(task_data, role="train"):
    return [path for path, _ in task_data.splits[role].items]


def test_the_11_datasets_of_the_dpt_paper_are_registered():
    assert len(FEWSHOT_TASKS) == 11 and FEWSHOT_TASKS["caltech101"].num_classes == 100
    assert COOP_DATASETS["oxford_flowers"] == ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json")
    assert COOP_DATASETS["dtd"][2] == "split_zhou_DescribableTextures.json"


def test_all_shots_gives_the_split_file_with_class_names(coop):
    task = load_task("fewshot", "caltech101", root=str(coop), image_size=8)
    classes = len(COOP_CLASSES)
    sizes = {role: COOP_PER_CLASS[role] * classes for role in ("train", "val", "test")}
    assert {role: len(task.splits[role]) for role in ROLES} == {**sizes, "trainval": sizes["train"]}
    assert task.class_names == list(COOP_CLASSES) and task.info.num_classes == classes
    assert task.splits["train"].transform == ClipTransform(8, CLIP_MEAN, CLIP_STD, train=True)
    assert task.splits["test"].transform == ClipTransform(8, CLIP_MEAN, CLIP_STD, train=False)
    assert task.splits["val"][0]["pixel_values"].shape == (3, 8, 8)


@pytest.mark.parametrize("shots, val_per_class", [(1, 1), (2, 2), (4, 4), (5, 4)])
def test_k_shots_per_class_for_training_and_at_most_4_for_validation(coop, shots, val_per_class):
    task = load_task("fewshot", "eurosat", root=str(coop), shots=shots, seed=1)
    assert Counter(task.splits["train"].labels) == {label: shots for label in range(len(COOP_CLASSES))}
    assert Counter(task.splits["val"].labels) == {label: val_per_class for label in range(len(COOP_CLASSES))}
    assert task.splits["trainval"].items == task.splits["train"].items
    assert len(task.splits["test"]) == COOP_PER_CLASS["test"] * len(COOP_CLASSES)


def test_a_seed_always_draws_the_same_shots_and_another_seed_others(coop, tmp_path):
    first = drawn_images(load_task("fewshot", "eurosat", root=str(coop), shots=2, seed=1))
    elsewhere = tmp_path / "elsewhere"
    again = drawn_images(load_task("fewshot", "eurosat", root=str(coop), shots=2, seed=1, cache_dir=str(elsewhere)))
    other = drawn_images(load_task("fewshot", "eurosat", root=str(coop), shots=2, seed=2, cache_dir=str(elsewhere)))
    assert first == again and first != other


def test_the_draw_is_cached_and_a_rerun_reads_the_cache(coop):
    options = LoadOptions(root=str(coop), shots=1, seed=3)
    task = load_task("fewshot", "eurosat", root=str(coop), shots=1, seed=3)
    cache = shots_cache_path(str(coop / "eurosat"), options)
    assert cache.endswith("eurosat/split_fewshot/shot_1-seed_3.json")
    saved = json.loads(open(cache).read())
    assert [entry[0] for entry in saved["train"]] == [p.split("2750/")[1] for p in drawn_images(task)]
    saved["train"] = saved["train"][:1]
    open(cache, "w").write(json.dumps(saved))
    assert len(load_task("fewshot", "eurosat", root=str(coop), shots=1, seed=3).splits["train"]) == 1
    saved["val"][0][1] = 9
    open(cache, "w").write(json.dumps(saved))
    with pytest.raises(BenchmarkDataError, match=r"delete it to redraw\) has labels \[9\] outside 0\.\.4"):
        load_task("fewshot", "eurosat", root=str(coop), shots=1, seed=3)


def test_base_and_novel_halves_relabel_from_zero(coop):
    """Five classes: base = the first ceil(5/2) = 3, novel = the other 2, labelled 0 and 1; same shots drawn."""
    all_classes = load_task("fewshot", "eurosat", root=str(coop), shots=2)
    base = load_task("fewshot", "eurosat", root=str(coop), shots=2, classes="base")
    novel = load_task("fewshot", "eurosat", root=str(coop), shots=2, classes="novel")
    assert base.class_names == list(COOP_CLASSES[:3]) and novel.class_names == list(COOP_CLASSES[3:])
    assert base.info.num_classes == 3 and novel.info.num_classes == 2
    assert sorted(set(novel.splits["test"].labels)) == [0, 1] and sorted(set(base.splits["test"].labels)) == [0, 1, 2]
    assert drawn_images(base) + drawn_images(novel) == drawn_images(all_classes)
    assert novel.splits["train"].labels == [label - 3 for label in all_classes.splits["train"].labels if label >= 3]


def test_more_shots_than_a_class_has_is_refused(coop):
    with pytest.raises(BenchmarkDataError, match=r"5 class\(es\) have fewer than 6 images \(class 0 has 5\)"):
        load_task("fewshot", "eurosat", root=str(coop), shots=6)


def test_non_contiguous_labels_and_ambiguous_names_are_refused(coop):
    path = split_file(coop)
    splits = json.loads(path.read_text())
    for entry in splits["train"] + splits["val"] + splits["test"]:
        entry[1] = 7 if entry[1] == 4 else entry[1]
    path.write_text(json.dumps(splits))
    with pytest.raises(BenchmarkDataError, match=r"labels must be 0\.\.C-1 without gaps; \[4, 5, 6\] are missing"):
        load_task("fewshot", "eurosat", root=str(coop))
    splits["test"][0][1], splits["test"][0][2] = 1, "apple"
    path.write_text(json.dumps({**splits, "test": splits["test"][:1]}))
    with pytest.raises(BenchmarkDataError, match="label 1 is called both 'bicycle' and 'apple'"):
        load_task("fewshot", "eurosat", root=str(coop))


def test_malformed_entries_missing_files_and_bad_options_are_refused(coop):
    path = split_file(coop)
    splits = json.loads(path.read_text())
    path.write_text(json.dumps({**splits, "val": [["x.png", "0", "apple"]]}))
    with pytest.raises(BenchmarkDataError, match=r"val\[0\] must be \[image path, integer label, class name\]"):
        load_task("fewshot", "eurosat", root=str(coop))
    path.unlink()
    with pytest.raises(FileNotFoundError, match="split_zhou_EuroSAT.json does not exist: download CoOp's"):
        load_task("fewshot", "eurosat", root=str(coop))
    (coop / "caltech-101" / "101_ObjectCategories" / "apple" / "test_1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) listed in .*Caltech101.json \(test\) are missing"):
        load_task("fewshot", "caltech101", root=str(coop))
    with pytest.raises(ValueError, match="classes must be one of"):
        load_task("fewshot", "caltech101", root=str(coop), classes="new")
    with pytest.raises(ValueError, match="shots must be an integer >= 1"):
        load_task("fewshot", "caltech101", root=str(coop), shots=0)


def test_fgvc_aircraft_reads_its_own_variant_files(tmp_path):
    folder = tmp_path / "fgvc_aircraft"
    folder.mkdir()
    (folder / "variants.txt").write_text("707-320\nA300B4\n")
    for split, images in (("train", (10, 11, 12, 13)), ("val", (20, 21)), ("test", (30, 31))):
        lines = [f"{image} {'A300B4' if image % 2 else '707-320'}" for image in images]
        (folder / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
        for image in images:
            write_image(folder / "images" / f"{image}.jpg", image % 2, seed=image)
    task = load_task("fewshot", "fgvc_aircraft", root=str(tmp_path), shots=1)
    assert task.class_names == ["707-320", "A300B4"] and task.splits["test"].labels == [0, 1]
    assert len(task.splits["train"]) == 2


def test_imagenet_reads_class_folders_in_classnames_order(tmp_path):
    folder = tmp_path / "imagenet"
    folder.mkdir()
    (folder / "classnames.txt").write_text("n02 goldfish\nn01 great white shark\n")
    for subfolder, count in (("train", 3), ("val", 2)):
        for label, wnid in enumerate(("n02", "n01")):
            for i in range(count):
                write_image(folder / "images" / subfolder / wnid / f"{i}.png", label, seed=i)
    task = load_task("fewshot", "imagenet", root=str(tmp_path), shots=2)
    assert task.class_names == ["goldfish", "great white shark"]
    assert task.splits["test"].labels == [0, 0, 1, 1] and task.splits["train"].labels == [0, 0, 1, 1]
    assert all("/images/val/" in path for path in drawn_images(task, "val"))
