"""Modes users run, kept covered: half precision (VFPT's FFT in float32), autocast, ``model.to(dtype)``,
deepcopy/pickle for every method, and a Trainer run resumed from a checkpoint ending bit-identical.

Gradient checkpointing (both kinds) is covered in test_vpt_training.py and test_dpt.py, 2-process DDP in
test_ddp.py, VPT deepcopy/pickle in test_vpt_adapter.py.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from peft import get_peft_model
from transformers import Trainer, TrainingArguments

from vpt_peft import FourierPromptConfig, KVPromptConfig, VisualPromptConfig

from .ddp_worker import Brightness
from .helpers import assert_equal_to_rounding, prompt_param, tiny_vit

CONFIGS = {
    "vpt": lambda **kw: VisualPromptConfig(num_prompts=4, deep=True, **kw),
    "vfpt": lambda **kw: FourierPromptConfig(num_prompts=4, deep=True, fourier_ratio=0.5, **kw),
    "e2vpt": lambda **kw: KVPromptConfig(num_prompts=4, num_kv_prompts=2, **kw),
}
HALF = [torch.float16, torch.bfloat16]
LABELS = torch.tensor([0, 2])


def prompt_grads(model) -> list[torch.Tensor]:
    return [p.grad for n, p in model.named_parameters() if "prompt_adapter" in n and p.requires_grad]


@pytest.mark.parametrize("path", ["sequence", "kv"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_vfpt_runs_its_fft_in_float32_in_half_precision(dtype, path, pixels, monkeypatch):
    seen = []
    original = torch.fft.fft2
    monkeypatch.setattr(torch.fft, "fft2", lambda x, **kw: seen.append(x.dtype) or original(x, **kw))
    model = get_peft_model(tiny_vit().to(dtype), CONFIGS["vfpt"](prompt_path=path)).train()
    out = model(pixels.to(dtype), labels=LABELS)
    out.loss.backward()
    assert seen and set(seen) == {torch.float32}  # fp16 has no FFT on CPU, and bf16 loses the spectrum
    assert out.logits.dtype == dtype and torch.isfinite(out.logits).all()
    grads = prompt_grads(model)
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("method", sorted(CONFIGS))
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_model_to_half_precision_converts_the_prompts_and_trains(method, dtype, pixels):
    torch.manual_seed(0)
    model32 = get_peft_model(tiny_vit(), CONFIGS[method]()).eval()
    model16 = copy.deepcopy(model32).to(dtype)
    assert {p.dtype for n, p in model16.named_parameters() if "prompt_adapter" in n} == {dtype}
    got = model16(pixels.to(dtype)).logits
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), model32(pixels).logits, atol=0.1, rtol=0.05)
    model16.train()
    model16(pixels.to(dtype), labels=LABELS).loss.backward()
    grads = prompt_grads(model16)
    assert grads and all(g is not None and g.dtype == dtype and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_autocast_keeps_float32_prompts_and_gradients(method, pixels):
    model = get_peft_model(tiny_vit(), CONFIGS[method]()).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(pixels, labels=LABELS).loss
    loss.backward()
    grads = prompt_grads(model)
    assert grads and all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert prompt_param(model).dtype == torch.float32


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_model_to_float64_computes_the_same_function(method, pixels):
    model = get_peft_model(tiny_vit(), CONFIGS[method]()).eval()
    want = model(pixels).logits
    model.to(torch.float64)
    got = model(pixels.double()).logits
    assert got.dtype == torch.float64
    assert_equal_to_rounding(got.float(), want)


@pytest.mark.parametrize("method", ["vfpt", "e2vpt"])  # VPT: test_vpt_adapter.py
def test_deepcopy_and_pickle_keep_their_own_prompts(method, pixels):
    model = get_peft_model(tiny_vit(), CONFIGS[method]()).eval()
    clone, restored = copy.deepcopy(model), pickle.loads(pickle.dumps(model))
    want = model(pixels).logits
    assert torch.equal(clone(pixels).logits, want) and torch.equal(restored(pixels).logits, want)
    with torch.no_grad():  # not a constant shift: the pre-attention LayerNorm would remove that
        prompt_param(model).add_(torch.randn_like(prompt_param(model)))
    assert torch.equal(clone(pixels).logits, want) and torch.equal(restored(pixels).logits, want)
    assert not torch.allclose(model(pixels).logits, want)


def _trainer(output_dir, seed_model: int = 0) -> Trainer:
    torch.manual_seed(seed_model)
    model = get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=4, deep=True))  # prompt dropout 0.1: RNG
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_steps=6,
        learning_rate=0.05,
        save_strategy="steps",
        save_steps=3,
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return Trainer(model=model, args=args, train_dataset=Brightness(n=16))


def test_trainer_resume_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    """Shuffled batches, prompt dropout and AdamW state all have to be restored for this to hold.

    Exact equality holds by construction: one process, the same ops on the same shapes in the same order.
    """
    straight = _trainer(tmp_path / "straight")
    straight.train()
    resumed = _trainer(tmp_path / "resumed", seed_model=1)  # other initial prompts: the checkpoint must win
    assert not torch.equal(prompt_param(resumed.model), prompt_param(straight.model))
    resumed.train(resume_from_checkpoint=str(tmp_path / "straight" / "checkpoint-3"))
    assert resumed.state.global_step == 6
    for (name, want), (_, got) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        if want.requires_grad:
            assert torch.equal(got, want), name
