"""VPT as a peft adapter: parameter counts, files, adapter management, disable/unload, hub, errors."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import ViTConfig, ViTForImageClassification

import vpt_peft
from vpt_peft import AdapterMismatchError, VisualPromptConfig

from .helpers import MODEL_CLASSES, prompt_param, tiny_vit

VIT_B16 = ViTConfig(num_labels=100)  # hidden 768, 12 layers, patch 16: the paper's backbone, random init


@pytest.fixture(scope="module")
def vit_b16():
    torch.manual_seed(0)
    return ViTForImageClassification(VIT_B16).eval()


@pytest.mark.parametrize("deep,expected", [(False, 38_400), (True, 460_800)])
def test_prompt_parameter_count_on_vit_b16(vit_b16, deep, expected):
    model = get_peft_model(copy.deepcopy(vit_b16), VisualPromptConfig(num_prompts=50, deep=deep))
    prompts = prompt_param(model)
    assert prompts.numel() == expected
    assert prompts.shape == ((12 if deep else 1), 50, 768)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    head = 768 * 100 + 100
    assert sum(trainable.values()) == expected + head
    assert all("prompt_embeddings" in n or "classifier" in n for n in trainable)


def test_prompt_init_is_official_xavier_patch_rule(vit_b16):
    model = get_peft_model(copy.deepcopy(vit_b16), VisualPromptConfig(num_prompts=50, deep=True))
    prompts = prompt_param(model).detach()
    bound = (6 / (3 * 16 * 16 + 768)) ** 0.5  # 0.0625
    assert prompts.abs().max() <= bound
    assert prompts.abs().max() > 0.99 * bound
    assert abs(prompts.std().item() - bound / 3**0.5) < 1e-3  # uniform(-v, v) has std v/sqrt(3)


def test_push_to_hub_uploads_only_the_adapter(monkeypatch, tmp_path):
    uploaded = {}

    def fake_upload_folder(self, *, folder_path, repo_id, **kwargs):
        uploaded.update({name: os.path.getsize(os.path.join(folder_path, name)) for name in os.listdir(folder_path)})
        uploaded["_repo"] = repo_id

    import huggingface_hub
    import transformers.utils.hub

    def fake_create_repo(*args, **kwargs):
        return huggingface_hub.RepoUrl("https://huggingface.co/me/task")

    def fake_create_commit(*args, operations, **kwargs):
        for op in operations:
            is_path = isinstance(op.path_or_fileobj, str)
            uploaded[op.path_in_repo] = os.path.getsize(op.path_or_fileobj) if is_path else len(op.path_or_fileobj)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", fake_upload_folder)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", fake_create_commit)
    # Older transformers (5.9 for one) call the module-level create_repo/create_commit they imported: methods bound to a
    # default HfApi at import time, which patching the class does not reach.
    for name, fake in (("create_repo", fake_create_repo), ("create_commit", fake_create_commit)):
        if hasattr(transformers.utils.hub, name):
            monkeypatch.setattr(transformers.utils.hub, name, fake)
    model = get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=4, deep=True))
    model.push_to_hub("me/task", token="fake")
    files = {k for k in uploaded if not k.startswith("_")}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert files <= {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert uploaded["adapter_model.safetensors"] < 10_000


def test_auto_peft_model_for_image_classification(tmp_path, pixels):
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    tiny_vit().save_pretrained(base_dir)
    base = ViTForImageClassification.from_pretrained(base_dir).eval()
    model = get_peft_model(base, VisualPromptConfig(num_prompts=3, deep=True)).eval()
    want = model(pixels).logits
    model.save_pretrained(adapter_dir)
    loaded = vpt_peft.AutoPeftModelForImageClassification.from_pretrained(adapter_dir).eval()
    assert isinstance(loaded, PeftModel)
    assert torch.equal(loaded(pixels).logits, want)


def test_loading_without_import_says_to_import_vpt_peft(tmp_path):
    get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=2)).save_pretrained(tmp_path)
    assert "import vpt_peft" in json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"]
    script = textwrap.dedent(
        f"""
        from peft import PeftConfig
        try:
            PeftConfig.from_pretrained({str(tmp_path)!r})
        except KeyError as error:
            print("ERROR", error)
        import vpt_peft
        print("LOADED", type(PeftConfig.from_pretrained({str(tmp_path)!r})).__name__)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert "ERROR" in out and "import vpt_peft" in out.split("LOADED")[0]
    assert "LOADED VisualPromptConfig" in out


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_prompts=-1), "num_prompts"),
        (dict(num_prompts=2.5), "num_prompts"),
        (dict(prompt_dropout=1.0), "prompt_dropout"),
        (dict(prompt_dropout=float("nan")), "prompt_dropout"),
        (dict(prompt_init="he"), "prompt_init"),
        (dict(prompt_path="fast"), "prompt_path"),
        (dict(prompt_layers=[0, 1]), "deep=True"),
        (dict(deep=True, prompt_layers=[1, 1]), "duplicates"),
        (dict(deep=True, prompt_layers=[]), "non-empty"),
        (dict(head_init="xavier"), "head_init"),
    ],
)
def test_bad_config_values_raise_at_config_time(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VisualPromptConfig(**kwargs)


def test_bad_values_for_this_model_leave_it_untouched(pixels):
    base = tiny_vit()
    before = copy.deepcopy(base.state_dict())
    for config in (
        VisualPromptConfig(deep=True, prompt_layers=[0, 7]),
        VisualPromptConfig(deep=True, prompt_layers=[0, 2], prompt_path="kv"),
    ):
        with pytest.raises(ValueError, match="out of range|gap"):
            get_peft_model(base, config)
        assert not hasattr(base, "peft_config")
        assert not any(len(m._forward_pre_hooks) for m in base.modules())
        assert base.state_dict().keys() == before.keys()


def test_adapter_for_another_backbone_is_refused(tmp_path):
    get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=2)).save_pretrained(tmp_path)
    wider = tiny_vit(hidden_size=48, intermediate_size=40)
    with pytest.raises(AdapterMismatchError, match="hidden_size: adapter 32 vs model 48"):
        PeftModel.from_pretrained(wider, tmp_path)
    deeper = tiny_vit(num_hidden_layers=4)
    with pytest.raises(AdapterMismatchError, match="num_layers"):
        PeftModel.from_pretrained(deeper, tmp_path)
    deit = tiny_vit(MODEL_CLASSES["deit"])
    with pytest.raises(AdapterMismatchError, match="model_type: adapter 'vit' vs model 'deit'"):
        PeftModel.from_pretrained(deit, tmp_path)


def test_multiple_active_adapters_are_refused(pixels):
    model = get_peft_model(tiny_vit(MODEL_CLASSES["vit-model"]), VisualPromptConfig(num_prompts=2))
    model.add_adapter("b", VisualPromptConfig(num_prompts=2))
    with pytest.raises(ValueError, match="one prompt adapter"):
        model.base_model.set_adapter(["default", "b"])
    assert model.active_adapters == ["default"]
    model(pixel_values=pixels)


def test_projected_prompts_load_under_another_adapter_name(tmp_path, pixels):
    model = get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=3, deep=True, prompt_project_dim=8)).eval()
    want = model(pixels).logits
    model.save_pretrained(tmp_path)
    assert any(k.endswith("vpt_prompts.prompt_proj.weight") for k in load_file(tmp_path / "adapter_model.safetensors"))
    other = PeftModel.from_pretrained(tiny_vit(), tmp_path, adapter_name="task").eval()
    assert torch.equal(other(pixels).logits, want)


def test_auto_model_without_base_path_says_what_to_do(tmp_path):
    get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=2)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="PeftModel.from_pretrained"):
        vpt_peft.AutoPeftModelForImageClassification.from_pretrained(tmp_path)


def test_kv_path_for_shallow_prompts_is_refused():
    with pytest.raises(ValueError, match="deep=True"):
        VisualPromptConfig(prompt_path="kv")
