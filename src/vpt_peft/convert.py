"""Prompts trained with the official code, in vpt_peft's adapter layout.

Results are reported with the official repositories' checkpoints; converting their prompt tensors lets those
be evaluated (or trained further) with vpt_peft instead of re-training. The official code keeps the first
block's prompts apart from the deep ones, and on Swin one deep tensor per stage with the first block of stage 0
missing; vpt_peft keeps one tensor per width (docs/adapter-format.md). Only names and stacking change, never
values: the official forward and vpt_peft's compute the same function of the same numbers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Optional

import torch
from torch import nn

SHALLOW = "prompt_embeddings"
DEEP = "deep_prompt_embeddings"
_STAGE = re.compile(rf"^{DEEP}_(\d+)$")


class ConversionError(ValueError):
    """The official tensors do not have the layout the conversion expects."""


def _by_short_name(official: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The prompt tensors under their last dotted name (official keys carry a model prefix, e.g. ``enc.``)."""
    found: dict[str, torch.Tensor] = {}
    for key, tensor in official.items():
        short = key.rsplit(".", 1)[-1]
        if short != SHALLOW and short != DEEP and not _STAGE.match(short):
            continue
        if short in found:
            raise ConversionError(f"two official tensors are called {short!r}; pass one model's state dict")
        found[short] = tensor
    return found


def convert_official_prompts(
    official: Mapping[str, torch.Tensor], depths: Optional[Sequence[int]] = None
) -> dict[str, torch.Tensor]:
    """Map official VPT/VFPT/E2VPT visual prompts to vpt_peft's tensor names (float32).

    ``official`` is an official model's state dict (or any mapping holding its prompt tensors; other keys,
    e.g. the backbone and the head, are ignored). Returns ``{name: tensor}`` with the names that
    :func:`load_official_prompts` (or a bank's ``load_state_dict``) expects:

    * ViT: ``prompt_embeddings`` (1, p, d) and ``deep_prompt_embeddings`` (N-1, p, d) become one
      ``prompt_embeddings`` (N, p, d), or (1, p, d) for shallow prompts;
    * Swin, shallow: ``prompt_embeddings`` (1, p, C0) stays as it is;
    * Swin, deep: ``prompt_embeddings`` (1, p, C0) followed by the rows of ``deep_prompt_embeddings_0``
      (d0-1, p, C0) becomes ``stage0_prompt_embeddings`` (d0, p, C0); ``deep_prompt_embeddings_s`` (d_s, p, C_s)
      becomes ``stage{s}_prompt_embeddings``.

    ``depths`` (Swin's blocks per stage), when given, is checked against the row counts, so a checkpoint of
    another Swin variant fails here rather than at load time with a less telling shape error.
    """
    found = _by_short_name(official)
    if SHALLOW not in found:
        raise ConversionError(f"no {SHALLOW!r} tensor among the official keys")
    shallow = found[SHALLOW].detach().float()
    if shallow.dim() != 3 or shallow.shape[0] != 1:
        raise ConversionError(f"official {SHALLOW!r} must have shape (1, p, d), got {tuple(shallow.shape)}")
    stages = sorted((int(_STAGE.match(name).group(1)), tensor) for name, tensor in found.items() if _STAGE.match(name))
    if DEEP in found and stages:
        raise ConversionError(f"both {DEEP!r} (ViT) and per-stage {DEEP}_<s> (Swin) tensors were found")
    if DEEP in found:
        deep = found[DEEP].detach().float()
        if deep.dim() != 3 or deep.shape[1:] != shallow.shape[1:]:
            raise ConversionError(
                f"official {DEEP!r} must have shape (N-1, p, d) with {SHALLOW!r}'s p and d {tuple(shallow.shape[1:])}, "
                f"got {tuple(deep.shape)}"
            )
        return {SHALLOW: torch.cat([shallow, deep], dim=0)}
    if not stages:
        return {SHALLOW: shallow}
    if [s for s, _ in stages] != list(range(len(stages))):
        raise ConversionError(f"per-stage deep prompts must be numbered 0..S-1, got {[s for s, _ in stages]}")
    tensors = [tensor.detach().float() for _, tensor in stages]
    if depths is not None:
        want = [depths[0] - 1, *depths[1:]]
        got = [t.shape[0] for t in tensors]
        if got != want:
            raise ConversionError(f"deep prompt rows per stage {got} do not fit depths {list(depths)} (want {want})")
    tensors[0] = torch.cat([shallow, tensors[0]], dim=0)
    return {f"stage{s}_{SHALLOW}": tensor for s, tensor in enumerate(tensors)}


def convert_official_kv_prompts(per_block: Sequence[torch.Tensor], name: str = "kv_prompts") -> dict[str, torch.Tensor]:
    """E2VPT key-value prompts: one official (heads, T, head_dim) tensor per block, in block order.

    vpt_peft stores (T, heads * head_dim) with channel ``h * head_dim + j`` belonging to head ``h``, stacked
    into one tensor per width: ``name`` for a backbone of one width, ``stage{k}_{name}`` on Swin. Pass
    ``name="key_prompts"`` / ``"value_prompts"`` for adapters with ``share_kv=False``. The official key names of
    these tensors differ between the ViT and Swin code, so this takes the tensors, not a state dict.
    """
    rows: dict[int, list[torch.Tensor]] = {}
    for tensor in per_block:
        if tensor.dim() != 3:
            raise ConversionError(f"official key-value prompts are (heads, T, head_dim), got {tuple(tensor.shape)}")
        flat = tensor.detach().float().permute(1, 0, 2).reshape(tensor.shape[1], -1)
        rows.setdefault(flat.shape[-1], []).append(flat)
    if len(rows) == 1:
        return {name: torch.stack(next(iter(rows.values())))}
    return {f"stage{k}_{name}": torch.stack(stack) for k, stack in enumerate(rows.values())}


def load_official_prompts(model: nn.Module, tensors: Mapping[str, torch.Tensor], adapter_name: str = "default") -> None:
    """Copy converted tensors (from the two functions above) into ``adapter_name``'s prompts in ``model``.

    Every tensor must find a prompt parameter of the same name and shape, and every prompt tensor of the
    adapter must be given, so a partial or mismatched checkpoint fails loudly instead of leaving random prompts.
    """
    owned = {}
    for full, parameter in model.named_parameters():
        parts = full.split(".")
        if "prompt_adapter" in parts and len(parts) >= 2 and parts[-2] == adapter_name:
            owned[parts[-1]] = parameter
    prompt_names = {n for n in owned if n.endswith(("prompt_embeddings", "kv_prompts", "key_prompts", "value_prompts"))}
    if not prompt_names:
        raise ConversionError(f"the model has no prompt adapter called {adapter_name!r}")
    unknown = sorted(set(tensors) - prompt_names)
    missing = sorted(prompt_names - set(tensors))
    if unknown or missing:
        raise ConversionError(f"tensors do not match the adapter: unknown {unknown}, missing {missing}")
    for name, tensor in tensors.items():
        target = owned[name]
        if tuple(target.shape) != tuple(tensor.shape):
            raise ConversionError(f"{name}: official {tuple(tensor.shape)} vs adapter {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(tensor.to(target.dtype))
