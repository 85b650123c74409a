"""The protocol's pieces on their own: presets to trials, lr scaling and schedule in the loop, selection ties,
the trial store, the report's tables and the papers' numbers."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from vpt_peft import VisualPromptConfig, get_peft_model, recipes
from vpt_peft.reproduce import published
from vpt_peft.reproduce.protocol import (
    DPT_SEEDS,
    OFFICIAL_PRUNE_GRID,
    VPT_SEEDS,
    MethodSpec,
    Shrink,
    Trial,
    grid_trials,
    recipe_method,
    select_candidate,
    select_cell,
)
from vpt_peft.reproduce.report import markdown, task_results
from vpt_peft.reproduce.store import CSV_COLUMNS, SettingsMismatch, TrialStore
from vpt_peft.training import LabelledTensors, fit

from .helpers import tiny_vit


def test_presets_become_the_official_protocol():
    spec = recipe_method("vpt-deep", "sun397")
    assert spec.config["num_prompts"] == 5 and spec.batch_size == 128
    assert spec.lr_grid == recipes.LR_GRID and spec.wd_grid == recipes.WD_GRID and spec.seeds == VPT_SEEDS
    assert (spec.epochs, spec.warmup_epochs, spec.solver) == (100, 10, "sgd")
    assert len(grid_trials("vtab-1k", "sun397", spec)) == 40
    assert recipe_method("vfpt", "cub").lr_grid == recipes.LR_GRID[:-1]  # FGVC drops 0.05
    e2vpt = recipe_method("e2vpt", "dtd")
    assert e2vpt.prune == {"rewind": "initial", "importance": "signed"} and e2vpt.prune_grid == ((0.5, 0.25),)
    assert len(OFFICIAL_PRUNE_GRID) == 81
    dpt = recipe_method("dpt", "dtd")  # few-shot tasks have no VTAB preset: one setting for every dataset
    assert (dpt.lr_grid, dpt.wd_grid, dpt.seeds, dpt.solver) == ((0.01,), (5e-4,), DPT_SEEDS, "dual-prompt")
    assert grid_trials("fewshot", "dtd", dpt) == []  # one cell: nothing to select, no tuning run
    small = recipe_method("vpt-deep", None, Shrink(epochs=3, lr_grid=(1.0,), seeds=(7,), batch_size=8))
    assert (small.epochs, small.warmup_epochs, small.lr_grid, small.seeds, small.batch_size) == (3, 2, (1.0,), (7,), 8)


def test_a_method_spec_refuses_an_empty_grid():
    with pytest.raises(ValueError, match="lr_grid is empty"):
        MethodSpec("x", None, {}, (), (0.0,), 8, 1, 0, (1,))
    with pytest.raises(ValueError, match="prune_grid"):
        MethodSpec("x", None, {}, (1.0,), (0.0,), 8, 1, 0, (1,), prune={"rewind": "initial"})


def test_the_loop_trains_at_the_scaled_lr_on_the_epoch_schedule():
    """lr = base x batch / 256, stepped after each epoch: epoch 0 runs at 0, then warm-up, then the cosine."""
    model = get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=1))
    data = LabelledTensors(torch.randn(8, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    seen, optimizers = [], []

    def optimizer_fn(m):
        optimizers.append(recipes.make_optimizer(m, base_lr=10.0, weight_decay=0.0, batch_size=64))
        return optimizers[0]

    fit(
        model,
        data,
        None,
        epochs=6,
        base_lr=10.0,
        batch_size=4,
        warmup_epochs=2,
        optimizer_fn=optimizer_fn,
        epoch_start=lambda m, epoch: seen.append(optimizers[0].param_groups[0]["lr"]),
    )
    assert seen == pytest.approx([2.5 * recipes.warmup_cosine(e, 2, 6) for e in range(6)])
    assert seen[0] == 0.0 and seen[2] == pytest.approx(2.5)


def _row(lr, wd, accuracy, **extra):
    return {"lr": lr, "wd": wd, "accuracy": accuracy, **extra}


def test_selection_prefers_the_best_val_then_the_smaller_lr_then_the_larger_wd():
    assert select_cell([_row(1.0, 0.0, 0.5), _row(0.1, 0.0, 0.6)]) == (0.1, 0.0)
    tied = [_row(5.0, 0.0, 0.7), _row(0.5, 0.0, 0.7), _row(2.5, 0.01, 0.7), _row(0.05, 0.0, 0.69)]
    assert select_cell(tied) == (0.5, 0.0)
    assert select_cell(tied[::-1]) == (0.5, 0.0)  # the finishing order does not matter
    assert select_cell([_row(0.5, 0.0, 0.7), _row(0.5, 1e-3, 0.7)]) == (0.5, 1e-3)
    pruned = [_row(1, 0, 0.8, prune=[0.3, 0.5]), _row(1, 0, 0.8, prune=[0.5, 0.25]), _row(1, 0, 0.7, prune=[0.9, 0.9])]
    assert select_candidate(pruned) == (0.5, 0.25)  # ties toward more pruning
    with pytest.raises(ValueError, match="nothing to select"):
        select_cell([])


def test_trial_ids_name_every_setting_and_are_safe_file_names():
    trial = Trial("vtab-1k", "cifar", "e2vpt", "final", 2.5, 1e-4, 42, (0.5, 0.25))
    assert trial.id == "vtab-1k/cifar/e2vpt/final-lr2.5-wd0.0001-seed42-prune0.5x0.25"
    assert trial.roles == ("trainval", "test")
    assert Trial("fewshot", "x y", "dpt", "tune", 0.01, 0, 1).id == "fewshot/x_y/dpt/tune-lr0.01-wd0-seed1"


def _final(task, method, seed, accuracy, group="natural", benchmark="vtab-1k", preset="dtd"):
    return dict(
        trial=f"{benchmark}/{task}/{method}/final-seed{seed}",
        benchmark=benchmark,
        task=task,
        group=group,
        preset_task=preset,
        method=method,
        stage="final",
        lr=1.0,
        wd=0.0,
        seed=seed,
        prune=None,
        accuracy=accuracy,
        trainable_pct=0.5,
        adapter_bytes=2000,
        train_images=100,
        train_wall_s=1.0,
        train_cpu_s=2.0,
        eval_images=50,
        eval_wall_s=0.1,
        eval_cpu_s=0.1,
    )


def test_the_store_keeps_one_row_per_trial_and_a_flat_csv(tmp_path):
    store = TrialStore(tmp_path)
    store.put(_final("dtd", "vpt-deep", 42, 0.5))
    store.put(_final("dtd", "vpt-deep", 42, 0.6))  # the same trial again replaces, never duplicates
    store.put({**_final("dtd", "vpt-deep", 44, 0.7), "losses": [1.0, 0.5]})
    with open(store.write_index()) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["accuracy"] for r in rows] == ["0.6", "0.7"] and tuple(rows[0]) == CSV_COLUMNS
    assert store.done("vtab-1k/dtd/vpt-deep/final-seed42") and not store.done("vtab-1k/dtd/vpt-deep/final-seed1")
    store.check_settings("vtab-1k", "dtd/vpt-deep", {"epochs": 100})
    store.check_settings("vtab-1k", "dtd/vpt-deep", {"epochs": 100})
    with pytest.raises(SettingsMismatch, match="epochs: 100 -> 2"):
        store.check_settings("vtab-1k", "dtd/vpt-deep", {"epochs": 2})
    assert json.loads((tmp_path / "settings" / "vtab-1k" / "dtd" / "vpt-deep.json").read_text()) == {"epochs": 100}


def test_the_report_puts_measured_means_next_to_the_papers_numbers():
    rows = [
        _final("dtd", "vpt-deep", 42, 0.60),
        _final("dtd", "vpt-deep", 44, 0.70),
        _final("eurosat", "vpt-deep", 42, 0.90, group="specialized", preset="eurosat"),
        _final("dtd", "linear-probe", 42, 0.50),
        _final("eurosat", "linear-probe", 42, 0.95, group="specialized", preset="eurosat"),
        {**_final("dtd", "vpt-deep", 42, 0.1), "stage": "tune", "trial": "tune"},  # not a final run: ignored
    ]
    results = task_results(rows)
    deep = next(r for r in results if r.method == "vpt-deep" and r.task == "dtd")
    assert deep.mean == pytest.approx(0.65) and deep.std == pytest.approx(0.0707107, rel=1e-5)
    assert deep.train_ms == pytest.approx((10.0, 20.0)) and deep.infer_ms == pytest.approx((2.0, 2.0))
    text = markdown(results)
    assert "| vtab-1k | natural | vpt-deep | 1 | 65.00 | 78.48 | -13.48 | 0.500 | 2.0 kB | 10 / 20 | 2 / 2 |" in text
    assert "| vtab-1k | vtab-mean | vpt-deep | 2 | 77.50 | 69.43 |" in text
    assert "| vtab-1k | dtd | natural | vpt-deep | 2 | 65.00 ± 7.07 | 65.80 | 1 | 0 |" in text
    assert "VPT-deep beats the linear probe in every group (spec §1.7): DOES NOT HOLD (ahead in 1 of 2 groups)" in text
    assert "VFPT beats VPT-deep in every group (spec §2.4): not measured in this run" in text


def test_the_published_numbers_match_the_spec_tables():
    assert published.group_result("vfpt", "structured").value == 60.19
    assert published.group_result("e2vpt", "vtab-mean").value == 71.42
    assert published.group_result("dpt", "few-shot").approximate
    assert published.task_result("vpt-deep", "stanford-cars").value == 83.6
    assert published.task_result("e2vpt", "smallnorb-ele").value == 41.9
    for method in ("vpt-deep", "vfpt", "e2vpt"):  # the per-task numbers average to the published group means
        natural = [published.task_result(method, t).value for t in recipes.VTAB_NATURAL]
        assert sum(natural) / 7 == pytest.approx(published.group_result(method, "natural").value, abs=0.06)
