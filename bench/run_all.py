"""Run every benchmark in turn (``make bench``); ``--quick``, ``--steps N`` and ``--device`` pass through.

On one CPU thread the defaults take about an hour (multitask.py about ten minutes, peers.py about twenty-five);
the printed markdown goes into docs/benchmarks.md. peers.py's adapters-library row needs ``make
bench-adapters-venv`` (``make bench`` runs it first).

    python bench/run_all.py [--quick] [--steps N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Optional

import dpt_step
import e2vpt_pruning
import fast_path
import multitask
import peers
import swin_fast_path
import vfpt_overhead


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    shared = ["--device", args.device] + (["--quick"] if args.quick else [])
    shared += ["--steps", str(args.steps)] if args.steps is not None else []
    start = time.perf_counter()
    for bench in (vfpt_overhead, fast_path, swin_fast_path, e2vpt_pruning, dpt_step, multitask, peers):
        bench.main(shared)
    print(f"all benchmarks: {time.perf_counter() - start:.0f} s wall")


if __name__ == "__main__":
    main()
