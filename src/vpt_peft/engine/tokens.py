"""Pure token-splicing ops the prompt hooks are built from (``x: (B, S, D)``, prompts after ``at`` tokens).

Keeping the index arithmetic here, once, lets every hook read like the method it implements.
"""

from __future__ import annotations

from typing import Any, Optional

import torch


def insert_prompts(x: torch.Tensor, prompts: torch.Tensor, at: int) -> torch.Tensor:
    """``[x[:, :at], prompts, x[:, at:]]``: ``(B, S, D)`` -> ``(B, S + p, D)``."""
    return torch.cat([x[:, :at], prompts.expand(x.shape[0], -1, -1), x[:, at:]], dim=1)


def replace_prompts(x: torch.Tensor, prompts: torch.Tensor, at: int) -> torch.Tensor:
    """Overwrite the ``p`` prompt positions after ``at`` (VPT-deep: the previous layer's prompt outputs go)."""
    p = prompts.shape[1]
    return torch.cat([x[:, :at], prompts.expand(x.shape[0], -1, -1), x[:, at + p :]], dim=1)


def strip_prompts(x: torch.Tensor, count: int, at: int) -> torch.Tensor:
    """Remove ``count`` prompt positions after ``at``: ``(B, S + p, D)`` -> ``(B, S, D)``."""
    return torch.cat([x[:, :at], x[:, at + count :]], dim=1)


def open_prompt_slots(mask: Optional[torch.Tensor], count: int, at: int) -> Optional[torch.Tensor]:
    """Give a ``(..., S, S)`` additive or boolean mask/bias ``count`` new rows and columns at ``at``.

    The new entries neither block nor bias anything (0, or True for boolean masks): prompts attend and
    are attended to freely, and carry no relative position.
    """
    if mask is None or mask.dim() < 2 or count == 0:
        return mask
    fill = True if mask.dtype == torch.bool else 0.0
    *lead, q, k = mask.shape
    mask = torch.cat([mask[..., :at, :], mask.new_full((*lead, count, k), fill), mask[..., at:, :]], dim=-2)
    cols = mask.new_full((*lead, q + count, count), fill)
    return torch.cat([mask[..., :at], cols, mask[..., at:]], dim=-1)


def open_prompt_keys(mask: torch.Tensor, count: int, at: int) -> torch.Tensor:
    """Give a ``(..., Q, S)`` attention mask ``count`` prompt slots at ``at``: as keys, every query may attend to
    them; as queries (when ``Q`` = ``S``), they see what the first query sees.

    A vision model's mask only hides padding (SigLIP2's NaFlex patches), the same keys for every query, so prompts
    attend to exactly the real tokens; a mask without padding is open everywhere, as :func:`open_prompt_slots`.
    """
    fill = True if mask.dtype == torch.bool else 0.0
    *lead, q, k = mask.shape
    mask = torch.cat([mask[..., :at], mask.new_full((*lead, q, count), fill), mask[..., at:]], dim=-1)
    if q == 1:
        return mask
    rows = mask[..., :1, :].expand(*lead, count, k + count)
    return torch.cat([mask[..., :at, :], rows, mask[..., at:, :]], dim=-2)


def widen_block_mask(args: tuple, kwargs: dict, length: int, count: int, at: int) -> tuple[tuple, dict]:
    """Open prompt slots in a block's attention mask that the model built for ``length`` real tokens."""

    def widen(mask: Any) -> Any:
        if isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.shape[-1] == length and count:
            return open_prompt_keys(mask, count, at)
        return mask

    if len(args) > 1:
        return (args[0], widen(args[1]), *args[2:]), kwargs
    if "attention_mask" in kwargs:
        kwargs = {**kwargs, "attention_mask": widen(kwargs["attention_mask"])}
    return args, kwargs
