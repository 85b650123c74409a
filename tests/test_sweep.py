"""``sweep`` -> ``report`` end to end on tiny models: a ViT on the digits benchmark (every stage, E2VPT's pruning
included), a CLIP with DPT on a tiny few-shot task, a sweep killed with SIGKILL and resumed from the command
line, and the Ray backend where Ray is installed."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import vpt_peft.demo.benchmark  # noqa: F401  (registers the digits benchmarks)
from vpt_peft.cli import main
from vpt_peft.reproduce import Benchmark, TaskData, TaskInfo, register_benchmark
from vpt_peft.reproduce.protocol import Shrink, recipe_method
from vpt_peft.reproduce.report import write_report
from vpt_peft.reproduce.sweep import Entry, run_sweep
from vpt_peft.reproduce.trial import SweepSettings
from vpt_peft.training import LabelledTensors

from .clip_helpers import CLASSES, tiny_clip, tiny_tokenizer
from .helpers import saved_sweep_vit

ROOT = Path(__file__).resolve().parents[1]
SMALL = Shrink(epochs=2, lr_grid=(1.0, 0.5), wd_grid=(0.0,), seeds=(1, 2), batch_size=32)


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory) -> Path:
    return saved_sweep_vit(tmp_path_factory.mktemp("tiny-vit"))


def _settings(model: Path, output: Path, benchmark: str = "digits-small") -> SweepSettings:
    return SweepSettings(model=str(model), benchmark=benchmark, output=output, load={"image_size": 16})


def test_a_sweep_runs_every_stage_and_reports(vit_folder, tmp_path):
    settings = _settings(vit_folder, tmp_path)
    entries = [Entry("noisy", recipe_method("vpt-deep", None, SMALL))]
    entries.append(Entry("noisy", recipe_method("e2vpt", None, Shrink(**{**SMALL.__dict__, "lr_grid": (0.5,)}))))
    lines: list[str] = []
    rows = run_sweep(settings, entries, log=lines.append)
    stages = [(r["method"], r["stage"]) for r in rows]
    assert sorted(stages) == sorted(
        [("vpt-deep", "tune")] * 2
        + [("vpt-deep", "final")] * 2
        + [("e2vpt", s) for s in ("scores", "rewind")]
        + [("e2vpt", "final")] * 2
    )
    deep_tune = [r for r in rows if r["method"] == "vpt-deep" and r["stage"] == "tune"]
    chosen = max(deep_tune, key=lambda r: (r["accuracy"], -r["lr"]))["lr"]
    assert {r["lr"] for r in rows if r["method"] == "vpt-deep" and r["stage"] == "final"} == {chosen}
    scores = next(r for r in rows if r["stage"] == "scores")["scores"]
    assert len(scores["token_scores"]) == 5 and len(scores["segment_scores"][0]) == 16  # the preset's 5 prompts
    e2vpt_final = next(r for r in rows if r["method"] == "e2vpt" and r["stage"] == "final")
    assert e2vpt_final["prune"] == [0.5, 0.25]
    for row in rows:
        assert row["scored_on"] == ("test" if row["stage"] == "final" else "val")
        assert row["train_images"] > 0 and row["train_wall_s"] > 0 and row["adapter_bytes"] > 0
        assert (tmp_path / "adapters" / row["trial"] / "adapter_config.json").exists()
    with open(tmp_path / "trials.csv") as handle:
        assert len(list(csv.DictReader(handle))) == len(rows) == 8

    report, plots = write_report(rows, tmp_path)
    text = report.read_text()
    assert (
        "| digits-small | natural | vpt-deep | 1 |" in text and "| digits-small | noisy | natural | e2vpt | 2 |" in text
    )
    assert [p.name for p in plots] == ["report-digits-small-natural.png"] and plots[0].stat().st_size > 1000

    again: list[str] = []
    assert run_sweep(settings, entries, log=again.append) == rows  # a rerun trains nothing
    assert all(" 0 to run" in line for line in again if line.startswith("["))


def test_pruning_shrinks_what_e2vpt_counts_as_trained(vit_folder, tmp_path):
    spec = recipe_method("e2vpt", None, Shrink(epochs=1, lr_grid=(0.5,), wd_grid=(0.0,), seeds=(1,), batch_size=32))
    rows = run_sweep(_settings(vit_folder, tmp_path), [Entry("loops", spec)], log=lambda line: None)
    by_stage = {r["stage"]: r for r in rows}
    assert by_stage["final"]["trainable"] < by_stage["scores"]["trainable"]
    config = json.loads((tmp_path / "adapters" / by_stage["final"]["trial"] / "adapter_config.json").read_text())
    assert config["pruned"] and config["num_prompts"] == 3  # 5 prompts, half (int) pruned


def _animals(name: str, options) -> TaskData:
    """A tiny few-shot task whose classes are words the tiny CLIP tokenizer knows."""
    generator = torch.Generator().manual_seed(options.seed)
    labels = torch.arange(12) % len(CLASSES)
    split = LabelledTensors(torch.randn(12, 3, 16, 16, generator=generator), labels)
    info = TaskInfo("test-animals", name, "few-shot", len(CLASSES))
    return TaskData(info, dict.fromkeys(("train", "val", "trainval", "test"), split), list(CLASSES))


def test_dpt_sweeps_a_tiny_clip_with_its_own_solver(tmp_path):
    register_benchmark(Benchmark("test-animals", ("animals",), _animals))
    model = tmp_path / "clip"
    model.mkdir()
    tokenizer = tiny_tokenizer(model)
    tiny_clip(tokenizer).save_pretrained(model)
    tokenizer.save_pretrained(model)
    spec = recipe_method("dpt", None, Shrink(epochs=2, seeds=(1,), batch_size=6))
    rows = run_sweep(_settings(model, tmp_path / "out", "test-animals"), [Entry("animals", spec)], log=print)
    assert [(r["stage"], r["lr"], r["wd"]) for r in rows] == [("final", 0.01, 5e-4)]  # no grid: no tuning run
    report, _ = write_report(rows, tmp_path / "out", plots=False)
    assert "| test-animals | animals | few-shot | dpt | 1 |" in report.read_text()


def _sweep_command(model: Path, output: Path) -> list[str]:
    return [
        "sweep", "--benchmark", "digits-small", "--tasks", "noisy", "--method", "vpt-deep", "--model", str(model),
        "--output", str(output), "--image-size", "16", "--epochs", "8", "--lr-grid", "1,0.5", "--wd-grid", "0",
        "--seeds", "1,2", "--batch-size", "16",
    ]  # fmt: skip


def test_a_killed_sweep_resumes_without_retraining_or_duplicating(vit_folder, tmp_path, monkeypatch, capsys):
    """SIGKILL the CLI once a trial is recorded; the rerun keeps that row as it was and runs only the rest.
    The rerun also checks that the default (in-process) path never imports Ray."""
    output = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "vpt_peft.cli", *_sweep_command(vit_folder, output)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((output / "trials").rglob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = {p: p.read_text() for p in (output / "trials").rglob("*.json")}
    assert 1 <= len(before) < 4, "the sweep should have been killed part-way"

    monkeypatch.setitem(sys.modules, "ray", None)  # any "import ray" on the default path would now fail
    assert main(_sweep_command(vit_folder, output)) == 0
    skipped = re.findall(r"(\d+) already done", capsys.readouterr().out)
    assert sum(int(n) for n in skipped) == len(before)
    assert all(path.read_text() == text for path, text in before.items())  # not retrained
    with open(output / "trials.csv") as handle:
        trials = [row["trial"] for row in csv.DictReader(handle)]
    assert len(trials) == len(set(trials)) == 4
    assert (output / "report.md").exists()


def test_the_cli_reports_and_refuses_clearly(vit_folder, tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    assert "no trials/ folder" in capsys.readouterr().err
    assert main(["sweep", "--benchmark", "nope", "--method", "vpt-deep", "--model", "m", "--output", "o"]) == 1
    assert "unknown --benchmark 'nope'" in capsys.readouterr().err
    assert main(["sweep", "--benchmark", "digits-small", "--method", "vpt", "--model", "m", "--output", "o"]) == 1
    assert "method must be one of" in capsys.readouterr().err


@pytest.mark.slow
def test_the_ray_backend_runs_trials_as_ray_tune_trials(vit_folder, tmp_path):
    pytest.importorskip("ray.tune", reason="Ray is optional: pip install 'vpt-peft[ray]'")
    from vpt_peft.reproduce.backends import RayBackend

    spec = recipe_method("vpt-deep", None, Shrink(epochs=1, lr_grid=(1.0,), wd_grid=(0.0,), seeds=(1, 2)))
    rows = run_sweep(_settings(vit_folder, tmp_path), [Entry("noisy", spec)], RayBackend(cpus_per_trial=1))
    assert sorted(r["seed"] for r in rows) == [1, 2]
    assert (tmp_path / "ray").is_dir()
