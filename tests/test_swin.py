"""Swin computes the official prompted function (spec methods.md §1.9): the library against tests/swin_reference.py.

Every case loads random official-layout prompts into the adapter with the official-checkpoint converter, then
compares logits, loss and every prompt gradient with the float64 reference at batch 3.
"""

from __future__ import annotations

import copy
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model

import vpt_peft
from vpt_peft import convert_official_prompts, load_official_prompts

from .helpers import enable_checkpointing
from .swin_cases import DEPTHS, official_prompts, swin_pixels, tiny_swin
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


@pytest.mark.parametrize("layers", [None, [0, 1, 3, 4], [5]], ids=["all", "gaps", "last"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_fast_path_equals_in_sequence_path(method: str, layers):
    """Logits and every prompt gradient, in training with prompt dropout on (both paths draw the same masks)."""
    pixels, labels = swin_pixels(3), torch.tensor([1, 2, 3])
    results = []
    for path in ("auto", "sequence"):
        config = METHODS[method](True, path)
        config.prompt_layers, config.prompt_dropout = layers, 0.3
        torch.manual_seed(0)
        model = get_peft_model(tiny_swin(), config).train()
        torch.manual_seed(1)
        results.append(_library(model, pixels, labels))
    (fast_logits, _, fast_grads), (seq_logits, _, seq_grads) = results
    torch.testing.assert_close(fast_logits, seq_logits, atol=1e-5, rtol=0)
    assert fast_grads.keys() == seq_grads.keys()
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], seq_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_fast_path_reads_keys_values_except_in_the_last_block():
    model = get_peft_model(tiny_swin(), vpt_peft.VisualPromptConfig(num_prompts=2, deep=True))
    bank = next(m for m in model.modules() if isinstance(m, vpt_peft.engine.bank.PromptBank))
    assert bank.block_modes == {0: "kv", 1: "kv", 2: "kv", 3: "kv", 4: "kv", 5: "sequence"}
    shallow = get_peft_model(tiny_swin(), vpt_peft.VisualPromptConfig(num_prompts=2))
    bank = next(m for m in shallow.modules() if isinstance(m, vpt_peft.engine.bank.PromptBank))
    assert set(bank.block_modes.values()) == {"sequence"} and len(bank.block_modes) == sum(DEPTHS)


def _train_logits(config, pixels: torch.Tensor, zero_first: bool = False) -> torch.Tensor:
    torch.manual_seed(0)
    model = get_peft_model(tiny_swin(), config).train()
    if zero_first:
        with torch.no_grad():
            _prompt_parameters(model)["stage0_prompt_embeddings"][0].zero_()
    torch.manual_seed(5)
    return model(pixel_values=pixels).logits


@torch.no_grad()
def test_shallow_dropout_draws_one_mask_per_sample():
    """Three copies of one image: the official shallow prompts are expanded to the batch before dropout."""
    pixels = swin_pixels(1).expand(3, -1, -1, -1)
    logits = _train_logits(vpt_peft.VisualPromptConfig(num_prompts=4, prompt_dropout=0.5), pixels)
    assert (logits[0] - logits[1]).abs().max() > 1e-3 and (logits[1] - logits[2]).abs().max() > 1e-3


@torch.no_grad()
def test_deep_dropout_draws_one_mask_per_tensor_after_the_first_block():
    """Deep blocks' own prompts get one mask for the whole batch. (The first block's tensor is the official
    shallow one, per sample: zeroed here, so that its masks cannot tell the samples apart.)"""
    pixels = swin_pixels(1).expand(3, -1, -1, -1)
    config = vpt_peft.VisualPromptConfig(num_prompts=4, deep=True, prompt_dropout=0.5)
    logits = _train_logits(config, pixels, zero_first=True)
    torch.testing.assert_close(logits[1:], logits[:1].expand(2, -1), atol=1e-5, rtol=0)
    with_first = _train_logits(config, pixels)
    assert (with_first[0] - with_first[1]).abs().max() > 1e-4
    config.prompt_dropout = 0.0
    assert (_train_logits(config, pixels, zero_first=True) - logits).abs().max() > 1e-3, "dropout was not active"


@torch.no_grad()
def test_batch_results_equal_each_sample_alone():
    model = _prompted("e2vpt", deep=False)
    pixels = swin_pixels(3)
    batch = model(pixel_values=pixels).logits
    for i in range(3):
        torch.testing.assert_close(batch[i : i + 1], model(pixel_values=pixels[i : i + 1]).logits, atol=1e-5, rtol=0)


@torch.no_grad()
def test_outputs_keep_the_base_shapes_and_the_pool_holds_the_prompts():
    base = tiny_swin()
    model = _prompted("vpt", deep=False)
    out = model(pixel_values=swin_pixels(2), output_hidden_states=True)
    want = base(pixel_values=swin_pixels(2), output_hidden_states=True)
    assert out.logits.shape == want.logits.shape
    swin = model.base_model.model.swin
    features = swin(pixel_values=swin_pixels(2))
    assert features.last_hidden_state.shape == base.swin(pixel_values=swin_pixels(2)).last_hidden_state.shape
    assert [h.shape for h in out.hidden_states] == [h.shape for h in want.hidden_states]
    # The pool is over prompts and patches, so it differs from the mean of the returned patch tokens.
    assert (features.pooler_output - features.last_hidden_state.mean(1)).abs().max() > 1e-3


@torch.no_grad()
def test_kv_only_is_the_old_key_value_reading():
    """prompt_path='kv_only': prompts only as keys/values, never pooled; not the official function."""
    config = vpt_peft.VisualPromptConfig(num_prompts=P, deep=True, prompt_path="kv_only")
    model = get_peft_model(tiny_swin(), config).eval()
    features = model.base_model.model.swin(pixel_values=swin_pixels(2))
    torch.testing.assert_close(features.pooler_output, features.last_hidden_state.mean(1), atol=1e-6, rtol=0)
    bank = next(m for m in model.modules() if isinstance(m, vpt_peft.engine.bank.PromptBank))
    assert set(bank.block_modes.values()) == {"kv"}
    assert (
        model(pixel_values=swin_pixels(2)).logits - tiny_swin()(pixel_values=swin_pixels(2)).logits
    ).abs().max() > 1e-3


def test_kv_only_is_refused_off_windowed_backbones():
    from .helpers import tiny_vit

    with pytest.raises(ValueError, match="kv_only.*windowed"):
        get_peft_model(tiny_vit(), vpt_peft.VisualPromptConfig(num_prompts=2, deep=True, prompt_path="kv_only"))


def test_one_xavier_bound_for_every_stage():
    """The official code computes the bound with the first stage's width for all stages."""
    torch.manual_seed(0)
    model = get_peft_model(tiny_swin(), vpt_peft.VisualPromptConfig(num_prompts=8, deep=True))
    params = _prompt_parameters(model)
    bound = (6 / (3 * 2 * 2 + 8)) ** 0.5  # patch fan-in 3*2*2, first stage width 8
    assert all(t.abs().max() <= bound for t in params.values())
    assert params["stage2_prompt_embeddings"].abs().max() > (6 / (3 * 2 * 2 + 32)) ** 0.5


def _checkpointed(config, reentrant: Optional[bool]):
    """The adapter on the tiny Swin, with gradient checkpointing switched on after get_peft_model (before, peft's
    enable_input_require_grads fails on HF Swin, whose patch embeddings return a tuple)."""
    torch.manual_seed(3)
    model = get_peft_model(tiny_swin(), config).train()
    if reentrant is not None:
        enable_checkpointing(model.base_model.model, reentrant)
    return model


@pytest.mark.parametrize("path", ["auto", "kv_only"])
def test_reentrant_checkpointing_is_refused(path):
    """Its forward runs without autograd, so prompts carried beside (or read inside) the blocks would get no
    gradient: refused with the fix in the message, rather than training nothing."""
    config = vpt_peft.VisualPromptConfig(num_prompts=3, deep=True, prompt_path=path)
    model = _checkpointed(config, reentrant=True)
    with pytest.raises(ValueError, match="use_reentrant': False"):
        model(pixel_values=swin_pixels(2))
    with torch.no_grad():
        model(pixel_values=swin_pixels(2))  # nothing to differentiate: runs


def test_model_copies_after_a_training_forward():
    """The per-call state (prompt tokens with their graph) is not part of the model: deepcopy still works."""
    model = _prompted("vpt", deep=True)
    model.train()
    model(pixel_values=swin_pixels(2)).logits.sum().backward()
    twin = copy.deepcopy(model).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            twin(pixel_values=swin_pixels(2)).logits, model.eval()(pixel_values=swin_pixels(2)).logits
        )


@torch.no_grad()
def test_mixed_batch_of_swin_adapters_equals_each_alone():
    from vpt_peft import BASE_ADAPTER

    model = get_peft_model(tiny_swin(), METHODS["vpt"](False, "auto"), adapter_name="shallow")
    model.add_adapter("deep", vpt_peft.VisualPromptConfig(num_prompts=2, deep=True))
    model.add_adapter("sequence", vpt_peft.VisualPromptConfig(num_prompts=3, deep=True, prompt_path="sequence"))
    model.eval()
    names = ["deep", "shallow", BASE_ADAPTER, "sequence", "deep"]
    pixels = swin_pixels(len(names))
    mixed = model(pixel_values=pixels, adapter_names=names).logits
    for i, name in enumerate(names):
        if name == BASE_ADAPTER:
            with model.disable_adapter():
                alone = model(pixel_values=pixels[i : i + 1]).logits
        else:
            model.set_adapter(name)
            alone = model(pixel_values=pixels[i : i + 1]).logits
        torch.testing.assert_close(mixed[i : i + 1], alone, atol=1e-5, rtol=1e-5)
