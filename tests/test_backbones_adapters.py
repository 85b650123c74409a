"""peft's adapter contract over the backbone x method matrix: what is saved, copies, several adapters on one model.

Cells come from tests/backbone_cases.py. Outputs are compared with ``torch.equal``: both sides run the same ops on
the same shapes (a reloaded or copied adapter must be the same numbers, not merely close ones).
"""

from __future__ import annotations

import copy
import os
import pickle

import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file

from .backbone_cases import (
    BackboneCase,
    MethodCase,
    adapted,
    assert_same,
    build,
    family_representative,
    inputs,
    matrix,
    perturb,
    run,
)
from .helpers import sidecar


def _saved_name(parameter_name: str, adapter_name: str = "default") -> str:
    """Where peft saves a parameter: without the adapter name (and a head without its ``modules_to_save`` copy)."""
    return parameter_name.replace(f".modules_to_save.{adapter_name}.", ".").replace(f".{adapter_name}.", ".")


@pytest.mark.parametrize("case, method", matrix())
def test_adapter_state_dict_holds_prompts_and_heads_only(case: BackboneCase, method: MethodCase, pixels, tmp_path):
    """The adapter file is every trainable tensor (prompts, gates, heads) plus the sidecars' buffers, nothing of the
    frozen model; it reloads onto a fresh base (its own head init, on the meta device first) bit for bit."""
    kwargs = inputs(case, method, pixels)
    model = adapted(case, method)
    perturb(model)
    want = run(model, kwargs)
    saved = get_peft_model_state_dict(model)
    trainable = {_saved_name(n) for n, p in model.named_parameters() if p.requires_grad}
    assert trainable <= saved.keys()
    assert all(".prompt_adapter." in k for k in saved.keys() - trainable), saved.keys() - trainable  # buffers
    heads = getattr(model.peft_config["default"], "modules_to_save", None) or []
    banks = {f".prompt_adapter.{cls.adapter_layer_names[0]}." for cls in model.base_model._sidecar_classes()}
    for key in saved:  # the saved format: <embeddings>.prompt_adapter.<bank dict>.<tensor>, or <head>.<tensor>
        assert any(bank in key for bank in banks) or any(f".{h}." in key for h in heads), key
    assert not any(".default." in k for k in saved)

    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert tensors.keys() == saved.keys()
    payload = sum(t.numel() * t.element_size() for t in tensors.values())
    assert payload < (tmp_path / "adapter_model.safetensors").stat().st_size < payload + 4096  # plus a small header
    assert type(PeftConfig.from_pretrained(tmp_path)) is method.recipe.config_cls
    loaded = PeftModel.from_pretrained(build(case), tmp_path, low_cpu_mem_usage=True).eval()  # the plain load:
    assert_same(run(loaded, kwargs), want)  # test_adapter_management's load_adapter


@pytest.mark.parametrize("case, method", matrix(family_representative))
def test_deepcopy_and_pickle_keep_their_own_prompts(case: BackboneCase, method: MethodCase, pixels):
    """Hooks are bound methods of the copied sidecars, never closures over the original's prompts."""
    kwargs = inputs(case, method, pixels)
    model = adapted(case, method)
    clone, restored = copy.deepcopy(model), pickle.loads(pickle.dumps(model))
    want = run(model, kwargs)
    assert_same(run(clone, kwargs), want)
    assert_same(run(restored, kwargs), want)
    perturb(model)
    assert_same(run(clone, kwargs), want)
    assert_same(run(restored, kwargs), want)
    changed = run(model, kwargs)
    assert any(not torch.equal(changed[k], want[k]) for k in want)


@pytest.mark.parametrize("case, method", matrix())
def test_adapter_management(case: BackboneCase, method: MethodCase, pixels, tmp_path):
    """add (inactive until set), set (the other adapter frozen), save (one folder each), delete, and load a saved
    adapter back under another name."""
    kwargs = inputs(case, method, pixels)
    model = adapted(case, method)
    perturb(model)
    out_default = run(model, kwargs)
    model.add_adapter("other", method.config())
    assert_same(run(model, kwargs), out_default)
    model.set_adapter("other")
    perturb(model, seed=2)
    out_other = run(model, kwargs)
    assert any(not torch.equal(out_other[k], out_default[k]) for k in out_default)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".default." in n)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "other" / "adapter_model.safetensors").exists()
    model.set_adapter("default")
    assert_same(run(model, kwargs), out_default)
    model.delete_adapter("other")
    assert list(model.peft_config) == ["default"]
    assert not any("other" in m.banks for m in model.modules() if hasattr(m, "banks"))
    model.load_adapter(tmp_path / "other", adapter_name="again")
    model.set_adapter("again")
    assert_same(run(model, kwargs), out_other)
    assert "again" in sidecar(model).banks
    with pytest.raises(ValueError, match="already exists"):
        model.add_adapter("again", method.config())
