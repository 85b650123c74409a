"""Deep prompts on a timm attention's fused qkv: where the prompts' keys and values come from, measured.

vpt_peft's key-value fast path on a fused-qkv attention (vpt_peft.engine.fused_qkv) appends rows to the
attention's input and strips them after the output projection. Two ways to give those rows the prompts' keys
and values, each on its own copy of one ViT-B/16 attention (width 768, 12 heads, 197 tokens), with the same kind
of hooks, interleaved in one process on one torch thread, wall time and process CPU time side by side:

* ``slice`` (what vpt_peft does): the prompts' keys/values come from the key and value rows of the fused weight
  (one ``F.linear`` on 2/3 of it) and are written into zero rows' key/value channels after the projection, so
  they are the same head-split keys/values as on HF models (mixed batches, E2VPT and DPT share that path);
* ``append``: the normed prompts themselves are the appended rows, so the attention's own qkv projection makes
  their keys/values in the same matmul as the patches' (nothing written after it).

    python bench/fused_qkv.py [--steps 30] [--prompts 10 50 100] [--batch 8]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.timm_support import declare_missing_torchvision_operators, import_timm  # noqa: E402

declare_missing_torchvision_operators()  # the torchvision repair the test suite uses, before transformers loads

from vpt_peft.engine.attention import EXTRA_KV_ATTRIBUTE, prompt_key_values  # noqa: E402
from vpt_peft.engine.fused_qkv import append_key_rows, drop_appended_rows, write_key_values  # noqa: E402

WIDTH, HEADS, TOKENS = 768, 12, 197


def sliced(attention: torch.nn.Module, norm: torch.nn.Module, prompts: torch.Tensor) -> torch.nn.Module:
    """vpt_peft's way: keys/values from the fused weight's k/v rows, written into appended zero rows."""

    def park(module, args, kwargs):
        extra = prompt_key_values(prompts, norm, module, "qkv", "qkv", WIDTH // HEADS)
        module.__dict__[EXTRA_KV_ATTRIBUTE] = extra
        return append_key_rows(module, args, kwargs)

    attention.register_forward_pre_hook(park, with_kwargs=True)
    attention.qkv.register_forward_hook(lambda module, args, output: write_key_values(attention, output))
    attention.register_forward_hook(lambda module, args, output: drop_appended_rows(module, output))
    return attention


def appended(attention: torch.nn.Module, norm: torch.nn.Module, prompts: torch.Tensor) -> torch.nn.Module:
    """The alternative: the normed prompts are the appended rows; the model's qkv projects them."""

    def before(module, args, kwargs):
        hidden = args[0]
        module.__dict__["bench_length"] = hidden.shape[1]
        return (torch.cat([hidden, norm(prompts).expand(hidden.shape[0], -1, -1)], dim=1),), kwargs

    attention.register_forward_pre_hook(before, with_kwargs=True)
    attention.register_forward_hook(lambda module, args, output: output[:, : module.__dict__["bench_length"]])
    return attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--prompts", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import_timm()
    from timm.layers import Attention

    torch.manual_seed(0)
    base, norm = Attention(WIDTH, num_heads=HEADS, qkv_bias=True).eval(), torch.nn.LayerNorm(WIDTH)
    hidden = torch.randn(args.batch, TOKENS, WIDTH)
    print(f"one timm ViT-B/16 attention (width {WIDTH}, {HEADS} heads, {TOKENS} tokens), batch {args.batch}, "
          f"forward, no grad, 1 thread, {args.steps} interleaved steps")  # fmt: skip
    print("| prompts | slice wall ms | append wall ms | wall slice/append | slice CPU ms | append CPU ms | "
          "CPU slice/append |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for count in args.prompts:
        prompts = torch.randn(1, count, WIDTH)
        variants = {
            "slice": sliced(copy.deepcopy(base), norm, prompts),
            "append": appended(copy.deepcopy(base), norm, prompts),
        }
        totals = {name: [0.0, 0.0] for name in variants}
        with torch.no_grad():
            torch.testing.assert_close(variants["slice"](hidden), variants["append"](hidden), rtol=1e-4, atol=1e-4)
            for _ in range(3):  # warm-up
                for attention in variants.values():
                    attention(hidden)
            for _ in range(args.steps):  # interleaved: drift on a shared machine hits both alike
                for name, attention in variants.items():
                    wall, cpu = time.perf_counter(), time.process_time()
                    attention(hidden)
                    totals[name][0] += (time.perf_counter() - wall) * 1e3 / args.steps
                    totals[name][1] += (time.process_time() - cpu) * 1e3 / args.steps
        (sw, sc), (aw, ac) = totals["slice"], totals["append"]
        print(f"| {count} | {sw:.2f} | {aw:.2f} | {sw / aw:.3f} | {sc:.2f} | {ac:.2f} | {sc / ac:.3f} |")


if __name__ == "__main__":
    main()
