"""Every method on every backbone family: one matrix of cases (tests/backbone_cases.py), one set of checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from peft import PeftModel, get_peft_model
from transformers import BertConfig, BertModel, ResNetConfig, ResNetForImageClassification, Trainer, TrainingArguments

import vpt_peft
from vpt_peft import UnsupportedModelError, VisualPromptConfig

from .backbone_cases import CASES, METHODS, BackboneCase, backbone_of, build
from .helpers import sidecar
from .reference import _lin, _ln, attention

MATRIX = [pytest.param(case, method, id=f"{case.name}-{method}") for case in CASES for method in METHODS]
REFERENCE_MATRIX = [p for p in MATRIX if p.values[0].layout is not None and p.values[1] != "vpt-deep-sequence"]


def _tensors(output) -> dict[str, torch.Tensor]:
    return {k: v for k, v in output.items() if isinstance(v, torch.Tensor)}


def _run(model, pixels) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return _tensors(model(pixel_values=pixels))


def _assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("case, method", MATRIX)
def test_method_on_backbone_keeps_the_contract(case: BackboneCase, method: str, pixels, tmp_path):
    """Base shapes, prompts matter, disable/unload give the base back, save/load round-trips, grads stay local."""
    base_out = _run(build(case), pixels)
    model = get_peft_model(build(case), METHODS[method]()).eval()
    out = _run(model, pixels)
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in base_out.items()}
    assert any(not torch.allclose(out[k], base_out[k]) for k in out), "the prompts changed nothing"

    with model.disable_adapter():
        _assert_same(_run(model, pixels), base_out)

    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(build(case), tmp_path).eval()
    _assert_same(_run(reloaded, pixels), out)

    model.train()
    main = next(iter(model(pixel_values=pixels).values()))
    main.float().pow(2).mean().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all("prompt_adapter" in n or "modules_to_save" in n for n in grads), grads
    assert any("prompt_adapter" in n for n in grads)

    _assert_same(_run(model.unload().eval(), pixels), base_out)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_zero_prompts_are_bit_identical_to_the_base(case: BackboneCase, pixels):
    base_out = _run(build(case), pixels)
    for config in (
        VisualPromptConfig(num_prompts=0, deep=True),
        vpt_peft.KVPromptConfig(num_prompts=0, num_kv_prompts=0),
    ):
        _assert_same(_run(get_peft_model(build(case), config).eval(), pixels), base_out)


def _reference_sequence(case: BackboneCase, backbone, pixels, prompts: dict, kv: dict) -> torch.Tensor:
    """The backbone's final token sequence with prompts in the sequence, written out block by block.

    Prompting starts after the HF embeddings (prompts never get position embeddings); each listed layer
    inserts (first) or replaces (later) its prompts after the special tokens; ``kv`` adds unprojected keys
    and values to a layer's attention (E2VPT); prompt positions are dropped at the end.
    """
    layout, n = case.layout, case.num_special
    x = backbone.embeddings(pixels).double()
    if layout.pre_norm:
        x = _ln(x, backbone.get_submodule(layout.pre_norm))
    inserted = 0
    for i, layer in enumerate(vpt_peft.find_backbone(backbone).layers):
        if i in prompts:
            P = prompts[i].double().unsqueeze(0).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :n], P, x[:, n + inserted :]], dim=1)
            inserted = P.shape[1]
        attn = layer.get_submodule(layout.attention)
        extra = tuple(t.double().unsqueeze(0) for t in kv[i]) if i in kv else None
        heads = backbone.config.num_attention_heads
        a = attention(attn, _ln(x, layer.get_submodule(layout.norm1)), heads, extra, layout.out_proj)
        x = x + (a * layer.get_parameter(layout.scale1).double() if layout.scale1 else a)
        mlp = layer.mlp
        m = _lin(layout.activation(_lin(_ln(x, layer.get_submodule(layout.norm2)), mlp.fc1)), mlp.fc2)
        x = x + (m * layer.get_parameter(layout.scale2).double() if layout.scale2 else m)
    if layout.final_norm:
        x = _ln(x, backbone.get_submodule(layout.final_norm))
    return torch.cat([x[:, :n], x[:, n + inserted :]], dim=1)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("case, method", REFERENCE_MATRIX)
def test_vit_like_backbones_match_an_independent_reference(case: BackboneCase, method: str, attn: str, pixels):
    base = build(case)
    base.set_attn_implementation(attn)
    model = get_peft_model(base, METHODS[method]()).eval()
    bank = sidecar(model).banks["default"]
    with torch.no_grad():
        prompts = {layer: bank.prompts(slot, 1, torch.float32)[0] for layer, slot in bank.layer_rows.items()}
        kv = {}
        for layer, (key, value) in getattr(bank, "kv_rows", {}).items():
            kv[layer] = (getattr(bank, key[0])[key[1]], getattr(bank, value[0])[value[1]])
        backbone = backbone_of(model.base_model.model, case)
        got = backbone(pixel_values=pixels).last_hidden_state
        want = _reference_sequence(case, backbone, pixels, prompts, kv)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["vpt-deep", "vfpt", "e2vpt"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_key_value_path_equals_the_sequence_path(case: BackboneCase, method: str, pixels):
    """Same outputs and same prompt gradients: the fast path is exact, not an approximation."""
    outputs, grads = [], []
    for path in ("kv", "sequence"):
        config = METHODS[method]()
        config.prompt_path = path
        torch.manual_seed(1)
        model = get_peft_model(build(case), config).eval()
        out = _tensors(model(pixel_values=pixels))
        next(iter(out.values())).pow(2).sum().backward()
        outputs.append({k: v.detach() for k, v in out.items()})
        grads.append({n: p.grad for n, p in model.named_parameters() if "prompt_adapter" in n and p.grad is not None})
    for key in outputs[0]:
        torch.testing.assert_close(outputs[0][key], outputs[1][key], atol=1e-5, rtol=0)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", [c for c in CASES if c.name in ("beit", "swin")], ids=lambda c: c.name)
def test_prompts_change_only_the_layers_from_their_own_on(case: BackboneCase, pixels):
    """Prompts in the last block alone leave every earlier hidden state untouched (relative biases, windows)."""
    num_layers = vpt_peft.find_backbone(build(case)).num_layers
    config = VisualPromptConfig(num_prompts=3, deep=True, prompt_layers=[num_layers - 1])
    with torch.no_grad():
        base = build(case)(pixel_values=pixels, output_hidden_states=True)
        prompted = get_peft_model(build(case), config).eval()(pixel_values=pixels, output_hidden_states=True)
    for want, got in zip(base.hidden_states[:-1], prompted.hidden_states[:-1]):
        assert torch.equal(got, want)
    assert not torch.allclose(prompted.logits, base.logits)


def test_swin_stores_one_prompt_tensor_per_stage_width():
    swin = next(c for c in CASES if c.name == "swin")
    model = get_peft_model(build(swin), vpt_peft.KVPromptConfig(num_prompts=3, num_kv_prompts=2))
    shapes = {k.rsplit(".", 1)[-1]: tuple(v.shape) for k, v in model.state_dict().items() if "prompt_adapter" in k}
    assert shapes["stage0_prompt_embeddings"] == (2, 3, 16) and shapes["stage1_prompt_embeddings"] == (2, 3, 32)
    assert shapes["stage0_kv_prompts"] == (2, 2, 16) and shapes["stage1_kv_prompts"] == (2, 2, 32)


def _image_dataset(n: int = 24) -> Dataset:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=n)
    images = rng.normal(size=(n, 3, 32, 32)).astype("float32") + labels[:, None, None, None]
    return Dataset.from_dict({"pixel_values": images.tolist(), "labels": labels.tolist()}).with_format("torch")


@pytest.mark.parametrize("case", [c for c in CASES if c.classifier], ids=lambda c: c.name)
def test_trainer_trains_prompts_and_head_only(case: BackboneCase, tmp_path):
    base = build(case)
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, VisualPromptConfig(num_prompts=2, deep=True))
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_train_epochs=1,
        learning_rate=1e-2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        logging_steps=1,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_image_dataset())
    trainer.train()
    assert all(np.isfinite(log["loss"]) for log in trainer.state.log_history if "loss" in log)
    for name, tensor in base.state_dict().items():
        if name in frozen:
            assert torch.equal(tensor, frozen[name]), name


@pytest.mark.parametrize(
    "model",
    [
        ResNetForImageClassification(ResNetConfig(hidden_sizes=[8, 16], depths=[1, 1], embedding_size=8)),
        BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37)),
    ],
    ids=["resnet", "bert"],
)
def test_unsupported_models_name_the_supported_families(model):
    with pytest.raises(UnsupportedModelError, match="swin") as error:
        get_peft_model(model, VisualPromptConfig(num_prompts=2))
    assert "register_backbone" in str(error.value)
    assert not any("prompt_adapter" in name for name, _ in model.named_modules())


def test_docs_support_matrix_is_generated_from_the_table():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "docs" / "gen_backbones.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_clip_model_prompts_its_vision_tower_only(pixels):
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    from .backbone_cases import TINY

    def clip():
        torch.manual_seed(0)
        text = CLIPTextConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
        return CLIPModel(
            CLIPConfig(vision_config=CLIPVisionConfig(**TINY).to_dict(), text_config=text.to_dict())
        ).eval()

    ids = torch.tensor([[49406, 5, 6, 49407]])
    with torch.no_grad():
        base = clip()
        want_image, want_text = base.get_image_features(pixel_values=pixels), base.get_text_features(input_ids=ids)
        model = get_peft_model(clip(), VisualPromptConfig(num_prompts=3, deep=True)).eval()
        image, text = model.get_image_features(pixel_values=pixels), model.get_text_features(input_ids=ids)
    assert all("vision_model" in n for n, _ in model.named_modules() if n.endswith("prompt_adapter"))
    assert not torch.allclose(image.pooler_output, want_image.pooler_output)
    assert torch.equal(text.pooler_output, want_text.pooler_output)
