"""Every class of bad input raises a deliberate error that names what is wrong, and leaves the model as it was.

One table: (what the user does, the exception, words its message must contain). Each row runs against a
PeftModel whose logits, adapters, active adapter and every tensor are compared before and after.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from vpt_peft import (
    AdapterMismatchError,
    DualPromptConfig,
    FourierPromptConfig,
    KVPromptConfig,
    VisualPromptConfig,
    prune_prompts,
)

from .helpers import tiny_vit

PIXELS = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def vpt_model() -> PeftModel:
    model = get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=3, deep=True))
    model.add_adapter("other", VisualPromptConfig(num_prompts=2))
    return model.eval()


def e2vpt_model(**overrides) -> PeftModel:
    return get_peft_model(tiny_vit(), KVPromptConfig(**{"num_prompts": 4, "num_kv_prompts": 2, **overrides})).eval()


def saved(tmp_path: Path, config, name: str = "saved", edit_config: dict | None = None) -> Path:
    """An adapter folder written by save_pretrained, optionally with adapter_config.json fields overwritten."""
    folder = tmp_path / name
    get_peft_model(tiny_vit(), config).save_pretrained(folder)
    if edit_config:
        path = folder / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **edit_config}))
    return folder


def without_prompt_tensor(tmp_path: Path) -> Path:
    folder = saved(tmp_path, VisualPromptConfig(num_prompts=3, deep=True))
    tensors = load_file(folder / "adapter_model.safetensors")
    save_file({k: v for k, v in tensors.items() if "prompt" not in k}, folder / "adapter_model.safetensors")
    return folder


def without_weights(tmp_path: Path) -> Path:
    folder = saved(tmp_path, VisualPromptConfig(num_prompts=3, deep=True))
    (folder / "adapter_model.safetensors").unlink()
    return folder


def pickle_weights(tmp_path: Path) -> Path:
    folder = saved(tmp_path, VisualPromptConfig(num_prompts=3, deep=True))
    torch.save(load_file(folder / "adapter_model.safetensors"), folder / "adapter_model.bin")
    (folder / "adapter_model.safetensors").unlink()
    return folder


def one_adapter_model() -> PeftModel:
    return get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=3, deep=True)).eval()


def dpt(**overrides) -> Callable[[PeftModel, Path], object]:
    return lambda model, tmp_path: DualPromptConfig(**{"class_names": ["cat", "dog"], **overrides})


def labelled(model: PeftModel) -> list[dict]:
    return [{"pixel_values": PIXELS}]


@dataclass(frozen=True)
class Bad:
    name: str
    action: Callable[[PeftModel, Path], object]
    error: type[BaseException]
    words: tuple[str, ...]
    model: Callable[[], PeftModel] = vpt_model


CASES = [
    # config constructors (the same validation runs for adapter_config.json, the CLI and from_pretrained)
    Bad("bool-as-string", lambda m, p: VisualPromptConfig(deep="false"), ValueError, ("deep", "'false'")),
    Bad("share-kv-string", lambda m, p: KVPromptConfig(share_kv="false"), ValueError, ("share_kv",)),
    Bad("csc-string", dpt(csc="no"), ValueError, ("csc", "'no'")),
    Bad("ratio-as-bool", lambda m, p: FourierPromptConfig(fourier_ratio=True), ValueError, ("fourier_ratio",)),
    Bad("layers-as-int", lambda m, p: VisualPromptConfig(deep=True, prompt_layers=2), ValueError, ("prompt_layers",)),
    Bad("class-names-string", dpt(class_names="cat"), ValueError, ("class_names", "list of strings")),
    Bad("same-prompt-text", dpt(class_names=["red fox", "red_fox"]), ValueError, ("same prompt text",)),
    Bad("infinite-weight", dpt(aux_loss_weight=math.inf), ValueError, ("aux_loss_weight", "finite")),
    Bad("template-two-slots", dpt(zero_shot_template="a {} of {}"), ValueError, ("zero_shot_template", "once")),
    # adapter folders and load_adapter
    Bad(
        "json-bool-as-string",
        lambda m, p: m.load_adapter(saved(p, VisualPromptConfig(deep=True), edit_config={"deep": "false"}), "x"),
        ValueError,
        ("deep", "'false'"),
    ),
    Bad(
        "json-deep-vs-weights",
        lambda m, p: m.load_adapter(saved(p, VisualPromptConfig(deep=True), edit_config={"deep": False}), "x"),
        AdapterMismatchError,
        ("shape", "deep", "do not belong together"),
    ),
    Bad(
        "json-share-kv-vs-weights",
        lambda m, p: m.load_adapter(saved(p, KVPromptConfig(num_prompts=4), edit_config={"share_kv": False}), "x"),
        AdapterMismatchError,
        ("share_kv", "do not belong together"),
        model=e2vpt_model,
    ),
    Bad(
        "reload-wrong-shape-over-existing",
        lambda m, p: m.load_adapter(saved(p, VisualPromptConfig(num_prompts=7, deep=True)), "default"),
        AdapterMismatchError,
        ("shape", "'default'"),
    ),
    Bad(
        "missing-prompt-tensor",
        lambda m, p: m.load_adapter(without_prompt_tensor(p), "x"),
        AdapterMismatchError,
        ("lacks",),
    ),
    Bad(
        "no-weights-file",
        lambda m, p: m.load_adapter(without_weights(p), "x"),
        FileNotFoundError,
        ("no adapter_model",),
    ),
    Bad("pickle-weights", lambda m, p: m.load_adapter(pickle_weights(p), "x"), ValueError, ("pickle", "safetensors")),
    Bad(
        "other-method-over-existing",
        lambda m, p: m.load_adapter(saved(p, FourierPromptConfig(num_prompts=3, deep=True)), "default"),
        AdapterMismatchError,
        ("another method",),
    ),
    # adapter management
    Bad("peft-model-again", lambda m, p: get_peft_model(m, VisualPromptConfig()), ValueError, ("already carries",)),
    Bad("two-active", lambda m, p: m.base_model.set_adapter(["default", "other"]), ValueError, ("one prompt adapter",)),
    Bad(
        "delete-last",
        lambda m, p: m.delete_adapter("default"),
        ValueError,
        ("only adapter", "unload"),
        one_adapter_model,
    ),
    # forward
    Bad("pixels-3d", lambda m, p: m(PIXELS[0]), ValueError, ("4 dimensions", "pixel_values[None]")),
    Bad("pixels-int", lambda m, p: m((PIXELS * 100).long()), TypeError, ("floating point", "image processor")),
    Bad("pixels-channels", lambda m, p: m(PIXELS[:, :1]), ValueError, ("1 channels", "takes 3")),
    # E2VPT pruning
    Bad(
        "prune-without-labels",
        lambda m, p: prune_prompts(m, labelled(m), token_ratio=0.5, segment_ratio=0.0),
        ValueError,
        ("labels", "loss_fn"),
        model=e2vpt_model,
    ),
    Bad(
        "prune-no-prompts",
        lambda m, p: prune_prompts(m, labelled(m), token_ratio=0.5, segment_ratio=0.0),
        ValueError,
        ("nothing to prune",),
        model=lambda: e2vpt_model(num_prompts=0),
    ),
]


def snapshot(model: PeftModel) -> tuple:
    with torch.no_grad():
        logits = model(PIXELS).logits.clone()
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
    return logits, list(model.peft_config), list(model.active_adapters), tensors, hooks


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_refused_and_the_model_is_unchanged(case: Bad, tmp_path):
    model = case.model()
    before = snapshot(model)
    with pytest.raises(case.error) as raised:
        case.action(model, tmp_path)
    message = str(raised.value)
    assert all(word in message for word in case.words), message
    after = snapshot(model)
    assert torch.equal(after[0], before[0])  # same ops on the same shapes: bit for bit
    assert after[1:3] == before[1:3]
    assert after[3].keys() == before[3].keys() and all(torch.equal(after[3][k], v) for k, v in before[3].items())
    assert after[4] == before[4]


def test_a_refused_file_leaves_the_base_of_from_pretrained_untouched(tmp_path):
    base = tiny_vit()
    want = base(PIXELS).logits
    folder = saved(tmp_path, VisualPromptConfig(num_prompts=3, deep=True), edit_config={"deep": False})
    with pytest.raises(AdapterMismatchError, match="do not belong together"):
        PeftModel.from_pretrained(base, folder)
    assert not any("prompt" in name for name, _ in base.named_modules())
    assert not any(len(m._forward_pre_hooks) or len(m._forward_hooks) for m in base.modules())
    assert torch.equal(base(PIXELS).logits, want) and base.config._attn_implementation == "sdpa"


def test_rewind_to_initial_restores_an_own_size_head(tmp_path):
    """rewind='initial' puts back the head the adapter was created with, also when it has its own class count."""
    model = e2vpt_model(num_labels=5)
    wrapper = model.base_model.model.classifier
    initial = {k: v.clone() for k, v in wrapper.modules_to_save["default"].state_dict().items()}
    with torch.no_grad():
        wrapper.modules_to_save["default"].weight.add_(1.0)
    batch = [{"pixel_values": PIXELS, "labels": torch.tensor([4, 0])}]
    with torch.enable_grad():
        prune_prompts(model, batch, token_ratio=0.5, segment_ratio=0.0)
    restored = wrapper.modules_to_save["default"].state_dict()
    assert all(torch.equal(restored[k], v) for k, v in initial.items())


def test_saved_folder_shapes_are_the_copied_ones(tmp_path):
    """The helpers above really produce what their names say (a guard for the table itself)."""
    assert not (without_weights(tmp_path / "a") / "adapter_model.safetensors").exists()
    assert (pickle_weights(tmp_path / "b") / "adapter_model.bin").exists()
    assert not any(
        "prompt" in k for k in load_file(without_prompt_tensor(tmp_path / "c") / "adapter_model.safetensors")
    )
    shutil.rmtree(tmp_path)
