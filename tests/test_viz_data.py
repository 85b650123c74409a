"""Attention-map PNGs (per layer, from CLS and from the prompts) and the digits mini-VTAB."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vpt_peft import KVPromptConfig, VisualPromptConfig, get_peft_model
from vpt_peft.demo.digits import DIGIT_TASKS, LOOPS, digits_task
from vpt_peft.demo.viz import attention_maps, plot_accuracy_vs_params, save_attention_maps

from .helpers import tiny_vit


@pytest.mark.parametrize(
    "config, prompt_rows",
    [
        (VisualPromptConfig(num_prompts=3, deep=True), True),  # key-value fast path: viz puts prompts in the sequence
        (KVPromptConfig(num_prompts=2, num_kv_prompts=2, num_segments=4), True),
        (VisualPromptConfig(num_prompts=0), False),
    ],
)
def test_attention_png_has_one_panel_per_layer(tmp_path, pixels, config, prompt_rows):
    model = get_peft_model(tiny_vit(), config).eval()
    before = model(pixel_values=pixels).logits
    attention = model.get_base_model().config._attn_implementation
    maps = save_attention_maps(model, pixels, tmp_path / "map.png", title="test")
    assert maps.num_layers == 3 and maps.cls.shape == (3, 4, 4)
    assert all((m is not None) == prompt_rows for m in maps.prompts)
    # Each CLS row is a distribution: patches + prompts + CLS itself.
    assert bool((maps.cls.sum((1, 2)) + maps.prompt_share <= 1 + 1e-5).all())
    assert (maps.prompt_share > 0).all() == prompt_rows
    with Image.open(tmp_path / "map.png") as png:
        assert png.size == (round(1.8 * (3 + 1) * 110), round(1.9 * (2 if prompt_rows else 1) * 110))
    # The model is left as it was: same attention backend, same logits.
    assert model.get_base_model().config._attn_implementation == attention
    assert torch.equal(model(pixel_values=pixels).logits, before)


def test_cls_map_moves_with_the_image(pixels):
    model = get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=2)).eval()
    assert not torch.allclose(attention_maps(model, pixels[:1]).cls, attention_maps(model, pixels[1:]).cls)


def test_accuracy_plot(tmp_path):
    rows = [{"method": m, "accuracy": a, "trainable_pct": p} for m, a, p in (("lp", 0.5, 0.4), ("vpt", 0.6, 2.0))]
    plot_accuracy_vs_params(rows, tmp_path / "acc.png")
    assert (tmp_path / "acc.png").stat().st_size > 1000


def test_digits_tasks_are_shifted_seeded_and_disjoint_from_pretraining():
    (x, y), _, task = digits_task("loops", size=16, train_size=100)
    assert x.shape == (100, 3, 16, 16) and task.num_labels == 3 and set(y.tolist()) <= {0, 1, 2}
    assert x.min() >= -1 and x.max() <= 1
    (x2, y2), _, _ = digits_task("loops", size=16, train_size=100)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    (_, oy), _, _ = digits_task("orientation", size=16, train_size=100)
    assert set(oy.tolist()) == {0, 1, 2, 3}
    (ix, _), _, _ = digits_task("inverted", size=16, train_size=100)
    assert torch.allclose(ix.mean(), -x.mean(), atol=0.2)  # inverted: mostly bright where the digits were dark
    (px, _), _, plain = digits_task("plain", size=16)
    assert plain.group == "pretraining" and not any(torch.equal(px[0], img) for img in x)
    assert LOOPS[8] == 2 and {t.group for t in DIGIT_TASKS.values()} >= {"natural", "specialized", "structured"}
    with pytest.raises(ValueError, match="Unknown digits task"):
        digits_task("mnist")
