"""Nothing lost on a crash: a save that fails or is killed at any point leaves the previous adapter, or the new one.

"The previous adapter" is checked on the whole pair: the loaded config (num_prompts differs between the two
adapters, so old weights with a new config, or the reverse, cannot load) and every saved tensor.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import peft.peft_model
import pytest
import safetensors.torch
import torch
from peft import PeftConfig, PeftModel, get_peft_model
from peft.config import PeftConfigMixin
from safetensors.torch import load_file

import vpt_peft
from vpt_peft import VisualPromptConfig
from vpt_peft.atomic import atomic_open, atomic_write, is_mid_commit, new_folder, recover, resolve, staged_save

from .helpers import prompt_param, tiny_vit

WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"
ADAPTER_FILES = ["README.md", CONFIG, WEIGHTS]
BEFORE_COMMIT = ["pending:adapter_model.safetensors", "pending:README.md", "pending:adapter_config.json", "staged"]
AFTER_COMMIT = ["committed", "replaced:README.md", "replaced:adapter_config.json", "done"]


def adapter(num_prompts: int, seed: int):
    torch.manual_seed(seed)
    return get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=num_prompts, deep=True))


@pytest.fixture
def pair():
    """Adapter A (4 prompts) and adapter B (6 prompts, other values)."""
    return adapter(4, seed=1), adapter(6, seed=2)


def saved_state(folder: Path) -> tuple[int, dict[str, torch.Tensor]]:
    """What a reader gets from ``folder``: the config's prompt count and the tensors, via peft's loader."""
    model = PeftModel.from_pretrained(tiny_vit(), folder)
    config = PeftConfig.from_pretrained(folder)
    return config.num_prompts, {"prompts": prompt_param(model).detach(), **_head(model)}


def _head(model) -> dict[str, torch.Tensor]:
    head = model.base_model.model.classifier.modules_to_save["default"]
    return {"weight": head.weight.detach(), "bias": head.bias.detach()}


def assert_holds(folder: Path, model) -> None:
    num_prompts, tensors = saved_state(folder)
    assert num_prompts == model.peft_config["default"].num_prompts
    assert torch.equal(tensors["prompts"], prompt_param(model).detach())  # the same saved values, not recomputed
    for name, value in _head(model).items():
        assert torch.equal(tensors[name], value)


def visible_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_save_leaves_exactly_the_adapter_files_and_keeps_the_model_card(tmp_path, pair):
    model_a, model_b = pair
    model_a.save_pretrained(tmp_path)
    assert visible_files(tmp_path) == ADAPTER_FILES
    (tmp_path / "README.md").write_text((tmp_path / "README.md").read_text() + "\nNotes the user wrote.\n")
    model_b.save_pretrained(tmp_path)
    assert visible_files(tmp_path) == ADAPTER_FILES  # no staging folder, no pending or temporary file left
    assert "Notes the user wrote." in (tmp_path / "README.md").read_text()  # peft updates the card in place
    assert_holds(tmp_path, model_b)


def test_named_adapters_are_saved_in_their_subfolders(tmp_path, pair):
    model, _ = pair
    model.add_adapter("other", VisualPromptConfig(num_prompts=3))
    model.save_pretrained(tmp_path)
    assert visible_files(tmp_path) == [*ADAPTER_FILES, "other"]
    assert visible_files(tmp_path / "other") == [CONFIG, WEIGHTS]
    saved = load_file(tmp_path / "other" / WEIGHTS)
    assert [t.shape[1] for n, t in saved.items() if n.endswith("prompt_embeddings")] == [3]


def _half_then_fail(tensors, filename, metadata=None):
    data = safetensors.torch.save(tensors, metadata=metadata)
    Path(filename).write_bytes(data[: len(data) // 2])
    raise OSError(28, "No space left on device")


def _partial_config_then_fail(self, save_directory, **kwargs):
    Path(save_directory, CONFIG).write_text('{"peft_type": "VPT')
    raise OSError(28, "No space left on device")


def _partial_card_then_fail(self, output_dir):
    Path(output_dir, "README.md").write_text("---\nlibrary_na")
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize(
    "target,attribute,replacement",
    [
        (peft.peft_model, "safe_save_file", _half_then_fail),
        (PeftConfigMixin, "save_pretrained", _partial_config_then_fail),
        (peft.peft_model.PeftModel, "create_or_update_model_card", _partial_card_then_fail),
    ],
    ids=["weights", "config", "model-card"],
)
def test_a_writer_that_fails_after_a_partial_write_leaves_the_previous_adapter(
    tmp_path, pair, monkeypatch, target, attribute, replacement
):
    model_a, model_b = pair
    model_a.save_pretrained(tmp_path)
    monkeypatch.setattr(target, attribute, replacement)
    with pytest.raises(OSError, match="No space left"):
        model_b.save_pretrained(tmp_path)
    monkeypatch.undo()
    assert visible_files(tmp_path) == ADAPTER_FILES
    assert_holds(tmp_path, model_a)


def _fail_at(step: str):
    def at_step(name: str) -> None:
        if name == step:
            raise RuntimeError(f"stopped at {step}")

    return at_step


@pytest.mark.parametrize("step", BEFORE_COMMIT + AFTER_COMMIT)
def test_an_error_at_any_commit_step_leaves_one_whole_adapter(tmp_path, pair, monkeypatch, step):
    model_a, model_b = pair
    model_a.save_pretrained(tmp_path)
    monkeypatch.setattr(vpt_peft.atomic, "_at_step", _fail_at(step))
    with pytest.raises(RuntimeError, match="stopped at"):
        model_b.save_pretrained(tmp_path)
    monkeypatch.undo()
    assert_holds(tmp_path, model_a if step in BEFORE_COMMIT else model_b)
    if step in BEFORE_COMMIT:  # rolled back: nothing of the failed save is left
        assert sorted(os.listdir(tmp_path)) == ADAPTER_FILES
    # The next save finishes or discards what the failed one left, and works.
    model_a.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ADAPTER_FILES
    assert_holds(tmp_path, model_a)


def test_mid_commit_folder_reads_the_new_pair_and_recover_finishes_it(tmp_path, pair, monkeypatch):
    model_a, model_b = pair
    model_a.save_pretrained(tmp_path)
    monkeypatch.setattr(vpt_peft.atomic, "_at_step", _fail_at("committed"))
    with pytest.raises(RuntimeError):
        model_b.save_pretrained(tmp_path)
    monkeypatch.undo()
    # On disk the config is still A's, but the weights are B's: readers must take the pending config.
    assert json.loads((tmp_path / CONFIG).read_text())["num_prompts"] == 4 and is_mid_commit(tmp_path)
    assert resolve(tmp_path / CONFIG).name == f".{CONFIG}.vpt-pending"
    assert_holds(tmp_path, model_b)
    assert recover(tmp_path) and not is_mid_commit(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ADAPTER_FILES
    assert json.loads((tmp_path / CONFIG).read_text())["num_prompts"] == 6
    assert resolve(tmp_path / CONFIG) == tmp_path / CONFIG
    assert_holds(tmp_path, model_b)


def test_first_save_interrupted_after_its_commit_is_not_an_adapter_until_recovered(tmp_path, pair, monkeypatch):
    _, model_b = pair
    monkeypatch.setattr(vpt_peft.atomic, "_at_step", _fail_at("committed"))
    with pytest.raises(RuntimeError):
        model_b.save_pretrained(tmp_path)
    monkeypatch.undo()
    with pytest.raises(ValueError, match=CONFIG):  # the previous state: no adapter here
        PeftConfig.from_pretrained(tmp_path)
    recover(tmp_path)
    assert_holds(tmp_path, model_b)


def test_other_peft_methods_keep_peft_s_own_writer(tmp_path, monkeypatch):
    from peft import LoraConfig

    model = get_peft_model(tiny_vit(), LoraConfig(target_modules=["q_proj"], r=2))
    monkeypatch.setattr(vpt_peft.atomic, "staged_save", None)  # would raise TypeError if it were used
    model.save_pretrained(tmp_path)
    assert (tmp_path / WEIGHTS).exists()


def test_non_main_processes_write_nothing(tmp_path, pair):
    pair[0].save_pretrained(tmp_path, is_main_process=False)
    assert list(tmp_path.iterdir()) == []


def test_a_save_killed_at_any_point_leaves_the_previous_or_the_new_adapter(tmp_path):
    """SIGKILL (no cleanup runs) while the weights are half written, and at every step of the commit."""
    steps = ["half-weights", "written", *BEFORE_COMMIT, *AFTER_COMMIT]
    script = Path(__file__).with_name("crash_writer.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    writer = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), *steps], stdout=subprocess.PIPE, text=True, env=env
    )
    watchdog = threading.Timer(900, writer.kill)  # a hung writer fails the test instead of hanging it
    watchdog.start()
    stopped: dict[str, int] = {}
    try:
        for line in writer.stdout:
            word, step, pid = line.split()
            assert word == "READY", line
            stopped[step] = int(pid)
            os.kill(int(pid), signal.SIGKILL)
            if len(stopped) == len(steps):
                break
        assert writer.wait(timeout=60) == 0
    finally:
        watchdog.cancel()
        if writer.poll() is None:
            writer.kill()
    assert sorted(stopped) == sorted(steps)
    ref_a, ref_b = saved_state(tmp_path / "ref-a"), saved_state(tmp_path / "ref-b")
    for step in steps:
        folder = tmp_path / step
        num_prompts, tensors = saved_state(folder)
        want = ref_b if step in AFTER_COMMIT else ref_a
        assert num_prompts == want[0], step
        for name, value in want[1].items():
            assert torch.equal(tensors[name], value), (step, name)
        # Staging folders of killed saves stay behind (hidden, ignored by loaders); pending files are resolved.
        recover(folder)
        assert sorted(n for n in os.listdir(folder) if not n.startswith(".vpt_peft-staging-")) == ADAPTER_FILES
        assert saved_state(folder)[0] == want[0]


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "labels.json"
    atomic_write(path, '{"labels": ["a"]}')
    with pytest.raises(RuntimeError), atomic_open(path, "w") as handle:
        handle.write('{"labels": [')
        raise RuntimeError("crash")
    assert path.read_text() == '{"labels": ["a"]}' and os.listdir(tmp_path) == ["labels.json"]
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # like open(), not mkstemp's 0o600
    with pytest.raises(ValueError, match="mode"):
        atomic_open(path, "a").__enter__()


def test_staged_save_commits_companion_files_with_the_adapter(tmp_path, pair, monkeypatch):
    model_a, model_b = pair
    with staged_save(tmp_path) as staging:
        model_a.save_pretrained(staging)
        atomic_write(staging / "labels.json", "A")
    monkeypatch.setattr(vpt_peft.atomic, "_at_step", _fail_at("committed"))
    with pytest.raises(RuntimeError), staged_save(tmp_path) as staging:
        model_b.save_pretrained(staging)  # straight into the staging folder, no second staging
        assert sorted(os.listdir(staging)) == ADAPTER_FILES
        atomic_write(staging / "labels.json", "B")
    # Mid-commit: the labels file on disk is still A's, its committed copy is B's.
    assert (tmp_path / "labels.json").read_text() == "A" and resolve(tmp_path / "labels.json").read_text() == "B"
    assert_holds(tmp_path, model_b)


def test_new_folder_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "cache" / "entry"
    with pytest.raises(RuntimeError), new_folder(target) as staging:
        (staging / "config.json").write_text("{}")
        raise RuntimeError("crash while building")
    assert not target.exists() and os.listdir(tmp_path / "cache") == []
    with new_folder(target) as staging:
        (staging / "config.json").write_text("first")
    with new_folder(target) as staging:  # built meanwhile by someone else: theirs is kept
        (staging / "config.json").write_text("second")
    assert (target / "config.json").read_text() == "first" and os.listdir(tmp_path / "cache") == ["entry"]
