"""timm ViT deep prompts on the key-value fast path: where the prompts' keys and values come from the fused qkv.

The fast path appends rows to each attention's input and strips them after the output projection
(vpt_peft.engine.fused_qkv). Two ways to fill those rows' keys and values, both measured here in one process,
interleaved, one torch thread, with wall time and process CPU time side by side:

* ``slice`` (what vpt_peft does): the prompts' keys/values are computed with the key and value rows of the fused
  weight (one ``F.linear`` on 2/3 of it) and written into zero rows' key/value channels, so they travel as the
  same head-split keys/values as on HF models (mixed batches, E2VPT, DPT share that path);
* ``append``: the normed prompts themselves are the appended rows, so the model's own qkv projection makes their
  keys/values in the same matmul as the patches' (bench-only hooks, not a vpt_peft mode).

    python bench/fused_qkv.py [--steps 20] [--prompts 10 50] [--batch 8] [--depth 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.timm_support import declare_missing_torchvision_operators, import_timm  # noqa: E402

declare_missing_torchvision_operators()  # the torchvision repair the test suite uses, before transformers loads

from peft import get_peft_model  # noqa: E402

import vpt_peft  # noqa: E402


def vit_s16(depth: int) -> torch.nn.Module:
    import_timm()
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(embed_dim=384, depth=depth, num_heads=6, num_classes=10).eval()


def append_variant(model: torch.nn.Module, prompts: torch.Tensor) -> torch.nn.Module:
    """The base model with the normed prompts appended to every attention's input and stripped after it."""
    for index, block in enumerate(model.blocks):

        def before(attention, args, prompts=prompts[index], norm=block.norm1):
            rows = norm(prompts).expand(args[0].shape[0], -1, -1)
            attention.__dict__["bench_length"] = args[0].shape[1]
            return (torch.cat([args[0], rows], dim=1), *args[1:])

        def after(attention, args, output):
            return output[:, : attention.__dict__["bench_length"]]

        block.attn.register_forward_pre_hook(before)
        block.attn.register_forward_hook(after)
    return model


def timed(run, steps: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        run()
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--prompts", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--depth", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pixels = torch.randn(args.batch, 3, 224, 224)
    print(f"timm ViT-S/16 width, depth {args.depth}, batch {args.batch}, 1 thread, forward (no grad), vpt_peft "
          f"{vpt_peft.__version__}")  # fmt: skip
    print("| prompts | slice wall ms | append wall ms | wall slice/append | slice cpu ms | append cpu ms | cpu ratio |")
    print("|---|---|---|---|---|---|---|")
    for count in args.prompts:
        sliced = get_peft_model(vit_s16(args.depth), vpt_peft.VisualPromptConfig(num_prompts=count, deep=True)).eval()
        prompts = sidecar_prompts(sliced)
        appended = append_variant(vit_s16(args.depth), prompts)
        with torch.no_grad():
            torch.testing.assert_close(sliced(pixels), appended(pixels), rtol=1e-4, atol=1e-4)
            for _ in range(2):  # warm-up
                sliced(pixels), appended(pixels)
            totals = {"slice": [0.0, 0.0], "append": [0.0, 0.0]}
            for _ in range(args.steps):  # interleaved, so drift on a shared machine hits both alike
                for name, model in (("slice", sliced), ("append", appended)):
                    wall, cpu = timed(lambda model=model: model(pixels), 1)
                    totals[name][0] += wall / args.steps
                    totals[name][1] += cpu / args.steps
        (sw, sc), (aw, ac) = totals["slice"], totals["append"]
        print(f"| {count} | {sw * 1e3:.1f} | {aw * 1e3:.1f} | {sw / aw:.3f} | {sc * 1e3:.1f} | {ac * 1e3:.1f} | "
              f"{sc / ac:.3f} |")  # fmt: skip


def sidecar_prompts(model: torch.nn.Module) -> torch.Tensor:
    bank = next(m for m in model.modules() if hasattr(m, "banks")).banks["default"]
    return bank.prompt_embeddings.detach()


if __name__ == "__main__":
    main()
