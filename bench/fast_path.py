"""Deep-prompt fast path (prompt_path="kv") vs the in-sequence path and vs the floor, ViT-B/16, batch 8.

Goals: at p=100 the fast-path step takes at most 0.70x the in-sequence step and at most 1.15x the floor
(the frozen base model's forward + input-gradient backward, the least any deep-prompt method can cost);
at p=200 the fast path needs no more step memory than full fine-tuning. All timed variants run
interleaved in one process, so every ratio compares steps taken under the same load.

    python bench/fast_path.py [--steps N] [--quick] [--prompts 10 50 100 200] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Optional

import vpt_peft
from common import (
    StepMemory,
    Timing,
    Variant,
    describe_environment,
    floor_variant,
    full_finetune_variant,
    markdown_table,
    mib,
    paired_ratios,
    prompt_path,
    prompt_sweep_args,
    prompt_variant,
    ratios,
    setup,
    step_memory,
    time_round_robin,
    verdict,
)

PATHS = ("kv", "sequence")
SPEED_P, SPEED_VS_SEQUENCE, SPEED_VS_FLOOR = 100, 0.70, 1.15
MEMORY_P = 200


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return prompt_sweep_args(
        __doc__.splitlines()[0],
        argv,
        steps=(5, 2),
        prompts=([10, 50, SPEED_P, MEMORY_P], [SPEED_P, MEMORY_P]),
        batch_size=8,
    )


def name(path: str, p: int) -> str:
    return f"{path} p={p}"


def build_variants(prompts: Sequence[int], batch: int, device: str) -> list[Variant]:
    variants = [floor_variant(batch, device)]
    for p in prompts:
        for path in PATHS:
            config = vpt_peft.VisualPromptConfig(num_prompts=p, deep=True, prompt_path=path)
            variant = prompt_variant(name(path, p), config, batch, device)
            assert prompt_path(variant) == path, f"{variant.name} took the {prompt_path(variant)} path"
            variants.append(variant)
    return variants


def speed_table(prompts: Sequence[int], timings: dict[str, Timing]) -> str:
    floor = timings["floor"]
    rows = []
    for p in prompts:
        kv, seq = timings[name("kv", p)], timings[name("sequence", p)]
        vs_seq, vs_floor = ratios(kv, seq), ratios(kv, floor)
        rows.append(
            (
                p,
                f"{kv.median_wall:.2f}",
                f"{kv.median_cpu:.2f}",
                f"{seq.median_wall:.2f}",
                f"{seq.median_cpu:.2f}",
                f"{vs_seq[0]:.3f}",
                f"{vs_seq[1]:.3f}",
                f"{vs_floor[0]:.3f}",
                f"{vs_floor[1]:.3f}",
            )
        )
    headers = (
        "p",
        "kv wall s",
        "kv CPU s",
        "seq wall s",
        "seq CPU s",
        "kv/seq wall",
        "kv/seq CPU",
        "kv/floor wall",
        "kv/floor CPU",
    )
    floor_line = (
        f"floor (frozen base ViT, input gradients): median wall {floor.median_wall:.2f} s, CPU {floor.median_cpu:.2f} s"
    )
    return floor_line + "\n\n" + markdown_table(headers, rows)


def memory_table(memory: dict[str, StepMemory]) -> str:
    full = memory["full fine-tuning"].total
    rows = [
        (variant, mib(m.saved), mib(m.grads), mib(m.total), f"{m.total / full:.2f}") for variant, m in memory.items()
    ]
    return markdown_table(("variant", "saved for backward MiB", "gradients MiB", "step total MiB", "/ full FT"), rows)


def goal_lines(prompts: Sequence[int], timings: dict[str, Timing], memory: dict[str, StepMemory]) -> list[str]:
    lines = []
    if SPEED_P in prompts:
        kv, seq, floor = timings[name("kv", SPEED_P)], timings[name("sequence", SPEED_P)], timings["floor"]
        for label, other, limit in (("in-sequence", seq, SPEED_VS_SEQUENCE), ("floor", floor, SPEED_VS_FLOOR)):
            medians, paired = ratios(kv, other), paired_ratios(kv, other)
            lines.append(
                f"p={SPEED_P} kv / {label} <= {limit}: "
                f"ratio of medians wall {medians[0]:.3f} ({verdict(medians[0], limit)}), "
                f"CPU {medians[1]:.3f} ({verdict(medians[1], limit)}); median per-round ratio wall {paired[0]:.3f}, "
                f"CPU {paired[1]:.3f}"
            )
    if MEMORY_P in prompts:
        full = memory["full fine-tuning"].total
        for path in PATHS:
            total = memory[name(path, MEMORY_P)].total
            lines.append(
                f"p={MEMORY_P} {path} step memory <= full fine-tuning: {mib(total)} MiB vs {mib(full)} MiB "
                f"({total / full:.2f}x, {verdict(total, full)})"
            )
    return lines


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    setup(args.device)
    print(f"## Fast path vs in-sequence path vs floor\n\n{describe_environment(args.device)}")
    print(
        f"batch {args.batch}, deep VPT, p in {args.prompts}, {args.steps} timed steps after {args.warmup} warmup, "
        "all variants interleaved\n",
        flush=True,
    )
    variants = build_variants(args.prompts, args.batch, args.device)
    timings = time_round_robin(variants, args.steps, args.warmup, args.device)
    print("\n" + speed_table(args.prompts, timings) + "\n", flush=True)

    memory = {"full fine-tuning": step_memory(full_finetune_variant(args.batch, args.device), args.device)}
    for variant in variants:
        memory[variant.name] = step_memory(variant, args.device)
    print(memory_table(memory) + "\n")
    print("\n".join(f"- {line}" for line in goal_lines(args.prompts, timings, memory)) + "\n", flush=True)


if __name__ == "__main__":
    main()
