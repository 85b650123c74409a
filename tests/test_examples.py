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
    assert "reloaded onto a fresh backbone and reproduced its test accuracy (12)" in stdout
    assert "VPT-deep beats the linear probe in every group (spec §1.7):" in stdout  # the claims, checked
    with open(out_dir / "trials.csv") as handle:
        rows = list(csv.DictReader(handle))
    methods = {"linear-probe", "full-ft", "vpt-shallow", "vpt-deep", "vfpt", "e2vpt"}
    finals = [r for r in rows if r["stage"] == "final"]
    assert {r["method"] for r in finals} == methods and len(finals) == 2 * len(methods)
    assert len(rows) == 2 * (2 * len(methods) + len(methods) + 2)  # per task: 2-cell grids, 1 seed, E2VPT's 2 stages
    names = ("report.md", "report-digits-small-natural.png", "accuracy_vs_trainable.png", "training_curves.png")
    for name in names:
        assert (out_dir / name).stat().st_size > 0
    assert len(list((out_dir / "attention").glob("*.png"))) == 2
    assert len(list((out_dir / "adapters").rglob("adapter_config.json"))) == len(rows) - 2 * 3  # full FT: 3 a task
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
