"""What prompt dropout costs the deep-prompt fast path, and whether an exact rewrite can cut it.

On the key-value path each prompted block turns its p prompts into keys and values:
``k = W_k LN(x) + b_k`` (and v alike). Without dropout ``x`` is the same for every sample, so that is one
(p x d) @ (d x d) product per block; with dropout every sample has its own mask, so it is (B p x d) @ (d x d),
B times the work, forward and backward. This times one block's prompt keys/values (forward + backward to
the prompts, ViT-B width) for:

* ``shared``: no dropout, the floor of any rewrite;
* ``per-sample``: what the library runs (dropout on the batch-expanded prompts, then LN, then k and v);
* ``per-sample, k and v fused``: the same with k and v as one (d x 2d) product;
* ``sparse correction``: exact rewrite. LN is not linear, but it is an affine map of ``x`` with a
  per-token scale and shift: ``W LN(x) + b = r (W (g * x) - mu W g) + W beta + b`` (``mu``, ``r`` the token's
  mean and inverse std, ``g``, ``beta`` the LN weight and bias). With ``x = (P - E * P) / (1 - q)`` (``E`` the
  dropped positions, a fraction q of them) the big product splits into ``W (g * P)``, shared by the batch,
  minus ``W (g * E * P)``, which has only the dropped channels: a sparse-dense product forward and a sampled
  dense-dense product backward, each over q of the entries;

and checks that the rewrite equals the library's result (outputs and prompt gradients, same masks).

    python bench/prompt_dropout.py [--prompts 50 100] [--batch 8] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from torch import nn
from torch.nn import functional as F

from common import markdown_table, setup

WIDTH, DROPOUT = 768, 0.1


class SparseRowsTimesWeight(torch.autograd.Function):
    """``S @ W.T`` for a sparse S given by (rows, cols, values); backward only to the values (W is frozen)."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, csr: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.csr = csr
        matrix = torch.sparse_csr_tensor(csr.crow_indices(), csr.col_indices(), values, csr.shape)
        return matrix @ weight.T

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], None, None]:
        (weight,) = ctx.saved_tensors
        sampled = torch.sparse.sampled_addmm(ctx.csr, grad, weight, beta=0.0)  # (grad @ W) at S's entries
        return sampled.values(), None, None


class Block(nn.Module):
    """One block's prompt path: LN, then the key and value projections (frozen), at ViT-B width."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm, self.k, self.v = nn.LayerNorm(width), nn.Linear(width, width), nn.Linear(width, width)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.normal_(0, 0.1)
        self.requires_grad_(False)

    def shared(self, prompts: torch.Tensor, batch: int) -> torch.Tensor:
        normed = self.norm(prompts.unsqueeze(0))
        return torch.cat([self.k(normed), self.v(normed)], -1).expand(batch, -1, -1)

    def per_sample(self, prompts: torch.Tensor, batch: int) -> torch.Tensor:
        normed = self.norm(F.dropout(prompts.unsqueeze(0).expand(batch, -1, -1), DROPOUT, True))
        return torch.cat([self.k(normed), self.v(normed)], -1)

    def fused(self, prompts: torch.Tensor, batch: int) -> torch.Tensor:
        normed = self.norm(F.dropout(prompts.unsqueeze(0).expand(batch, -1, -1), DROPOUT, True))
        return F.linear(normed, torch.cat([self.k.weight, self.v.weight]), torch.cat([self.k.bias, self.v.bias]))

    def sparse(self, prompts: torch.Tensor, batch: int) -> torch.Tensor:
        p, d = prompts.shape
        keep = F.dropout(torch.ones(batch, p, d, dtype=prompts.dtype), DROPOUT, True)  # same draws as per_sample
        x = keep * prompts  # (B, p, d): cheap, only for the per-token statistics
        mean = x.mean(-1, keepdim=True)
        rstd = torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + self.norm.eps)
        weight = torch.cat([self.k.weight, self.v.weight])  # (2d, d)
        bias = torch.cat([self.k.bias, self.v.bias])
        scaled = prompts * self.norm.weight  # g * P, (p, d)
        dropped = (keep == 0).to(prompts.dtype).view(batch * p, d).to_sparse_csr()
        rows = torch.repeat_interleave(torch.arange(batch * p), dropped.crow_indices().diff())
        values = scaled[rows % p, dropped.col_indices()]
        correction = SparseRowsTimesWeight.apply(values, dropped, weight).view(batch, p, -1)
        product = (scaled @ weight.T - correction) / (1 - DROPOUT)  # W (g * x), (B, p, 2d)
        return rstd * (product - mean * (weight @ self.norm.weight)) + (weight @ self.norm.bias + bias)


def check_exact(block: Block, prompts: torch.Tensor, batch: int) -> tuple[float, float]:
    """(max |output difference|, max |prompt-gradient difference| relative to the gradient's scale)."""
    results = []
    for run in (block.per_sample, block.sparse):
        torch.manual_seed(5)
        leaf = prompts.detach().requires_grad_()
        out = run(leaf, batch)
        (grad,) = torch.autograd.grad(out.pow(2).sum(), leaf)
        results.append((out.detach(), grad))
    (out_a, grad_a), (out_b, grad_b) = results
    return (out_a - out_b).abs().max().item(), ((grad_a - grad_b).abs().max() / grad_a.abs().max()).item()


def time_variants(variants: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    """Process CPU seconds per call, interleaved with the order rotated each round; the first round is warm-up."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_index in range(rounds + 1):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.process_time()
            variants[name]()
            if round_index:
                times[name].append(time.process_time() - start)
    return times


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    setup("cpu")
    torch.manual_seed(0)
    block = Block(WIDTH)
    print(f"## Prompt dropout on the fast path: one block's prompt keys/values, width {WIDTH}, batch {args.batch}\n")
    rows = []
    for p in args.prompts:
        prompts = torch.randn(p, WIDTH).requires_grad_()
        out_error, grad_error = check_exact(block, prompts, args.batch)

        def step(
            run: Callable[[torch.Tensor, int], torch.Tensor], prompts: torch.Tensor = prompts
        ) -> Callable[[], None]:
            return lambda: run(prompts, args.batch).pow(2).sum().backward()

        runs = {"shared": block.shared, "per-sample": block.per_sample, "fused": block.fused, "sparse": block.sparse}
        times = time_variants({name: step(run) for name, run in runs.items()}, args.rounds)
        shared, library = statistics.median(times["shared"]), statistics.median(times["per-sample"])
        for name, label in (
            ("shared", "shared (no dropout)"),
            ("per-sample", "per-sample (library)"),
            ("fused", "per-sample, k and v fused"),
            ("sparse", "sparse correction (exact)"),
        ):
            median = statistics.median(times[name])
            rows.append(
                (
                    p,
                    label,
                    f"{median * 1e3:.1f}",
                    f"{min(times[name]) * 1e3:.1f}-{max(times[name]) * 1e3:.1f}",
                    f"{median / library:.2f}",
                    f"{(median - shared) / (library - shared):.2f}",
                )
            )
        print(f"p={p}: sparse correction vs library: max |output diff| {out_error:.1e}, gradient {grad_error:.1e}")
    headers = ("p", "variant", "CPU ms (median)", "spread", "vs library", "share of dropout's cost left")
    print("\n" + markdown_table(headers, rows))


if __name__ == "__main__":
    main()
