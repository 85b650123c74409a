"""E2VPT: key-value prompts against a reference attention, parameter counts, pruning, rewinding."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import ViTConfig, ViTForImageClassification

from vpt_peft import KVPromptConfig, effective_prompt_parameters, prune_prompts

from .helpers import sidecar, tiny_vit
from .reference import classifier_logits, vit_sequence
from .test_vpt_training import brightness_dataset


def bank_of(model):
    return sidecar(model).banks["default"]


def reference_logits(base, model, pixels, shared=True):
    bank = bank_of(model)
    token, segment = bank.gate_values() if bank.gate_values() is not None else (None, None)
    visual = bank.prompt_embeddings.detach()
    if token is not None:
        visual = visual * (token[:, None] * segment.repeat(1, visual.shape[-1] // bank.num_segments)).detach()
    prompts = {i: visual[i] for i in range(3)} if bank.num_prompts else {}
    key = bank.kv_prompts if shared else bank.key_prompts
    value = bank.kv_prompts if shared else bank.value_prompts
    kv = {i: (key[i].detach(), value[i].detach()) for i in range(3)} if bank.num_kv_prompts else {}
    return classifier_logits(base, vit_sequence(base, pixels, prompts, kv))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("num_prompts", [0, 4])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("path", ["kv", "sequence"])
def test_logits_match_reference_attention(attn, num_prompts, shared, path, pixels):
    base = tiny_vit(attn=attn)
    config = KVPromptConfig(num_prompts=num_prompts, num_kv_prompts=3, share_kv=shared, prompt_path=path)
    model = get_peft_model(copy.deepcopy(base), config).eval()
    with torch.no_grad():  # non-trivial gates, as after training
        for gate in bank_of(model).gate_values():
            gate.uniform_(0.0, 1.5)
    want = reference_logits(base, model, pixels, shared)
    torch.testing.assert_close(model(pixels).logits.double(), want, atol=1e-5, rtol=0)


def test_kv_init_is_official_kaiming_uniform():
    model = get_peft_model(tiny_vit(), KVPromptConfig(num_prompts=2, num_kv_prompts=5))
    kv = bank_of(model).kv_prompts.detach()
    bound = (6 / (5 * 8)) ** 0.5  # head_dim 8
    assert kv.abs().max() <= bound and kv.abs().max() > 0.9 * bound


@pytest.mark.parametrize("shared,expected", [(True, 12 * (10 + 5) * 768), (False, 12 * (10 + 2 * 5) * 768)])
def test_parameter_counts_on_vit_b16_follow_the_official_formula(shared, expected):
    torch.manual_seed(0)
    base = ViTForImageClassification(ViTConfig(num_labels=10))
    model = get_peft_model(base, KVPromptConfig(num_prompts=10, num_kv_prompts=5, share_kv=shared, gates=False))
    names = ("prompt_embeddings", "kv_prompts", "key_prompts", "value_prompts")
    prompts = sum(p.numel() for n, p in model.named_parameters() if n.endswith(names))
    assert prompts == expected
    gated = get_peft_model(
        ViTForImageClassification(ViTConfig(num_labels=10)), KVPromptConfig(num_prompts=10, num_kv_prompts=5)
    )
    gate_count = sum(p.numel() for n, p in gated.named_parameters() if "gates" in n)
    assert gate_count == 10 + 10 * 16


def trained_model(num_prompts=8, mode="remove"):
    model = get_peft_model(tiny_vit(), KVPromptConfig(num_prompts=num_prompts, num_kv_prompts=2, prune_mode=mode))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    data = brightness_dataset(32)
    model.train()
    for start in range(0, 32, 8):
        batch = data[start : start + 8]
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, [data[i : i + 8] for i in range(0, 32, 8)]


def test_pruning_keeps_the_official_counts_and_removes_tokens(pixels):
    model, batches = trained_model()
    initial = bank_of(model).initial_values["prompt_embeddings"].clone()
    result = prune_prompts(model, batches, token_ratio=0.5, segment_ratio=0.25)
    bank = bank_of(model)
    assert len(result.kept_tokens) == 4 and bank.prompt_embeddings.shape == (3, 4, 32)
    assert bank.prompt_segment_mask.sum(1).tolist() == [12.0] * 4  # int(16 * 0.25) = 4 segments pruned per token
    assert effective_prompt_parameters(model) == 3 * 4 * 12 * (32 // 16) + 3 * 2 * 32
    assert torch.equal(bank.prompt_embeddings.detach(), initial[:, result.kept_tokens])  # rewound
    assert model.peft_config["default"].num_prompts == 4 and model.peft_config["default"].pruned
    model.base_model.model.set_attn_implementation("eager")
    attentions = model.eval()(pixels, output_attentions=True).attentions
    assert attentions[0].shape[-1] == 17 + 2 + 4  # fewer keys: pruned tokens are gone, not zeroed


def test_pruning_caps_follow_the_official_minimums():
    model, batches = trained_model(num_prompts=2)
    result = prune_prompts(model, batches, token_ratio=0.9, segment_ratio=0.95)
    assert len(result.kept_tokens) == 1  # at least one token
    assert result.segment_mask.sum(1).min() == 4  # at least four segments


def test_pruned_adapter_saves_smaller_and_reloads_identically(tmp_path, pixels):
    model, batches = trained_model()
    model.save_pretrained(tmp_path / "full")
    prune_prompts(model, batches, token_ratio=0.5, segment_ratio=0.25, rewind=None)
    model.eval()
    want = model(pixels).logits
    model.save_pretrained(tmp_path / "pruned")
    size = lambda d: (tmp_path / d / "adapter_model.safetensors").stat().st_size  # noqa: E731
    assert size("pruned") < size("full")
    loaded = PeftModel.from_pretrained(tiny_vit(), tmp_path / "pruned").eval()
    assert torch.equal(loaded(pixels).logits, want)


def test_zero_mode_keeps_tokens_and_matches_zeroed_reference(pixels):
    model, batches = trained_model(mode="zero")
    result = prune_prompts(model, batches, token_ratio=0.5, segment_ratio=0.25, rewind=None)
    bank = bank_of(model)
    assert bank.prompt_embeddings.shape[1] == 8 and bank.prompt_token_mask.sum() == len(result.kept_tokens) == 4
    base = tiny_vit()
    base.classifier.load_state_dict(model.base_model.model.classifier.modules_to_save["default"].state_dict())
    model.eval()
    torch.testing.assert_close(model(pixels).logits.double(), reference_logits(base, model, pixels), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_kv_prompts=-1), "num_kv_prompts"),
        (dict(num_prompts=-2), "num_prompts"),
        (dict(kv_dropout=1.2), "kv_dropout"),
        (dict(num_segments=0), "num_segments"),
        (dict(kv_init="zeros"), "kv_init"),
    ],
)
def test_bad_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KVPromptConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(token_ratio=1.0, segment_ratio=0.1), "token_ratio"),
        (dict(token_ratio=0.5, segment_ratio=-0.1), "segment_ratio"),
    ],
)
def test_bad_pruning_arguments_leave_the_model_unchanged(kwargs, match):
    model, batches = trained_model()
    bank = bank_of(model)
    with pytest.raises(ValueError, match=match):
        prune_prompts(model, batches, **kwargs)
    with pytest.raises(ValueError, match="training data"):
        prune_prompts(model, [], token_ratio=0.5, segment_ratio=0.5)
    assert bank_of(model) is bank and not model.peft_config["default"].pruned
