"""E2VPT's efficient prompting: importance scores, token/segment pruning, and rewinding.

The official pipeline trains with learnable gates on the visual prompts, scores each token and each
segment by the gradient of the loss with respect to its gate over one pass of training data, prunes the
lowest-scoring ones, then "rewinds" (retrains with the masks fixed). Here pruned tokens are removed from
the adapter and from the sequence (``prune_mode="remove"``, the speed-up) or zeroed as the official code
does (``"zero"``); pruned segments are zeroed (a channel subset cannot be removed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...engine.checks import check_choice, check_fraction
from .config import KVPromptConfig
from .layer import KVPromptBank, KVPromptLayer

MIN_TOKENS = 1
MIN_SEGMENTS = 4


@dataclass
class PruningResult:
    kept_tokens: list[int]
    segment_mask: torch.Tensor
    token_scores: torch.Tensor
    segment_scores: torch.Tensor

    @property
    def kept_segments(self) -> int:
        return int(self.segment_mask.sum().item())


def _sidecar_and_bank(model: nn.Module, adapter_name: Optional[str]) -> tuple[KVPromptLayer, KVPromptBank, str]:
    layers = [m for m in model.modules() if isinstance(m, KVPromptLayer)]
    if not layers:
        raise ValueError("prune_prompts needs a model made with get_peft_model(..., KVPromptConfig(...)).")
    sidecar = layers[0]
    name = adapter_name or sidecar.active_adapters[0]
    if name not in sidecar.banks:
        raise ValueError(f"No KV-prompt adapter named {name!r}; available: {list(sidecar.banks)}.")
    return sidecar, sidecar.banks[name], name


def _default_loss(outputs: Any, batch: dict) -> torch.Tensor:
    if getattr(outputs, "loss", None) is not None:
        return outputs.loss
    if "labels" not in batch:
        raise ValueError(
            f"Pruning scores the prompts with the task loss, so every batch needs 'labels' (got keys {sorted(batch)}); "
            "or pass loss_fn=(outputs, batch) -> loss."
        )
    return F.cross_entropy(outputs.logits, batch["labels"])


def importance_scores(
    model: nn.Module,
    data: Iterable[dict],
    *,
    adapter_name: Optional[str] = None,
    importance: str = "signed",
    loss_fn: Callable[[Any, dict], torch.Tensor] = _default_loss,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over batches of dL/d(token gate) and dL/d(segment gate), in eval mode, without updating anything.

    ``importance="signed"`` is the official code's score; ``"abs"`` is the paper's expected |gradient|.
    """
    check_choice("importance", importance, ("signed", "abs"))
    _, bank, _ = _sidecar_and_bank(model, adapter_name)
    gates = bank.gate_values()
    if gates is None or not isinstance(gates[0], nn.Parameter):
        raise ValueError("Importance scores need learnable gates: create the adapter with KVPromptConfig(gates=True).")
    was_training = model.training
    model.eval()
    totals, batches = [torch.zeros_like(g) for g in gates], 0
    try:
        for batch in data:
            loss = loss_fn(model(**batch), batch)
            grads = torch.autograd.grad(loss, gates)
            for total, grad in zip(totals, grads):
                total += grad.abs() if importance == "abs" else grad
            batches += 1
    finally:
        model.train(was_training)
    if batches == 0:
        raise ValueError("Pruning needs training data: `data` yielded no batch.")
    return totals[0] / batches, totals[1] / batches


def pruned_count(total: int, ratio: float) -> int:
    """How many of ``total`` items a pruning ``ratio`` removes, as the official code counts them.

    The official code takes an integer percent and computes ``int(total * percent / 100)``. Multiplying by
    the float fraction instead is not the same: ``int(90 * 0.7)`` is 62 because 0.7 is stored as
    0.6999..., while the official count is 63 (and ``int(100 * 0.29)`` is 28, not 29). So the ratio
    is read as the decimal number it was written as (``Fraction(repr(0.7))`` is exactly 7/10) and the
    count is computed in exact rational arithmetic: for every integer percent this is exactly the official
    ``int(total * percent / 100)``, and ratios finer than a percent (0.125) keep their exact meaning.
    """
    return math.floor(total * Fraction(repr(float(ratio))))


def select_pruning(
    token_scores: torch.Tensor, segment_scores: torch.Tensor, token_ratio: float, segment_ratio: float
) -> PruningResult:
    """Official selection: prune the int(p * percent / 100) lowest-scoring tokens (keeping at least 1) and,
    per kept token, the int(R * percent / 100) lowest-scoring segments (keeping at least 4); see
    :func:`pruned_count` for why the counts use integer-percent arithmetic."""
    p, r = segment_scores.shape
    n_tokens = min(pruned_count(p, token_ratio), max(p - MIN_TOKENS, 0))
    pruned = set(torch.argsort(token_scores, stable=True)[:n_tokens].tolist())
    kept = [i for i in range(p) if i not in pruned]
    n_segments = min(pruned_count(r, segment_ratio), r - MIN_SEGMENTS)
    mask = torch.ones(p, r)
    for token in range(p):
        mask[token, torch.argsort(segment_scores[token], stable=True)[:n_segments]] = 0
    return PruningResult(kept, mask, token_scores, segment_scores)


@torch.no_grad()
def prune_prompts(
    model: nn.Module,
    data: Iterable[dict],
    *,
    token_ratio: float,
    segment_ratio: float,
    adapter_name: Optional[str] = None,
    importance: str = "signed",
    rewind: Optional[str] = "initial",
    loss_fn: Callable[[Any, dict], torch.Tensor] = _default_loss,
) -> PruningResult:
    """Score, prune and rewind an E2VPT adapter in place; then train again (a new optimizer/Trainer).

    rewind: ``"initial"`` restores the prompts' initial values and the head's starting weights (the paper),
    ``"reinit"`` draws fresh random prompts (the official code), ``None`` keeps the trained values.
    The adapter's config is updated (``num_prompts`` = kept tokens, ``pruned=True``) so that
    ``save_pretrained`` writes, and ``PeftModel.from_pretrained`` reads, the smaller adapter.
    """
    check_fraction("token_ratio", token_ratio, upper_inclusive=False)
    check_fraction("segment_ratio", segment_ratio, upper_inclusive=False)
    name = _check_prunable(model, adapter_name, rewind)
    with torch.enable_grad():
        token_scores, segment_scores = importance_scores(
            model, data, adapter_name=name, importance=importance, loss_fn=loss_fn
        )
    result = select_pruning(token_scores, segment_scores, token_ratio, segment_ratio)
    apply_pruning(model, result, adapter_name=name, rewind=rewind)
    return result


@torch.no_grad()
def apply_pruning(
    model: nn.Module, result: PruningResult, *, adapter_name: Optional[str] = None, rewind: Optional[str] = "initial"
) -> None:
    """Prune an E2VPT adapter in place with a selection made elsewhere (:func:`select_pruning` of stored scores).

    A sweep scores the prompts once and then tries several pruning ratios, each on a fresh copy of the model
    made with the same seed: with ``rewind="initial"`` that copy's initial values are the ones the scored run
    started from, so pruning it equals pruning the scored run and rewinding it.
    """
    name = _check_prunable(model, adapter_name, rewind)
    sidecar, bank, _ = _sidecar_and_bank(model, name)
    if tuple(result.segment_mask.shape) != (bank.num_prompts, bank.num_segments):
        raise ValueError(
            f"The pruning result is for {tuple(result.segment_mask.shape)} (tokens, segments); adapter {name!r} "
            f"has ({bank.num_prompts}, {bank.num_segments})."
        )
    _replace_bank(model, sidecar, bank, name, _peft_config(model, name), result, rewind)


def _check_prunable(model: nn.Module, adapter_name: Optional[str], rewind: Optional[str]) -> str:
    """The adapter's name, once it is known to be an unpruned E2VPT adapter that ``rewind`` can apply to."""
    if rewind not in ("initial", "reinit", None):
        raise ValueError(f"rewind must be 'initial', 'reinit' or None, got {rewind!r}.")
    _, bank, name = _sidecar_and_bank(model, adapter_name)
    if _peft_config(model, name).pruned:
        raise ValueError(f"Adapter {name!r} is already pruned.")
    if bank.num_prompts == 0:
        raise ValueError(f"Adapter {name!r} has no visual prompts (num_prompts=0): there is nothing to prune.")
    if rewind == "initial" and (bank.initial_values is None or model.base_model.initial_heads(name) is None):
        raise ValueError(
            "This adapter was loaded from disk, so its initial values are unknown: use rewind='reinit' or None."
        )
    return name


def _peft_config(model: nn.Module, name: str) -> KVPromptConfig:
    configs = getattr(model, "peft_config", None)
    if not configs or name not in configs:
        raise ValueError("prune_prompts expects the PeftModel returned by get_peft_model.")
    return configs[name]


def _replace_bank(model, sidecar, old: KVPromptBank, name, peft_config, result: PruningResult, rewind) -> None:
    remove = peft_config.prune_mode == "remove"
    rows = result.kept_tokens if remove else list(range(old.num_prompts))
    peft_config.num_prompts = len(rows)
    peft_config.pruned = True
    new = KVPromptBank(peft_config, model.base_model._backbone)
    new.to(getattr(old, old.visual_names[0]).device)
    source = old.initial_values if rewind == "initial" else None
    for tensor_name in (*old.visual_names, *old.kv_names):
        values = getattr(old, tensor_name) if source is None else source[tensor_name]
        if tensor_name in old.visual_names:
            values = values[:, rows]
        if rewind != "reinit":
            getattr(new, tensor_name).copy_(values)
    token_mask = torch.ones(old.num_prompts)
    token_mask[[i for i in range(old.num_prompts) if i not in result.kept_tokens]] = 0
    new.prompt_token_mask.copy_(token_mask[rows])
    new.prompt_segment_mask.copy_(result.segment_mask[rows])
    new.initial_values = {k: getattr(new, k).detach().clone() for k in (*new.visual_names, *new.kv_names)}
    new.train(old.training)
    sidecar.banks[name] = new
    sidecar.set_adapter(sidecar.active_adapters)
    if rewind == "initial":
        _rewind_heads(model, name)


def _rewind_heads(model: nn.Module, name: str) -> None:
    """The adapter's heads as they were when it was created (own size, VPT init and all)."""
    for path, state in model.base_model.initial_heads(name).items():
        model.base_model.model.get_submodule(path).modules_to_save[name].load_state_dict(state)


def effective_prompt_parameters(model: nn.Module, adapter_name: Optional[str] = None) -> int:
    """Prompt parameters that still matter: kept tokens x kept segments of the visual prompts + key-value prompts."""
    _, bank, _ = _sidecar_and_bank(model, adapter_name)
    visual = sum(getattr(bank, name).numel() for name in bank.visual_names)
    gates = bank.gate_values()
    if gates is not None and not isinstance(gates[0], nn.Parameter) and bank.num_prompts > 0:
        # Every kept (token, segment) pair holds width / R channels in every layer.
        kept = (gates[0][:, None] * gates[1]).sum().item()
        visual = round(visual * kept / gates[1].numel())
    return visual + sum(getattr(bank, n).numel() for n in bank.kv_names)
