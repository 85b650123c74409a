"""Serving throughput: a mixed batch of 4 tasks vs a single-task batch and vs 4 per-task sub-batches.

One model holds 4 VPT-deep adapters (ViT-B/16, random init; p prompts each, the key-value fast path).
Inference only (eval, no grad). Variants, timed interleaved in one process (see common.py):

* ``single``: the whole batch runs one adapter (``set_adapter``), the cost of serving one task;
* ``mixed``: ``model(x, adapter_names=[...])`` with the 4 tasks interleaved sample by sample;
* ``sub-batches``: the 4 tasks served one after another, ``set_adapter`` + a forward of batch/4 each;
* ``mixed, padded``: 4 tasks with different prompt counts (p/4, p/2, 3p/4, p), so every block attends in
  4 key layouts (informational: the price of mixing prompt counts).

Goal: mixed / single >= 0.97 in throughput (i.e. mixed time / single time <= 1/0.97).

    python bench/multitask.py [--quick] [--steps N] [--batch 32] [--prompts 50] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from peft import get_peft_model
from transformers import ViTConfig, ViTForImageClassification

import vpt_peft
from common import SEED, Timing, describe_environment, markdown_table, paired_ratios, ratios, setup, time_round_robin

TASKS = 4
GOAL = 0.97
QUICK = dict(
    hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768, image_size=128, patch_size=8
)


@dataclass
class ServingVariant:
    """One way to serve the batch; :meth:`step` is one full pass over it (what time_round_robin times)."""

    name: str
    run: Callable[[], None]

    @torch.no_grad()
    def step(self) -> None:
        self.run()


def served_model(config: ViTConfig, prompts: Sequence[int], device: str):
    torch.manual_seed(SEED)
    base = ViTForImageClassification(config).to(device).eval()
    names = [f"task{i}" for i in range(len(prompts))]
    model = get_peft_model(base, vpt_peft.VisualPromptConfig(num_prompts=prompts[0], deep=True), adapter_name=names[0])
    for name, p in zip(names[1:], prompts[1:]):
        model.add_adapter(name, vpt_peft.VisualPromptConfig(num_prompts=p, deep=True))
    return model.eval(), names


def build_variants(config: ViTConfig, batch: int, p: int, device: str) -> list[ServingVariant]:
    generator = torch.Generator().manual_seed(SEED)
    pixels = torch.randn(batch, 3, config.image_size, config.image_size, generator=generator).to(device)
    model, names = served_model(config, [p] * TASKS, device)
    mixed_names = [names[i % TASKS] for i in range(batch)]
    rows = {name: torch.tensor([i for i, n in enumerate(mixed_names) if n == name]) for name in names}

    def single() -> None:
        model.set_adapter(names[0])
        model(pixel_values=pixels)

    def sub_batches() -> None:
        for name in names:
            model.set_adapter(name)
            model(pixel_values=pixels[rows[name]])

    padded, padded_names = served_model(config, [max(1, p * (i + 1) // TASKS) for i in range(TASKS)], device)
    padded_batch = [padded_names[i % TASKS] for i in range(batch)]
    return [
        ServingVariant("single", single),
        ServingVariant("mixed", lambda: model(pixel_values=pixels, adapter_names=mixed_names)),
        ServingVariant("sub-batches", sub_batches),
        ServingVariant("mixed, padded", lambda: padded(pixel_values=pixels, adapter_names=padded_batch)),
    ]


def report(timings: dict[str, Timing], batch: int) -> str:
    single = timings["single"]
    rows = []
    for name, timing in timings.items():
        medians, paired = ratios(single, timing), paired_ratios(single, timing)  # throughput vs single
        rows.append(
            (
                name,
                f"{timing.median_wall:.3f}",
                f"{timing.median_cpu:.3f}",
                f"{batch / timing.median_wall:.1f}",
                f"{medians[0]:.3f}",
                f"{medians[1]:.3f}",
                f"{paired[0]:.3f}",
                f"{paired[1]:.3f}",
            )
        )
    headers = (
        "variant",
        "wall s",
        "CPU s",
        "images/s",
        "thr. vs single wall",
        "CPU",
        "per-round wall",
        "per-round CPU",
    )
    return markdown_table(headers, rows)


def goal_lines(timings: dict[str, Timing]) -> list[str]:
    single, mixed, subs = timings["single"], timings["mixed"], timings["sub-batches"]
    wall, cpu = ratios(single, mixed)
    verdict = "met" if min(wall, cpu) >= GOAL else ("met on CPU time" if cpu >= GOAL else "NOT met")
    sub_wall, sub_cpu = ratios(subs, mixed)
    return [
        f"mixed throughput / single-task throughput >= {GOAL}: wall {wall:.3f}, CPU {cpu:.3f} ({verdict})",
        f"mixed throughput / 4 sub-batches throughput: wall {sub_wall:.3f}, CPU {sub_cpu:.3f}",
    ]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="timed passes per variant (default 5, quick 5)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a small ViT (192 wide, 4 layers, 257 tokens)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=50, help="prompts per task and layer (p)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    args.steps = args.steps or 5
    setup(args.device)
    config = ViTConfig(num_labels=100, **(QUICK if args.quick else {}))
    print(f"## Multi-task serving\n\n{describe_environment(args.device)}")
    print(
        f"{'quick ViT' if args.quick else 'ViT-B/16'}, batch {args.batch}, {TASKS} tasks of VPT-deep p={args.prompts} "
        f"(kv path), inference, {args.steps} timed passes after {args.warmup} warmup, interleaved\n",
        flush=True,
    )
    variants = build_variants(config, args.batch, args.prompts, args.device)
    timings = time_round_robin(variants, args.steps, args.warmup, args.device)
    print("\n" + report(timings, args.batch) + "\n")
    print("\n".join(f"- {line}" for line in goal_lines(timings)) + "\n", flush=True)


if __name__ == "__main__":
    main()
