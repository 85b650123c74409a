"""The cost of the papers' full sweeps (VTAB-1k + FGVC at ViT-B/16) per method, and what Ray parallelism buys.

Measured here: the train-step time of ViT-B/16 (random weights, 224 px) with each method's preset prompts on
this CPU, wall and process CPU time, interleaved round-robin; printed next to the FLOP model of
:mod:`vpt_peft.reproduce.costs` as ratios to VPT-shallow, which checks the model's proportions. Derived, not
measured: GPU-hours, from the FLOP model and an assumed sustained accelerator throughput (``--tflops``,
default 60: an A100 in TF32 at about 40 % of its 156 TFLOP/s peak), because no GPU was available. Time on
N GPUs assumes one trial per GPU (Ray Tune), stages run one after another, no time lost between trials.

    python bench/sweep_cost.py [--task cifar100] [--batch 2] [--steps 2] [--tflops 60] [--quick]
"""

from __future__ import annotations

import argparse

from common import describe_environment, markdown_table, prompt_variant, setup, time_round_robin
from vpt_peft import recipes
from vpt_peft.reproduce.costs import (
    TRAIN_PASSES,
    forward_flops,
    gpu_hours,
    parallel_hours,
    round_up,
    sequence,
    sweep_workloads,
)

METHODS = ("vpt-shallow", "vpt-deep", "vfpt", "e2vpt")
GPUS = (1, 8, 64)


def measure(task: str, batch: int, steps: int) -> list[list[str]]:
    """Per method: tokens, FLOPs per training image, measured CPU ms per image, and both as ratios."""
    variants = [prompt_variant(m, recipes.preset(m, task).make_config(), batch, "cpu") for m in METHODS]
    timings = time_round_robin(variants, steps=steps, warmup=1, device="cpu")
    base = None
    rows = []
    for method in METHODS:
        tokens, kv = sequence(method, task)
        flops = TRAIN_PASSES * forward_flops(tokens, kv)
        wall, cpu = timings[method].median_wall / batch, timings[method].median_cpu / batch
        base = base or (flops, wall, cpu)
        rows.append(
            [
                method,
                f"{tokens} + {kv} kv",
                f"{flops / 1e9:.0f}",
                f"{1000 * wall:.0f} / {1000 * cpu:.0f}",
                f"{flops / base[0]:.2f}",
                f"{wall / base[1]:.2f} / {cpu / base[2]:.2f}",
                f"{flops / cpu / 1e9:.0f}",
            ]
        )
    return rows


def sweep_table(tflops: float) -> list[list[str]]:
    rows = []
    for method in METHODS:
        vtab, fgvc = sweep_workloads(method, "vtab-1k"), sweep_workloads(method, "fgvc")
        both = vtab + fgvc
        images = sum(w.images for w in both)
        rows.append(
            [
                method,
                f"{sum(w.images for w in vtab) / 1e6:.0f} M",
                f"{sum(w.images for w in fgvc) / 1e6:.0f} M",
                f"{round_up(gpu_hours(vtab, tflops)):g}",
                f"{round_up(gpu_hours(fgvc, tflops)):g}",
                f"{round_up(gpu_hours(both, tflops)):g}",
                *(f"{round_up(parallel_hours(both, tflops, g)):g}" for g in GPUS),
                f"{images / 1e6:.0f} M",
            ]
        )
    e2vpt_official = sweep_workloads("e2vpt", "vtab-1k", True) + sweep_workloads("e2vpt", "fgvc", True)
    rows.append(
        [
            "e2vpt, 81 pruning candidates",
            "",
            "",
            "",
            "",
            f"{round_up(gpu_hours(e2vpt_official, tflops)):g}",
            *(f"{round_up(parallel_hours(e2vpt_official, tflops, g)):g}" for g in GPUS),
            f"{sum(w.images for w in e2vpt_official) / 1e6:.0f} M",
        ]
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="cifar100", help="preset whose prompt counts are timed")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--tflops", type=float, default=60.0, help="assumed sustained accelerator TFLOP/s")
    parser.add_argument("--quick", action="store_true", help="one timed step")
    args = parser.parse_args()
    setup("cpu")
    print(describe_environment("cpu"))
    print(f"\nMeasured: one ViT-B/16 train step per method ({args.task} presets, batch {args.batch}), per image:\n")
    header = ["method", "tokens", "train GFLOP/img", "CPU ms/img wall / process", "FLOP ratio", "time ratio"]
    print(markdown_table(header + ["CPU GFLOP/s"], measure(args.task, args.batch, 1 if args.quick else args.steps)))
    print(f"\nDerived: full sweeps (preset grids, 100 epochs, 5 seeds) at an assumed {args.tflops:g} TFLOP/s:\n")
    header = ["method", "VTAB-1k images", "FGVC images", "VTAB GPU-h", "FGVC GPU-h", "total GPU-h"]
    header += [f"wall h on {g} GPU{'s' if g > 1 else ''}" for g in GPUS] + ["images"]
    print(markdown_table(header, sweep_table(args.tflops)))


if __name__ == "__main__":
    main()
