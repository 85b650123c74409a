"""Every example runs offline as written (quick mode)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs_offline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VPT_PEFT_CACHE": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--quick"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "identical logits" in out.stdout
    assert "VPT-deep" in out.stdout and "linear probe" in out.stdout


def test_multitask_serving_runs_offline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VPT_PEFT_CACHE": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "multitask_serving.py"), "--quick"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mixed batch logits identical to each task served alone" in out.stdout
    for task in ("digits", "rotated", "parity", "__base__"):
        assert task in out.stdout
    assert "memory saved" in out.stdout
