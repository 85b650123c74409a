"""Where a mixed-task batch spends its time, op by op, against the same batch served as one task.

bench/multitask.py measured mixed-batch throughput at 0.951-0.976x the single-task batch on ViT-B (goal
0.97). The work a mixed batch adds is known in advance: every task's prompt keys/values instead of one
task's (4 x 2 d^2 p multiply-adds per block instead of 1 x), one gather of those keys per block, one head
call per task. This profiles single and mixed passes interleaved (``--passes`` of each, same model, same
batch) and prints, per op, the median self CPU time of each and the spread of the single-task passes, so
that a difference can be read against the pass-to-pass variation of the very same work.

    python bench/multitask_profile.py [--passes 3] [--batch 32] [--prompts 50] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from typing import Optional

from torch.profiler import ProfilerActivity, profile
from transformers import ViTConfig

from common import describe_environment, markdown_table, setup
from multitask import QUICK, TASKS, build_variants


def self_cpu_ms(run) -> dict[str, float]:
    """Self CPU milliseconds per op name for one call of ``run`` (profiled, with the grad mode it sets)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return {event.key: event.self_cpu_time_total / 1e3 for event in prof.key_averages()}


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=3, help="profiled passes of each variant, interleaved")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="the small ViT of multitask.py --quick")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    setup("cpu")
    config = ViTConfig(num_labels=100, **(QUICK if args.quick else {}))
    variants = {v.name: v for v in build_variants(config, args.batch, args.prompts, "cpu")}
    names = ("single", "mixed")
    for name in names:  # warm-up
        variants[name].step()
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for index in range(args.passes):
        for name in names if index % 2 == 0 else names[::-1]:
            samples[name].append(self_cpu_ms(variants[name].step))
    ops = sorted({op for runs in samples.values() for run in runs for op in run})

    def median(name: str, op: str) -> float:
        return statistics.median(run.get(op, 0.0) for run in samples[name])

    rows, totals = [], {name: [sum(run.values()) for run in samples[name]] for name in names}
    by_cost = sorted(ops, key=lambda op: -max(median("single", op), median("mixed", op)))
    for op in by_cost[: args.top]:
        single = [run.get(op, 0.0) for run in samples["single"]]
        rows.append(
            (
                op,
                f"{median('single', op):,.0f}",
                f"{min(single):,.0f}-{max(single):,.0f}",
                f"{median('mixed', op):,.0f}",
                f"{median('mixed', op) - median('single', op):+,.0f}",
            )
        )
    rows.append(
        (
            "all ops",
            f"{statistics.median(totals['single']):,.0f}",
            f"{min(totals['single']):,.0f}-{max(totals['single']):,.0f}",
            f"{statistics.median(totals['mixed']):,.0f}",
            f"{statistics.median(totals['mixed']) - statistics.median(totals['single']):+,.0f}",
        )
    )
    only_mixed = [op for op in ops if median("single", op) == 0 and median("mixed", op) > 0]
    print(f"## Mixed-batch profile\n\n{describe_environment('cpu')}")
    print(f"{'quick ViT' if args.quick else 'ViT-B/16'}, batch {args.batch}, {TASKS} tasks x p={args.prompts}, ")
    print(f"{args.passes} profiled passes of each, interleaved; self CPU ms per pass, medians\n")
    headers = ("op", "single ms", "single spread", "mixed ms", "mixed - single")
    print(markdown_table(headers, rows))
    print(f"\nops only the mixed batch runs: {', '.join(only_mixed) or 'none'}")
    mixed_total, single_total = statistics.median(totals["mixed"]), statistics.median(totals["single"])
    print(f"mixed / single self CPU (all ops, medians): {mixed_total / single_total:.3f}")


if __name__ == "__main__":
    main()
