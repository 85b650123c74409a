"""Extra keys/values for an attention with one fused ``[q; k; v]`` projection (timm's ``Attention``).

HF attention modules hand their keys and values to a registered attention function, which vpt_peft wraps
(:mod:`vpt_peft.engine.attention`). timm's compute attention inside their own ``forward``, from
``qkv(x).reshape(B, N, 3, heads, head_dim)``, so the only way in that keeps the model unforked is the sequence:

1. a pre-hook on the attention appends one row per extra key to its input (zeros) and, where some keys must
   be ignored (mixed-task padding, E2VPT's pruned slots), passes an additive ``attn_mask`` that blocks them;
2. a forward hook on the fused projection writes the extra keys and values into those rows' key and value
   channels (their query channels are left as the projection made them);
3. a forward hook on the attention drops the appended rows from its output, after the output projection.

The real tokens' queries then attend over ``[K ; K_extra]`` and ``[V ; V_extra]`` exactly as with HF models
(keys pass through the attention's own ``k_norm`` as every key does). The appended rows' own outputs are
discarded. The keys/values are the ones parked on the attention by the sidecar (:class:`ExtraKeyValues`, or a
mixed batch's :class:`KeyGroup` list, turned here into one per-sample layout and a key mask).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .attention import EXTRA_KV_ATTRIBUTE, ExtraKeyValues, KeyGroup, ParkedKeyValues
from .tokens import open_prompt_slots

APPENDED_ROWS_ATTRIBUTE = "vpt_peft_appended_rows"


@dataclass
class AppendedRows:
    """What one attention call appended: the real length ``length`` and the keys/values written after it."""

    length: int
    extra: Optional[ExtraKeyValues]


def per_sample_layout(
    groups: list[KeyGroup], batch: int, length: int, device: torch.device
) -> tuple[Optional[ExtraKeyValues], torch.Tensor]:
    """One batch-wide layout for a mixed batch's key groups: (every sample's extra keys, padded to the longest
    group, with ``keep`` marking the real ones; which of the ``length`` sequence positions each sample may use)."""
    positions_kept = torch.ones(batch, length, dtype=torch.bool, device=device)
    extras = [g.extra for g in groups if g.extra is not None]
    width = max((e.num_tokens for e in extras), default=0)
    key = value = keep = None
    if extras:
        heads, head_dim = extras[0].key.shape[1], extras[0].key.shape[3]
        key = extras[0].key.new_zeros(batch, heads, width, head_dim)
        value = extras[0].value.new_zeros(batch, heads, width, extras[0].value.shape[3])
        keep = torch.zeros(batch, width, dtype=torch.bool, device=device)
    every_row = torch.arange(batch, device=device)
    for group in groups:
        rows = every_row if group.rows is None else group.rows
        if group.positions is not None:
            allowed = torch.zeros(length, dtype=torch.bool, device=device)
            allowed[group.positions] = True
            positions_kept[rows] = allowed
        if group.extra is not None:
            count = group.extra.num_tokens
            key[rows, :, :count] = group.extra.key.to(key.dtype).expand(len(rows), -1, -1, -1)
            value[rows, :, :count] = group.extra.value.to(value.dtype).expand(len(rows), -1, -1, -1)
            keep[rows, :count] = group.extra.keep_mask(len(rows))
    return (ExtraKeyValues(key, value, keep) if extras else None), positions_kept


def _key_mask(
    existing: Optional[torch.Tensor], kept: Optional[torch.Tensor], length: int, appended: int, dtype: torch.dtype
) -> Optional[torch.Tensor]:
    """The additive ``attn_mask`` over ``length + appended`` keys: ``kept`` (``(B, keys)``) and any mask given."""
    if existing is not None and existing.dtype == torch.bool:
        existing = torch.zeros(existing.shape, dtype=dtype, device=existing.device).masked_fill(~existing, -torch.inf)
    if existing is not None and appended:
        existing = open_prompt_slots(existing, appended, at=length)
    if kept is None:
        return existing
    blocked = torch.zeros(kept.shape, dtype=dtype, device=kept.device).masked_fill(~kept, -torch.inf)[:, None, None]
    return blocked if existing is None else existing + blocked


def append_key_rows(attention: nn.Module, args: tuple, kwargs: dict) -> Optional[tuple[tuple, dict]]:
    """The attention's pre-hook: room for the parked extra keys/values, and the mask that hides ignored keys."""
    parked: ParkedKeyValues = attention.__dict__.get(EXTRA_KV_ATTRIBUTE)
    if parked is None:
        return None
    hidden = args[0] if args else kwargs["x"]
    batch, length, _ = hidden.shape
    if isinstance(parked, list):
        extra, positions_kept = per_sample_layout(parked, batch, length, hidden.device)
        if all(g.positions is None for g in parked):
            positions_kept = None
    else:
        extra, positions_kept = parked, None
    appended = 0 if extra is None else extra.num_tokens
    kept = None
    if positions_kept is not None or (extra is not None and extra.keep is not None):
        base = positions_kept if positions_kept is not None else hidden.new_ones(batch, length, dtype=torch.bool)
        kept = torch.cat([base, extra.keep_mask(batch)], dim=1) if extra is not None else base
    mask = _key_mask(kwargs.get("attn_mask"), kept, length, appended, hidden.dtype)
    attention.__dict__[APPENDED_ROWS_ATTRIBUTE] = AppendedRows(length, extra)
    if appended:
        hidden = torch.cat([hidden, hidden.new_zeros(batch, appended, hidden.shape[2])], dim=1)
    args, kwargs = ((hidden, *args[1:]), kwargs) if args else ((), {**kwargs, "x": hidden})
    return args, ({**kwargs, "attn_mask": mask} if mask is not None else kwargs)


def write_key_values(attention: nn.Module, output: torch.Tensor) -> Optional[torch.Tensor]:
    """The fused projection's hook: the appended rows' key and value channels become the extra keys/values."""
    rows: Optional[AppendedRows] = attention.__dict__.get(APPENDED_ROWS_ATTRIBUTE)
    if rows is None or rows.extra is None:
        return None
    batch, width = output.shape[0], output.shape[2] // 3

    def channels(heads: torch.Tensor) -> torch.Tensor:  # (b, heads, n, head_dim) -> (B, n, heads*head_dim)
        return heads.to(output.dtype).expand(batch, -1, -1, -1).transpose(1, 2).flatten(2)

    # In place: the projection's backward does not read its output, and a copy of the whole output costs more.
    output[:, rows.length :, width:] = torch.cat([channels(rows.extra.key), channels(rows.extra.value)], dim=2)
    return output


def drop_appended_rows(attention: nn.Module, output: torch.Tensor) -> Optional[torch.Tensor]:
    """The attention's forward hook: its output for the real tokens only."""
    rows: Optional[AppendedRows] = attention.__dict__.pop(APPENDED_ROWS_ATTRIBUTE, None)
    if rows is None or output.shape[1] == rows.length:
        return None
    return output[:, : rows.length]
