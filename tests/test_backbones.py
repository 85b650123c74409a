"""Every method on every backbone family: the forward's contract, the reference forward, the two prompt paths.

The cells come from tests/backbone_cases.py (backbone rows x registered methods); checks that only make sense for
one backbone (Swin's windows, BEiT's biases, CLIP's text tower) follow the matrix.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from peft import get_peft_model
from peft.utils import ModulesToSaveWrapper
from transformers import BertConfig, BertModel, ResNetConfig, ResNetForImageClassification, Trainer, TrainingArguments

import vpt_peft
from vpt_peft import UnsupportedModelError, VisualPromptConfig

from .backbone_cases import (
    CASES,
    BackboneCase,
    MethodCase,
    adapted,
    assert_same,
    backbone_of,
    build,
    family,
    image_inputs,
    inputs,
    main_output,
    matrix,
    perturb,
    run,
    takes_both_paths,
    tensors,
    training_step,
    vision_methods,
)
from .helpers import sidecar
from .reference import reference_sequence


def _shapes(output) -> dict:
    """Every tensor a forward returns, with the hidden states of each layer (nested outputs of a dual encoder too)."""
    shapes = {}
    for key, value in output.items():
        if isinstance(value, torch.Tensor):
            shapes[key] = value.shape
        elif isinstance(value, tuple) and all(isinstance(v, torch.Tensor) for v in value):
            shapes[key] = [v.shape for v in value]
        elif hasattr(value, "items"):
            shapes.update({f"{key}.{k}": v for k, v in _shapes(value).items()})
    return shapes


@pytest.mark.parametrize("case, method", matrix(vision_methods))
def test_outputs_keep_the_base_shapes_and_the_prompts_matter(case: BackboneCase, method: MethodCase, pixels):
    """Prompt positions never leak into what the model returns (hidden states of every layer included), and the
    prompts do change it."""
    with torch.no_grad():
        base_out = build(case)(**inputs(case, None, pixels), output_hidden_states=True)
        out = adapted(case, method)(**inputs(case, method, pixels), output_hidden_states=True)
    assert _shapes(out) == _shapes(base_out)
    assert any("hidden_states" in key for key in _shapes(out))
    want = tensors(base_out)
    assert any(not torch.allclose(v, want[k]) for k, v in tensors(out).items()), "the prompts changed nothing"


@pytest.mark.parametrize("case, method", matrix())
def test_disable_adapter_and_unload_give_the_base_back(case: BackboneCase, method: MethodCase, pixels):
    """Disabled: the base bit for bit (same ops, same shapes). Unloaded: the base with every hook gone, its own
    tensors, and (peft's rule for ``modules_to_save``) the adapter's trained heads in place of the old ones."""
    base_kwargs = inputs(case, None, pixels)
    expected = build(case)
    want = run(expected, base_kwargs)
    model = adapted(case, method)
    perturb(model)
    with model.disable_adapter():
        assert_same(run(model, base_kwargs), want)
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_and_unload()
    for name, module in model.base_model.model.named_modules():
        if isinstance(module, ModulesToSaveWrapper):
            expected.get_submodule(name).load_state_dict(module.modules_to_save["default"].state_dict())
    unloaded = model.unload().eval()
    assert_same(run(unloaded, base_kwargs), run(expected, base_kwargs))
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in unloaded.modules())
    assert unloaded.config._attn_implementation == expected.config._attn_implementation
    state = unloaded.state_dict()
    assert state.keys() == expected.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in expected.state_dict().items())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_zero_prompts_are_bit_identical_to_the_base(case: BackboneCase, pixels):
    kwargs = inputs(case, None, pixels)
    base_out = run(build(case), kwargs)
    for config in (
        VisualPromptConfig(num_prompts=0),
        VisualPromptConfig(num_prompts=0, deep=True),
        vpt_peft.KVPromptConfig(num_prompts=0, num_kv_prompts=0),
    ):
        assert_same(run(get_peft_model(build(case), config).eval(), kwargs), base_out)


def _references(case: BackboneCase, method: MethodCase) -> bool:
    """Vision prompts on a backbone with a hand-written layout (the sequence variant is the kv check's business)."""
    return case.layout is not None and not method.dual_encoder and not method.overrides


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("case, method", matrix(_references))
def test_vision_prompts_match_the_independent_reference(case: BackboneCase, method: MethodCase, attn: str, pixels):
    """The backbone's last hidden state equals tests/reference.py's with the bank's prompts (after the method's own
    transform: VFPT's Fourier mix, E2VPT's gates) and key-value prompts."""
    base = build(case)
    base.set_attn_implementation(attn)
    model = get_peft_model(base, method.config()).eval()
    perturb(model)
    bank = sidecar(model).banks["default"]
    with torch.no_grad():
        prompts = {layer: bank.prompts(slot, 1, torch.float32)[0] for layer, slot in bank.layer_rows.items()}
        kv = {}
        for layer, (key, value) in getattr(bank, "kv_rows", {}).items():
            kv[layer] = (getattr(bank, key[0])[key[1]], getattr(bank, value[0])[value[1]])
        backbone = backbone_of(model.base_model.model, case)
        images = image_inputs(case, pixels)
        got = backbone(**images).last_hidden_state
        want = reference_sequence(backbone, case.layout, images, prompts, case.num_special, kv)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)


def _has_both_paths(case: BackboneCase, method: MethodCase) -> bool:
    """A registered method whose adapter can take either prompt path on this backbone."""
    return takes_both_paths(method)


@pytest.mark.parametrize("case, method", matrix(_has_both_paths))
def test_key_value_path_equals_the_sequence_path(case: BackboneCase, method: MethodCase, pixels):
    """Same outputs and gradients in training mode (both paths draw each layer's prompt dropout mask in the same
    order): the key-value path is exact, not an approximation."""
    kwargs = inputs(case, method, pixels)
    models = [adapted(case, method, prompt_path=path) for path in ("kv", "sequence")]
    perturb(models[0])
    models[1].load_state_dict(models[0].state_dict())
    outputs, grads = [], []
    for model in models:
        out, gradients = training_step(model, lambda model: model(**kwargs))
        outputs.append({k: v.detach() for k, v in tensors(out).items()})
        grads.append(gradients)
    if method.fields().get("prompt_dropout", 0) > 0:  # the masks were drawn, so "same masks" means something
        assert not torch.equal(main_output(outputs[0]), main_output(run(models[0].eval(), kwargs)))
    assert outputs[0].keys() == outputs[1].keys()
    for key in outputs[0]:
        torch.testing.assert_close(outputs[0][key], outputs[1][key], atol=1e-5, rtol=0, msg=key)
    assert grads[0].keys() == grads[1].keys() and any("prompt_adapter" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


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


def _image_dataset(case: BackboneCase, n: int = 24) -> Dataset:
    """Images whose brightness is their label, in the inputs the case's model takes (one row per sample)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=n)
    images = rng.normal(size=(n, 3, 32, 32)).astype("float32") + labels[:, None, None, None]
    columns = {k: v.tolist() for k, v in image_inputs(case, torch.from_numpy(images)).items()}
    return Dataset.from_dict({**columns, "labels": labels.tolist()}).with_format("torch")


def _pooled_loss(outputs, labels, num_items_in_batch=None) -> torch.Tensor:
    """A classification loss for a bare backbone: the first channels of its token mean as logits."""
    logits = outputs["last_hidden_state"].mean(1)[:, :3]
    return torch.nn.functional.cross_entropy(logits, labels)


def _trainer_rows() -> list[BackboneCase]:
    """Every classifier row, and the first row of each vision family that has none (DINOv3, AIMv2 and ViT-MAE have
    no HF classifier: their prompts are trained through :func:`_pooled_loss`)."""
    with_classifier = {family(c) for c in CASES if c.classifier}
    rows, seen = [], set()
    for case in CASES:
        bare = not case.dual_encoder and family(case) not in with_classifier and family(case) not in seen
        if case.classifier or bare:
            rows.append(case)
            seen.add(family(case))
    return rows


@pytest.mark.parametrize("case", _trainer_rows(), ids=lambda c: c.name)
def test_trainer_trains_prompts_and_head_only(case: BackboneCase, tmp_path):
    base = build(case)
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, VisualPromptConfig(num_prompts=2, deep=True))
    prompts = {n: p.detach().clone() for n, p in model.named_parameters() if "prompt_adapter" in n}
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
        remove_unused_columns=False,
    )
    loss = None if case.classifier else _pooled_loss
    trainer = Trainer(model=model, args=args, train_dataset=_image_dataset(case), compute_loss_func=loss)
    trainer.train()
    assert all(np.isfinite(log["loss"]) for log in trainer.state.log_history if "loss" in log)
    assert any(not torch.equal(p, prompts[n]) for n, p in model.named_parameters() if n in prompts)
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
    with pytest.raises(UnsupportedModelError, match="Supported families.*swin.*vit") as error:
        get_peft_model(model, VisualPromptConfig(num_prompts=2))
    assert "register_backbone" in str(error.value)
    assert not any("prompt_adapter" in name for name, _ in model.named_modules())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_docs_support_matrix_is_generated_from_the_table():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "docs" / "gen_backbones.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("case, method", matrix(lambda case, method: case.dual_encoder and not method.dual_encoder))
def test_vision_prompts_on_a_dual_encoder_leave_its_text_tower_alone(case: BackboneCase, method: MethodCase, pixels):
    model = adapted(case, method)
    perturb(model)
    ids = case.text_inputs()["input_ids"]
    with torch.no_grad():
        base = build(case)
        want_image, want_text = base.get_image_features(pixel_values=pixels), base.get_text_features(input_ids=ids)
        image, text = model.get_image_features(pixel_values=pixels), model.get_text_features(input_ids=ids)
    assert all("vision_model" in n for n, _ in model.named_modules() if n.endswith("prompt_adapter"))
    assert not torch.allclose(image.pooler_output, want_image.pooler_output)
    assert torch.equal(text.pooler_output, want_text.pooler_output)


def test_a_registered_method_joins_the_matrix(request, pixels):
    """A method is one registration away from every check: registered here from inside the test (a VPT subclass
    with its own peft type and prefix), it is a --method choice of the CLI and a column of the matrix, with no
    test edit; the registries and peft's tables are restored afterwards so no other test sees it."""
    from dataclasses import dataclass

    from peft import mapping
    from peft.utils.peft_types import PeftType

    from vpt_peft.cli import build_parser
    from vpt_peft.engine.registration import METHODS, register_method
    from vpt_peft.recipes import RECIPES, Preset, Recipe, register_recipe
    from vpt_peft.tuners.vpt import VisualPromptLayer, VisualPromptModel

    from .test_backbones_adapters import test_adapter_state_dict_holds_prompts_and_heads_only

    tables = [
        RECIPES,
        METHODS,
        mapping.PEFT_TYPE_TO_CONFIG_MAPPING,
        mapping.PEFT_TYPE_TO_TUNER_MAPPING,
        mapping.PEFT_TYPE_TO_PREFIX_MAPPING,
        mapping.PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
    ]
    snapshots = [dict(table) for table in tables]

    def unregister() -> None:
        for table, snapshot in zip(tables, snapshots):
            table.clear()
            table.update(snapshot)
        member = PeftType.__members__.get("THROWAWAY")
        if member is not None:
            del PeftType._member_map_["THROWAWAY"]
            PeftType._value2member_map_.pop(member.value, None)
            PeftType._member_names_.remove("THROWAWAY")
            type.__delattr__(PeftType, "THROWAWAY")

    request.addfinalizer(unregister)

    @dataclass
    class ThrowawayConfig(VisualPromptConfig):
        def __post_init__(self) -> None:
            super().__post_init__()
            self.peft_type = PeftType.THROWAWAY

    class ThrowawayLayer(VisualPromptLayer):
        adapter_layer_names = ("throwaway_prompts",)

    class ThrowawayModel(VisualPromptModel):
        prefix = "throwaway_"
        tuner_layer_cls = ThrowawayLayer

    register_method("throwaway", ThrowawayConfig, ThrowawayModel)
    register_recipe(
        Recipe("throwaway", ThrowawayConfig, lambda task: Preset("throwaway", task, {"deep": True}, 8, ThrowawayConfig))
    )

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    method_flag = next(a for a in train._actions if "--method" in a.option_strings)
    assert "throwaway" in method_flag.help
    argv = ["--model", "m", "--dataset", "d", "--output", "o", "--method", "throwaway"]
    assert train.parse_args(argv).method == "throwaway"

    cells = {p.id: p.values for p in matrix()}
    assert {f"{case.name}-throwaway" for case in CASES} <= cells.keys()  # a vision recipe: every backbone row
    case, method = cells["vit-throwaway"]
    test_disable_adapter_and_unload_give_the_base_back(case, method, pixels)
    test_adapter_state_dict_holds_prompts_and_heads_only(case, method, pixels, request.getfixturevalue("tmp_path"))
    assert any(".throwaway_prompts." in name for name, _ in adapted(case, method).named_parameters())

    unregister()
    assert "throwaway" not in RECIPES and not any(i.endswith("-throwaway") for i in (p.id for p in matrix()))
    assert "THROWAWAY" not in PeftType.__members__
