"""E2VPT train-step time on ViT-B/16: key-value prompts vs the base model, and the speed-up of pruning.

Pruned tokens are removed from the adapter (``prune_mode="remove"``), so a pruned adapter runs with
fewer prompt tokens; this measures 0 %, 50 % and 75 % of the visual prompts pruned, side by side in one
run, against the floor (the frozen base model's forward + backward to its input).

    python bench/e2vpt_pruning.py [--steps N] [--quick] [--prompts P] [--prompt-path kv|sequence]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Optional

import vpt_peft
from common import (
    describe_environment,
    floor_variant,
    markdown_table,
    paired_ratios,
    prompt_variant,
    setup,
    time_round_robin,
)

PRUNED = (0.0, 0.5, 0.75)


def pruned_config(prompts: int, kv_prompts: int, fraction: float, path: str) -> vpt_peft.KVPromptConfig:
    """The config ``prune_prompts`` leaves behind after pruning ``fraction`` of the visual prompts."""
    kept = prompts - int(prompts * fraction)
    return vpt_peft.KVPromptConfig(num_prompts=kept, num_kv_prompts=kv_prompts, pruned=fraction > 0, prompt_path=path)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 8, quick 2)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=100, help="visual prompts per layer before pruning")
    parser.add_argument("--kv-prompts", type=int, default=5)
    parser.add_argument("--prompt-path", default="auto", choices=("auto", "kv", "sequence"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    steps = args.steps or (2 if args.quick else 8)
    setup(args.device)
    print(f"## E2VPT pruning\n\n{describe_environment(args.device)}")
    print(
        f"batch {args.batch}, {args.prompts} visual + {args.kv_prompts} key-value prompts per layer, "
        f"prompt_path={args.prompt_path}, {steps} timed steps, interleaved\n",
        flush=True,
    )
    floor = floor_variant(args.batch, args.device)
    variants = [floor] + [
        prompt_variant(
            f"{int(f * 100)}% pruned",
            pruned_config(args.prompts, args.kv_prompts, f, args.prompt_path),
            args.batch,
            args.device,
        )
        for f in PRUNED
    ]
    timings = time_round_robin(variants, steps, args.warmup, args.device)
    unpruned = timings["0% pruned"]
    rows = []
    for variant in variants:
        t = timings[variant.name]
        vs_floor = paired_ratios(t, timings["floor"])
        vs_unpruned = paired_ratios(t, unpruned)
        rows.append(
            (
                variant.name,
                f"{t.median_cpu:.3f}",
                f"{vs_floor[1]:.3f} ({vs_floor[0]:.3f})",
                f"{vs_unpruned[1]:.3f} ({vs_unpruned[0]:.3f})",
            )
        )
    print("\n" + markdown_table(("variant", "median CPU s", "vs floor: CPU (wall)", "vs 0% pruned: CPU (wall)"), rows))


if __name__ == "__main__":
    main()
