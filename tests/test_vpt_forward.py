"""VPT outputs equal an independent reference forward written from the weights."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import get_peft_model

from vpt_peft import VisualPromptConfig

from .helpers import MODEL_CLASSES, tiny_vit
from .reference import classifier_logits, vit_reference


def prompts_by_layer(peft_model, config, num_layers):
    bank = next(m for m in peft_model.modules() if hasattr(m, "banks")).banks["default"]
    layers = config.prompted_layers(num_layers)
    return {layer: bank.prompt_embeddings[slot].detach() for slot, layer in enumerate(layers)}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(deep=False),
        dict(deep=True, prompt_path="sequence"),
        dict(deep=True, prompt_path="kv"),
        dict(deep=True, prompt_layers=[0, 2]),  # a gap: auto falls back to the sequence path
        dict(deep=True, prompt_layers=[1, 2]),  # a suffix: auto takes the key-value path
    ],
    ids=["shallow", "deep-seq", "deep-kv", "deep-gap", "deep-suffix"],
)
@pytest.mark.parametrize("family", ["vit", "deit", "deit-teacher"])
def test_logits_match_reference(family, kwargs, attn, pixels):
    base = tiny_vit(MODEL_CLASSES[family], attn=attn)
    config = VisualPromptConfig(num_prompts=4, **kwargs)
    model = get_peft_model(copy.deepcopy(base), config).eval()
    num_special = 2 if family.startswith("deit") else 1
    expected = vit_reference(base, pixels, prompts_by_layer(model, config, 3), num_special=num_special)
    out = model(pixels)
    if family == "deit-teacher":
        want = (
            classifier_logits_of(base.cls_classifier, expected[:, 0])
            + classifier_logits_of(base.distillation_classifier, expected[:, 1])
        ) / 2
    else:
        want = classifier_logits(base, expected)
    torch.testing.assert_close(out.logits.double(), want, atol=1e-5, rtol=0)


def classifier_logits_of(linear, features):
    return features @ linear.weight.detach().double().T + linear.bias.detach().double()


@pytest.mark.parametrize("deep", [False, True])
def test_backbone_outputs_have_base_shapes(deep, pixels):
    base = tiny_vit(MODEL_CLASSES["vit-model"])
    config = VisualPromptConfig(num_prompts=5, deep=deep, prompt_path="sequence")
    model = get_peft_model(copy.deepcopy(base), config).eval()
    out = model(pixel_values=pixels, output_hidden_states=True)
    ref = base(pixel_values=pixels, output_hidden_states=True)
    assert out.last_hidden_state.shape == ref.last_hidden_state.shape
    assert [h.shape for h in out.hidden_states] == [h.shape for h in ref.hidden_states]
    expected = vit_reference(base, pixels, prompts_by_layer(model, config, 3))
    torch.testing.assert_close(out.last_hidden_state.double(), expected, atol=1e-5, rtol=0)


def test_attentions_include_prompt_positions_on_sequence_path(pixels):
    base = tiny_vit(attn="eager")
    model = get_peft_model(base, VisualPromptConfig(num_prompts=5, deep=True, prompt_path="sequence")).eval()
    attentions = model(pixels, output_attentions=True).attentions
    assert all(a.shape == (2, 4, 17 + 5, 17 + 5) for a in attentions)


def test_attentions_on_kv_path_have_prompt_key_columns_only(pixels):
    base = tiny_vit(attn="eager")
    model = get_peft_model(base, VisualPromptConfig(num_prompts=5, deep=True)).eval()
    attentions = model(pixels, output_attentions=True).attentions
    assert all(a.shape == (2, 4, 17, 17 + 5) for a in attentions)
    torch.testing.assert_close(attentions[0].sum(-1), torch.ones(2, 4, 17))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_kv_path_equals_sequence_path_forward_and_gradients(attn, pixels):
    base = tiny_vit(attn=attn)
    results = []
    for path in ("sequence", "kv"):
        torch.manual_seed(7)
        model = get_peft_model(copy.deepcopy(base), VisualPromptConfig(num_prompts=6, deep=True, prompt_path=path))
        model.eval()
        logits = model(pixels).logits
        logits.square().sum().backward()
        prompts = next(p for n, p in model.named_parameters() if n.endswith("prompt_embeddings"))
        results.append((logits.detach(), prompts.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-4)


def test_zero_prompts_equal_base(pixels):
    base = tiny_vit()
    want = base(pixels).logits
    for deep in (False, True):
        model = get_peft_model(copy.deepcopy(base), VisualPromptConfig(num_prompts=0, deep=deep)).eval()
        assert torch.equal(model(pixels).logits, want)


def test_prompt_projection_matches_reference(pixels):
    base = tiny_vit()
    config = VisualPromptConfig(num_prompts=3, deep=True, prompt_project_dim=8)
    model = get_peft_model(copy.deepcopy(base), config).eval()
    bank = next(m for m in model.modules() if hasattr(m, "banks")).banks["default"]
    projected = {i: bank.prompt_proj(bank.prompt_embeddings[i]).detach() for i in range(3)}
    expected = classifier_logits(base, vit_reference(base, pixels, projected))
    torch.testing.assert_close(model(pixels).logits.double(), expected, atol=1e-5, rtol=0)
    assert bank.prompt_embeddings.shape == (3, 3, 8)
