"""One way to give a layer's attention extra keys and values.

E2VPT's key-value prompts and the deep-prompt fast path both need the same thing: the real tokens'
queries must attend over ``[K ; K_extra]`` and ``[V ; V_extra]`` while the sequence itself stays as it
is. Hooks on ``k_proj``/``v_proj`` cannot do it (every HF attention reshapes with the query length), so
a pre-hook on the attention module parks the keys/values on that module for the duration of its call
(:func:`set_extra_key_values`), and the attention function, which HF always calls with the module as its
first argument, picks them up there. (A keyword argument would be simpler but is not safe: some attention
modules, SigLIP's for one, drop unknown keyword arguments, which would silently ignore the prompts.)
We register one attention function per inner backend
(``"vpt_peft+eager"``, ``"vpt_peft+sdpa"``) with transformers' ``AttentionInterface``; it appends the
extra keys/values, widens the mask, and calls the backend the model had. With no extra keys/values it is
a plain pass-through, so a disabled adapter is bit-identical to the base model.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

EXTRA_KV_ATTRIBUTE = "vpt_peft_extra_kv"
IMPLEMENTATION_PREFIX = "vpt_peft+"
SUPPORTED_BACKENDS = ("eager", "sdpa")


class UnsupportedAttentionError(ValueError):
    """The model's attention backend cannot take extra keys/values."""


@dataclass
class ExtraKeyValues:
    """Keys/values appended after the real ones, head-split: ``(batch or 1, heads, tokens, head_dim)``.

    ``keep`` (``(batch, tokens)`` bool, optional) marks padding slots that attention must ignore.
    """

    key: torch.Tensor
    value: torch.Tensor
    keep: Optional[torch.Tensor] = None

    @property
    def num_tokens(self) -> int:
        return self.key.shape[2]

    def keep_mask(self, batch: int) -> torch.Tensor:
        """``(batch, tokens)`` bool: which extra tokens attention may use (all, unless ``keep`` says otherwise)."""
        if self.keep is not None:
            return self.keep.expand(batch, -1)
        return torch.ones(batch, self.num_tokens, dtype=torch.bool, device=self.key.device)

    def cat(self, other: ExtraKeyValues) -> ExtraKeyValues:
        batch = max(self.key.shape[0], other.key.shape[0])
        keep = None
        if self.keep is not None or other.keep is not None:
            keep = torch.cat([self.keep_mask(batch), other.keep_mask(batch)], dim=1)
        return ExtraKeyValues(
            torch.cat([self.key.expand(batch, -1, -1, -1), other.key.expand(batch, -1, -1, -1)], dim=2),
            torch.cat([self.value.expand(batch, -1, -1, -1), other.value.expand(batch, -1, -1, -1)], dim=2),
            keep,
        )


@dataclass
class KeyGroup:
    """Samples of a mixed-task batch that attend over one key layout (see :mod:`vpt_peft.engine.mixed`).

    ``rows`` (``(n,)``, ``None`` = the whole batch) are the samples; ``positions`` (``(T,)``, ``None`` = all)
    the sequence positions that are real tokens for them. Positions left out (padding slots other tasks'
    prompts occupy) take part neither as queries nor as keys, so every sample meets exactly the keys, in
    the order, it would meet alone: no masked padding enters a reduction, so outputs equal running alone up to
    float rounding (the kernels see other batch shapes).
    ``extra`` holds the keys/values appended for these samples (batch ``n`` or 1).
    """

    rows: Optional[torch.Tensor] = None
    positions: Optional[torch.Tensor] = None
    extra: Optional[ExtraKeyValues] = None


ParkedKeyValues = Union[ExtraKeyValues, list[KeyGroup], None]


def split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``(B, T, heads*head_dim)`` -> ``(B, heads, T, head_dim)``: channel ``h*head_dim+j`` is head ``h``."""
    return x.view(*x.shape[:2], -1, head_dim).transpose(1, 2)


def prompt_key_values(
    prompts: torch.Tensor, norm: torch.nn.Module, attention: torch.nn.Module, k_proj: str, v_proj: str, head_dim: int
) -> ExtraKeyValues:
    """What a block's real tokens see of prompt tokens they attend to: the block's norm, then its own K/V projections.

    This is exactly the prompts' contribution as keys/values when they sit in the sequence, which is why a block
    whose prompt outputs are discarded can read them this way (the key-value fast path). ``k_proj == v_proj``
    names a fused ``[q; k; v]`` projection; its key and value rows are applied as one slice of the weight. At one
    ViT-B attention this costs 1.02-1.04x the CPU time of appending the normed prompts as rows the projection makes
    keys/values of itself (bench/fused_qkv.py), and it keeps one form of extra keys/values for every family.
    """
    normed = norm(prompts)
    if k_proj == v_proj:  # one fused [q; k; v] projection (timm's qkv): only its key and value rows are needed
        fused = getattr(attention, k_proj)
        width = fused.out_features // 3
        bias = None if fused.bias is None else fused.bias[width:]
        key, value = torch.nn.functional.linear(normed, fused.weight[width:], bias).chunk(2, dim=-1)
    else:
        key, value = getattr(attention, k_proj)(normed), getattr(attention, v_proj)(normed)
    return ExtraKeyValues(split_heads(key, head_dim), split_heads(value, head_dim))


def _widen_mask(
    mask: Optional[torch.Tensor], extra: ExtraKeyValues, query: torch.Tensor, num_keys: int
) -> Optional[torch.Tensor]:
    if mask is None and extra.keep is None:
        return None
    batch, num_queries = query.shape[0], query.shape[2]
    keep = extra.keep_mask(batch)[:, None, None, :]
    if mask is None:
        mask = torch.zeros(batch, 1, num_queries, num_keys, dtype=query.dtype, device=query.device)
    if mask.dtype == torch.bool:
        pad = keep.expand(mask.shape[0] if keep.shape[0] == 1 else batch, mask.shape[1], mask.shape[2], -1)
        mask = mask.expand(pad.shape[0], -1, -1, -1)
        return torch.cat([mask, pad], dim=-1)
    blocked = torch.finfo(mask.dtype).min
    pad = torch.zeros((), dtype=mask.dtype, device=mask.device).masked_fill(~keep, blocked)
    pad = pad.expand(max(mask.shape[0], pad.shape[0]), mask.shape[1], mask.shape[2], -1)
    mask = mask.expand(pad.shape[0], -1, -1, -1)
    return torch.cat([mask, pad], dim=-1)


_EAGER_CACHE: dict[type, object] = {}


def _eager_function(module: torch.nn.Module):
    """The modeling file's own eager attention (transformers does not register "eager" globally)."""
    cls = type(module)
    if cls not in _EAGER_CACHE:
        _EAGER_CACHE[cls] = importlib.import_module(cls.__module__).eager_attention_forward
    return _EAGER_CACHE[cls]


def set_extra_key_values(attention: torch.nn.Module, extra: ParkedKeyValues) -> None:
    """Park ``extra`` on ``attention`` for its next call (``None`` clears it; a list runs one call per group)."""
    attention.__dict__[EXTRA_KV_ATTRIBUTE] = extra


def _attend(inner, module, query, key, value, attention_mask, extra: Optional[ExtraKeyValues], **kwargs):
    if extra is not None:
        batch = query.shape[0]
        extra_key = extra.key.to(key.dtype).expand(batch, -1, -1, -1)
        extra_value = extra.value.to(value.dtype).expand(batch, -1, -1, -1)
        attention_mask = _widen_mask(attention_mask, extra, query, key.shape[2])
        key = torch.cat([key, extra_key], dim=2)
        value = torch.cat([value, extra_value], dim=2)
    return inner(module, query, key, value, attention_mask, **kwargs)


def _select(tensor: Optional[torch.Tensor], group: KeyGroup, dims: tuple[int, ...]) -> Optional[torch.Tensor]:
    """``tensor``'s rows (dim 0, unless broadcast) and positions (each of ``dims``, unless broadcast) of ``group``."""
    if tensor is None:
        return None
    if group.rows is not None and tensor.shape[0] > 1:
        tensor = tensor[group.rows]
    if group.positions is not None:
        for dim in dims:
            if tensor.shape[dim] > 1:
                tensor = tensor.index_select(dim, group.positions)
    return tensor


def _grouped_attention(inner, module, query, key, value, attention_mask, groups: list[KeyGroup], **kwargs):
    """One attention call per key layout; outputs scattered back (padding positions get zeros).

    Attention weights are not returned: groups attend over different numbers of keys.
    """
    if len(groups) == 1 and groups[0].rows is None and groups[0].positions is None:
        return _attend(inner, module, query, key, value, attention_mask, groups[0].extra, **kwargs)
    batch, heads, length, _ = query.shape
    output = query.new_zeros(batch, length, heads, value.shape[-1])  # HF attention returns (B, T, heads, head_dim)
    every_row, every_position = torch.arange(batch, device=query.device), torch.arange(length, device=query.device)
    for group in groups:
        q, k, v = (_select(t, group, (2,)) for t in (query, key, value))
        mask = _select(attention_mask, group, (2, 3))
        out, _ = _attend(inner, module, q, k, v, mask, group.extra, **kwargs)
        rows = every_row if group.rows is None else group.rows
        positions = every_position if group.positions is None else group.positions
        output[rows[:, None], positions[None, :]] = out.to(output.dtype)
    return output, None


def prompted_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    **kwargs: Any,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Attention over the real keys/values plus the extra ones a vpt_peft hook parked on ``module``."""
    parked: ParkedKeyValues = module.__dict__.get(EXTRA_KV_ATTRIBUTE)
    backend = module.config._attn_implementation.removeprefix(IMPLEMENTATION_PREFIX)
    inner = _eager_function(module) if backend == "eager" else ALL_ATTENTION_FUNCTIONS[backend]
    if isinstance(parked, list):
        return _grouped_attention(inner, module, query, key, value, attention_mask, parked, **kwargs)
    return _attend(inner, module, query, key, value, attention_mask, parked, **kwargs)


for _backend in SUPPORTED_BACKENDS:
    AttentionInterface.register(IMPLEMENTATION_PREFIX + _backend, prompted_attention)
    AttentionMaskInterface.register(IMPLEMENTATION_PREFIX + _backend, ALL_MASK_ATTENTION_FUNCTIONS[_backend])


def ensure_installed_for(attention: torch.nn.Module) -> None:
    """:func:`ensure_installed` on the config of an HF attention module; nothing for one without a config (a
    fused-qkv attention takes extra keys/values through its hooks, :mod:`vpt_peft.engine.fused_qkv`)."""
    config = getattr(attention, "config", None)
    if config is not None:
        ensure_installed(config)


def ensure_installed(config: Any) -> None:
    """Route ``config``'s attention through :func:`prompted_attention` (idempotent, self-healing).

    Called again from the hooks, so a later ``model.set_attn_implementation(...)`` is adopted as the new
    inner backend instead of silently bypassing the prompts.
    """
    current = config._attn_implementation or "eager"
    if current.startswith(IMPLEMENTATION_PREFIX):
        return
    if current not in SUPPORTED_BACKENDS:
        raise UnsupportedAttentionError(
            f"attn_implementation={current!r} cannot take extra keys/values (needed by key-value prompts and the "
            f"deep-prompt fast path). Use one of {SUPPORTED_BACKENDS} (model.set_attn_implementation('sdpa')), "
            "or set prompt_path='sequence' for VPT/VFPT deep prompts."
        )
    config._attn_implementation = IMPLEMENTATION_PREFIX + current


def uninstall(config: Any) -> None:
    """Restore the backend :func:`ensure_installed` wrapped (on unload)."""
    current = config._attn_implementation
    if current and current.startswith(IMPLEMENTATION_PREFIX):
        config._attn_implementation = current.removeprefix(IMPLEMENTATION_PREFIX)
