"""Run by tests/test_atomic.py: saves that stop at an exact point so the test can SIGKILL them there.

``python tests/crash_writer.py ROOT STEP [STEP ...]``. For each step, saves adapter A into ROOT/STEP
(completely), then forks a process that saves adapter B into the same folder and, on reaching STEP, prints
``READY <step> <pid>`` and sleeps until the test kills it with SIGKILL. Forking after the imports keeps one
interpreter start for all steps. Also writes the reference adapters ROOT/ref-a and ROOT/ref-b.

``half-weights`` stops inside peft's weights writer after half of the safetensors bytes are on disk
(flushed and fsynced, as a slow or full disk leaves them); every other step is a name that
``vpt_peft.atomic._at_step`` receives during the commit.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import peft.peft_model
import safetensors.torch
import torch
from peft import get_peft_model

import vpt_peft
from vpt_peft import VisualPromptConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers import tiny_vit  # noqa: E402

# Many prompts make the weights file large enough (about 1.5 MB) that the half-written case is realistic.
NUM_PROMPTS_A, NUM_PROMPTS_B = 4000, 3000


def adapter(num_prompts: int, seed: int):
    torch.manual_seed(seed)
    return get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=num_prompts, deep=True))


def stop_here(step: str) -> None:
    print(f"READY {step} {os.getpid()}", flush=True)
    time.sleep(900)  # the test kills us long before; the bound only stops an orphan if the test itself died
    os._exit(4)


def stop_at(step: str) -> None:
    if step == "half-weights":

        def half_writer(tensors, filename, metadata=None):
            data = safetensors.torch.save(tensors, metadata=metadata)
            with open(filename, "wb") as handle:
                handle.write(data[: len(data) // 2])
                handle.flush()
                os.fsync(handle.fileno())
            stop_here(step)

        peft.peft_model.safe_save_file = half_writer
    else:
        vpt_peft.atomic._at_step = lambda name: stop_here(step) if name == step else None


def main(root: Path, steps: list[str]) -> None:
    torch.set_num_threads(1)
    model_a, model_b = adapter(NUM_PROMPTS_A, seed=1), adapter(NUM_PROMPTS_B, seed=2)
    model_a.save_pretrained(root / "ref-a")
    model_b.save_pretrained(root / "ref-b")
    children = []
    for step in steps:
        model_a.save_pretrained(root / step)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            stop_at(step)
            model_b.save_pretrained(root / step)
            print(f"FINISHED {step} without stopping", flush=True)
            os._exit(3)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
