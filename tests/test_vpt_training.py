"""Training behaviour: gradients, dropout, frozen backbone, gradient checkpointing, the HF Trainer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from datasets import Dataset
from peft import get_peft_model
from transformers import Trainer, TrainingArguments

from vpt_peft import VisualPromptConfig

from .helpers import enable_checkpointing, prompt_param, tiny_vit


def test_gradients_reach_only_prompts_and_head(pixels):
    model = get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=4, deep=True))
    model.train()
    model(pixels, labels=torch.tensor([0, 1])).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {
        "base_model.model.vit.embeddings.prompt_adapter.vpt_prompts.default.prompt_embeddings",
        "base_model.model.classifier.modules_to_save.default.weight",
        "base_model.model.classifier.modules_to_save.default.bias",
    }


def test_prompt_dropout_is_active_in_train_and_off_in_eval(pixels):
    model = get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=4, deep=True, prompt_dropout=0.5))
    model.train()
    assert not torch.equal(model(pixels).logits, model(pixels).logits)
    model.eval()
    assert torch.equal(model(pixels).logits, model(pixels).logits)


def test_default_dropout_follows_the_released_runs():
    assert VisualPromptConfig(deep=True).effective_prompt_dropout == 0.1
    assert VisualPromptConfig(deep=False).effective_prompt_dropout == 0.0
    assert VisualPromptConfig(deep=True, prompt_dropout=0.0).effective_prompt_dropout == 0.0


def test_prompt_dropout_masks_each_sample_independently(pixels):
    model = get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=4, deep=True, prompt_dropout=0.5))
    model.train()
    same_image = pixels[:1].expand(2, -1, -1, -1)
    logits = model(same_image).logits
    assert not torch.equal(logits[0], logits[1])


@pytest.mark.parametrize("eval_mode", [True, False])
def test_frozen_backbone_stays_in_eval_mode(eval_mode, pixels):
    base = tiny_vit(hidden_dropout_prob=0.5)
    model = get_peft_model(
        base, VisualPromptConfig(num_prompts=4, deep=True, prompt_dropout=0.0, backbone_eval_mode=eval_mode)
    )
    model.train()
    assert torch.equal(model(pixels).logits, model(pixels).logits) == eval_mode
    assert all(layer.training for layer in base.vit.layers)  # gradient checkpointing keys on this
    assert model.base_model.model.classifier.modules_to_save["default"].training


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("path", ["sequence", "kv"])
def test_gradient_checkpointing_gives_the_same_gradients(reentrant, path, pixels):
    grads = []
    for checkpointing in (False, True):
        base = tiny_vit()
        if checkpointing:
            enable_checkpointing(base, reentrant)
        torch.manual_seed(3)
        model = get_peft_model(base, VisualPromptConfig(num_prompts=4, deep=True, prompt_path=path, prompt_dropout=0.1))
        model.train()
        torch.manual_seed(4)
        model(pixels, labels=torch.tensor([0, 2])).loss.backward()
        grads.append(prompt_param(model).grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def brightness_dataset(n=48, seed=0):
    """Images whose label is their brightness tercile: learnable by a prompt + head."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    images = rng.normal(0, 0.3, size=(n, 3, 32, 32)).astype("float32") + (labels[:, None, None, None] - 1.0)
    return Dataset.from_dict({"pixel_values": list(images), "labels": labels.tolist()}).with_format("torch")


def test_trainer_run_learns_and_changes_only_prompts_and_head(tmp_path):
    base = tiny_vit()
    frozen = copy.deepcopy(base.state_dict())
    model = get_peft_model(base, VisualPromptConfig(num_prompts=4, deep=True))
    prompts_before = prompt_param(model).detach().clone()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=16,
        num_train_epochs=6,
        learning_rate=3e-2,
        logging_steps=3,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=brightness_dataset())
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[-1] < 0.7 * losses[0]
    assert not torch.equal(prompt_param(model).detach(), prompts_before)
    for name, tensor in base.state_dict().items():
        if name in frozen:
            assert torch.equal(tensor, frozen[name]), name


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointing_enabled_after_get_peft_model_still_trains_kv_prompts(reentrant, pixels):
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(3)
        model = get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=4, deep=True, prompt_dropout=0.0))
        if checkpointing:
            enable_checkpointing(model.base_model.model, reentrant)
        model.train()
        model(pixels, labels=torch.tensor([0, 2])).loss.backward()
        grads.append(prompt_param(model).grad)
    assert grads[1] is not None
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager_and_trains(pixels):
    model = get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=4, deep=True)).eval()
    want = model(pixels).logits
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(pixels).logits, want, atol=1e-5, rtol=0)
    model.train()
    compiled(pixels, labels=torch.tensor([0, 1])).loss.backward()
    assert prompt_param(model).grad.abs().sum() > 0
