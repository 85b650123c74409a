"""The vpt-peft CLI, offline, in-process: a tiny saved ViT, an imagefolder written here, and the built-in digits."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image
from transformers import ViTImageProcessor

from vpt_peft.cli import build_parser, main

from .helpers import tiny_vit


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model_dir = root / "tiny-vit"
    tiny_vit(num_labels=2).save_pretrained(model_dir)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(model_dir)
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("test", 4)):
        for label, colour in (("dark", 40), ("light", 210)):
            folder = root / "images" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(colour + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root, model_dir


def _one_line_error(capsys, argv, code):
    """Usage errors exit (argparse, status 2); runtime errors return 1. Either way: one line on stderr."""
    try:
        status = main(argv)
    except SystemExit as exit_info:
        status = exit_info.code
    assert status == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.match(r"vpt-peft( \w+)?: error: ", err) and "Traceback" not in err
    return err


def test_train_eval_predict_info_resume(workspace, capsys):
    root, model_dir = workspace
    out = root / "run"
    common = [
        "train",
        "--model",
        str(model_dir),
        "--dataset",
        str(root / "images"),
        "--method",
        "vpt-deep",
        "--num-prompts",
        "3",
        "--output",
        str(out),
        "--batch-size",
        "4",
        "--lr",
        "10",
        "--warmup-epochs",
        "0",
    ]
    assert main([*common, "--max-steps", "2"]) == 0
    assert (out / "adapter_model.safetensors").exists() and (out / "preprocessor_config.json").exists()
    assert json.loads((out / "labels.json").read_text())["labels"] == ["dark", "light"]
    assert any(p.name == "checkpoint-2" for p in out.iterdir())
    assert main([*common, "--max-steps", "3", "--resume"]) == 0  # continues from checkpoint-2
    assert any(p.name == "checkpoint-3" for p in out.iterdir())
    capsys.readouterr()

    assert main(["eval", str(out), "--dataset", str(root / "images")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["examples"] == 8 and 0 <= result["accuracy"] <= 1

    image = root / "images" / "test" / "light" / "0.png"
    assert main(["predict", str(out), str(image), "--top-k", "2"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(str(image)) and "dark" in line and "light" in line

    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "VisualPromptConfig" in text and str(model_dir) in text and "num_prompts=3" in text and "labels (2)" in text


def test_digits_dataset_with_e2vpt(workspace, tmp_path):
    _, model_dir = workspace
    out = tmp_path / "digits"
    argv = [
        "train",
        "--model",
        str(model_dir),
        "--dataset",
        "digits:loops",
        "--method",
        "e2vpt",
        "--num-prompts",
        "2",
        "--num-kv-prompts",
        "1",
        "--output",
        str(out),
        "--max-steps",
        "1",
        "--batch-size",
        "8",
    ]
    assert main(argv) == 0
    assert json.loads((out / "labels.json").read_text())["labels"] == ["0", "1", "2"]


@pytest.mark.parametrize(
    "argv, code",
    [
        (["train", "--model", "m", "--dataset", "d", "--method", "lora", "--output", "o"], 2),
        (["train", "--dataset", "d", "--output", "o"], 2),
        (["frobnicate"], 2),
        (["info", "no/such/adapter"], 1),
        (["predict", "no/such/adapter", "missing.png"], 1),
    ],
)
def test_bad_arguments_give_one_line_errors(capsys, argv, code):
    _one_line_error(capsys, argv, code)


def test_option_that_does_not_fit_the_method(workspace, capsys, tmp_path):
    _, model_dir = workspace
    err = _one_line_error(
        capsys,
        [
            "train",
            "--model",
            str(model_dir),
            "--dataset",
            "digits",
            "--method",
            "vpt-deep",
            "--fourier-ratio",
            "0.5",
            "--output",
            str(tmp_path),
        ],
        1,
    )
    assert "--fourier-ratio only applies to --method vfpt" in err


def test_every_registered_recipe_is_a_method_choice():
    from vpt_peft import recipes

    train_help = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    method_help = train_help[train_help.index("--method") :]
    assert set(recipes.recipe_names()) >= {"vpt-shallow", "vpt-deep", "vfpt", "e2vpt", "dpt"}
    assert all(name in method_help for name in recipes.recipe_names())


@pytest.mark.parametrize(
    "layout,words",
    [("{}.png", "no class sub-folders"), ("cat/{}.png", "one class sub-folder")],
    ids=["flat", "one-class"],
)
def test_an_image_folder_without_two_classes_says_how_to_lay_it_out(workspace, capsys, tmp_path, layout, words):
    _, model_dir = workspace
    for i in range(6):
        (tmp_path / "images" / layout.format(i)).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / layout.format(i))
    argv = ["train", "--model", str(model_dir), "--dataset", str(tmp_path / "images"), "--output", str(tmp_path / "o")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the datasets library's progress bars
    assert err.startswith("vpt-peft: error: ") and words in err and "<class name>" in err


def test_dpt_on_a_vision_only_checkpoint_is_refused_before_training(workspace, capsys, tmp_path):
    _, model_dir = workspace
    argv = ["train", "--model", str(model_dir), "--dataset", "digits", "--method", "dpt", "--output", str(tmp_path)]
    err = _one_line_error(capsys, argv, 1)
    assert "CLIP-like" in err and "'vit'" in err


def test_dpt_trains_a_tiny_clip_and_predicts(workspace, tmp_path, capsys):
    import vpt_peft

    if not hasattr(vpt_peft, "DualPromptConfig"):
        pytest.skip("this version of vpt_peft has no DPT")
    from transformers import CLIPImageProcessor

    from .clip_helpers import tiny_clip, tiny_tokenizer

    root, _ = workspace
    clip_dir = tmp_path / "tiny-clip"
    clip_dir.mkdir()
    tokenizer = tiny_tokenizer(clip_dir)
    tokenizer.save_pretrained(clip_dir)
    tiny_clip(tokenizer).save_pretrained(clip_dir)
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(clip_dir)
    out = tmp_path / "dpt"
    argv = [
        "train",
        "--model",
        str(clip_dir),
        "--dataset",
        str(root / "images"),
        "--method",
        "dpt",
        "--num-prompts",
        "2",
        "--output",
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "4",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    image = root / "images" / "test" / "dark" / "0.png"
    assert main(["predict", str(out), str(image)]) == 0
    assert capsys.readouterr().out.strip().split("\t")[0] == str(image)
    assert main(["info", str(out)]) == 0
    assert "DualPromptConfig" in capsys.readouterr().out
