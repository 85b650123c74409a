"""Many tasks on one backbone: mixed-task batches, per-task heads, adapter management (issue 8)."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel, get_peft_model

import vpt_peft
import vpt_peft.engine.attention
from vpt_peft import (
    BASE_ADAPTER,
    AdapterMismatchError,
    FourierPromptConfig,
    KVPromptConfig,
    VisualPromptConfig,
    split_logits,
)
from vpt_peft.tuners.e2vpt import prune_prompts

from .backbone_cases import CASES, build, image_inputs
from .helpers import MODEL_CLASSES, assert_equal_to_rounding, tiny_vit

# One row per method family: the adapters (name -> config) that share one model. Prompt counts, depth,
# paths, prompted layers and head sizes differ on purpose, so that every batch needs padding.
FAMILIES = {
    "vpt": {
        "deep_kv": VisualPromptConfig(num_prompts=4, deep=True),
        "shallow": VisualPromptConfig(num_prompts=2),
        "deep_seq": VisualPromptConfig(num_prompts=4, deep=True, prompt_path="sequence"),
        "late": VisualPromptConfig(num_prompts=3, deep=True, prompt_layers=[1, 2]),
        "five": VisualPromptConfig(num_prompts=4, deep=True, num_labels=5),
    },
    "vfpt": {
        "vpt": FourierPromptConfig(num_prompts=4, deep=True, fourier_ratio=0.0),
        "fourier": FourierPromptConfig(num_prompts=4, deep=True, prompt_path="sequence", num_labels=2),
        "shallow": FourierPromptConfig(num_prompts=6, fourier_ratio=0.5),
    },
    "e2vpt": {
        "kv5": KVPromptConfig(num_prompts=4, num_kv_prompts=5),
        "kv2": KVPromptConfig(num_prompts=2, num_kv_prompts=2, prompt_path="sequence", num_labels=4),
        "vpt": KVPromptConfig(num_prompts=3, num_kv_prompts=0, gates=False),
    },
}
NAMES = {
    "vpt": ["deep_kv", "shallow", BASE_ADAPTER, "deep_seq", "late", "deep_kv", "five", "shallow"],
    "vfpt": ["fourier", BASE_ADAPTER, "vpt", "shallow", "fourier", "vpt"],
    "e2vpt": ["kv2", "kv5", BASE_ADAPTER, "vpt", "kv5", "kv2"],
}


def perturb(model: torch.nn.Module, seed: int = 1) -> None:
    """Move prompts and heads off their init so that every task computes something different."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "prompt" in name or "modules_to_save" in name or "gates" in name:
                param.add_(torch.randn_like(param) * 0.3)


def family_model(family: str, attn: str = "sdpa", cls=MODEL_CLASSES["vit"]) -> PeftModel:
    adapters = list(FAMILIES[family].items())
    model = get_peft_model(tiny_vit(cls, attn=attn), copy.deepcopy(adapters[0][1]), adapter_name=adapters[0][0])
    for name, config in adapters[1:]:
        model.add_adapter(name, copy.deepcopy(config))
    perturb(model)
    return model.eval()


def run_as(model: PeftModel, name: str, pixels: torch.Tensor | dict):
    """The reference: ``pixels`` (or the forward's image inputs) through ``model`` with only adapter ``name`` (or the
    base model)."""
    inputs = pixels if isinstance(pixels, dict) else {"pixel_values": pixels}
    if name == BASE_ADAPTER:
        with model.disable_adapter():
            return model(**inputs, output_hidden_states=True)
    model.set_adapter(name)
    return model(**inputs, output_hidden_states=True)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", list(FAMILIES))
@torch.no_grad()
def test_mixed_batch_equals_each_sample_alone(family, attn):
    model = family_model(family, attn)
    names = NAMES[family]
    torch.manual_seed(0)
    pixels = torch.randn(len(names), 3, 32, 32)
    mixed = model(pixels, adapter_names=names, output_hidden_states=True)
    width = mixed.logits.shape[1]
    for i, name in enumerate(names):
        alone = run_as(model, name, pixels[i : i + 1])
        # Every block's output, prompts stripped, for every sample: equal to float rounding (a sample's row is
        # computed by other kernels in a batch of 8 than alone, see assert_equal_to_rounding).
        assert len(mixed.hidden_states) == len(alone.hidden_states)
        for got, want in zip(mixed.hidden_states, alone.hidden_states):
            assert_equal_to_rounding(got[i], want[0])
        classes = alone.logits.shape[1]
        assert_equal_to_rounding(mixed.logits[i, :classes], alone.logits[0])
        assert torch.isneginf(mixed.logits[i, classes:]).all() and classes + len(mixed.logits[i, classes:]) == width
    for name in dict.fromkeys(names):
        rows = [i for i, n in enumerate(names) if n == name]
        task = run_as(model, name, pixels[rows])
        assert_equal_to_rounding(mixed.logits[rows, : task.logits.shape[1]], task.logits)
    cut = split_logits(mixed.logits, names, model)
    assert [len(row) for row in cut] == [run_as(model, n, pixels[:1]).logits.shape[1] for n in names]


@torch.no_grad()
def test_mixed_batch_on_deit_with_two_heads():
    model = family_model("vpt", cls=MODEL_CLASSES["deit"])
    names = NAMES["vpt"]
    pixels = torch.randn(len(names), 3, 32, 32)
    mixed = model(pixels, adapter_names=names).logits
    for i, name in enumerate(names):
        want = run_as(model, name, pixels[i : i + 1]).logits[0]
        assert_equal_to_rounding(mixed[i, : len(want)], want)


def count_attention_calls(monkeypatch) -> list[int]:
    calls = [0]
    original = vpt_peft.engine.attention._attend

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(vpt_peft.engine.attention, "_attend", counting)
    return calls


@torch.no_grad()
def test_tasks_with_one_layout_share_one_attention_call(monkeypatch):
    configs = {
        n: VisualPromptConfig(num_prompts=3, deep=True, prompt_path=path) for n, path in (("a", "kv"), ("b", "kv"))
    }
    model = get_peft_model(tiny_vit(), configs["a"], adapter_name="a")
    model.add_adapter("b", configs["b"])
    perturb(model)
    model.eval()
    calls = count_attention_calls(monkeypatch)
    pixels = torch.randn(4, 3, 32, 32)
    model(pixels, adapter_names=["a", "b", "b", "a"])
    assert calls[0] == 3  # one call per block: no grouping, no padding
    calls[0] = 0
    model(pixels, adapter_names=["a", "b", BASE_ADAPTER, "a"])
    assert calls[0] == 6  # the base model's samples have no extra keys: a second layout per block


@torch.no_grad()
def test_mixed_batch_refusals(pixels):
    model = family_model("vpt")
    with pytest.raises(ValueError, match="Unknown adapter.*'nope'"):
        model(pixels, adapter_names=["deep_kv", "nope"])
    with pytest.raises(ValueError, match="2 samples"):
        model(pixels, adapter_names=["deep_kv"])
    with pytest.raises(TypeError, match="one per sample"):
        model(pixels, adapter_names="deep_kv")
    with pytest.raises(ValueError, match="different sizes.*compute each task's loss"):
        model(pixels, adapter_names=["deep_kv", "five"], labels=torch.tensor([0, 1]))
    model.train()
    with pytest.raises(ValueError, match="model.eval"):
        model(pixels, adapter_names=["deep_kv", "shallow"])
    assert all(getattr(m, "mixed_batch", None) is None for m in model.modules())


@torch.no_grad()
def test_disable_adapter_runs_the_base_for_every_sample(pixels):
    base = tiny_vit()
    want = base(pixels).logits
    model = family_model("vpt")
    with model.disable_adapter():
        assert torch.equal(model(pixels, adapter_names=["deep_kv", "five"]).logits, want)
    assert torch.equal(model(pixels, adapter_names=[BASE_ADAPTER, BASE_ADAPTER]).logits, want)


def test_own_head_size_saves_loads_and_trains(tmp_path, pixels):
    model = get_peft_model(tiny_vit(num_labels=3), VisualPromptConfig(num_prompts=2, deep=True, num_labels=7))
    model.eval()
    want = model(pixels).logits
    assert want.shape == (2, 7)
    loss = model(pixels, labels=torch.tensor([6, 0])).loss  # HF's loss reads config.num_labels: 7 while it runs
    assert torch.isfinite(loss) and model.base_model.model.config.num_labels == 3
    model.add_adapter("seven", VisualPromptConfig(num_prompts=3, num_labels=7))
    mixed = model(pixels, adapter_names=["default", "seven"], labels=torch.tensor([6, 0]))
    assert torch.isfinite(mixed.loss) and mixed.logits.shape == (2, 7)
    model.save_pretrained(tmp_path)
    for low_cpu_mem_usage in (False, True):
        loaded = PeftModel.from_pretrained(tiny_vit(num_labels=3), tmp_path, low_cpu_mem_usage=low_cpu_mem_usage)
        assert torch.equal(loaded.eval()(pixels).logits, want)
    with pytest.raises(ValueError, match="num_labels"):
        VisualPromptConfig(num_labels=0)


@torch.no_grad()
def test_load_several_adapters_and_serve_them(tmp_path):
    source = family_model("vpt")
    source.save_pretrained(tmp_path)  # default-less: every adapter in tmp_path/<name>/
    served = PeftModel.from_pretrained(tiny_vit(), tmp_path / "deep_kv", adapter_name="deep_kv").eval()
    for name in ("shallow", "five"):
        served.load_adapter(tmp_path / name, adapter_name=name)
    names = ["five", "deep_kv", "shallow", BASE_ADAPTER]
    pixels = torch.randn(4, 3, 32, 32)
    assert torch.equal(served(pixels, adapter_names=names).logits, source(pixels, adapter_names=names).logits)
    # Loading the same adapter twice gives two independent adapters; loading under a taken name reloads the
    # saved weights into that adapter (peft's behaviour). One image at four batch positions: equal to rounding.
    served.load_adapter(tmp_path / "shallow", adapter_name="shallow_again")
    same = pixels[:1].expand(4, -1, -1, -1)
    out = served(same, adapter_names=["shallow", "shallow_again", "shallow", "shallow_again"]).logits
    assert_equal_to_rounding(out[1:], out[:1].expand(3, -1))
    with torch.no_grad():
        served.base_model.model.classifier.modules_to_save["shallow_again"].bias.add_(1.0)
    out = served(same, adapter_names=["shallow", "shallow_again", "shallow", "shallow_again"]).logits
    assert_equal_to_rounding(out[2], out[0])
    assert_equal_to_rounding(out[1], out[0] + 1.0)  # the bias moved, and only that adapter's
    served.load_adapter(tmp_path / "shallow", adapter_name="shallow_again")
    out = served(same, adapter_names=["shallow", "shallow_again", "shallow", "shallow_again"]).logits
    assert_equal_to_rounding(out[1], out[0])
    with pytest.raises(ValueError, match="already exists"):
        served.add_adapter("shallow", VisualPromptConfig())
    # delete_adapter: the name is gone from the model and from mixed batches; the active one moves on.
    served.set_adapter("shallow_again")
    served.delete_adapter("shallow_again")
    assert "shallow_again" not in served.peft_config and served.active_adapter in served.peft_config
    with pytest.raises(ValueError, match="Unknown adapter.*shallow_again"):
        served(pixels, adapter_names=["shallow_again"] * 4)
    assert torch.equal(served(pixels, adapter_names=names).logits, source(pixels, adapter_names=names).logits)


def test_unload_after_many_adapters_restores_the_base(pixels):
    base = tiny_vit(attn="eager")
    want = base(pixels).logits
    snapshot = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, copy.deepcopy(FAMILIES["vpt"]["deep_kv"]), adapter_name="deep_kv")
    model.add_adapter("shallow", VisualPromptConfig(num_prompts=2))
    model.eval()(pixels, adapter_names=["deep_kv", "shallow"])
    unloaded = model.unload()
    assert torch.equal(unloaded(pixels).logits, want)
    assert unloaded.config._attn_implementation == "eager"
    assert not any(len(m._forward_pre_hooks) or len(m._forward_hooks) for m in unloaded.modules())
    assert unloaded.state_dict().keys() == snapshot.keys()


@pytest.mark.parametrize(
    "other,match",
    [
        ({"hidden_size": 48, "intermediate_size": 40}, "hidden_size: adapter 48 vs model 32"),
        ({"num_hidden_layers": 4}, "num_layers: adapter 4 vs model 3"),
    ],
)
def test_adapter_for_another_backbone_is_refused_by_load_adapter(tmp_path, pixels, other, match):
    get_peft_model(tiny_vit(**other), VisualPromptConfig(num_prompts=2)).save_pretrained(tmp_path)
    model = family_model("vpt")
    before = model(pixels, adapter_names=["shallow", "five"]).logits
    with pytest.raises(AdapterMismatchError, match=match) as error:
        model.load_adapter(tmp_path, adapter_name="foreign")
    assert "'model_type': 'vit'" in str(error.value)  # both backbones are named in full
    assert "foreign" not in model.peft_config
    assert torch.equal(model(pixels, adapter_names=["shallow", "five"]).logits, before)


def test_deit_adapter_is_refused_on_vit(tmp_path):
    get_peft_model(tiny_vit(MODEL_CLASSES["deit"]), VisualPromptConfig(num_prompts=2)).save_pretrained(tmp_path)
    with pytest.raises(AdapterMismatchError, match="model_type: adapter 'deit' vs model 'vit'"):
        family_model("vpt").load_adapter(tmp_path, adapter_name="deit")


def test_methods_of_different_peft_types_cannot_share_a_model():
    model = get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=2))
    with pytest.raises(ValueError, match="different peft types"):
        model.add_adapter("e2vpt", KVPromptConfig())
    with pytest.raises(ValueError, match="different peft types"):
        model.add_adapter("fourier", FourierPromptConfig())


@pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
@torch.no_grad()
def test_vpt_written_as_the_other_methods_is_vpt_bit_for_bit(deep, pixels):
    """What lets VPT adapters share a model (and a batch) with VFPT or with E2VPT adapters: VFPT with no Fourier
    prompt, and E2VPT with no key-value prompt (its gates, where it has them, start at one), are VPT."""
    vpt = get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=3, deep=deep)).eval()
    perturb(vpt)
    want = vpt(pixels).logits
    configs = [FourierPromptConfig(num_prompts=3, deep=deep, fourier_ratio=0.0)]
    if deep:  # E2VPT prompts every layer
        configs += [
            KVPromptConfig(num_prompts=3, num_kv_prompts=0, gates=False),
            KVPromptConfig(num_prompts=3, num_kv_prompts=0),
        ]
    for config in configs:
        other = get_peft_model(tiny_vit(), config).eval()
        bank_name = other.base_model.tuner_layer_cls.adapter_layer_names[0]
        renamed = {k.replace("vpt_prompts", bank_name): v for k, v in vpt.state_dict().items()}
        state = other.state_dict()
        assert renamed.keys() <= state.keys()  # the rest: (L, 0, d) key-value prompts, gates at their init
        other.load_state_dict({**state, **renamed})
        assert torch.equal(other(pixels).logits, want)


@torch.no_grad()
def test_pruned_e2vpt_adapter_serves_next_to_an_unpruned_one():
    model = family_model("e2vpt")
    pixels = torch.randn(4, 3, 32, 32)
    batch = [{"pixel_values": pixels, "labels": torch.tensor([0, 1, 2, 0])}]
    model.set_adapter("kv5")
    with torch.enable_grad():
        prune_prompts(model, batch, token_ratio=0.5, segment_ratio=0.0)
    model.eval()
    names = ["kv5", "kv2", "kv5", BASE_ADAPTER]
    mixed = model(pixels, adapter_names=names, output_hidden_states=True)
    for i, name in enumerate(names):
        alone = run_as(model, name, pixels[i : i + 1])
        assert_equal_to_rounding(mixed.hidden_states[-1][i], alone.hidden_states[-1][0])


VISION_CASES = [case for case in CASES if not case.dual_encoder]  # CLIPModel's tower: the clip-vision rows


@pytest.mark.parametrize("case", VISION_CASES, ids=[case.name for case in VISION_CASES])
@torch.no_grad()
def test_mixed_batch_on_every_backbone(case):
    configs = {"deep": VisualPromptConfig(num_prompts=3, deep=True), "shallow": VisualPromptConfig(num_prompts=2)}
    configs["sequence"] = VisualPromptConfig(num_prompts=4, deep=True, prompt_path="sequence")
    (first, config), *others = configs.items()
    model = get_peft_model(build(case), config, adapter_name=first)
    for name, other in others:
        model.add_adapter(name, other)
    perturb(model)
    model.eval()
    names = [*configs, BASE_ADAPTER, first]
    images = image_inputs(case, torch.randn(len(names), 3, 32, 32))  # NaFlex rows of two lengths on SigLIP2
    mixed = model(**images, adapter_names=names, output_hidden_states=True)
    for i, name in enumerate(names):
        alone = run_as(model, name, {k: v[i : i + 1] for k, v in images.items()})
        for got, want in zip(mixed.hidden_states, alone.hidden_states):
            assert_equal_to_rounding(got[i], want[0])
        if "logits" in alone:
            assert_equal_to_rounding(mixed.logits[i], alone.logits[0])


def test_dpt_adapters_refuse_mixed_batches(tmp_path):
    from vpt_peft import DualPromptConfig

    from .clip_helpers import CLASSES, tiny_clip, tiny_tokenizer

    tokenizer = tiny_tokenizer(tmp_path)
    config = DualPromptConfig(
        class_names=CLASSES, text_n_ctx=4, visual_n_ctx=3, cavpt_num_tokens=3, tokenizer=tokenizer
    )
    model = get_peft_model(tiny_clip(tokenizer), config).eval()
    size = model.base_model.model.config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size)
    with pytest.raises(ValueError, match="DualPromptConfig.*do not serve mixed-task batches"):
        model(pixel_values=pixels, adapter_names=["default", "default"])


@pytest.mark.slow
@torch.no_grad()
def test_mixed_batch_compiles_with_fullgraph_and_no_graph_break():
    """Hooks are registered once and rows are routed by index tensors built from the names: nothing in a mixed
    batch forward needs Python between graphs (hook registration, data-dependent shapes)."""
    import torch._dynamo

    model = family_model("vpt")
    names = NAMES["vpt"]
    pixels = torch.randn(len(names), 3, 32, 32)
    want = model(pixels, adapter_names=names).logits
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(pixels, adapter_names=names)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    # aot_eager: the whole graph through dynamo and AOTAutograd; inductor's C++ kernels are torch's to test (its CPU
    # codegen fails under ATEN_CPU_CAPABILITY=default in torch 2.13, a mismatch of its own headers).
    got = torch.compile(model, fullgraph=True, backend="aot_eager")(pixels, adapter_names=names).logits
    padded = torch.isneginf(want)
    assert torch.equal(torch.isneginf(got), padded)
    assert_equal_to_rounding(got[~padded], want[~padded])
    assert all(getattr(m, "mixed_batch", None) is None for m in model.modules())
