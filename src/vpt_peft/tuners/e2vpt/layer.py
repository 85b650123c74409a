from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ...engine.attention import ExtraKeyValues, split_heads
from ...engine.backbones import Backbone
from ...engine.bank import PromptBank, TensorRow, stacked_rows, stacked_shapes
from ...engine.config import PROMPT_INIT_STD
from ...engine.sidecar import PromptAdapterLayer
from .config import KVPromptConfig


class KVPromptBank(PromptBank):
    """E2VPT tensors of one adapter.

    * ``prompt_embeddings`` (L, p, d): the deep visual prompts, as VPT;
    * ``kv_prompts`` (L_kv, T, d), or ``key_prompts`` and ``value_prompts`` when not shared: channel
      ``h * head_dim + j`` belongs to head ``h``, the split of the attention's own projections;
    * before pruning, learnable gates ``prompt_token_gates`` (p,) and ``prompt_segment_gates`` (p, R);
      after pruning, fixed buffers ``prompt_token_mask`` (p,) and ``prompt_segment_mask`` (p, R) of 0/1.
    The gates/masks multiply the visual prompts after dropout, with the same values at every layer.
    """

    def __init__(self, config: KVPromptConfig, backbone: Backbone) -> None:
        super().__init__(config, backbone)
        if any(width % config.num_segments for width in backbone.layer_widths):
            raise ValueError(
                f"num_segments={config.num_segments} must divide the hidden size "
                f"({sorted(set(backbone.layer_widths))})."
            )
        kv_layers = config.kv_layers(backbone.num_layers)
        self.num_kv_prompts = config.num_kv_prompts
        self.num_segments = config.num_segments
        roles = ("kv_prompts", "kv_prompts") if config.share_kv else ("key_prompts", "value_prompts")
        key_rows, value_rows = (stacked_rows(kv_layers, backbone.layer_widths, role) for role in roles)
        # Per layer: where its key prompts and its value prompts live (the same tensor when shared).
        self.kv_rows = {layer: (key_rows[layer], value_rows[layer]) for layer in kv_layers}
        self.kv_head_dims: dict[str, int] = {}
        for placement in (key_rows, value_rows):
            for tensor, (rows, width) in stacked_shapes(placement, backbone.layer_widths).items():
                if tensor in self.kv_head_dims:
                    continue
                setattr(self, tensor, nn.Parameter(torch.empty(rows, config.num_kv_prompts, width)))
                first_layer = next(layer for layer, (name, _) in placement.items() if name == tensor)
                self.kv_head_dims[tensor] = backbone.layer_head_dims[first_layer]
        self.kv_names = tuple(self.kv_head_dims)
        self.kv_dropout = nn.Dropout(config.kv_dropout)
        p, r = config.num_prompts, config.num_segments
        if config.pruned:
            self.register_buffer("prompt_token_mask", torch.ones(p))
            self.register_buffer("prompt_segment_mask", torch.ones(p, r))
        elif config.gates:
            self.prompt_token_gates = nn.Parameter(torch.ones(p))
            self.prompt_segment_gates = nn.Parameter(torch.ones(p, r))
        self.reset_kv_prompts(config)
        self.initial_values = {
            name: getattr(self, name).detach().clone() for name in (*self.visual_names, *self.kv_names)
        }
        self.register_load_state_dict_pre_hook(self._forget_initial_values)

    def _forget_initial_values(self, *args) -> None:
        """Loaded tensors did not start from this bank's initial values: rewinding to them would be wrong."""
        self.initial_values = None

    @torch.no_grad()
    def reset_kv_prompts(self, config: KVPromptConfig) -> None:
        for name in self.kv_names:
            tensor = getattr(self, name)
            if tensor.is_meta:
                continue
            if config.kv_init == "kaiming_uniform":
                # The official init treats the (heads, T, head_dim) tensor as a weight with fan_in = T * head_dim.
                bound = math.sqrt(6.0 / max(1, config.num_kv_prompts * self.kv_head_dims[name]))
                tensor.uniform_(-bound, bound)
            else:
                nn.init.trunc_normal_(tensor, std=PROMPT_INIT_STD)

    @property
    def needs_extra_key_values(self) -> bool:
        return self.num_kv_prompts > 0 or super().needs_extra_key_values

    def gate_values(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """(token, segment) multipliers: learnable gates, fixed masks after pruning, or None."""
        if hasattr(self, "prompt_token_gates"):
            return self.prompt_token_gates, self.prompt_segment_gates
        if hasattr(self, "prompt_token_mask"):
            return self.prompt_token_mask, self.prompt_segment_mask
        return None

    def transform(self, prompts: torch.Tensor) -> torch.Tensor:
        gates = self.gate_values()
        if gates is None or prompts.shape[1] == 0:
            return prompts
        token, segment = gates
        # Segment j covers the strided channels j, j+R, j+2R, ... (the official tiling), not a block.
        channels = segment.repeat(1, prompts.shape[-1] // self.num_segments)
        return prompts * (token[:, None] * channels).to(prompts.dtype)

    def _kv_heads(self, where: TensorRow, batch_size: int, dtype: torch.dtype) -> torch.Tensor:
        name, row = where
        tensor = getattr(self, name)[row]
        if not (self.training and self.kv_dropout.p > 0):
            batch_size = 1
        tensor = self.kv_dropout(tensor.unsqueeze(0).expand(batch_size, -1, -1))
        return split_heads(tensor.to(dtype), self.kv_head_dims[name])

    def kv_prompt_key_values(self, layer_index: int, rows: int, dtype: torch.dtype) -> Optional[ExtraKeyValues]:
        """The key-value prompts of layer ``layer_index``, after the projections and the head split.

        Dropout (training only) draws separate masks for the key copy and the value copy, as the official code,
        one per attention row (a sample, or a window of a sample on Swin).
        """
        where = self.kv_rows.get(layer_index)
        if where is None or self.num_kv_prompts == 0:
            return None
        return ExtraKeyValues(self._kv_heads(where[0], rows, dtype), self._kv_heads(where[1], rows, dtype))


class KVPromptLayer(PromptAdapterLayer):
    """Holds each E2VPT adapter's bank under ``kvprompt_prompts.<adapter>``."""

    adapter_layer_names = ("kvprompt_prompts",)
    bank_cls = KVPromptBank
