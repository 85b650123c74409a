"""An official VPT checkpoint (synthetic, in the official key layout) as an adapter on an HF ViT: its logits are
the official model's, written out independently (tests/reference.py), through a saved folder and the CLI."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

import vpt_peft
from vpt_peft import ConversionError, FourierPromptConfig, official_adapter, official_config
from vpt_peft.cli import main

from .helpers import tiny_vit
from .reference import linear, vit_sequence

CLASSES = 5


def official_state(deep: bool = True, p: int = 4, width: int = 32, layers: int = 3) -> dict[str, torch.Tensor]:
    """What the official VPT ViT saves: backbone tensors, the prompts under ``enc.transformer`` and
    ``head.last_layer``."""
    generator = torch.Generator().manual_seed(7)
    state = {
        "enc.transformer.embeddings.cls_token": torch.zeros(1, 1, width),
        "enc.transformer.encoder.encoder_norm.weight": torch.ones(width),
        "enc.transformer.prompt_embeddings": torch.randn(1, p, width, generator=generator),
        "head.last_layer.weight": torch.randn(CLASSES, width, generator=generator),
        "head.last_layer.bias": torch.randn(CLASSES, generator=generator),
    }
    if deep:
        state["enc.transformer.deep_prompt_embeddings"] = torch.randn(layers - 1, p, width, generator=generator)
    return state


def official_logits(state: dict, pixels: torch.Tensor) -> torch.Tensor:
    """The official model's logits, float64: prompts in the tiny ViT's sequence, the official head on CLS."""
    prompts = [state["enc.transformer.prompt_embeddings"][0]]
    prompts += list(state.get("enc.transformer.deep_prompt_embeddings", []))
    sequence = vit_sequence(tiny_vit(num_labels=CLASSES), pixels, dict(enumerate(prompts)))
    head = torch.nn.Linear(32, CLASSES)
    head.load_state_dict({"weight": state["head.last_layer.weight"], "bias": state["head.last_layer.bias"]})
    return linear(sequence[:, 0], head)


@pytest.mark.parametrize("deep", [True, False])
def test_the_saved_adapter_computes_the_official_logits(deep, pixels, tmp_path):
    state = official_state(deep)
    model = official_adapter(state, tiny_vit(num_labels=CLASSES)).eval()
    config = model.peft_config["default"]
    assert (config.num_prompts, config.deep, config.num_labels) == (4, deep, CLASSES)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_vit(num_labels=CLASSES), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).logits.double(), official_logits(state, pixels), atol=1e-5, rtol=0)


def test_a_head_of_another_size_gets_the_adapter_its_own(pixels):
    """The base model's head (3 classes) stays; the adapter carries the official 5-class head."""
    base = tiny_vit(num_labels=3)
    model = official_adapter(official_state(), base).eval()
    with torch.no_grad():
        assert model(pixels).logits.shape == (2, CLASSES)
        with model.disable_adapter():
            assert model(pixels).logits.shape == (2, 3)


def test_a_vfpt_checkpoint_takes_its_fourier_share():
    config = official_config(official_state(), fourier_ratio=0.5)
    assert isinstance(config, FourierPromptConfig) and (config.fourier_ratio, config.num_prompts) == (0.5, 4)


def _shallow_of_another_width(state: dict) -> None:
    del state["enc.transformer.deep_prompt_embeddings"]
    state["enc.transformer.prompt_embeddings"] = torch.zeros(1, 4, 48)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("head.last_layer.bias"), "no official linear head"),
        (lambda s: s.update({"enc.transformer.prompt_embeddings": torch.zeros(1, 4, 48)}), "p and d"),
        (lambda s: s.update({"enc.transformer.deep_prompt_embeddings": torch.zeros(5, 4, 32)}), "do not fit"),
        (lambda s: s.update({"head.last_layer.weight": torch.zeros(CLASSES, 48)}), "reads 48 features"),
        (_shallow_of_another_width, "do not fit"),
        (lambda s: s.update({"head.projection.0.weight": torch.zeros(32, 32)}), "hidden MLP layers"),
    ],
    ids=["no-head", "width", "depth", "head-width", "shallow-width", "mlp-head"],
)
def test_a_checkpoint_that_does_not_fit_is_refused_before_the_model_is_touched(change, message):
    state = official_state()
    change(state)
    base = tiny_vit(num_labels=CLASSES)
    with pytest.raises(ConversionError, match=message):
        official_adapter(state, base)
    assert not any("prompt_adapter" in name for name, _ in base.named_modules())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in base.modules())


def test_the_cli_writes_a_folder_that_eval_and_from_pretrained_take(pixels, tmp_path, capsys):
    tiny_vit(num_labels=CLASSES).save_pretrained(tmp_path / "base")
    state = official_state()
    torch.save({"model": state, "epoch": 100}, tmp_path / "official.pth")
    argv = ["convert", str(tmp_path / "official.pth"), "--model", str(tmp_path / "base"), "--output"]
    assert main([*argv, str(tmp_path / "adapter")]) == 0
    assert main(["info", str(tmp_path / "adapter")]) == 0
    assert "VisualPromptConfig" in capsys.readouterr().out
    loaded = vpt_peft.PeftModel.from_pretrained(tiny_vit(num_labels=CLASSES), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).logits.double(), official_logits(state, pixels), atol=1e-5, rtol=0)
    assert main(["convert", str(tmp_path / "missing.pth"), "--model", "m", "--output", str(tmp_path / "x")]) == 1
