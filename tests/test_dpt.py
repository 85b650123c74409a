"""DPT on CLIP: logits against an independent reference, the loss, training, saving, ablations, few-shot."""

from __future__ import annotations

import copy
import re
import warnings

import datasets
import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import (
    Trainer,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
)

from vpt_peft import (
    AdapterMismatchError,
    DualPromptConfig,
    DualPromptEpochCallback,
    dual_prompt_optimizer,
    dual_prompt_parameter_groups,
    few_shot_subset,
    set_epoch,
)

from .clip_helpers import CLASSES, tiny_clip, tiny_tokenizer
from .clip_reference import cosine_logits, image_features, text_features
from .helpers import enable_checkpointing

SMALL = dict(class_names=CLASSES, text_n_ctx=4, visual_n_ctx=3, cavpt_num_tokens=3)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture
def images():
    torch.manual_seed(7)
    return torch.randn(4, 3, 16, 16)


def dpt(tokenizer, attn="sdpa", seed=0, **overrides):
    base = tiny_clip(tokenizer, attn=attn)
    torch.manual_seed(seed)
    model = get_peft_model(copy.deepcopy(base), DualPromptConfig(**{**SMALL, "tokenizer": tokenizer, **overrides}))
    with torch.no_grad():  # LayerNorm affine and biases away from their identity init, as after training
        for name, param in model.named_parameters():
            if "cavpt" in name and "norm" in name:
                param.add_(torch.randn_like(param) * 0.3)
    return base, model.eval()


def banks(model):
    clip = model.base_model.model
    text = clip.text_model.embeddings.prompt_adapter.dpt_text["default"]
    vision = clip.vision_model.embeddings.prompt_adapter.dpt_visual["default"]
    return text, vision


def reference(base, model, pixels):
    """(logits, top_k, aux) of the written-out DPT forward with the model's prompt tensors."""
    text, vision = banks(model)
    learned = text_features(base, text.class_token_ids, text.ctx) if text.ctx is not None else None
    template = text_features(base, text.template_token_ids)
    learned = template if learned is None else learned
    prompts = {i: getattr(vision, name)[row] for i, (name, row) in vision.layer_rows.items() if vision.num_prompts}
    generators = {i: vision.cavpt[slot] for i, slot in vision.cavpt_rows.items()}
    top_k = queries = None
    if generators:
        zero_shot, _ = image_features(base, pixels)
        top_k = cosine_logits(base, zero_shot, template).topk(vision.num_class_tokens, dim=-1).indices
        queries = learned[top_k]
    image, aux = image_features(base, pixels, prompts, generators, queries)
    return cosine_logits(base, image, learned), top_k, aux


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("path", ["auto", "sequence"])
@pytest.mark.parametrize(
    "overrides",
    [{}, dict(cavpt_start_layer=2), dict(csc=True), dict(ctx_init="a photo of a")],
    ids=["dpt", "cavpt-2-layers", "csc", "ctx-init"],
)
def test_logits_match_reference(tokenizer, images, attn, path, overrides):
    base, model = dpt(tokenizer, attn=attn, prompt_path=path, **overrides)
    out = model(pixel_values=images)
    want, top_k, aux = reference(base, model, images)
    torch.testing.assert_close(out.logits.double(), want, atol=1e-5, rtol=0)
    assert torch.equal(out.top_k, top_k)
    for got, expected in zip(out.aux_logits, aux, strict=True):
        torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(visual_n_ctx=0, use_cavpt=False),
        dict(text_n_ctx=0, use_cavpt=False),
        dict(use_cavpt=False),
        dict(cavpt_start_layer=4),
    ],
    ids=["coop", "vpt-clip", "vlp", "vlp-start-n+1"],
)
def test_ablations_match_reference(tokenizer, images, overrides):
    base, model = dpt(tokenizer, **overrides)
    out = model(pixel_values=images, labels=torch.tensor([0, 1, 2, 3]))
    assert out.aux_logits is None and out.top_k is None and torch.isfinite(out.loss)
    torch.testing.assert_close(out.logits.double(), reference(base, model, images)[0], atol=1e-5, rtol=0)


def test_loss_is_the_sum_of_its_parts_and_the_warmup_switches_off(tokenizer, images):
    _, model = dpt(tokenizer, zs_warmup_epochs=2)
    top_k = model(pixel_values=images).top_k
    absent = next(c for c in range(len(CLASSES)) if c not in top_k[1])
    labels = torch.tensor([top_k[0, 0], absent, top_k[2, 2], top_k[3, 1]])  # sample 1: true class not picked

    def nll(logits, y):
        return -(logits.double().log_softmax(-1)[torch.arange(len(y)), y]).mean()

    def aux(out):
        terms = [
            -out.aux_logits[0][b, k].double().log_softmax(-1)[labels[b]]
            for b in range(4)
            for k in range(3)
            if out.top_k[b, k] == labels[b]
        ]
        assert len(terms) == 3
        return torch.stack(terms).mean()

    out = model(pixel_values=images, labels=labels)
    want = nll(out.coop_logits, labels) + nll(out.vpt_logits, labels) + 0.1 * nll(out.logits, labels) + 0.3 * aux(out)
    torch.testing.assert_close(out.loss.double(), want, atol=1e-6, rtol=0)
    set_epoch(model, 2)
    out = model(pixel_values=images, labels=labels)
    assert out.coop_logits is None and out.vpt_logits is None
    torch.testing.assert_close(out.loss.double(), nll(out.logits, labels) + 0.3 * aux(out), atol=1e-6, rtol=0)


def pixel_dataset(n=16):
    torch.manual_seed(3)
    labels = torch.arange(n) % len(CLASSES)
    pixels = torch.randn(n, 3, 16, 16) + labels[:, None, None, None] * 0.3
    return datasets.Dataset.from_dict({"pixel_values": pixels.numpy(), "labels": labels.numpy()}).with_format("torch")


def test_trainer_trains_only_prompts_and_follows_the_epoch(tokenizer, tmp_path):
    _, model = dpt(tokenizer, zs_warmup_epochs=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_train_epochs=2,
        remove_unused_columns=False,
        report_to=[],
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        label_names=["labels"],
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=pixel_dataset(),
        optimizers=(dual_prompt_optimizer(model), None),
        callbacks=[DualPromptEpochCallback()],
    )
    trainer.train()
    assert model.base_model.epoch == 1
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and p.numel()}
    assert changed == trainable and all(".dpt_" in n for n in trainable)
    assert (
        any("ctx" in n for n in changed)
        and any("cavpt" in n for n in changed)
        and any("prompt_embeddings" in n for n in changed)
    )


def test_parameter_groups_follow_the_official_learning_rates(tokenizer):
    _, model = dpt(tokenizer)
    visual, text = dual_prompt_parameter_groups(model)
    assert (visual["lr"], text["lr"], visual["weight_decay"]) == (0.01, 0.002, 5e-4)
    assert [p.shape for p in text["params"]] == [torch.Size([4, 16])]
    optimizer = dual_prompt_optimizer(model)
    assert optimizer.defaults["momentum"] == 0.9 and not optimizer.defaults["nesterov"]


def test_class_text_is_encoded_once_per_step(tokenizer, images):
    _, model = dpt(tokenizer)
    seen = []
    model.base_model.model.text_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    labels = torch.tensor([0, 1, 2, 3])
    model(pixel_values=images, labels=labels).loss.backward()  # first step also caches the template features
    seen.clear()
    for _ in range(2):
        model(pixel_values=images, labels=labels).loss.backward()
    length = model.peft_config["default"].text_length
    assert seen == [(len(CLASSES), length), (1, 1)] * 2  # the class prompts once, CLIPModel's own text call a dummy


def test_a_changed_class_list_is_refused_at_load(tokenizer, tmp_path):
    _, model = dpt(tokenizer)
    model.save_pretrained(tmp_path)
    config = DualPromptConfig.from_pretrained(tmp_path)
    config.class_names = CLASSES[:-1]
    with pytest.raises(AdapterMismatchError, match="6 classes"):
        PeftModel.from_pretrained(tiny_clip(tokenizer), tmp_path, config=config)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(class_names=[]), "class_names"),
        (dict(text_n_ctx=-1), "text_n_ctx"),
        (dict(cavpt_num_tokens=0), "cavpt_num_tokens"),
        (dict(aux_loss_weight=-0.1), "aux_loss_weight"),
        (dict(zero_shot_template="a photo"), "zero_shot_template"),
        (dict(prompt_path="fast"), "prompt_path"),
        (dict(cavpt_start_layer=0), "cavpt_start_layer"),
    ],
)
def test_bad_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DualPromptConfig(**{**SMALL, **kwargs})


def test_clear_errors_for_wrong_models_and_missing_tokenizer(tokenizer, images):
    with pytest.raises(TypeError, match="CLIPModel"):
        get_peft_model(
            ViTForImageClassification(
                ViTConfig(
                    hidden_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=4,
                    intermediate_size=8,
                    image_size=16,
                    patch_size=8,
                )
            ),
            DualPromptConfig(**SMALL, tokenizer=tokenizer),
        )
    with pytest.raises(ValueError, match="tokenizer"):
        get_peft_model(tiny_clip(tokenizer), DualPromptConfig(**SMALL))
    with pytest.raises(ValueError, match="cavpt_start_layer=5 out of range"):
        get_peft_model(tiny_clip(tokenizer), DualPromptConfig(**SMALL, tokenizer=tokenizer, cavpt_start_layer=5))
    _, model = dpt(tokenizer)
    with pytest.raises(ValueError, match="no input_ids"):
        model(pixel_values=images, input_ids=banks(model)[0].class_token_ids)


def test_few_shot_subset_is_seeded_and_balanced():
    data = datasets.Dataset.from_dict({"label": [i % 4 for i in range(40)] + [3], "x": list(range(41))})
    subset = few_shot_subset(data, shots=2, seed=1)
    assert sorted(subset["label"]) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert subset["x"] == few_shot_subset(data, shots=2, seed=1)["x"]
    assert subset["x"] != few_shot_subset(data, shots=2, seed=2)["x"]
    assert len(few_shot_subset(data, shots=20)) == 41  # classes with fewer examples keep them all
    with pytest.raises(ValueError, match="shots"):
        few_shot_subset(data, shots=0)


def test_scheduler_follows_dassl_warmup_then_cosine(tokenizer):
    import math

    from vpt_peft import dual_prompt_scheduler

    _, model = dpt(tokenizer)
    optimizer = dual_prompt_optimizer(model)
    scheduler = dual_prompt_scheduler(optimizer, epochs=20, steps_per_epoch=2)
    lrs = []
    for _ in range(40):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx([1e-5, 1e-5]) and lrs[19] == pytest.approx(
        [1e-5, 0.002 * 0.5 * (1 + math.cos(math.pi * 8 / 20))]
    )
    assert lrs[20] == pytest.approx([0.01, 0.002 * 0.5 * (1 + math.cos(math.pi * 9 / 20))]) and lrs[21] == lrs[20]
    assert lrs[2][1] == pytest.approx(0.002)


def test_reentrant_checkpointing_refusal_names_a_current_method(tokenizer, images):
    """CAVPT refuses reentrant checkpointing (the matrix checks both kinds: tests/test_backbones_training.py); the
    fix the message names is a method the installed transformers has and does not deprecate, and it works."""
    _, model = dpt(tokenizer)
    enable_checkpointing(model.base_model.model, reentrant=True)
    labels = torch.tensor([0, 1, 2, 3])
    model.train()
    with pytest.raises(ValueError, match="non-reentrant") as error:
        model(pixel_values=images, labels=labels)
    method = re.search(r"(\w+_checkpointing_enable)\(", str(error.value)).group(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kwargs = {method.replace("_enable", "_kwargs"): {"use_reentrant": False}}
        getattr(model.base_model.model, method)(**kwargs)
    model(pixel_values=images, labels=labels).loss.backward()


def test_set_and_delete_adapter_reach_the_text_sidecar(tokenizer, images):
    """DPT has two sidecars: switching or deleting an adapter must reach the text context too."""
    _, model = dpt(tokenizer)
    config = copy.deepcopy(model.peft_config["default"])
    config.tokenizer = tokenizer
    model.add_adapter("b", config)
    text = model.base_model.model.text_model.embeddings.prompt_adapter
    model.set_adapter("b")
    assert text.active_adapters == ["b"] and model.active_adapters == ["b"]
    model.delete_adapter("default")
    assert "default" not in text.banks and list(model.peft_config) == ["b"]
