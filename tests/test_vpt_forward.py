"""VPT outputs equal an independent reference forward written from the weights."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import get_peft_model

from vpt_peft import VisualPromptConfig

from .helpers import MODEL_CLASSES, tiny_vit
from .reference import classifier_logits, linear, vit_sequence


def prompts_by_layer(peft_model, config, num_layers):
    bank = next(m for m in peft_model.modules() if hasattr(m, "banks")).banks["default"]
    layers = config.prompted_layers(num_layers)
    return {layer: bank.prompt_embeddings[slot].detach() for slot, layer in enumerate(layers)}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize(
    "layers",
    [[0, 2], [1, 2]],
    ids=["gap", "suffix"],  # a gap: auto falls back to the sequence path; a suffix: auto takes the key-value path
)
@pytest.mark.parametrize("family", ["vit", "deit-teacher"])
def test_logits_with_chosen_prompt_layers_match_reference(family, layers, attn, pixels):
    """Prompts in some layers only, through to the logits (DeiT's two heads averaged). Prompts in every layer, on
    every backbone and path, are tests/test_backbones.py's reference check."""
    base = tiny_vit(MODEL_CLASSES[family], attn=attn)
    config = VisualPromptConfig(num_prompts=4, deep=True, prompt_layers=layers)
    model = get_peft_model(copy.deepcopy(base), config).eval()
    expected = vit_sequence(base, pixels, prompts_by_layer(model, config, 3))
    if family == "deit-teacher":
        want = (linear(expected[:, 0], base.cls_classifier) + linear(expected[:, 1], base.distillation_classifier)) / 2
    else:
        want = classifier_logits(base, expected)
    torch.testing.assert_close(model(pixels).logits.double(), want, atol=1e-5, rtol=0)


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


def test_prompt_projection_matches_reference(pixels):
    base = tiny_vit()
    config = VisualPromptConfig(num_prompts=3, deep=True, prompt_project_dim=8)
    model = get_peft_model(copy.deepcopy(base), config).eval()
    bank = next(m for m in model.modules() if hasattr(m, "banks")).banks["default"]
    projected = {i: bank.prompt_proj(bank.prompt_embeddings[i]).detach() for i in range(3)}
    expected = classifier_logits(base, vit_sequence(base, pixels, projected))
    torch.testing.assert_close(model(pixels).logits.double(), expected, atol=1e-5, rtol=0)
    assert bank.prompt_embeddings.shape == (3, 3, 8)
