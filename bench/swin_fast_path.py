"""Swin deep prompts: the fast path (default) vs the full in-sequence path, Swin-B config, train step.

Deep prompts are replaced before every block, so a block whose prompt outputs are discarded only needs them as
keys/values of its windows; the fast path runs them as tokens in the last block only, the in-sequence path
(``prompt_path="sequence"``) prepends them to every window of every block as the official code does. Both
compute the same function (tests/test_swin.py); this measures what the fast path saves. The variants run
interleaved in one process, one torch thread; process CPU time is the stable figure on a shared machine.

    python bench/swin_fast_path.py [--steps N] [--quick] [--prompts 10 50] [--batch 4] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Optional

import torch
from peft import get_peft_model
from transformers import SwinConfig, SwinForImageClassification

import vpt_peft
from common import (
    NUM_LABELS,
    SEED,
    Variant,
    batch,
    describe_environment,
    markdown_table,
    paired_ratios,
    prompt_sweep_args,
    ratios,
    setup,
    time_round_robin,
)

PATHS = ("auto", "sequence")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return prompt_sweep_args(__doc__.splitlines()[0], argv, steps=(3, 2), prompts=([10, 50], [50]), batch_size=4)


def swin_b(device: str) -> SwinForImageClassification:
    """A randomly initialised Swin-B (224 px, window 7, embed 128, depths 2-2-18-2), the same weights every call."""
    torch.manual_seed(SEED)
    config = SwinConfig(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], num_labels=NUM_LABELS)
    return SwinForImageClassification(config).to(device).eval()


def name(path: str, p: int) -> str:
    return f"{'fast' if path == 'auto' else 'sequence'} p={p}"


def build_variants(prompts: Sequence[int], batch_size: int, device: str) -> list[Variant]:
    variants = []
    for p in prompts:
        for path in PATHS:
            config = vpt_peft.VisualPromptConfig(num_prompts=p, deep=True, prompt_path=path, prompt_dropout=0.0)
            model = get_peft_model(swin_b(device), config).train()
            variants.append(Variant(name(path, p), model, *batch(batch_size, device)))
    return variants


def speed_table(prompts: Sequence[int], timings: dict) -> tuple[str, list[str]]:
    rows, lines = [], []
    for p in prompts:
        fast, seq = timings[name("auto", p)], timings[name("sequence", p)]
        medians, paired = ratios(fast, seq), paired_ratios(fast, seq)
        rows.append(
            (
                p,
                f"{fast.median_wall:.2f}",
                f"{fast.median_cpu:.2f}",
                f"{seq.median_wall:.2f}",
                f"{seq.median_cpu:.2f}",
                f"{medians[0]:.3f}",
                f"{medians[1]:.3f}",
            )
        )
        lines.append(
            f"p={p} fast / in-sequence: ratio of medians wall {medians[0]:.3f}, CPU {medians[1]:.3f}; "
            f"median per-round ratio wall {paired[0]:.3f}, CPU {paired[1]:.3f}"
        )
    headers = ("p", "fast wall s", "fast CPU s", "seq wall s", "seq CPU s", "fast/seq wall", "fast/seq CPU")
    return markdown_table(headers, rows), lines


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    setup(args.device)
    print(f"## Swin deep-prompt fast path vs in-sequence path\n\n{describe_environment(args.device)}")
    print(
        f"Swin-B config, batch {args.batch}, deep VPT, p in {args.prompts}, {args.steps} timed steps after "
        f"{args.warmup} warmup, all variants interleaved\n",
        flush=True,
    )
    variants = build_variants(args.prompts, args.batch, args.device)
    timings = time_round_robin(variants, args.steps, args.warmup, args.device)
    table, lines = speed_table(args.prompts, timings)
    print("\n" + table + "\n\n" + "\n".join(f"- {line}" for line in lines) + "\n", flush=True)


if __name__ == "__main__":
    main()
