"""Multi-process training: 2-process CPU DDP (gloo) through ``torch.distributed.run`` with the HF Trainer.

``accelerate launch --num_processes 2 --cpu`` is not used: with ``--cpu`` accelerate 1.15 always takes
its single-process launcher (one process, no ``RANK``/``WORLD_SIZE``), so it would not test DDP at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .ddp_worker import GLOBAL_BATCH, train
from .helpers import assert_equal_to_rounding

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_two_process_ddp_trainer_matches_one_process_on_the_same_global_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run = subprocess.run([*command, str(WORKER), str(tmp_path)], env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen == {"world_size": 2, "backend": "gloo", "wrapped": "DistributedDataParallel", "global_step": 4}
    rank0, rank1 = (load_file(tmp_path / f"rank{rank}.safetensors") for rank in (0, 1))

    torch.manual_seed(0)
    trainer, single = train(tmp_path / "single", per_device_batch=GLOBAL_BATCH)
    assert trainer.args.world_size == 1
    initial = _initial_prompts()
    assert (single["prompts"] - initial).abs().max() > 1e-3  # the run trained, far beyond the tolerance
    for name, value in single.items():
        # DDP all-reduces the gradients, so both ranks apply the same update: the same bits by construction.
        assert torch.equal(rank0[name], rank1[name]), name
        # Against one process on the same 8 examples the gradient is summed in another order: rounding only.
        assert_equal_to_rounding(rank0[name], value)


def _initial_prompts() -> torch.Tensor:
    from peft import get_peft_model

    from vpt_peft import VisualPromptConfig

    from .helpers import prompt_param, tiny_vit

    torch.manual_seed(0)
    model = get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=4, deep=True, prompt_dropout=0.0))
    return prompt_param(model).detach()
