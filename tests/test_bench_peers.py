"""bench/peers.py in smoke mode: every row is produced, the tables and the plot are written. No timing is checked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import peers  # noqa: E402
from peers_report import inference_table, train_table  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("peers")
    results = peers.main(["--smoke", "--no-adapters", "--json", str(out / "peers.json"), "--plot", str(out / "p.png")])
    return results, out


def test_smoke_emits_every_training_row(smoke):
    results, _ = smoke
    names = [row["name"] for row in results["train"]]
    expected = [peers.FULL, peers.FLOOR] + [m.name for m in peers.methods(2, 4, 1)]
    assert names == expected
    assert all(len(row["cpu"]) == 1 and row["memory"] > 0 for row in results["train"])
    trainable = {row["name"]: row["trainable"] for row in results["train"]}
    assert trainable[peers.FLOOR] == 0 and trainable[peers.FULL] == max(trainable.values())
    assert "not run: --no-adapters" in train_table(results)


def test_smoke_emits_every_inference_row_and_its_bound(smoke):
    results, _ = smoke
    names = [row["name"] for row in results["inference"]]
    expected = [peers.BASE] + [m.name for m in peers.methods(2, 4, 1) if m.infer and m.name != "linear probe"]
    assert names == expected
    table = inference_table(results)
    assert all(name in table for name in names)


def test_smoke_writes_json_and_plot(smoke):
    results, out = smoke
    assert json.loads((out / "peers.json").read_text())["train"] == results["train"]
    assert (out / "p.png").stat().st_size > 0


def test_cost_model_orders_the_prompt_paths():
    """In-sequence prompts cost more than key/value prompts of the same count, which cost more than none."""
    from peers_report import macs_per_block

    vit_b = {"image": 224, "patch": 16, "width": 768, "intermediate": 3072, "batch": 8}
    base = macs_per_block(vit_b, "plain", 0, 0)
    kv, seq = macs_per_block(vit_b, "kv", 50, 0), macs_per_block(vit_b, "sequence", 50, 0)
    assert base < kv < seq
    assert seq / base > (197 + 50) / 197  # the quadratic attention term puts it above the token count


@pytest.mark.skipif(not peers.ADAPTERS_PYTHON.exists(), reason="no .venv-adapters (make bench-adapters-venv)")
def test_adapters_peer_runs_in_its_own_virtualenv():
    result = peers.run_adapters_peer(steps=1, warmup=0, size=2, smoke=True)
    assert "error" not in result, result.get("error")
    assert [row["name"] for row in result["rows"]] == ["full fine-tuning", "adapters prompt tuning p=10"]
    assert result["versions"]["transformers"].startswith("4.57")
