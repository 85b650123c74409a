"""DPT's output and loss: CE on the dual-prompt logits, the zero-shot-guided warm-up, the auxiliary CAVPT loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from .config import DualPromptConfig


@dataclass
class DualPromptOutput(ModelOutput):
    """What ``model(pixel_values=..., labels=...)`` returns for a DPT adapter.

    ``logits`` (B, C): prompted image x learned text features, cosine x ``exp(logit_scale)``.
    ``coop_logits``: frozen zero-shot image x learned text (the warm-up's CoOp branch, when computed).
    ``vpt_logits``: prompted image x frozen template text (the warm-up's VPT branch, when computed).
    ``aux_logits``: per CAVPT layer, (B, K, C) class scores of the K class-aware tokens.
    ``top_k`` (B, K): the classes picked by zero-shot CLIP whose text features queried CAVPT.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    coop_logits: torch.Tensor | None = None
    vpt_logits: torch.Tensor | None = None
    aux_logits: tuple[torch.Tensor, ...] | None = None
    top_k: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None


def in_warmup(config: DualPromptConfig, epoch: int) -> bool:
    """The warm-up guides a *dual* prompt: it needs both learned text and prompted vision."""
    tunes_vision = config.visual_n_ctx > 0 or config.use_cavpt
    return epoch < config.zs_warmup_epochs and config.text_n_ctx > 0 and tunes_vision


def aux_loss(aux_logits: tuple[torch.Tensor, ...], top_k: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE of the CAVPT token whose class is the label, averaged over those tokens (0 if no label was picked)."""
    kept = top_k == labels[:, None]  # (B, K): at most one True per row
    targets = labels[:, None].expand_as(top_k)[kept]
    scores = torch.cat([logits[kept] for logits in aux_logits])
    if scores.shape[0] == 0:
        return aux_logits[0].sum() * 0.0
    return F.cross_entropy(scores.float(), targets.repeat(len(aux_logits)))


def dual_prompt_loss(
    output: DualPromptOutput, labels: torch.Tensor, config: DualPromptConfig, epoch: int
) -> torch.Tensor:
    """The full DPT objective for one batch at ``epoch`` (0-based).

    Warm-up (``epoch < zs_warmup_epochs``): CE(coop) + CE(vpt) + beta * CE(logits); after: CE(logits).
    Always + alpha * the auxiliary CAVPT loss.
    """
    ce = lambda logits: F.cross_entropy(logits.float(), labels)
    if in_warmup(config, epoch):
        if output.coop_logits is None or output.vpt_logits is None:
            raise ValueError("The warm-up loss needs the zero-shot branches; they are computed when labels are given.")
        loss = ce(output.coop_logits) + ce(output.vpt_logits) + config.warmup_vlp_weight * ce(output.logits)
    else:
        loss = ce(output.logits)
    if output.aux_logits and config.aux_loss_weight > 0:
        loss = loss + config.aux_loss_weight * aux_loss(output.aux_logits, output.top_k, labels)
    return loss
