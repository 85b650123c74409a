"""The key-value fast path equals the in-sequence path for every deep method: logits and prompt gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import get_peft_model

from vpt_peft import FourierPromptConfig, KVPromptConfig, VisualPromptConfig

from .helpers import MODEL_CLASSES, tiny_vit

METHODS = {
    "vpt": lambda path: VisualPromptConfig(num_prompts=5, deep=True, prompt_path=path, prompt_dropout=0.0),
    "vfpt": lambda path: FourierPromptConfig(
        num_prompts=5, deep=True, fourier_ratio=0.6, prompt_path=path, prompt_dropout=0.0
    ),
    "e2vpt": lambda path: KVPromptConfig(num_prompts=5, num_kv_prompts=2, prompt_path=path, prompt_dropout=0.0),
    "vpt-suffix": lambda path: VisualPromptConfig(num_prompts=5, deep=True, prompt_layers=[1, 2], prompt_path=path),
}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", ["vit", "deit-teacher"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_fast_path_equals_sequence_path(method, family, attn, pixels):
    base = tiny_vit(MODEL_CLASSES[family], attn=attn)
    results = []
    for path in ("sequence", "kv"):
        torch.manual_seed(11)
        model = get_peft_model(copy.deepcopy(base), METHODS[method](path)).eval()
        logits = model(pixels).logits
        logits.pow(2).sum().backward()
        grads = {n.split(".default.")[-1]: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logits.detach(), grads))
    (seq_logits, seq_grads), (kv_logits, kv_grads) = results
    torch.testing.assert_close(kv_logits, seq_logits, atol=1e-5, rtol=0)
    assert seq_grads.keys() == kv_grads.keys() and any("prompt" in k for k in kv_grads)
    for name in seq_grads:
        torch.testing.assert_close(kv_grads[name], seq_grads[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["vpt", "e2vpt"])
def test_prompt_dropout_in_training_draws_the_same_masks_on_both_paths(method, pixels):
    """Both paths draw each layer's (batch, p, d) dropout mask in the same order: same RNG, same result."""
    logits = []
    for path in ("kv", "sequence"):
        config = METHODS[method](path)
        config.prompt_dropout = 0.5
        torch.manual_seed(0)
        model = get_peft_model(tiny_vit(), config).train()
        torch.manual_seed(1)
        logits.append(model(pixels).logits)
        with torch.no_grad():
            assert not torch.allclose(logits[-1], model.eval()(pixels).logits), "dropout was not active"
    torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["vpt", "vfpt", "e2vpt"])
def test_fast_path_runs_in_bfloat16(method, pixels):
    torch.manual_seed(0)
    model32 = get_peft_model(tiny_vit(), METHODS[method]("kv")).eval()
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    want = model32(pixels).logits
    got = model16(pixels.to(torch.bfloat16)).logits
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=0.1, rtol=0.05)
    got.float().sum().backward()
    grads = [p.grad for n, p in model16.named_parameters() if "prompt_adapter" in n and p.grad is not None]
    assert grads and all(torch.isfinite(g.float()).all() for g in grads)
