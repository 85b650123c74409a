"""The class-aware visual prompt (CAVPT) generator of one layer.

Queries are the learned text features of each image's top-K classes; keys and values are that layer's
image tokens (detached) plus a few learnable tokens. The cross-attention is single-head with narrow
query/key projections and *no* value projection: the attended mix of raw tokens is projected once by
``w_o``. Add & LayerNorm gives the K prompts; a second LayerNorm feeds a C-way classifier whose loss
teaches each token to stand for its class.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...engine.config import PROMPT_INIT_STD


class ClassAwarePromptGenerator(nn.Module):
    """``(tokens (B, S, d), queries (B, K, e)) -> (prompts (B, K, d), aux_logits (B, K, C))``."""

    def __init__(self, text_dim: int, hidden_size: int, num_classes: int, extra_tokens: int, attn_dim: int) -> None:
        super().__init__()
        self.meta_net = nn.Linear(text_dim, hidden_size)
        self.extra_kv = nn.Parameter(torch.empty(extra_tokens, hidden_size))
        self.w_q = nn.Linear(hidden_size, attn_dim, bias=False)
        self.w_k = nn.Linear(hidden_size, attn_dim, bias=False)
        self.w_o = nn.Linear(hidden_size, hidden_size, bias=False)
        self.norm_aux = nn.LayerNorm(hidden_size)
        self.norm_out = nn.LayerNorm(hidden_size)
        self.classifier = nn.Linear(hidden_size, num_classes, bias=False)
        if not self.extra_kv.is_meta:
            nn.init.normal_(self.extra_kv, 0.0, PROMPT_INIT_STD)

    def forward(self, tokens: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.w_q.weight.dtype
        q0 = self.meta_net(queries.to(dtype))  # (B, K, d)
        # The backbone path gets no gradient from CAVPT (official: the layer input is detached).
        keys = torch.cat([tokens.detach().to(dtype), self.extra_kv.expand(tokens.shape[0], -1, -1)], dim=1)
        scores = self.w_q(q0) @ self.w_k(keys).transpose(1, 2) / math.sqrt(self.w_q.out_features)
        attended = self.w_o(scores.softmax(-1) @ keys)  # values are the raw tokens
        aux_logits = self.classifier(self.norm_aux(attended))
        prompts = self.norm_out(attended + q0)
        return prompts.to(tokens.dtype), aux_logits
