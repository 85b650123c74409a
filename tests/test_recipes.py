"""The papers' recipe: schedule values, lr scaling, no weight decay on the head bias, per-task presets."""

from __future__ import annotations

import math

import pytest
import torch

from vpt_peft import FourierPromptConfig, KVPromptConfig, VisualPromptConfig, get_peft_model, recipes

from .helpers import tiny_vit


def _lrs(scheduler, optimizer, steps):
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_epoch_schedule_starts_at_zero_warms_up_linearly_and_ends_with_cosine():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    lrs = _lrs(recipes.epoch_scheduler(optimizer, warmup_epochs=10, epochs=100), optimizer, 100)
    assert lrs[0] == 0.0
    assert lrs[1:10] == pytest.approx([e / 10 for e in range(1, 10)])
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5)  # half way through the cosine
    assert lrs[99] == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert recipes.warmup_cosine(100, 10, 100) == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_step_schedule_is_the_epoch_schedule_held_within_each_epoch():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    lrs = _lrs(recipes.step_scheduler(optimizer, steps_per_epoch=3, warmup_epochs=2, epochs=6), optimizer, 18)
    expected = [2.0 * recipes.warmup_cosine(e, 2, 6) for e in range(6) for _ in range(3)]
    assert lrs == pytest.approx(expected)
    assert lrs[:3] == [0.0, 0.0, 0.0] and lrs[3] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        recipes.step_scheduler(optimizer, steps_per_epoch=0)


def test_lr_scaling_and_no_weight_decay_on_the_head_bias():
    assert recipes.scaled_lr(25, 128) == 12.5  # the VPT demo's sun397 example
    model = get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=2, deep=True))
    optimizer = recipes.make_optimizer(model, base_lr=10, weight_decay=1e-3, batch_size=64)
    assert isinstance(optimizer, torch.optim.SGD)
    decay = {group["name"]: group["weight_decay"] for group in optimizer.param_groups}
    assert all(
        len(group["params"]) == 1 and group["lr"] == 2.5 and group["momentum"] == 0.9
        for group in optimizer.param_groups
    )
    bias = [name for name in decay if name.endswith("classifier.modules_to_save.default.bias")]
    assert len(bias) == 1 and decay[bias[0]] == 0.0
    others = [wd for name, wd in decay.items() if name != bias[0]]
    assert others and all(wd == 1e-3 for wd in others)
    assert set(decay) == {n for n, p in model.named_parameters() if p.requires_grad}


def test_presets_follow_the_released_settings():
    from vpt_peft.tuners.e2vpt import recipe as e2vpt_recipe
    from vpt_peft.tuners.vfpt import recipe as vfpt_recipe
    from vpt_peft.tuners.vpt import recipe as vpt_recipe

    tables = (vpt_recipe.DEEP_PROMPTS, vfpt_recipe.SETTINGS, e2vpt_recipe.SETTINGS)
    assert all(set(table) == set(recipes.TASKS) for table in tables)
    deep = recipes.preset("vpt-deep", task="cifar100")
    assert deep.config["num_prompts"] == 10 and deep.config["deep"] and deep.batch_size == 128
    assert isinstance(deep.make_config(), VisualPromptConfig) and deep.make_config(num_prompts=3).num_prompts == 3
    assert recipes.preset("vpt-deep", task="smallnorb-azi").config["num_prompts"] == 200
    assert recipes.preset("vpt-deep", task="cub").lr_grid == recipes.LR_GRID[:-1]  # FGVC drops 0.05
    vfpt = recipes.preset("vfpt", task="cifar100")
    assert (vfpt.config["fourier_ratio"], vfpt.config["num_prompts"], vfpt.batch_size) == (0.7, 10, 64)
    assert isinstance(vfpt.make_config(), FourierPromptConfig)
    for task in recipes.TASKS:  # every VFPT preset is a valid config (floor(alpha * M) >= 1 where alpha > 0)
        recipes.preset("vfpt", task=task).make_config()
    e2vpt = recipes.preset("e2vpt", task="caltech101")
    assert (e2vpt.config["num_prompts"], e2vpt.config["num_kv_prompts"]) == (32, 5)
    assert recipes.preset("e2vpt", task="pcam").config["num_kv_prompts"] == 10
    assert isinstance(e2vpt.make_config(), KVPromptConfig) and e2vpt.prune["token_ratio"] < 1
    with pytest.raises(ValueError, match="task must be one of"):
        recipes.preset("vpt-deep", task="imagenet")
    with pytest.raises(ValueError, match="method must be one of"):
        recipes.preset("lora")
