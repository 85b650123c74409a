"""The ``adapters`` library's prompt tuning on ViT, timed against full fine-tuning in the same process.

This file runs in its own virtualenv (``make bench-adapters-venv``: ``adapters`` 1.3 pins transformers
4.57, which vpt_peft's environment does not have), so it imports neither vpt_peft nor bench/common.py and
repeats the little it needs of their timing method: one torch thread, the variants interleaved round-robin
with the order rotated every round, process CPU time as the stable figure, medians. Only the ratio of
prompt tuning to full fine-tuning *within this process* is meant to be compared with vpt_peft's ratios:
the two environments run different transformers versions, so their absolute step times need not agree.

Prompt tuning uses ``combine="prefix_after_bos"`` so the prompts sit after ``[CLS]`` as in VPT-shallow
(with the default ``"prefix"`` the classifier, which reads position 0, would read a prompt token).
The result is one JSON object on the last line of stdout, which ``bench/peers.py`` reads.

    .venv-adapters/bin/python bench/adapters_peer.py [--steps N] [--warmup N] [--batch 8] [--prompts 10] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Optional

import adapters
import torch
import transformers
from adapters import PromptTuningConfig
from transformers import ViTConfig, ViTForImageClassification

SEED = 0
NUM_LABELS = 100
SMOKE = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=32, patch_size=8
)


def build(config: ViTConfig, prompts: Optional[int]) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Full fine-tuning (``prompts=None``) or prompt tuning + trainable head, with AdamW on what trains."""
    torch.manual_seed(SEED)
    model = ViTForImageClassification(config)
    if prompts is not None:
        adapters.init(model)
        model.add_adapter("prompt", config=PromptTuningConfig(prompt_length=prompts, combine="prefix_after_bos"))
        model.train_adapter("prompt")  # freezes the backbone; the classifier stays trainable
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(trainable, lr=1e-3)


def step_function(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, pixels: torch.Tensor, labels: torch.Tensor
) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(pixel_values=pixels, labels=labels).loss.backward()
        optimizer.step()

    return step


def step_memory(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, pixels: torch.Tensor, labels: torch.Tensor
) -> int:
    """Bytes saved for backward (new storages only) + gradients + optimizer state, as bench/common.py counts."""
    resident = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers(), pixels, labels]}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in resident:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    optimizer.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(pixel_values=pixels, labels=labels).loss
    loss.backward()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    state = sum(
        t.numel() * t.element_size()
        for per_param in optimizer.state.values()
        for t in per_param.values()
        if isinstance(t, torch.Tensor) and t.dim() > 0
    )
    return sum(saved.values()) + grads + state


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="a tiny ViT, for the test suite")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = ViTConfig(num_labels=NUM_LABELS, **(SMOKE if args.smoke else {}))
    generator = torch.Generator().manual_seed(SEED)
    pixels = torch.randn(args.batch, 3, config.image_size, config.image_size, generator=generator)
    labels = torch.randint(0, NUM_LABELS, (args.batch,), generator=generator)
    names = ("full fine-tuning", f"adapters prompt tuning p={args.prompts}")
    built = [build(config, None), build(config, args.prompts)]
    steps = [step_function(model, optimizer, pixels, labels) for model, optimizer in built]
    trainable = [sum(p.numel() for p in model.parameters() if p.requires_grad) for model, _ in built]
    cpu: list[list[float]] = [[], []]
    wall: list[list[float]] = [[], []]
    for round_index in range(args.warmup + args.steps):
        order = [0, 1] if round_index % 2 == 0 else [1, 0]
        for i in order:
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            steps[i]()
            if round_index >= args.warmup:
                wall[i].append(time.perf_counter() - start_wall)
                cpu[i].append(time.process_time() - start_cpu)
    memory = [step_memory(model, optimizer, pixels, labels) for model, optimizer in built]
    result = {
        "versions": {
            "adapters": adapters.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "rows": [
            {
                "name": name,
                "trainable": trainable[i],
                "cpu": cpu[i],
                "wall": wall[i],
                "memory": memory[i],
                "cpu_vs_full_per_round": statistics.median(c / f for c, f in zip(cpu[i], cpu[0])),
            }
            for i, name in enumerate(names)
        ],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
