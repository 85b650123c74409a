"""VFPT: Fourier prompts equal an independent DFT reference; alpha = 0 is VPT; float32 FFT under bf16."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import get_peft_model

from vpt_peft import FourierPromptConfig, VisualPromptConfig

from .helpers import prompt_param, tiny_vit
from .reference import classifier_logits, vit_sequence


def dft_real(x: torch.Tensor) -> torch.Tensor:
    """Re(F_seq(F_hidden(X))) written as C_m X C_d - S_m X S_d with explicit cos/sin matrices."""
    m, d = x.shape[-2:]

    def cs(n):
        k = torch.arange(n, dtype=torch.float64)
        angle = 2 * math.pi * torch.outer(k, k) / n
        return torch.cos(angle), torch.sin(angle)

    cm, sm = cs(m)
    cd, sd = cs(d)
    x = x.double()
    return cm @ x @ cd - sm @ x @ sd


def fourier_prompts(raw: torch.Tensor, ratio: float) -> torch.Tensor:
    m = math.floor(raw.shape[0] * ratio)
    if m == 0:
        return raw.double()
    return torch.cat([dft_real(raw[:m]), raw[m:].double()], dim=0)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_logits_match_reference(ratio, deep, attn, pixels):
    base = tiny_vit(attn=attn)
    config = FourierPromptConfig(num_prompts=6, deep=deep, fourier_ratio=ratio)
    model = get_peft_model(copy.deepcopy(base), config).eval()
    raw = prompt_param(model).detach()
    layers = config.prompted_layers(3)
    prompts = {layer: fourier_prompts(raw[slot], ratio) for slot, layer in enumerate(layers)}
    want = classifier_logits(base, vit_sequence(base, pixels, prompts))
    torch.testing.assert_close(model(pixels).logits.double(), want, atol=1e-5, rtol=0)


def test_fourier_prompts_add_no_parameters():
    vpt = get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=5, deep=True))
    vfpt = get_peft_model(tiny_vit(), FourierPromptConfig(num_prompts=5, deep=True, fourier_ratio=1.0))
    assert vpt.get_nb_trainable_parameters() == vfpt.get_nb_trainable_parameters()
    assert prompt_param(vfpt).shape == (3, 5, 32)


def test_dropout_is_applied_before_the_fft(pixels, monkeypatch):
    seen = []
    original = torch.fft.fft2
    monkeypatch.setattr(torch.fft, "fft2", lambda x, **kw: seen.append(x.detach().clone()) or original(x, **kw))
    model = get_peft_model(
        tiny_vit(), FourierPromptConfig(num_prompts=4, deep=True, fourier_ratio=0.5, prompt_dropout=0.5)
    )
    model.train()
    model(pixels)
    raw = prompt_param(model).detach()[0, :2]
    x = seen[0]
    assert x.shape == (2, 2, 32)  # per-sample: each sample has its own dropout mask
    kept = x != 0
    torch.testing.assert_close(x[kept], (raw.expand_as(x) * 2)[kept])


@pytest.mark.parametrize("path", ["sequence", "kv"])
def test_bf16_model_runs_the_fft_in_float32(path, pixels, monkeypatch):
    seen = []
    original = torch.fft.fft2
    monkeypatch.setattr(torch.fft, "fft2", lambda x, **kw: seen.append(x.dtype) or original(x, **kw))
    base = tiny_vit().to(torch.bfloat16)
    model = get_peft_model(base, FourierPromptConfig(num_prompts=4, deep=True, fourier_ratio=0.5, prompt_path=path))
    model.train()
    out = model(pixels.to(torch.bfloat16), labels=torch.tensor([0, 1]))
    out.loss.backward()
    assert seen and set(seen) == {torch.float32}
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits).all()
    grad = prompt_param(model).grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan"), "half"])
def test_bad_fourier_ratio_raises_at_config_time(ratio):
    with pytest.raises(ValueError, match="fourier_ratio"):
        FourierPromptConfig(fourier_ratio=ratio)


def test_ratio_that_rounds_to_no_fourier_prompt_is_refused():
    with pytest.raises(ValueError, match="floor"):
        FourierPromptConfig(num_prompts=1, fourier_ratio=0.5)
