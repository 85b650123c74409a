"""``vpt-peft sweep`` -> ``report`` on miniature VTAB-1k, FGVC and CoOp folders (the loaders' fixtures): a tiny
ViT for the VPT family, a tiny CLIP for DPT, each report row next to the papers' number for its group."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from vpt_peft.cli import main

from .benchmark_fixtures import build_coop, build_fgvc, build_vtab
from .clip_helpers import tiny_clip, tiny_tokenizer
from .helpers import saved_sweep_vit

SHRINK = ["--epochs", "1", "--lr-grid", "1,0.5", "--wd-grid", "0", "--batch-size", "4", "--image-size", "16"]


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> str:
    return str(saved_sweep_vit(tmp_path_factory.mktemp("vit")))


def _report(output: Path) -> str:
    return (output / "report.md").read_text()


def _finals(output: Path) -> list[dict]:
    with open(output / "trials.csv") as handle:
        return [row for row in csv.DictReader(handle) if row["stage"] == "final"]


def test_vtab_sweep_reports_the_natural_group_next_to_the_papers(vit, tmp_path):
    root, output = build_vtab(tmp_path / "vtab"), tmp_path / "out"
    command = ["sweep", "--benchmark", "vtab-1k", "--data-root", str(root), "--model", vit, "--output", str(output)]
    command += ["--tasks", "cifar,dtd"]
    one_cell = [*SHRINK[:2], "--lr-grid", "1", *SHRINK[4:]]  # the FGVC test runs a grid on a loader
    assert main([*command, "--method", "vpt-deep,e2vpt", "--seeds", "42,44", *one_cell]) == 0
    finals = _finals(output)
    assert {(r["task"], r["method"]) for r in finals} == {
        (t, m) for t in ("cifar", "dtd") for m in ("vpt-deep", "e2vpt")
    }
    assert {r["seed"] for r in finals} == {"42", "44"} and {r["group"] for r in finals} == {"Natural"}
    text = _report(output)
    assert "| vtab-1k | natural | vpt-deep | 2 |" in text and "| 78.48 |" in text and "| 80.01 |" in text
    assert "| vtab-1k | dtd | natural | vpt-deep | 2 |" in text and "| 65.80 |" in text  # the per-task number
    assert (output / "report-vtab-1k-natural.png").stat().st_size > 1000


def test_a_missing_task_folder_is_refused_before_any_training(vit, tmp_path, capsys):
    root, output = build_vtab(tmp_path / "vtab"), tmp_path / "out"
    command = ["sweep", "--benchmark", "vtab-1k", "--data-root", str(root), "--model", vit, "--output", str(output)]
    assert main([*command, "--tasks", "cifar,svhn", "--method", "vpt-deep", *SHRINK]) == 1
    assert "svhn/train800.txt does not exist" in capsys.readouterr().err
    assert not (output / "trials").exists()


def test_fgvc_sweep_reports_the_fgvc_mean(vit, tmp_path):
    root, output = build_fgvc(tmp_path / "fgvc"), tmp_path / "out"
    command = ["sweep", "--benchmark", "fgvc", "--data-root", str(root), "--model", vit, "--output", str(output)]
    command += ["--tasks", "CUB_200_2011,StanfordCars"]
    assert main([*command, "--method", "vfpt", "--seeds", "42", *SHRINK]) == 0
    assert {r["task"] for r in _finals(output)} == {"CUB_200_2011", "StanfordCars"}
    assert "| fgvc | fgvc | vfpt | 2 |" in _report(output) and "| 89.24 |" in _report(output)


def test_fewshot_dpt_sweep_reports_the_few_shot_mean(tmp_path):
    root, output, model = build_coop(tmp_path / "coop"), tmp_path / "out", tmp_path / "clip"
    model.mkdir()
    tokenizer = tiny_tokenizer(model)
    tiny_clip(tokenizer).save_pretrained(model)
    tokenizer.save_pretrained(model)
    command = ["sweep", "--benchmark", "fewshot", "--data-root", str(root), "--model", str(model)]
    command += ["--output", str(output), "--tasks", "eurosat", "--method", "dpt", "--shots", "2", "--seeds", "1"]
    assert main([*command, "--epochs", "1", "--batch-size", "4", "--image-size", "16"]) == 0
    (final,) = _finals(output)
    assert (final["lr"], final["wd"], final["train_images"]) == ("0.01", "0.0005", "10")  # 2 shots x 5 classes
    assert "| fewshot | few-shot | dpt | 1 |" in _report(output) and "≈79.50" in _report(output)
