"""Shared helpers for the benchmarks: ViT-B/16 variants, interleaved step timing, step memory, tables.

Why these choices:

* The backbone is ``ViTConfig(num_labels=100)`` (ViT-B/16 at 224 px) with random weights, so the
  benchmarks need no download; speed and memory do not depend on the weight values. Every variant is
  built from the same seed, so all of them run the same numbers.
* The variants of one comparison are timed round-robin in one process (rotating the order every round),
  so that load from other processes on a shared machine falls on all of them alike. Medians resist the
  odd slow step. Wall time and process CPU time are both reported: with one intra-op thread the CPU time
  is much less sensitive to other processes competing for the cores than the wall time is.
* On CPU there is no allocator peak counter, so the memory a train step needs beyond the resident model
  is estimated as the bytes autograd saves for backward (counted once per storage, leaving out
  parameters, buffers and inputs, which exist anyway) plus the gradients the step produces (trainable
  parameters; the input pixels for the floor). It leaves out short-lived workspace. On CUDA the real
  peak above the resident model is read from ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch
from peft import PeftConfig, get_peft_model
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

import vpt_peft
from vpt_peft.engine.bank import PromptBank

MIB = 2**20
SEED = 0
NUM_LABELS = 100


def prompt_sweep_args(
    description: str,
    argv: Optional[Sequence[str]],
    steps: tuple[int, int],
    prompts: tuple[list[int], list[int]],
    batch_size: int,
) -> argparse.Namespace:
    """The arguments of a benchmark that times prompt counts: ``steps``/``prompts`` are (full, ``--quick``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--steps", type=int, default=None, help=f"timed steps per variant (default {steps[0]}, quick {steps[1]})"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    parser.add_argument(
        "--quick", action="store_true", help=f"fewer steps and only p={', '.join(map(str, prompts[1]))}"
    )
    parser.add_argument(
        "--prompts", type=int, nargs="+", default=None, help=f"default {' '.join(map(str, prompts[0]))}"
    )
    parser.add_argument("--batch", type=int, default=batch_size)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = steps[1] if args.quick else steps[0]
    if args.prompts is None:
        args.prompts = prompts[1] if args.quick else prompts[0]
    return args


def setup(device: str, threads: int = 1) -> None:
    """One intra-op thread on CPU, so that process CPU time measures the work and not the thread pool."""
    if device == "cpu":
        torch.set_num_threads(threads)


def describe_environment(device: str) -> str:
    """One line naming what the numbers were measured on, for the record in docs/benchmarks.md."""
    if device == "cuda":
        machine = torch.cuda.get_device_name()
    else:
        machine = f"{_cpu_model()}, {os.cpu_count()} cores visible, {torch.get_num_threads()} thread(s)"
    import peft
    import transformers

    return (
        f"{datetime.date.today().isoformat()} | {device}: {machine} | torch {torch.__version__}, "
        f"transformers {transformers.__version__}, peft {peft.__version__}, vpt_peft {vpt_peft.__version__}"
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------------------ variants
def vit_b16(device: str) -> ViTForImageClassification:
    """A randomly initialised ViT-B/16 classifier (100 classes) in eval mode, the same weights every call."""
    torch.manual_seed(SEED)
    return ViTForImageClassification(ViTConfig(num_labels=NUM_LABELS)).to(device).eval()


@dataclass
class Variant:
    """A model and its batch; :meth:`step` is one train step without the optimizer update."""

    name: str
    model: nn.Module
    pixel_values: torch.Tensor
    labels: torch.Tensor

    def step(self) -> None:
        """Forward, cross-entropy loss, backward: what every variant must do per batch."""
        self.model.zero_grad(set_to_none=True)
        self.pixel_values.grad = None
        loss = self.model(pixel_values=self.pixel_values, labels=self.labels).loss
        loss.backward()

    def gradient_bytes(self) -> int:
        """Bytes of the gradients a step produces: trainable parameters, and the input if it requires grad."""
        tensors = [p for p in self.model.parameters() if p.requires_grad]
        tensors += [self.pixel_values] if self.pixel_values.requires_grad else []
        return sum(t.numel() * t.element_size() for t in tensors)


def batch(size: int, device: str, requires_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random images and labels for every variant."""
    generator = torch.Generator().manual_seed(SEED)
    pixels = torch.randn(size, 3, 224, 224, generator=generator).to(device)
    labels = torch.randint(0, NUM_LABELS, (size,), generator=generator).to(device)
    return pixels.requires_grad_(requires_grad), labels


def prompt_variant(name: str, config: PeftConfig, batch_size: int, device: str) -> Variant:
    """The peft model in train mode: prompts and head train, the frozen backbone stays in eval mode."""
    model = get_peft_model(vit_b16(device), config)
    model.train()
    return Variant(name, model, *batch(batch_size, device))


def prompt_path(variant: Variant) -> str:
    """Which path the adapter's deep prompts actually take ('auto' resolves at construction)."""
    banks = [m for m in variant.model.modules() if isinstance(m, PromptBank)]
    return "kv" if all(bank.uses_kv_path for bank in banks) else "sequence"


def floor_variant(batch_size: int, device: str) -> Variant:
    """The base ViT with every weight frozen, backpropagating to its input pixels.

    Deep prompts at the first layer need gradients through every block, so this forward + input-gradient
    backward is the least any deep-prompt method can cost on this backbone.
    """
    model = vit_b16(device).requires_grad_(False)
    return Variant("floor", model, *batch(batch_size, device, requires_grad=True))


def full_finetune_variant(batch_size: int, device: str) -> Variant:
    """The base ViT with every weight trainable (the memory bar prompt tuning is meant to stay under)."""
    model = vit_b16(device).train()
    return Variant("full fine-tuning", model, *batch(batch_size, device))


# ------------------------------------------------------------------------------------------ timing
@dataclass
class Timing:
    """Per-step wall and process CPU seconds of one variant, in the order they were taken."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)


def sync(device: str) -> None:
    """Wait for queued GPU work, so that a timer read afterwards includes it."""
    if device == "cuda":
        torch.cuda.synchronize()


def time_round_robin(variants: Sequence[Variant], steps: int, warmup: int, device: str) -> dict[str, Timing]:
    """Time ``steps`` train steps of every variant after ``warmup`` untimed ones, interleaved.

    Round ``r`` runs the variants in the list order rotated by ``r``, so no variant always follows the
    same neighbour (or always runs first after a pause).
    """
    timings = {v.name: Timing() for v in variants}
    n = len(variants)
    for round_index in range(warmup + steps):
        shift = round_index % n
        for variant in [*variants[shift:], *variants[:shift]]:
            sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            variant.step()
            sync(device)
            if round_index >= warmup:
                timings[variant.name].wall.append(time.perf_counter() - wall)
                timings[variant.name].cpu.append(time.process_time() - cpu)
        print(
            f"  round {round_index + 1}/{warmup + steps}{' (warmup)' if round_index < warmup else ''} done", flush=True
        )
    return timings


def ratios(a: Timing, b: Timing) -> tuple[float, float]:
    """(wall, CPU) ratio of the medians of ``a`` over ``b``."""
    return a.median_wall / b.median_wall, a.median_cpu / b.median_cpu


def paired_ratios(a: Timing, b: Timing) -> tuple[float, float]:
    """(wall, CPU) median over rounds of ``a``'s step over ``b``'s step in the same round.

    Steps of the same round ran seconds apart, so this cancels load that drifts over the run.
    """
    wall = statistics.median(x / y for x, y in zip(a.wall, b.wall))
    cpu = statistics.median(x / y for x, y in zip(a.cpu, b.cpu))
    return wall, cpu


# ------------------------------------------------------------------------------------------ memory
@dataclass
class StepMemory:
    """Bytes a train step needs beyond the resident model (see the module docstring for the method)."""

    saved: Optional[int]  # CPU: bytes saved for backward
    grads: Optional[int]  # CPU: gradients of trainable parameters (and of the input, for the floor)
    total: int  # CPU: saved + grads; CUDA: measured peak above what was allocated before the step


def _storage_key(tensor: torch.Tensor) -> tuple[int, int]:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def step_memory(variant: Variant, device: str) -> StepMemory:
    """Measure one extra train step of ``variant`` (not one of the timed steps: the hooks cost time)."""
    if device == "cuda":
        variant.model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        variant.step()
        torch.cuda.synchronize()
        return StepMemory(None, None, torch.cuda.max_memory_allocated() - before)

    resident = {_storage_key(t) for t in _resident_tensors(variant)}
    saved: dict[tuple[int, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in resident:
            saved[key] = key[1]
        return tensor

    variant.model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = variant.model(pixel_values=variant.pixel_values, labels=variant.labels).loss
    loss.backward()
    saved_bytes, grad_bytes = sum(saved.values()), variant.gradient_bytes()
    return StepMemory(saved_bytes, grad_bytes, saved_bytes + grad_bytes)


def _resident_tensors(variant: Variant) -> Iterable[torch.Tensor]:
    yield from variant.model.parameters()
    yield from variant.model.buffers()
    yield variant.pixel_values
    yield variant.labels


# ------------------------------------------------------------------------------------------ output
def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-markdown table, so the printed output can be pasted into docs/benchmarks.md as is."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def mib(nbytes: Optional[int]) -> str:
    return "-" if nbytes is None else f"{nbytes / MIB:,.0f}"


def verdict(value: float, limit: float) -> str:
    return "met" if value <= limit else "NOT met"
