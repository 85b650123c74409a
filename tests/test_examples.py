"""Every example in examples/ runs offline as written (quick mode)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_example_is_covered():
    """A new file in examples/ must get a run test here."""
    source = Path(__file__).read_text()
    missing = [p.name for p in (ROOT / "examples").glob("*.py") if f'"{p.name}"' not in source]
    assert not missing, f"examples without a run test: {missing}"


def run_example(name: str, *args: str, cache: Path) -> str:
    """Run ``examples/<name>`` offline with its own model cache; return its stdout."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VPT_PEFT_CACHE": str(cache),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_demo_runs_offline(tmp_path):
    out_dir = tmp_path / "out"
    stdout = run_example("demo.py", "--quick", "--output", str(out_dir), cache=tmp_path / "cache")
    assert "reloaded onto a fresh backbone with identical logits" in stdout
    with open(out_dir / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    methods = {"linear probe", "full FT", "VPT shallow", "VPT deep", "VFPT", "E2VPT"}
    assert {r["method"] for r in rows} == methods and len(rows) == 2 * len(methods)
    for name in ("results.md", "accuracy_vs_trainable.png", "training_curves.png"):
        assert (out_dir / name).stat().st_size > 0
    assert len(list((out_dir / "attention").glob("*.png"))) == 2
    assert len(list((out_dir / "adapters").glob("*/*/adapter_config.json"))) == 2 * (len(methods) - 1)
    assert any((tmp_path / "cache").glob("digits-vit-*/model.safetensors"))  # the cached foundation model


def test_quickstart_runs_offline(tmp_path):
    stdout = run_example("quickstart.py", "--quick", cache=tmp_path)
    assert "identical logits" in stdout
    assert "VPT-deep" in stdout and "linear probe" in stdout


def test_multitask_serving_runs_offline(tmp_path):
    stdout = run_example("multitask_serving.py", "--quick", cache=tmp_path)
    assert "mixed batch logits equal (to float rounding) to each task served alone" in stdout
    for task in ("digits", "rotated", "parity", "__base__"):
        assert task in stdout
    assert "memory saved" in stdout
