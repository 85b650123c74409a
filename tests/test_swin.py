"""Swin computes the official prompted function (spec methods.md §1.9): the library against tests/swin_reference.py.

Every case loads random official-layout prompts into the adapter with the official-checkpoint converter, then
compares logits, loss and every prompt gradient with the float64 reference at batch 3.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model

import vpt_peft
from vpt_peft import convert_official_prompts, load_official_prompts

from .swin_cases import DEPTHS, LABELS, official_prompts, swin_pixels, tiny_swin
from .swin_reference import fourier, gated, official_swin_logits

P = 4
METHODS = {
    "vpt": lambda deep, path: vpt_peft.VisualPromptConfig(num_prompts=P, deep=deep, prompt_path=path),
    "vfpt": lambda deep, path: vpt_peft.FourierPromptConfig(
        num_prompts=P, deep=deep, prompt_path=path, fourier_ratio=0.5
    ),
    "e2vpt": lambda deep, path: vpt_peft.KVPromptConfig(
        num_prompts=P, deep=deep, prompt_path=path, num_kv_prompts=2, num_segments=4
    ),
}


def _prompt_parameters(model) -> dict[str, torch.nn.Parameter]:
    return {n.rsplit(".", 1)[-1]: p for n, p in model.named_parameters() if "prompt_adapter" in n}


def _prompted(method: str, deep: bool, attn: str = "eager", path: str = "auto", seed: int = 0):
    """The adapter on the tiny Swin with official-layout prompts loaded, random gates and key-value prompts."""
    config = METHODS[method](deep, path)
    config.prompt_dropout = 0.0
    model = get_peft_model(tiny_swin(attn=attn), config).eval()
    shallow, deep_prompts = official_prompts(P, deep, seed=seed + 1)
    state = {"prompt_embeddings": shallow}
    state.update({f"deep_prompt_embeddings_{s}": t for s, t in enumerate(deep_prompts or [])})
    tensors = convert_official_prompts(state, depths=DEPTHS)
    params = _prompt_parameters(model)
    generator = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name, parameter in params.items():
            if name not in tensors:  # key-value prompts and E2VPT gates
                parameter.copy_(torch.rand(parameter.shape, generator=generator) * 1.5 - 0.25)
    load_official_prompts(model, {**tensors, **{n: p.detach() for n, p in params.items() if "kv_prompts" in n}})
    return model


def _reference(model, pixels: torch.Tensor, labels: torch.Tensor, deep: bool):
    """Reference logits, loss and gradients (by library tensor name) from float64 copies of the adapter's tensors."""
    leaves = {n: p.detach().double().requires_grad_() for n, p in _prompt_parameters(model).items()}
    bank = next(m for m in model.modules() if isinstance(m, vpt_peft.engine.bank.PromptBank))
    if deep:
        stages = [leaves[f"stage{s}_prompt_embeddings"] for s in range(len(DEPTHS))]
        shallow, deep_prompts = stages[0][:1], [stages[0][1:], *stages[1:]]
    else:
        shallow, deep_prompts = leaves["prompt_embeddings"], None

    def transform(prompts: torch.Tensor) -> torch.Tensor:
        if "prompt_token_gates" in leaves:
            prompts = gated(prompts, leaves["prompt_token_gates"], leaves["prompt_segment_gates"])
        return fourier(prompts, getattr(bank, "num_fourier", 0))

    kv = None
    if "kv_prompts" in leaves or "stage0_kv_prompts" in leaves:
        kv = [None] * sum(DEPTHS)
        for block, ((name, row), _) in bank.kv_rows.items():
            kv[block] = (leaves[name][row], leaves[name][row])
    base = copy.deepcopy(model.base_model.model)
    logits = official_swin_logits(base, pixels, shallow, deep_prompts, kv, transform)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    return logits.detach(), loss.detach(), {n: t.grad for n, t in leaves.items()}


def _library(model, pixels: torch.Tensor, labels: torch.Tensor):
    out = model(pixel_values=pixels, labels=labels)
    out.loss.backward()
    return out.logits.detach(), out.loss.detach(), {n: p.grad for n, p in _prompt_parameters(model).items()}


def _assert_matches(got, want) -> None:
    (logits, loss, grads), (ref_logits, ref_loss, ref_grads) = got, want
    assert ref_logits.abs().max() > 0.5  # logits of order 1: the tolerance below means something
    torch.testing.assert_close(logits.double(), ref_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(loss.double(), ref_loss, atol=1e-5, rtol=0)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        assert ref_grads[name].abs().max() > 1e-4, f"{name}: the reference gradient vanishes"
        torch.testing.assert_close(grads[name].double(), ref_grads[name], atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_swin_equals_the_official_function(method: str, deep: bool, attn: str):
    pixels, labels = swin_pixels(3), torch.tensor([0, 3, 1])
    model = _prompted(method, deep, attn)
    _assert_matches(_library(model, pixels, labels), _reference(model, pixels, labels, deep))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_swin_in_sequence_path_equals_the_official_function(method: str):
    """prompt_path='sequence' runs every block with prompt tokens: the official computation step by step."""
    pixels, labels = swin_pixels(3), torch.tensor([4, 0, 2])
    model = _prompted(method, deep=True, path="sequence")
    _assert_matches(_library(model, pixels, labels), _reference(model, pixels, labels, deep=True))


def test_labels_and_logits_fit_the_tiny_model():
    assert LABELS == 5 and len(DEPTHS) == 3
