"""Official checkpoint layout -> vpt_peft layout (src/vpt_peft/convert.py), on synthetic official state dicts."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

import vpt_peft
from vpt_peft import ConversionError, convert_official_kv_prompts, convert_official_prompts, load_official_prompts

from .helpers import tiny_vit
from .swin_cases import DEPTHS, official_prompts, tiny_swin


def _official_swin_state(p: int, deep: bool) -> dict[str, torch.Tensor]:
    """What an official prompted Swin's state dict holds: backbone, head and prompts under a model prefix."""
    shallow, deep_prompts = official_prompts(p, deep)
    state = {"enc.prompt_embeddings": shallow.float(), "enc.layers.0.blocks.0.norm1.weight": torch.ones(8)}
    state["head.last_layer.weight"] = torch.zeros(5, 32)
    for s, tensor in enumerate(deep_prompts or []):
        state[f"enc.deep_prompt_embeddings_{s}"] = tensor.float()
    return state


def test_swin_deep_stacks_the_first_block_onto_stage_zero():
    state = _official_swin_state(3, deep=True)
    got = convert_official_prompts(state, depths=DEPTHS)
    assert {k: tuple(v.shape) for k, v in got.items()} == {
        "stage0_prompt_embeddings": (2, 3, 8),
        "stage1_prompt_embeddings": (2, 3, 16),
        "stage2_prompt_embeddings": (2, 3, 32),
    }
    assert torch.equal(got["stage0_prompt_embeddings"][0], state["enc.prompt_embeddings"][0])
    assert torch.equal(got["stage0_prompt_embeddings"][1:], state["enc.deep_prompt_embeddings_0"])
    assert torch.equal(got["stage2_prompt_embeddings"], state["enc.deep_prompt_embeddings_2"])


def test_swin_shallow_keeps_one_tensor():
    state = _official_swin_state(4, deep=False)
    got = convert_official_prompts(state)
    assert list(got) == ["prompt_embeddings"] and torch.equal(got["prompt_embeddings"], state["enc.prompt_embeddings"])


def test_vit_deep_is_one_concatenation():
    shallow, deep = torch.randn(1, 4, 32), torch.randn(2, 4, 32)
    got = convert_official_prompts({"enc.transformer.prompt_embeddings": shallow, "enc.deep_prompt_embeddings": deep})
    assert torch.equal(got["prompt_embeddings"], torch.cat([shallow, deep]))


def test_wrong_depths_and_layouts_are_refused():
    state = _official_swin_state(3, deep=True)
    with pytest.raises(ConversionError, match="depths"):
        convert_official_prompts(state, depths=(2, 2, 6))
    with pytest.raises(ConversionError, match="no 'prompt_embeddings'"):
        convert_official_prompts({"enc.deep_prompt_embeddings_0": torch.zeros(1, 3, 8)})
    del state["enc.deep_prompt_embeddings_1"]
    with pytest.raises(ConversionError, match="numbered"):
        convert_official_prompts(state)


def test_kv_prompts_merge_heads_channel_major():
    """Official (heads, T, head_dim) -> (T, heads*head_dim), channel h*head_dim + j = head h, one stack per width."""
    per_block = [torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(4, 3, 8), torch.randn(4, 3, 8)]
    got = convert_official_kv_prompts(per_block)
    assert {k: tuple(v.shape) for k, v in got.items()} == {
        "stage0_kv_prompts": (2, 3, 8),
        "stage1_kv_prompts": (2, 3, 32),
    }
    assert torch.equal(got["stage1_kv_prompts"][1, 2, 3 * 8 + 5], per_block[3][3, 2, 5])
    assert torch.equal(got["stage0_kv_prompts"][0, 1, 4:], per_block[0][1, 1])
    assert list(convert_official_kv_prompts(per_block[:2])) == ["kv_prompts"]


@pytest.mark.parametrize("deep", [False, True])
def test_loaded_into_a_swin_adapter(deep):
    state = _official_swin_state(3, deep)
    model = get_peft_model(tiny_swin(), vpt_peft.VisualPromptConfig(num_prompts=3, deep=deep))
    tensors = convert_official_prompts(state, depths=DEPTHS)
    load_official_prompts(model, tensors)
    params = {n.rsplit(".", 1)[-1]: p for n, p in model.named_parameters() if "prompt_adapter" in n}
    for name, tensor in tensors.items():
        assert torch.equal(params[name], tensor)


def test_loading_refuses_missing_or_misshapen_tensors():
    model = get_peft_model(tiny_swin(), vpt_peft.VisualPromptConfig(num_prompts=3, deep=True))
    tensors = convert_official_prompts(_official_swin_state(3, deep=True))
    with pytest.raises(ConversionError, match="missing"):
        load_official_prompts(model, {k: v for k, v in tensors.items() if k != "stage1_prompt_embeddings"})
    with pytest.raises(ConversionError, match="official"):
        load_official_prompts(model, {**tensors, "stage1_prompt_embeddings": torch.zeros(2, 4, 16)})
    with pytest.raises(ConversionError, match="no prompt adapter"):
        load_official_prompts(model, tensors, adapter_name="other")


def test_loaded_into_a_vit_e2vpt_adapter():
    model = get_peft_model(tiny_vit(), vpt_peft.KVPromptConfig(num_prompts=2, num_kv_prompts=3))
    visual = convert_official_prompts(
        {"prompt_embeddings": torch.randn(1, 2, 32), "deep_prompt_embeddings": torch.randn(2, 2, 32)}
    )
    kv = convert_official_kv_prompts([torch.randn(4, 3, 8) for _ in range(3)])
    load_official_prompts(model, {**visual, **kv})
    params = {n.rsplit(".", 1)[-1]: p for n, p in model.named_parameters() if "prompt_adapter" in n}
    assert torch.equal(params["kv_prompts"], kv["kv_prompts"])
    assert torch.equal(params["prompt_embeddings"], visual["prompt_embeddings"])
