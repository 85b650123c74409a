"""VFPT vs VPT train-step time on ViT-B/16 (batch 8, 50 deep prompts): the goal is at most 1.03x.

VFPT is VPT plus a parameter-free FFT of half of each layer's prompts, so its step should cost about
the same; the two run interleaved in one process so that their ratio is not skewed by load. A
difference of a few percent is within the step-to-step noise of a shared machine, so the FFT's own cost
(forward and backward, every prompted layer) is also timed in isolation, as a noise-free bound on what
VFPT adds.

    python bench/vfpt_overhead.py [--steps N] [--quick] [--prompt-path kv|sequence] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Optional

import torch

import vpt_peft
from common import (
    Timing,
    Variant,
    describe_environment,
    markdown_table,
    paired_ratios,
    prompt_path,
    prompt_variant,
    ratios,
    setup,
    sync,
    time_round_robin,
    verdict,
)
from vpt_peft.tuners.vfpt import FourierPromptBank

GOAL = 1.03


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 10, quick 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    parser.add_argument("--quick", action="store_true", help="fewer steps, for a smoke run")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--prompt-path", default="auto", choices=("auto", "kv", "sequence"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 3 if args.quick else 10
    return args


def transform_timing(variant: Variant, batch_size: int, device: str, repeats: int = 20) -> Timing:
    """One step's worth of VFPT transforms (every prompted layer), forward and backward, timed alone."""
    bank = next(m for m in variant.model.modules() if isinstance(m, FourierPromptBank))
    layers, num_prompts, dim = bank.prompt_embeddings.shape
    prompts = torch.randn(batch_size, num_prompts, dim, device=device, requires_grad=True)
    timing = Timing()
    for repeat in range(repeats + 1):
        sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        sum(bank.transform(prompts).sum() for _ in range(layers)).backward()
        sync(device)
        if repeat > 0:  # the first call pays one-off FFT plan and allocation costs
            timing.wall.append(time.perf_counter() - wall)
            timing.cpu.append(time.process_time() - cpu)
    return timing


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    setup(args.device)
    print(f"## VFPT overhead\n\n{describe_environment(args.device)}")
    print(
        f"batch {args.batch}, {args.prompts} deep prompts, prompt_path={args.prompt_path}, "
        f"{args.steps} timed steps after {args.warmup} warmup, interleaved\n",
        flush=True,
    )
    shared = dict(num_prompts=args.prompts, deep=True, prompt_path=args.prompt_path)
    vpt = prompt_variant("VPT", vpt_peft.VisualPromptConfig(**shared), args.batch, args.device)
    vfpt = prompt_variant("VFPT", vpt_peft.FourierPromptConfig(**shared, fourier_ratio=0.5), args.batch, args.device)
    print(f"resolved prompt path: VPT {prompt_path(vpt)}, VFPT {prompt_path(vfpt)}\n", flush=True)
    timings = time_round_robin([vpt, vfpt], args.steps, args.warmup, args.device)

    rows = [(name, f"{t.median_wall:.3f}", f"{t.median_cpu:.3f}") for name, t in timings.items()]
    print("\n" + markdown_table(("variant", "median wall s", "median CPU s"), rows) + "\n")
    medians = ratios(timings["VFPT"], timings["VPT"])
    paired = paired_ratios(timings["VFPT"], timings["VPT"])
    fft, vpt_step = transform_timing(vfpt, args.batch, args.device), timings["VPT"]
    print(
        f"VFPT transforms alone (forward + backward, all prompted layers): wall {fft.median_wall * 1e3:.1f} ms "
        f"({fft.median_wall / vpt_step.median_wall:.2%} of the median VPT step), CPU {fft.median_cpu * 1e3:.1f} ms "
        f"({fft.median_cpu / vpt_step.median_cpu:.2%})\n"
    )
    print(
        markdown_table(
            ("VFPT / VPT", "wall", "CPU", f"goal <= {GOAL}"),
            [
                (
                    "ratio of medians",
                    f"{medians[0]:.3f}",
                    f"{medians[1]:.3f}",
                    f"wall {verdict(medians[0], GOAL)}, CPU {verdict(medians[1], GOAL)}",
                ),
                (
                    "median of per-round ratios",
                    f"{paired[0]:.3f}",
                    f"{paired[1]:.3f}",
                    f"wall {verdict(paired[0], GOAL)}, CPU {verdict(paired[1], GOAL)}",
                ),
            ],
        )
        + "\n",
        flush=True,
    )


if __name__ == "__main__":
    main()
