"""Where a mixed-task batch spends its time, op by op, against the same batch served as one task.

bench/multitask.py measured mixed-batch throughput at 0.951-0.976x the single-task batch on ViT-B (goal
0.97). The work a mixed batch adds is known in advance: every task's prompt keys/values instead of one
task's (4 x 2 d^2 p multiply-adds per block instead of 1 x), one gather of those keys per block, one head
call per task. This profiles single and mixed passes interleaved (``--passes`` of each, same model, same
batch) and prints, per op, the median self time of each, the spread of the single-task passes, and the
multiply-adds the profiler counts (``with_flops``): the work, which no load on the machine can change.
The profiler's op times are wall-clock, so on a shared machine they carry other processes' load; the
process CPU seconds of every pass are printed beside them.

    python bench/multitask_profile.py [--passes 3] [--batch 32] [--prompts 50] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from torch.profiler import ProfilerActivity, profile
from transformers import ViTConfig

from common import describe_environment, markdown_table, setup
from multitask import QUICK, TASKS, build_variants


@dataclass
class Pass:
    """One profiled call: self milliseconds and GFLOP per op name, and the process CPU seconds it took."""

    ms: dict[str, float]
    gflop: dict[str, float]
    cpu: float


def profiled(run) -> Pass:
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        start = time.process_time()
        run()
        cpu = time.process_time() - start
    events = prof.key_averages()
    return Pass({e.key: e.self_cpu_time_total / 1e3 for e in events}, {e.key: e.flops / 1e9 for e in events}, cpu)


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
    passes: dict[str, list[Pass]] = {name: [] for name in names}
    for index in range(args.passes):
        for name in names if index % 2 == 0 else names[::-1]:
            passes[name].append(profiled(variants[name].step))
    samples = {name: [run.ms for run in runs] for name, runs in passes.items()}
    ops = sorted({op for runs in samples.values() for run in runs for op in run})

    def median(name: str, op: str) -> float:
        return statistics.median(run.get(op, 0.0) for run in samples[name])

    def gflop(name: str, op: Optional[str] = None) -> float:
        flops = passes[name][0].gflop
        return sum(flops.values()) if op is None else flops.get(op, 0.0)

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
                f"{gflop('single', op):,.1f}",
                f"{gflop('mixed', op):,.1f}",
            )
        )
    rows.append(
        (
            "all ops",
            f"{statistics.median(totals['single']):,.0f}",
            f"{min(totals['single']):,.0f}-{max(totals['single']):,.0f}",
            f"{statistics.median(totals['mixed']):,.0f}",
            f"{statistics.median(totals['mixed']) - statistics.median(totals['single']):+,.0f}",
            f"{gflop('single'):,.1f}",
            f"{gflop('mixed'):,.1f}",
        )
    )
    only_mixed = [op for op in ops if median("single", op) == 0 and median("mixed", op) > 0]
    print(f"## Mixed-batch profile\n\n{describe_environment('cpu')}")
    print(f"{'quick ViT' if args.quick else 'ViT-B/16'}, batch {args.batch}, {TASKS} tasks x p={args.prompts}, ")
    print(f"{args.passes} profiled passes of each, interleaved; self CPU ms per pass, medians\n")
    headers = ("op", "single ms", "single spread", "mixed ms", "mixed - single", "single GFLOP", "mixed GFLOP")
    print(markdown_table(headers, rows))
    print(f"\nops only the mixed batch runs: {', '.join(only_mixed) or 'none'}")
    mixed_total, single_total = statistics.median(totals["mixed"]), statistics.median(totals["single"])
    print(f"mixed / single profiled op time (all ops, medians, wall-clock): {mixed_total / single_total:.3f}")
    print(f"mixed / single counted GFLOP: {gflop('mixed') / gflop('single'):.4f}")
    for name in names:
        print(f"process CPU s per {name} pass: {', '.join(f'{run.cpu:.2f}' for run in passes[name])}")


if __name__ == "__main__":
    main()
