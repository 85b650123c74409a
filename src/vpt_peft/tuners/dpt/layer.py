"""The vision side of DPT: deep visual prompts below, class-aware prompts in the top layer(s).

DPT appends its prompts to a layer's input and strips them from that layer's output, so no prompt
output ever reaches another layer: the prompts only act as extra keys/values of their own layer's
attention. The default path feeds them to attention exactly that way (:mod:`vpt_peft.engine.attention`); the
``"sequence"`` path inserts them as tokens and strips them after the block (same logits). Visual
prompts are a :class:`~vpt_peft.engine.bank.PromptBank`; the CAVPT tokens are made per image by a
:class:`~.cavpt.ClassAwarePromptGenerator` from the layer's input and the text features of the image's
top-K classes, which the tuner hands over (``queries``) before the vision pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ...engine.attention import ExtraKeyValues, prompt_key_values
from ...engine.backbones import Backbone
from ...engine.bank import PromptBank
from ...engine.sidecar import PromptAdapterLayer
from ...engine.tokens import insert_prompts, strip_prompts, widen_block_mask
from ..vpt.config import VisualPromptConfig
from .cavpt import ClassAwarePromptGenerator
from .config import DualPromptConfig


def visual_prompt_config(config: DualPromptConfig, num_layers: int) -> VisualPromptConfig:
    """The VPT part of a DPT config: N(0, 0.02) deep prompts below the CAVPT layers, no dropout."""
    layers = config.visual_prompt_layers(num_layers)
    return VisualPromptConfig(
        num_prompts=config.visual_n_ctx if layers else 0,
        deep=True,
        prompt_layers=layers or [0],
        prompt_dropout=0.0,
        prompt_init="normal",
        prompt_path="sequence" if config.prompt_path == "sequence" else "auto",
    )


class DualPromptVisionBank(PromptBank):
    """One adapter's visual prompts (``prompt_embeddings`` (L, p, d)) and CAVPT generators (``cavpt.<j>``)."""

    def __init__(self, config: DualPromptConfig, backbone: Backbone, text_dim: int) -> None:
        super().__init__(visual_prompt_config(config, backbone.num_layers), backbone)
        cavpt_layers = config.cavpt_layers(backbone.num_layers)
        self.cavpt_rows = {layer: slot for slot, layer in enumerate(cavpt_layers)}
        self.cavpt = nn.ModuleList(
            ClassAwarePromptGenerator(
                text_dim, backbone.hidden_size, config.num_classes, config.cavpt_extra_kv_tokens, config.cavpt_attn_dim
            )
            for _ in cavpt_layers
        )
        self.num_class_tokens = min(config.cavpt_num_tokens, config.num_classes)
        # Per-call state, set by the tuner and the layer hooks, reset at the start of each call.
        self.queries: torch.Tensor | None = None
        self.class_tokens: dict[int, torch.Tensor] = {}
        self.aux_logits: dict[int, torch.Tensor] = {}

    @staticmethod
    def choose_kv_path(config: VisualPromptConfig, layers: list[int], backbone: Backbone) -> bool:
        # Every DPT prompt is stripped after its own layer, so the key/value path is exact everywhere.
        return config.prompt_path != "sequence"

    @property
    def needs_extra_key_values(self) -> bool:
        return self.uses_kv_path and (self.num_prompts > 0 or bool(self.cavpt_rows))

    @property
    def sequence_tokens(self) -> int:
        return 0  # nothing is left in the residual stream between layers

    def clear(self) -> None:
        self.queries = None
        self.class_tokens, self.aux_logits = {}, {}

    def layer_tokens(self, index: int, hidden: torch.Tensor) -> torch.Tensor | None:
        """The prompts of layer ``index`` for this batch: ``(1 or B, n, d)``, or None."""
        slot = self.cavpt_rows.get(index)
        if slot is not None:
            if self.queries is None:
                raise RuntimeError(
                    "CAVPT needs the class text features before the vision pass: call the PeftModel as "
                    "model(pixel_values=..., labels=...) (no input_ids), or use model.disable_adapter() for plain CLIP."
                )
            tokens, aux = self.cavpt[slot](hidden, self.queries)
            self.class_tokens[index], self.aux_logits[index] = tokens, aux
            return tokens
        slot = self.layer_rows.get(index)
        if slot is None or self.num_prompts == 0:
            return None
        return self.prompts(slot, hidden.shape[0], hidden.dtype)

    def extra_key_values(
        self,
        layer_index: int,
        norm: nn.Module,
        attention: nn.Module,
        batch_size: int,
        dtype: torch.dtype,
        k_proj: str,
        v_proj: str,
        head_dim: int,
    ) -> ExtraKeyValues | None:
        tokens = self.class_tokens.get(layer_index)
        if tokens is None:
            return super().extra_key_values(layer_index, norm, attention, batch_size, dtype, k_proj, v_proj, head_dim)
        if not self.uses_kv_path:
            return None
        return prompt_key_values(tokens.to(dtype), norm, attention, k_proj, v_proj, head_dim)


class DualPromptVisionLayer(PromptAdapterLayer):
    """Sidecar on ``vision_model.embeddings``: banks under ``dpt_visual.<adapter>``, append/strip hooks."""

    adapter_layer_names = ("dpt_visual",)
    bank_cls = DualPromptVisionBank

    def __init__(self, backbone: Backbone, text_dim: int) -> None:
        super().__init__(backbone)
        self.text_dim = text_dim
        self.bypass = False
        self._inserted: dict[int, int] = {}

    def make_bank(self, config: DualPromptConfig, backbone: Backbone) -> DualPromptVisionBank:
        return DualPromptVisionBank(config, backbone, self.text_dim)

    def active_bank(self) -> DualPromptVisionBank | None:
        return None if self.bypass else super().active_bank()

    @contextmanager
    def bypassed(self) -> Iterator[None]:
        """Run the vision tower unprompted (DPT's frozen zero-shot image branch)."""
        self.bypass = True
        try:
            yield
        finally:
            self.bypass = False

    def register_hooks(self, backbone: Backbone) -> None:
        super().register_hooks(backbone)
        for layer in backbone.layers:
            layer.register_forward_hook(self._layer_post_hook)

    def _layer_pre_hook(self, index: int, module: nn.Module, args: tuple, kwargs: dict):
        bank = self.active_bank()
        if bank is None:
            return None
        hidden = args[0]
        tokens = bank.layer_tokens(index, hidden)
        if tokens is None or bank.uses_kv_path:
            return None
        self._inserted[id(module)] = tokens.shape[1]
        hidden = insert_prompts(hidden, tokens, at=self.num_special_tokens)
        return widen_block_mask(
            (hidden, *args[1:]), kwargs, hidden.shape[1] - tokens.shape[1], tokens.shape[1], self.num_special_tokens
        )

    def _layer_post_hook(self, module: nn.Module, args: tuple, output: Any):
        count = self._inserted.pop(id(module), 0)
        if count == 0:
            return None
        if isinstance(output, tuple):
            return (strip_prompts(output[0], count, at=self.num_special_tokens), *output[1:])
        return strip_prompts(output, count, at=self.num_special_tokens)
