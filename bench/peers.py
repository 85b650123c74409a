"""vpt_peft against what a user would pick instead: train-step time and memory, inference throughput.

ViT-B/16 config (random init, no download), 224 px, batch 8. Every row below is timed in one process,
interleaved round-robin (see common.py), and reported as a ratio to full fine-tuning from the same run:

* train step = forward + cross-entropy + backward + AdamW step on what the method trains; step memory =
  bytes saved for backward + gradients + AdamW state (measured, see common.step_memory);
* rows: full fine-tuning, linear probe, peft LoRA r=8 on query/value, VPT shallow and deep (p=10, 50, the
  library's defaults: deep prompts on the key-value path with prompt dropout 0.1), VPT-deep p=50 without
  dropout, VPT-deep p=50 in sequence (the papers' execution), VFPT, E2VPT unpruned and 50 % pruned, and the
  floor (frozen base model, backward to its input: the least a deep-prompt method can cost);
* the ``adapters`` library's prompt tuning runs in its own virtualenv (``make bench-adapters-venv``), which
  times full fine-tuning in that process too: its ratio to full FT is what compares (bench/adapters_peer.py);
* inference: images/s of every adapter against the base model, next to the cost bound its token count gives
  (bench/peers_report.py explains the bounds).

``--smoke`` runs a tiny ViT with one timed round, so the test suite checks that every row is produced.

    python bench/peers.py [--steps N] [--quick] [--smoke] [--json PATH] [--plot PATH] [--device cpu|cuda]
                          [--dtype float32|bfloat16|float16]

``--dtype`` casts the backbone and the images (prompts and LoRA weights stay float32, as the libraries keep
them); it is meant for GPU runs, the adapters-library peer always runs in float32.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from peft import LoraConfig, PeftConfig, get_peft_model
from transformers import ViTConfig, ViTForImageClassification

import vpt_peft
from common import SEED, Timing, Variant, describe_environment, setup, step_memory, time_round_robin
from peers_report import inference_table, plot, train_table

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS_PYTHON = ROOT / ".venv-adapters" / "bin" / "python"
NUM_LABELS = 100
SMOKE = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=32, patch_size=8
)
FULL, FLOOR, BASE = "full fine-tuning", "floor (frozen, input grads)", "base model"


@dataclass
class Method:
    """One row: how to build it, and what its inference cost bound is made of.

    ``kind`` is ``"sequence"`` (``tokens`` prompt tokens in the residual stream from block 0 on), ``"kv"``
    (``tokens`` extra keys/values per block) or ``"plain"`` (no prompts); ``lora_rank`` adds LoRA's
    low-rank products on query and value.
    """

    name: str
    build: Callable[[ViTForImageClassification], torch.nn.Module]
    kind: str = "plain"
    tokens: int = 0
    lora_rank: int = 0
    infer: bool = True


def peft_method(config: PeftConfig) -> Callable[[ViTForImageClassification], torch.nn.Module]:
    return lambda base: get_peft_model(base, config)


def linear_probe(base: ViTForImageClassification) -> torch.nn.Module:
    base.requires_grad_(False)
    base.classifier.requires_grad_(True)
    return base


def full_finetune(base: ViTForImageClassification) -> torch.nn.Module:
    return base


def methods(p_small: int = 10, p_large: int = 50, kv_prompts: int = 5) -> list[Method]:
    """The rows, in table order (the floor and full fine-tuning are added by :func:`build_variants`)."""
    vpt, kv = vpt_peft.VisualPromptConfig, vpt_peft.KVPromptConfig
    lora = LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"])
    pruned = p_large - p_large // 2
    return [
        Method("linear probe", linear_probe),
        Method("LoRA r=8 q,v (peft)", peft_method(lora), lora_rank=8),
        Method(f"VPT shallow p={p_small}", peft_method(vpt(num_prompts=p_small)), "sequence", p_small),
        Method(f"VPT shallow p={p_large}", peft_method(vpt(num_prompts=p_large)), "sequence", p_large),
        Method(f"VPT deep p={p_small}", peft_method(vpt(num_prompts=p_small, deep=True)), "kv", p_small),
        Method(f"VPT deep p={p_large}", peft_method(vpt(num_prompts=p_large, deep=True)), "kv", p_large),
        Method(
            f"VPT deep p={p_large}, no dropout",
            peft_method(vpt(num_prompts=p_large, deep=True, prompt_dropout=0.0)),
            "kv",
            p_large,
            infer=False,  # identical to the row above at inference
        ),
        Method(
            f"VPT deep p={p_large}, in sequence",
            peft_method(vpt(num_prompts=p_large, deep=True, prompt_path="sequence")),
            "sequence",
            p_large,
        ),
        Method(
            f"VFPT p={p_large}",
            peft_method(vpt_peft.FourierPromptConfig(num_prompts=p_large, deep=True)),
            "kv",
            p_large,
        ),
        Method(
            f"E2VPT p={p_large}+{kv_prompts}",
            peft_method(kv(num_prompts=p_large, num_kv_prompts=kv_prompts)),
            "kv",
            p_large + kv_prompts,
        ),
        Method(
            f"E2VPT 50% pruned ({pruned}+{kv_prompts})",
            peft_method(kv(num_prompts=pruned, num_kv_prompts=kv_prompts, pruned=True)),
            "kv",
            pruned + kv_prompts,
        ),
    ]


# ------------------------------------------------------------------------------------------ variants
class SharedBackbone:
    """Builds every row's model on one set of frozen backbone tensors (ViT-B is 330 MiB a copy).

    Rows that train the backbone (full fine-tuning) get their own copy. The head is always a fresh copy
    (every row trains it). Tensors shared this way still count as resident in :func:`common.step_memory`.
    """

    def __init__(self, config: ViTConfig, device: str, dtype: torch.dtype) -> None:
        self.config, self.device, self.dtype = config, device, dtype
        self.shared = {k: v.detach() for k, v in self.fresh().vit.state_dict().items()}

    def fresh(self) -> ViTForImageClassification:
        torch.manual_seed(SEED)
        return ViTForImageClassification(self.config).to(self.device, self.dtype).eval()

    def model(self, share: bool = True) -> ViTForImageClassification:
        model = self.fresh()
        if share:
            model.vit.load_state_dict(self.shared, assign=True)
        return model


class TrainVariant(Variant):
    """A :class:`common.Variant` whose step also runs AdamW on the trainable parameters."""

    def __init__(self, name: str, model: torch.nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__(name, model, pixels, labels)
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=1e-3) if trainable else None

    def step(self) -> None:
        super().step()
        if self.optimizer is not None:
            self.optimizer.step()

    def trainable(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def optimizer_bytes(self) -> int:
        if self.optimizer is None:
            return 0
        states = self.optimizer.state.values()
        return sum(t.numel() * t.element_size() for s in states for t in s.values() if t.dim() > 0)


def batch(config: ViTConfig, size: int, device: str, dtype: torch.dtype, requires_grad: bool = False):
    generator = torch.Generator().manual_seed(SEED)
    pixels = torch.randn(size, 3, config.image_size, config.image_size, generator=generator).to(device, dtype)
    labels = torch.randint(0, NUM_LABELS, (size,), generator=generator).to(device)
    return pixels.requires_grad_(requires_grad), labels


def build_variants(
    rows: list[Method], config: ViTConfig, size: int, device: str, dtype: torch.dtype = torch.float32
) -> list[TrainVariant]:
    backbones = SharedBackbone(config, device, dtype)
    full = TrainVariant(FULL, backbones.model(share=False).train(), *batch(config, size, device, dtype))
    floor_model = backbones.model().requires_grad_(False)
    variants = [full, TrainVariant(FLOOR, floor_model, *batch(config, size, device, dtype, requires_grad=True))]
    for row in rows:
        model = row.build(backbones.model())
        model.train()  # peft prompt models keep the frozen backbone in eval mode themselves
        variants.append(TrainVariant(row.name, model, *batch(config, size, device, dtype)))
    return variants


# ------------------------------------------------------------------------------------------ inference
class InferVariant:
    """An eval-mode forward of one model on the batch (what :func:`common.time_round_robin` times)."""

    def __init__(self, name: str, model: torch.nn.Module, pixels: torch.Tensor) -> None:
        self.name, self.model, self.pixels = name, model, pixels

    @torch.no_grad()
    def step(self) -> None:
        self.model(pixel_values=self.pixels)


def inference_variants(rows: list[Method], trained: list[TrainVariant]) -> list[InferVariant]:
    by_name = {v.name: v for v in trained}
    base = by_name[FLOOR]
    variants = [InferVariant(BASE, base.model, base.pixel_values.detach())]
    for row in rows:
        if row.infer and row.name != "linear probe":  # a probe runs the base model
            variant = by_name[row.name]
            variants.append(InferVariant(row.name, variant.model.eval(), variant.pixel_values))
    return variants


# ------------------------------------------------------------------------------------------ adapters peer
def run_adapters_peer(steps: int, warmup: int, size: int, smoke: bool) -> dict:
    """Run bench/adapters_peer.py in its own virtualenv; ``{"error": why}`` when that is not possible."""
    if not ADAPTERS_PYTHON.exists():
        return {"error": f"{ADAPTERS_PYTHON.relative_to(ROOT)} missing: run `make bench-adapters-venv`"}
    command = [str(ADAPTERS_PYTHON), str(Path(__file__).with_name("adapters_peer.py"))]
    command += ["--steps", str(steps), "--warmup", str(warmup), "--batch", str(size)]
    command += ["--smoke"] if smoke else []
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        return {"error": f"adapters_peer.py failed: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="timed rounds (default 3; quick 2; smoke 1)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--smoke", action="store_true", help="a tiny ViT: every row, no meaningful timing")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None, help="write the raw results here")
    parser.add_argument("--plot", type=Path, default=None, help="write the time/memory vs parameters PNG here")
    parser.add_argument("--no-adapters", action="store_true", help="skip the adapters-library peer")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 1 if args.smoke else (2 if args.quick else 3)
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    setup(args.device)
    config = ViTConfig(num_labels=NUM_LABELS, **(SMOKE if args.smoke else {}))
    rows = methods(*((2, 4, 1) if args.smoke else ()))
    size = f"{config.image_size} px, {config.num_hidden_layers} layers, width {config.hidden_size}, {args.dtype}"
    print(f"## Peers\n\n{describe_environment(args.device)}")
    print(
        f"{size}, batch {args.batch}, {args.steps} timed rounds after {args.warmup} warmup, interleaved\n", flush=True
    )
    trained = build_variants(rows, config, args.batch, args.device, getattr(torch, args.dtype))
    train_timings = time_round_robin(trained, args.steps, args.warmup, args.device)
    memory = {}
    for variant in trained:
        measured = step_memory(variant, args.device)
        memory[variant.name] = measured.total + variant.optimizer_bytes()
    inferred = inference_variants(rows, trained)
    infer_timings = time_round_robin(inferred, args.steps, args.warmup, args.device)
    peer = (
        {"error": "--no-adapters"}
        if args.no_adapters
        else run_adapters_peer(args.steps, args.warmup, args.batch, args.smoke)
    )
    results = {
        "environment": describe_environment(args.device),
        "command": "python bench/peers.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": {
            "layers": config.num_hidden_layers,
            "width": config.hidden_size,
            "image": config.image_size,
            "patch": config.patch_size,
            "intermediate": config.intermediate_size,
            "batch": args.batch,
            "dtype": args.dtype,
        },
        "train": [_train_row(v, train_timings[v.name], memory[v.name]) for v in trained],
        "inference": [_infer_row(v.name, infer_timings[v.name], rows) for v in inferred],
        "adapters": peer,
    }
    print("\n" + train_table(results) + "\n")
    print(inference_table(results) + "\n", flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.plot is not None:
        plot(results, args.plot)
    return results


def _train_row(variant: TrainVariant, timing: Timing, memory: int) -> dict:
    return {
        "name": variant.name,
        "trainable": variant.trainable(),
        "cpu": timing.cpu,
        "wall": timing.wall,
        "memory": memory,
    }


def _infer_row(name: str, timing: Timing, rows: list[Method]) -> dict:
    method = next((m for m in rows if m.name == name), Method(name, full_finetune))
    return {
        "name": name,
        "cpu": timing.cpu,
        "wall": timing.wall,
        "kind": method.kind,
        "tokens": method.tokens,
        "lora_rank": method.lora_rank,
    }


if __name__ == "__main__":
    main()
