"""What keeps vpt_peft working across the transformers releases it declares (docs/compatibility.md)."""

from __future__ import annotations

import inspect

import pytest
import torch
import transformers.activations
from peft import get_peft_model

from vpt_peft import BackboneSpec, KVPromptConfig, UnsupportedModelError, VisualPromptConfig
from vpt_peft.engine.backbones import BACKBONES, find_backbone

from .backbone_cases import CASES, build
from .helpers import sidecar, tiny_vit


def test_an_older_layout_is_chosen_by_the_modules_the_model_has(monkeypatch):
    """A spec whose names the model lacks gives way to the first older layout the model has, whole."""
    model = tiny_vit()
    layers = BACKBONES["vit"].layers
    spec = BackboneSpec(
        layers="blocks",
        older_layouts=({"layers": layers, "k_proj": "key"}, {"layers": layers}),
    )
    monkeypatch.setitem(BACKBONES, "vit", spec)
    backbone = find_backbone(model)
    assert (backbone.spec.layers, backbone.spec.k_proj, backbone.spec.older_layouts) == (layers, "k_proj", ())
    assert backbone.layers == list(model.vit.layers)


def test_a_layout_that_fits_only_partly_is_named_in_the_error(monkeypatch):
    """With no layout fitting whole, the error names what the closest one lacks (a registered typo, say)."""
    monkeypatch.setitem(BACKBONES, "vit", BackboneSpec(k_proj="kee", older_layouts=({"layers": "blocks"},)))
    with pytest.raises(UnsupportedModelError, match="named 'kee'"):
        find_backbone(tiny_vit())


def test_older_layouts_take_only_path_fields():
    with pytest.raises(ValueError, match="num_special_tokens.*not path fields"):
        BackboneSpec(older_layouts=({"num_special_tokens": 2},))


def test_dinov2_keeps_its_tokens_and_heads_in_either_layout():
    for model_type in ("dinov2", "dinov2_with_registers"):
        spec = BACKBONES[model_type]
        current, older = spec.layouts()
        assert (older.attention, older.k_proj, older.v_proj) == ("attention.attention", "key", "value")
        assert (older.num_special_tokens, older.heads, older.layers) == (
            current.num_special_tokens,
            current.heads,
            current.layers,
        )


def _hooked_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Modules carrying a hook of the prompt sidecar (or of its windowed helper, on Swin)."""
    owners = {id(o) for o in (sidecar(model), getattr(sidecar(model), "windows", None)) if o is not None}
    hooked = []
    for module in model.modules():
        hooks = [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]
        if any(id(getattr(getattr(h, "func", h), "__self__", None)) in owners for h in hooks):
            hooked.append(module)
    return hooked


def _kernel_replaceable(module: torch.nn.Module) -> bool:
    """Modules whose forward transformers' hub kernels may swap: the decorated activations (and, with the
    ``kernels`` package installed, any class it marked with ``kernel_layer_name``)."""
    cls = type(module)
    return inspect.getmodule(cls) is transformers.activations or hasattr(cls, "kernel_layer_name")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hooks_sit_on_modules_hub_kernels_never_replace(case):
    """transformers >= 5.25 kernelizes by default; prompting must not depend on a forward a kernel replaces.

    The one exception is a final norm with a kernel (AIMv2's RMSNorm): its hook only cuts the prompt rows out of
    the output, whatever forward computed it, and has no pre-hook."""
    for config in (VisualPromptConfig(num_prompts=2, deep=True), KVPromptConfig(num_prompts=2, num_kv_prompts=2)):
        model = get_peft_model(build(case), config)
        hooked = _hooked_modules(model)
        assert hooked, "no hooks found: the check would be vacuous"
        assert any(_kernel_replaceable(m) for m in model.modules()), "no activation modules: vacuous"
        backbone = find_backbone(model.base_model.model)
        final_norm = backbone.sub(backbone.spec.final_norm) if backbone.spec.final_norm else None
        replaceable = [m for m in hooked if _kernel_replaceable(m)]
        assert not [type(m).__name__ for m in replaceable if m is not final_norm or m._forward_pre_hooks]
