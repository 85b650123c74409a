"""timm's VisionTransformer: every method through the same peft entry points, against a hand-written reference.

Tiny models are built from keyword arguments (no download). The reference recomputes every block in float64 from
the timm modules' weights (the fused ``qkv`` split by hand), with prompts after the CLS and register tokens and no
position embedding; what each ``global_pool`` then reads is the model's own head on the reference features.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model
from PIL import Image

import vpt_peft
from vpt_peft import (
    KVPromptConfig,
    UnsupportedModelError,
    VisualPromptConfig,
    find_backbone,
    official_adapter,
)
from vpt_peft.timm_models import TimmImageCollator, classification_loss, timm_preprocessing

from .helpers import assert_equal_to_rounding, sidecar
from .reference import gelu, layer_norm, linear
from .timm_support import import_timm

LABELS, WIDTH, DEPTH, HEADS = 3, 32, 3, 4

ROWS = {  # name: VisionTransformer keyword arguments (the family's variants: tokens before the patches, pooling)
    "cls-token": {},
    "registers-avg": {"reg_tokens": 2, "global_pool": "avg"},
    "no-cls-avg": {"class_token": False, "global_pool": "avg"},
    "cls-map": {"global_pool": "map"},
}


def tiny_timm(seed: int = 0, **kwargs) -> torch.nn.Module:
    import_timm()
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, num_classes=LABELS, **kwargs
    )
    return model.eval().requires_grad_(False)


def timm_block(block, x: torch.Tensor, extra: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """A timm pre-norm block in float64; ``extra``: (1, T, d) keys and values appended after the projection."""
    h = layer_norm(x, block.norm1)
    q, k, v = linear(h, block.attn.qkv).chunk(3, dim=-1)
    if extra is not None:
        k = torch.cat([k, extra[0].double().expand(x.shape[0], -1, -1)], dim=1)
        v = torch.cat([v, extra[1].double().expand(x.shape[0], -1, -1)], dim=1)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], t.shape[1], HEADS, -1).transpose(1, 2)

    scores = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(WIDTH // HEADS)
    attended = (scores.softmax(-1) @ heads(v)).transpose(1, 2).reshape(x.shape)
    x = x + linear(attended, block.attn.proj)
    return x + linear(gelu(linear(layer_norm(x, block.norm2), block.mlp.fc1)), block.mlp.fc2)


def reference_features(model, pixels, prompts: dict, kv: dict | None = None) -> torch.Tensor:
    """``forward_features`` with ``prompts`` ({layer: (p, d)}) after the prefix tokens, stripped at the end."""
    n, kv = model.num_prefix_tokens, kv or {}
    with torch.no_grad():
        x = model._pos_embed(model.patch_embed(pixels)).double()  # prompts come after: no position embedding
    inserted = 0
    for i, block in enumerate(model.blocks):
        if i in prompts:
            p = prompts[i].double().expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :n], p, x[:, n + inserted :]], dim=1)
            inserted = p.shape[1]
        x = timm_block(block, x, kv.get(i))
    x = x if isinstance(model.norm, torch.nn.Identity) else layer_norm(x, model.norm)
    return torch.cat([x[:, :n], x[:, n + inserted :]], dim=1)


def bank(model):
    return sidecar(model).banks["default"]


def base_of(model):
    return model.base_model.model


def perturbed(model):
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.3 * torch.randn_like(parameter))
    return model


@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("path", ["sequence", "kv"])
def test_deep_prompts_match_the_reference_for_every_prefix_and_pool(row, path, pixels):
    model = perturbed(
        get_peft_model(tiny_timm(**ROWS[row]), VisualPromptConfig(num_prompts=3, deep=True, prompt_path=path))
    )
    model.eval()
    prompts = bank(model).prompt_embeddings.detach()
    want = reference_features(base_of(model), pixels, dict(enumerate(prompts)))
    with torch.no_grad():
        got = base_of(model).forward_features(pixels)
        assert_equal_to_rounding(got.double(), want)
        assert_equal_to_rounding(model(pixels), base_of(model).forward_head(want.float()))


@pytest.mark.parametrize("row", ["cls-token", "registers-avg"])
def test_shallow_prompts_sit_after_cls_and_registers(row, pixels):
    model = perturbed(get_peft_model(tiny_timm(**ROWS[row]), VisualPromptConfig(num_prompts=3, deep=False))).eval()
    want = reference_features(base_of(model), pixels, {0: bank(model).prompt_embeddings.detach()[0]})
    with torch.no_grad():
        assert_equal_to_rounding(base_of(model).forward_features(pixels).double(), want)


@pytest.mark.parametrize("path", ["sequence", "kv"])
def test_e2vpt_key_value_prompts_enter_the_fused_projection(path, pixels):
    """E2VPT's keys/values are written into the fused qkv output: the reference appends them after the split."""
    config = KVPromptConfig(num_prompts=2, num_kv_prompts=3, share_kv=False, prompt_path=path)
    model = perturbed(get_peft_model(tiny_timm(reg_tokens=1), config)).eval()
    kv_bank = bank(model)
    with torch.no_grad():
        for gate in kv_bank.gate_values():
            gate.uniform_(0.5, 1.5)
        token, segment = kv_bank.gate_values()
        visual = kv_bank.prompt_embeddings * (token[:, None] * segment.repeat(1, WIDTH // kv_bank.num_segments))
        kv = {i: (kv_bank.key_prompts[i][None], kv_bank.value_prompts[i][None]) for i in range(DEPTH)}
        want = reference_features(base_of(model), pixels, dict(enumerate(visual)), kv)
        assert_equal_to_rounding(base_of(model).forward_features(pixels).double(), want)


def test_kv_fast_path_equals_the_sequence_path_with_qk_norm(pixels):
    """Prompt keys made from the fused weight's key rows pass through the attention's k_norm like every key."""
    base = tiny_timm(qk_norm=True, reg_tokens=2)
    with torch.no_grad():
        for block in base.blocks:
            block.attn.k_norm.weight.uniform_(0.5, 1.5)
    model = perturbed(get_peft_model(base, VisualPromptConfig(num_prompts=4, deep=True))).eval()
    assert bank(model).uses_kv_path
    with torch.no_grad():
        fast = model(pixels)
        with bank(model).running_in_sequence():
            assert_equal_to_rounding(fast, model(pixels))


def test_mixed_batch_rows_equal_each_adapter_alone(pixels):
    """Sequence prompts (padded slots), key-value prompts and the base model in one batch, each row as alone."""
    model = get_peft_model(
        tiny_timm(reg_tokens=1), VisualPromptConfig(num_prompts=3, deep=True, prompt_path="sequence")
    )
    model.add_adapter("kv", VisualPromptConfig(num_prompts=2, deep=True))
    model.add_adapter("shallow", VisualPromptConfig(num_prompts=1))
    for name in ("default", "kv", "shallow"):
        model.set_adapter(name)
        perturbed(model)
    model.eval()
    names = ["default", "kv", "shallow", "__base__", "kv"]
    batch = torch.cat([pixels, pixels, pixels[:1]])
    with torch.no_grad():
        mixed = model(batch, adapter_names=names)
        for row, name in enumerate(names):
            if name == "__base__":
                with model.disable_adapter():
                    alone = model(batch[row : row + 1])
            else:
                model.set_adapter(name)
                alone = model(batch[row : row + 1])
            assert_equal_to_rounding(mixed[row : row + 1], alone)


def test_save_and_from_pretrained_give_the_same_logits(tmp_path, pixels):
    model = perturbed(get_peft_model(tiny_timm(), KVPromptConfig(num_prompts=2, num_kv_prompts=2))).eval()
    with torch.no_grad():
        want = model(pixels)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_timm(), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(pixels), want)


def test_parameter_count_follows_the_formula():
    """Deep VPT: L x p x d prompts plus the head's copy (d x C + C)."""
    model = get_peft_model(tiny_timm(reg_tokens=2), VisualPromptConfig(num_prompts=5, deep=True))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == DEPTH * 5 * WIDTH + (WIDTH * LABELS + LABELS)


def test_trainer_trains_prompts_and_head_through_the_call_convention(tmp_path):
    from transformers import Trainer, TrainingArguments

    base = tiny_timm()
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, VisualPromptConfig(num_prompts=2, deep=True))
    before = bank(model).prompt_embeddings.detach().clone()
    generator = torch.Generator().manual_seed(0)
    images = [Image.fromarray((np.random.default_rng(i).random((40, 40, 3)) * 255).astype(np.uint8)) for i in range(8)]
    dataset = [{"image": image, "label": int(torch.randint(0, LABELS, (1,), generator=generator))} for image in images]
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=1, learning_rate=1e-2,
        save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True, logging_steps=1,
        remove_unused_columns=False,  # the collator reads the image column, which forward(x) does not name
    )  # fmt: skip
    collator = TimmImageCollator(base)
    trainer = Trainer(
        model=model, args=args, train_dataset=dataset, data_collator=collator, compute_loss_func=classification_loss
    )
    trainer.train()
    assert all(np.isfinite(log["loss"]) for log in trainer.state.log_history if "loss" in log)
    assert not torch.equal(bank(model).prompt_embeddings.detach(), before)
    for name, tensor in base.state_dict().items():
        if name in frozen:
            assert torch.equal(tensor, frozen[name]), name


def test_preprocessing_comes_from_pretrained_cfg():
    model = tiny_timm()
    model.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "input_size": (3, 16, 24)}
    assert timm_preprocessing(model)["interpolation"] == "bicubic"
    white = Image.new("RGB", (40, 40), (255, 255, 255))
    batch = TimmImageCollator(model)([{"image": white, "label": 1}])
    assert batch["x"].shape == (1, 3, 16, 24)
    assert torch.allclose(batch["x"], torch.full_like(batch["x"], 2.0))  # (1 - 0.5) / 0.25
    assert batch["labels"].tolist() == [1]


def test_an_official_checkpoint_becomes_a_timm_adapter(pixels):
    """Synthetic official layout: ``enc.transformer.prompt_embeddings`` (1, p, d), the deep rest (L-1, p, d) and the
    linear head ``head.last_layer``; the timm model's logits are its own head on the reference features."""
    generator = torch.Generator().manual_seed(5)
    shallow, deep = torch.randn(1, 2, WIDTH, generator=generator), torch.randn(DEPTH - 1, 2, WIDTH, generator=generator)
    weight, bias = torch.randn(7, WIDTH, generator=generator), torch.randn(7, generator=generator)
    official = {
        "enc.transformer.prompt_embeddings": shallow,
        "enc.transformer.deep_prompt_embeddings": deep,
        "enc.transformer.encoder.layer.0.attn.query.weight": torch.zeros(WIDTH, WIDTH),  # backbone keys: ignored
        "head.last_layer.weight": weight,
        "head.last_layer.bias": bias,
    }
    model = official_adapter(official, tiny_timm()).eval()
    features = reference_features(base_of(model), pixels, dict(enumerate(torch.cat([shallow, deep]))))
    with torch.no_grad():
        assert_equal_to_rounding(base_of(model).forward_features(pixels).double(), features)
        assert_equal_to_rounding(model(pixels).double(), features[:, 0] @ weight.double().T + bias.double())


def test_an_official_checkpoint_needs_a_timm_model_with_a_linear_head():
    """timm's in21k backbones come without a head (``num_classes=0``, an ``Identity``): the error says what to pass."""
    import_timm()
    from timm.models.vision_transformer import VisionTransformer

    base = VisionTransformer(img_size=32, patch_size=8, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, num_classes=0)
    official = {
        "enc.transformer.prompt_embeddings": torch.zeros(1, 2, WIDTH),
        "head.last_layer.weight": torch.zeros(7, WIDTH),
        "head.last_layer.bias": torch.zeros(7),
    }
    with pytest.raises(vpt_peft.ConversionError, match="num_classes > 0"):
        official_adapter(official, base)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in base.modules())


def test_unsupported_timm_blocks_are_refused_by_name_and_leave_the_model_unmodified():
    import_timm()
    from timm.models.vision_transformer import ResPostBlock

    model = tiny_timm(block_fn=ResPostBlock)
    with pytest.raises(UnsupportedModelError, match="VisionTransformer.*pre-norm Blocks"):
        get_peft_model(model, VisualPromptConfig(num_prompts=2, deep=True))
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_the_timm_entry_reads_sizes_off_the_module():
    backbone = find_backbone(tiny_timm(reg_tokens=2))
    assert (backbone.model_type, backbone.num_special_tokens, backbone.hidden_size) == ("timm_vit", 3, WIDTH)
    assert backbone.layer_head_dims == [WIDTH // HEADS] * DEPTH and backbone.patch_fan_in == 3 * 8 * 8
    assert vpt_peft.BACKBONES["timm_vit"].fused_qkv


def test_distilled_deit_prompts_follow_cls_and_distillation_token_and_both_heads_train(pixels):
    import_timm()
    from timm.models.deit import VisionTransformerDistilled

    torch.manual_seed(0)
    base = VisionTransformerDistilled(
        img_size=32, patch_size=8, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, num_classes=LABELS
    )
    model = perturbed(get_peft_model(base.eval().requires_grad_(False), VisualPromptConfig(num_prompts=2, deep=True)))
    model.eval()
    assert find_backbone(base).num_special_tokens == 2
    assert {n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad and "head" in n} == {
        "head",
        "head_dist",
    }
    want = reference_features(base_of(model), pixels, dict(enumerate(bank(model).prompt_embeddings.detach())))
    with torch.no_grad():
        assert_equal_to_rounding(base_of(model).forward_features(pixels).double(), want)
        assert_equal_to_rounding(model(pixels), base_of(model).forward_head(want.float()))


def test_a_timm_model_wrapped_by_transformers_trains_its_head(pixels):
    """``AutoModelForImageClassification`` loads a timm checkpoint as ``TimmWrapperForImageClassification``: the
    head sits on the wrapped timm model, not on the wrapper, and must still become the adapter's head."""
    import_timm()
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    torch.manual_seed(0)
    tiny = {"img_size": 32, "patch_size": 8, "embed_dim": WIDTH, "depth": DEPTH, "num_heads": HEADS}
    config = TimmWrapperConfig(architecture="vit_tiny_patch16_224", num_labels=LABELS, model_args=tiny)
    base = TimmWrapperForImageClassification(config).eval()
    assert find_backbone(base).heads == ["timm_model.head"]
    model = get_peft_model(base, VisualPromptConfig(num_prompts=2, deep=True))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("timm_model.head.modules_to_save.default" in n for n in trainable), sorted(trainable)
    model(pixel_values=pixels).logits.pow(2).mean().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "modules_to_save" in n and p.requires_grad)
