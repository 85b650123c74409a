"""Every registered vision method on a timm VisionTransformer: the matrix's generic checks, timm's call convention.

The columns are tests/backbone_cases.py's method cases (every registered recipe at tiny sizes, read from the
registry), so a new method joins here too. timm models take the image tensor and return logits, which is why these
checks live beside the matrix rather than in it (its checks call ``model(pixel_values=...)`` and read HF outputs).
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from peft import get_peft_model

from vpt_peft import KVPromptConfig, VisualPromptConfig

from .backbone_cases import (
    MethodCase,
    is_adapter_parameter,
    method_cases,
    perturb,
    takes_both_paths,
    training_step,
)
from .helpers import assert_equal_to_rounding
from .test_timm import tiny_timm

VISION_METHODS = [pytest.param(m, id=m.name) for m in method_cases() if not m.dual_encoder]


def adapted(method: MethodCase, **overrides) -> torch.nn.Module:
    return get_peft_model(tiny_timm(reg_tokens=1), method.config(**overrides)).eval()


@pytest.mark.parametrize("method", [p for p in VISION_METHODS if takes_both_paths(p.values[0])])
def test_key_value_path_equals_the_sequence_path_in_training(method: MethodCase, pixels):
    """Outputs and gradients with prompt dropout drawn in the same order: the fused-qkv fast path is exact."""
    models = [adapted(method, prompt_path=path) for path in ("kv", "sequence")]
    perturb(models[0])
    models[1].load_state_dict(models[0].state_dict())
    outputs, grads = [], []
    for model in models:
        out, gradients = training_step(model, lambda model: model(pixels))
        outputs.append(out.detach())
        grads.append(gradients)
    assert_equal_to_rounding(outputs[0], outputs[1])
    assert grads[0].keys() == grads[1].keys() and any("prompt_adapter" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("method", VISION_METHODS)
def test_disable_and_unload_give_the_base_back(method: MethodCase, pixels):
    expected = tiny_timm(reg_tokens=1)
    with torch.no_grad():
        want = expected(pixels)
        model = adapted(method)
        perturb(model)
        assert not torch.allclose(model(pixels), want), "the prompts changed nothing"
        with model.disable_adapter():
            assert torch.equal(model(pixels), want)
        expected.head.load_state_dict(model.base_model.model.head.modules_to_save["default"].state_dict())
        unloaded = model.unload().eval()
        assert torch.equal(unloaded(pixels), expected(pixels))
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in unloaded.modules())
    assert unloaded.state_dict().keys() == expected.state_dict().keys()


@pytest.mark.parametrize("method", VISION_METHODS)
def test_gradients_reach_only_prompts_and_heads(method: MethodCase, pixels):
    model = adapted(method).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(is_adapter_parameter(n) for n in trainable), sorted(trainable)
    model(pixels).pow(2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(grads) <= trainable
    assert any("prompt_adapter" in n and g.abs().sum() > 0 for n, g in grads.items())


@pytest.mark.parametrize("config", [VisualPromptConfig(num_prompts=2, deep=True), KVPromptConfig(num_kv_prompts=2)])
def test_deepcopy_and_pickle_keep_their_own_prompts(config, pixels):
    """The fused projection's hook is a bound method of the copied sidecar, bound to the copied attention."""
    model = get_peft_model(tiny_timm(), config).eval()
    clone, restored = copy.deepcopy(model), pickle.loads(pickle.dumps(model))
    with torch.no_grad():
        want = model(pixels)
        perturb(model)
        assert torch.equal(clone(pixels), want) and torch.equal(restored(pixels), want)
        assert not torch.equal(model(pixels), want)


def test_timm_gradient_checkpointing_gives_the_same_gradients(pixels):
    config = KVPromptConfig(num_prompts=2, num_kv_prompts=2)
    plain, checkpointed = (get_peft_model(tiny_timm(), copy.deepcopy(config)) for _ in range(2))
    perturb(plain)
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.base_model.model.set_grad_checkpointing(True)
    calls: tuple[list, list] = ([], [])
    for model, counter in zip((plain, checkpointed), calls):
        mlp = model.base_model.model.blocks[0].mlp
        mlp.register_forward_pre_hook(lambda *_, counter=counter: counter.append(1))
    grads = []
    for model in (plain, checkpointed):
        model.train()
        torch.manual_seed(4)  # the same prompt dropout masks (recomputation restores the RNG state)
        model(pixels).pow(2).mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert (len(calls[0]), len(calls[1])) == (1, 2)  # the blocks were recomputed
    assert grads[0].keys() == grads[1].keys() and any("kv_prompts" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("config", [VisualPromptConfig(num_prompts=2, deep=True), KVPromptConfig(num_kv_prompts=2)])
def test_torch_compile_fullgraph_matches_eager_and_trains(config, pixels):
    """The fused projection's hooks and the rows they append trace in one graph (dynamo's capture, eager backend)."""
    torch._dynamo.reset()
    model = get_peft_model(tiny_timm(), config).train()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.manual_seed(3)
    want = model(pixels)
    torch.manual_seed(3)
    out = compiled(pixels)
    assert_equal_to_rounding(out, want)
    out.pow(2).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "prompt" in n)
