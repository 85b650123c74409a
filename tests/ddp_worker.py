"""VPT-deep trained with the HF Trainer; run by tests/test_ddp.py under ``torch.distributed.run`` (2 CPU
processes, gloo) and, for the reference, in the test process itself with the same global batch.

``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py OUT`` writes
``OUT/rank<r>.safetensors`` (the trained prompts and head) and ``OUT/rank<r>.json`` (what the rank saw).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from peft import get_peft_model
from safetensors.torch import save_file
from transformers import Trainer, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers import prompt_param, tiny_vit  # noqa: E402
from vpt_peft import VisualPromptConfig  # noqa: E402

GLOBAL_BATCH, STEPS = 8, 4


class Brightness(torch.utils.data.Dataset):
    """Images whose label is their brightness tercile (the same examples in every process)."""

    def __init__(self, n: int = GLOBAL_BATCH * STEPS) -> None:
        generator = torch.Generator().manual_seed(0)
        self.labels = torch.randint(0, 3, (n,), generator=generator)
        self.images = torch.randn(n, 3, 32, 32, generator=generator) * 0.3 + (self.labels[:, None, None, None] - 1.0)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.images[i], "labels": self.labels[i]}


def train(output_dir: Path, per_device_batch: int) -> tuple[Trainer, dict[str, torch.Tensor]]:
    """STEPS optimizer steps of plain SGD (linear in the gradient, so rounding stays rounding) on batches
    taken in order; prompt dropout off, since each process would draw its own masks."""
    torch.manual_seed(0)
    model = get_peft_model(tiny_vit(), VisualPromptConfig(num_prompts=4, deep=True, prompt_dropout=0.0))
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_device_batch,
        max_steps=STEPS,
        learning_rate=0.5,
        optim="sgd",
        lr_scheduler_type="constant",
        train_sampling_strategy="sequential",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        ddp_backend="gloo" if "LOCAL_RANK" in os.environ else None,  # set by torch.distributed.run
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Brightness())
    trainer.train()
    head = model.base_model.model.classifier.modules_to_save["default"]
    trained = {"prompts": prompt_param(model), "head.weight": head.weight, "head.bias": head.bias}
    return trainer, {k: v.detach().clone().contiguous() for k, v in trained.items()}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    trainer, trained = train(out / "trainer", GLOBAL_BATCH // world)
    save_file(trained, out / f"rank{rank}.safetensors")
    seen = {
        "world_size": trainer.args.world_size,
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        "wrapped": type(trainer.model_wrapped).__name__,
        "global_step": trainer.state.global_step,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
