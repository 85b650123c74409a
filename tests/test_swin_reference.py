"""Checks of the Swin reference itself (tests/swin_reference.py), before the library is compared with it."""

from __future__ import annotations

import copy

import pytest
import torch

from . import swin_reference
from .swin_cases import DEPTHS, kv_prompts, official_prompts, swin_pixels, tiny_swin
from .swin_reference import block_prompts, fourier, gated, official_swin_logits


def _double(model):
    return copy.deepcopy(model).double()


@pytest.mark.parametrize("absolute", [True, False])
def test_no_prompts_is_the_hf_swin(absolute):
    """p = 0 and no key/value prompts: embeddings, windows, shift mask, bias, merges and pool are HF's."""
    model = tiny_swin(absolute=absolute)
    pixels = swin_pixels()
    shallow, _ = official_prompts(0, deep=False)
    want = _double(model)(pixel_values=pixels.double()).logits
    torch.testing.assert_close(official_swin_logits(model, pixels, shallow), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("drop", ["bias", "mask"])
def test_the_shift_mask_and_bias_matter(drop, monkeypatch):
    """Guards the p = 0 check: a reference without the relative bias or the shift mask would fail it."""
    model, pixels = tiny_swin(), swin_pixels()
    shallow, _ = official_prompts(0, deep=False)
    want = official_swin_logits(model, pixels, shallow)
    if drop == "bias":
        monkeypatch.setattr(swin_reference, "_relative_bias", lambda table, window: torch.zeros(()))
    else:
        monkeypatch.setattr(swin_reference, "_shift_mask", lambda *args: torch.zeros(1, 1, 1))
    assert (official_swin_logits(model, pixels, shallow) - want).abs().max() > 1e-3


@pytest.mark.parametrize("deep", [False, True])
def test_samples_are_computed_alone(deep):
    """Each sample's logits depend on that sample only: the official batch mixing is not reproduced."""
    model, pixels = tiny_swin(), swin_pixels(3)
    shallow, deep_prompts = official_prompts(3, deep)
    batch = official_swin_logits(model, pixels, shallow, deep_prompts)
    for i in range(3):
        alone = official_swin_logits(model, pixels[i : i + 1], shallow, deep_prompts)
        torch.testing.assert_close(batch[i : i + 1], alone, atol=1e-12, rtol=0)
    reversed_batch = official_swin_logits(model, pixels.flip(0), shallow, deep_prompts)
    torch.testing.assert_close(reversed_batch.flip(0), batch, atol=1e-12, rtol=0)


@pytest.mark.parametrize("deep", [False, True])
def test_prompt_order_does_not_matter(deep):
    """Prompts carry no position and are mean-pooled: permuting the prompt tokens of every tensor is a no-op."""
    model, pixels = tiny_swin(), swin_pixels(2)
    shallow, deep_prompts = official_prompts(4, deep)
    order = torch.tensor([2, 0, 3, 1])
    permuted = None if deep_prompts is None else [t[:, order] for t in deep_prompts]
    torch.testing.assert_close(
        official_swin_logits(model, pixels, shallow[:, order], permuted),
        official_swin_logits(model, pixels, shallow, deep_prompts),
        atol=1e-10,
        rtol=0,
    )


def test_shallow_prompts_are_tokens_that_move_the_logits():
    """The issue's symptom: official shallow prompts move the logits by far more than key/value-only ones."""
    model, pixels = tiny_swin(), swin_pixels()
    empty, _ = official_prompts(0, deep=False)
    shallow, _ = official_prompts(3, deep=False)
    moved = official_swin_logits(model, pixels, shallow) - official_swin_logits(model, pixels, empty)
    assert moved.abs().max() > 1e-2


def test_deep_prompts_replace_what_came_before():
    """Deep mode: the shallow tensor only reaches block 0 (its outputs are replaced before block 1), and still
    changes the logits through block 0's attention. Scaling would not do: the block's layernorm undoes it."""
    model, pixels = tiny_swin(), swin_pixels(2)
    shallow, deep_prompts = official_prompts(3, deep=True)
    base = official_swin_logits(model, pixels, shallow, deep_prompts)
    assert (official_swin_logits(model, pixels, shallow.flip(-1), deep_prompts) - base).abs().max() > 1e-4
    rows = block_prompts(shallow, deep_prompts, DEPTHS)
    assert len(rows) == sum(DEPTHS) and all(r.shape[0] == 3 for r in rows)
    assert [r.shape[1] for r in rows] == [8, 8, 16, 16, 32, 32]


def test_fourier_is_the_real_2d_dft():
    x = torch.randn(7, 3, 12, dtype=torch.float64)[0]
    want = torch.fft.fft2(x[:3]).real
    torch.testing.assert_close(fourier(x, 3)[:3], want, atol=1e-12, rtol=0)
    torch.testing.assert_close(fourier(x, 3)[3:], x[3:], atol=0, rtol=0)
    torch.testing.assert_close(fourier(x, 0), x, atol=0, rtol=0)


def test_gates_use_strided_segments():
    prompts = torch.ones(2, 8, dtype=torch.float64)
    segment = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    out = gated(prompts, torch.tensor([1.0, 0.5]), segment)
    assert out[0].tolist() == [1.0, 0.0] * 4 and out[1].tolist() == [0.5] * 8


def test_kv_prompts_enter_every_window():
    """E2VPT key/value prompts change the function; with zero keys and values they still take attention mass."""
    model, pixels = tiny_swin(), swin_pixels(2)
    shallow, deep_prompts = official_prompts(3, deep=True)
    base = official_swin_logits(model, pixels, shallow, deep_prompts)
    kv = kv_prompts(2)
    assert (official_swin_logits(model, pixels, shallow, deep_prompts, kv) - base).abs().max() > 1e-3
    only_last = [None] * (len(kv) - 1) + [kv[-1]]
    changed = official_swin_logits(model, pixels, shallow, deep_prompts, only_last)
    assert (changed - base).abs().max() > 1e-4
