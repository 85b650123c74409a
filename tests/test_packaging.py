"""The package as users get it: build the sdist and wheel, install the wheel next to installed dependencies.

The wheel goes into a fresh virtualenv that sees this environment's packages (torch, transformers, peft, ...)
through a plain path entry, so nothing is downloaded and the editable install of the checkout stays invisible
(a path line does not run the checkout's ``__editable__`` hook). pip must resolve the wheel's requirements
from what is installed without an index: if a declared range excluded an installed version, it would fail.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("src", "pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "MANIFEST.in", "setup.cfg")

# What a user runs first (README "Use"), on a tiny ViT built from a config: no download.
QUICKSTART = """
import importlib.metadata, pathlib, sys
import torch
import vpt_peft
from peft import PeftModel, get_peft_model
from transformers import ViTConfig, ViTForImageClassification

assert importlib.metadata.version("vpt-peft") == vpt_peft.__version__
assert (pathlib.Path(vpt_peft.__file__).parent / "py.typed").exists()
print("installed at", vpt_peft.__file__)
config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                   image_size=32, patch_size=8, num_labels=3)
torch.manual_seed(0)
model = get_peft_model(ViTForImageClassification(config), vpt_peft.VisualPromptConfig(num_prompts=4, deep=True))
model.eval()
pixels = torch.randn(2, 3, 32, 32)
logits = model(pixel_values=pixels).logits
assert logits.shape == (2, 3), logits.shape
model.save_pretrained(sys.argv[1])
torch.manual_seed(0)
reloaded = PeftModel.from_pretrained(ViTForImageClassification(config), sys.argv[1]).eval()
torch.testing.assert_close(reloaded(pixel_values=pixels).logits, logits)
print("quickstart ok")
"""

# Warnings that come from peft/transformers themselves, not from vpt_peft (docs/compatibility.md lists them):
# peft 0.21.2 reads transformers' `is_gradient_checkpointing`, deprecated in transformers 5.23.
UPSTREAM_WARNINGS = ("`is_gradient_checkpointing` is deprecated",)


def _can_build() -> str:
    """Why the sdist/wheel cannot be built offline here ('' when it can)."""
    if importlib.util.find_spec("build") is None:
        return "the 'build' package is not installed (pip install -e '.[test]')"
    try:
        import setuptools
    except ImportError:
        return "setuptools is not installed"
    if int(setuptools.__version__.split(".")[0]) < 77:
        return f"setuptools {setuptools.__version__} < 77 cannot build this pyproject.toml without the network"
    return ""


def _installed_package_dirs() -> list[str]:
    """This environment's site-packages directories, never the checkout's ``src`` an editable install may add."""
    dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    dirs.update(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    return sorted(dirs)


def _run(args: list, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_wheel_installs_next_to_installed_dependencies_and_runs_the_quickstart(tmp_path):
    reason = _can_build()
    if reason:
        pytest.skip(reason)
    project = tmp_path / "project"
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
        else:
            project.mkdir(exist_ok=True)
            shutil.copy2(source, project / name)

    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, project], cwd=tmp_path)
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "vpt_peft/py.typed" in names and any(n.endswith("licenses/LICENSE") for n in names)
    assert not any(n.startswith("tests/") for n in names)
    assert sdist.name.startswith("vpt_peft-") and wheel.name.startswith("vpt_peft-")

    venv = tmp_path / "fresh"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run([python, "-c", purelib], cwd=tmp_path).stdout.strip())
    (site / "installed-dependencies.pth").write_text("\n".join(_installed_package_dirs()) + "\n")

    # --isolated: no pip config, so no find-links either; only what is installed can satisfy a requirement.
    pip = [sys.executable, "-m", "pip", "--isolated", "--python", python, "install", "--no-index"]
    plan = _run([*pip, "--dry-run", wheel], cwd=tmp_path).stdout
    would = [line for line in plan.splitlines() if line.startswith("Would install")]
    assert would == [f"Would install vpt-peft-{wheel.name.split('-')[1]}"], plan[-2000:]
    _run([*pip, "--no-deps", wheel], cwd=tmp_path)

    result = _run([python, "-I", "-c", QUICKSTART, tmp_path / "adapter"], cwd=tmp_path)
    assert "quickstart ok" in result.stdout
    assert f"installed at {site}" in result.stdout
    assert (venv / "bin" / "vpt-peft").exists()
    noise = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not any(w in line for w in UPSTREAM_WARNINGS) and line.strip() != "warnings.warn("
    ]
    assert not noise, "import + get_peft_model printed warnings vpt_peft could avoid:\n" + "\n".join(noise)
