"""A prompt bank: one adapter's prompt tensors for one backbone, and how each use of them is computed.

Tensors are stacked by layer width (:func:`stacked_rows`): a ViT-like backbone has one ``(L, p, d)`` tensor,
a backbone whose width changes with depth (Swin's stages) one tensor per width. A bank knows nothing of
hooks; :class:`vpt_peft.engine.sidecar.PromptAdapterLayer` asks it for prompts or extra keys/values.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

import torch
from torch import nn

from .attention import ExtraKeyValues, prompt_key_values
from .backbones import Backbone
from .config import KV_ONLY, PROMPT_INIT_STD, PromptConfigBase
from .windows import block_modes


def kv_path_is_exact(layers: list[int], num_layers: int) -> bool:
    """Deep prompts may skip the blocks iff no block ever reads a previous block's prompt outputs.

    Block i's prompt outputs are read by block i+1 unless i+1 brings its own prompts (or i is the last
    block), so the prompted blocks must run without a gap to the end.
    """
    return layers == list(range(layers[0], num_layers))


TensorRow = tuple[str, int]
"""Where one layer's prompts are stored: (tensor name, row of that tensor)."""


def stacked_rows(layers: list[int], widths: list[int], name: str) -> dict[int, TensorRow]:
    """Where each layer's tensor lives: ``{layer: (tensor name, row)}``, one stacked tensor per width.

    A backbone of one width (every ViT-like family) gets a single tensor called ``name``, row ``j`` for the
    ``j``-th listed layer. Backbones whose width changes with depth (Swin's stages) get one tensor per
    width, ``stage{k}_{name}``, in order of first appearance.
    """
    distinct = list(dict.fromkeys(widths[layer] for layer in layers))
    placement, rows = {}, dict.fromkeys(distinct, 0)
    for layer in layers:
        width = widths[layer]
        tensor = name if len(distinct) == 1 else f"stage{distinct.index(width)}_{name}"
        placement[layer] = (tensor, rows[width])
        rows[width] += 1
    return placement


def stacked_shapes(placement: dict[int, TensorRow], widths: list[int]) -> dict[str, tuple[int, int]]:
    """``{tensor name: (rows, width)}`` for the tensors :func:`stacked_rows` laid out."""
    shapes: dict[str, tuple[int, int]] = {}
    for layer, (tensor, row) in placement.items():
        shapes[tensor] = (row + 1, widths[layer])
    return shapes


class PromptBank(nn.Module):
    """One adapter's visual prompts for one backbone: ``prompt_embeddings`` of shape (L, p, d).

    Row ``j`` belongs to the ``j``-th prompted layer (one tensor per stage width on Swin, see
    :func:`stacked_rows`). Each use goes projection -> batch expansion -> dropout (an independent mask per
    sample, token and channel, as the official code) -> :meth:`transform`.
    """

    def __init__(self, config: PromptConfigBase, backbone: Backbone) -> None:
        super().__init__()
        layers = config.prompted_layers(backbone.num_layers)
        self.layer_rows = stacked_rows(layers, backbone.layer_widths, "prompt_embeddings")
        self.first_layer = layers[0]
        self.num_prompts = config.num_prompts
        self.uses_kv_path = self.choose_kv_path(config, layers, backbone)
        # Windowed backbones (Swin): how each block meets the prompts, "sequence" or "kv" (see engine/windows.py).
        self.block_modes = block_modes(config, layers, backbone) if backbone.spec.windows is not None else {}
        shapes = stacked_shapes(self.layer_rows, backbone.layer_widths)
        projected = config.prompt_project_dim > 0
        if projected and len(shapes) > 1:
            raise ValueError("prompt_project_dim needs a backbone of one width; this one changes width with depth.")
        self.visual_names = tuple(shapes)
        for tensor, (rows, width) in shapes.items():
            dim = config.prompt_project_dim if projected else width
            setattr(self, tensor, nn.Parameter(torch.empty(rows, config.num_prompts, dim)))
        self.prompt_proj = nn.Linear(config.prompt_project_dim, backbone.hidden_size) if projected else None
        self.prompt_dropout = nn.Dropout(config.effective_prompt_dropout)
        self.reset_prompts(config, backbone)

    @staticmethod
    def choose_kv_path(config: PromptConfigBase, layers: list[int], backbone: Backbone) -> bool:
        """Whether every prompted layer reads its prompts as keys/values only (the ViT-like fast path).

        Windowed backbones choose per block instead (:func:`vpt_peft.engine.windows.block_modes`, checked here
        so that a bad config fails before the model is touched) and return False.
        """
        if backbone.spec.windows is not None:
            block_modes(config, layers, backbone)
            return False
        if config.prompt_path == KV_ONLY:
            raise ValueError(
                f"prompt_path={KV_ONLY!r} is for windowed backbones (Swin); on {backbone.model_type} use 'kv' (exact "
                "where the prompted layers run to the last one) or 'auto'."
            )
        if not config.deep or config.prompt_path == "sequence":
            return False
        exact = kv_path_is_exact(layers, backbone.num_layers)
        if config.prompt_path == "kv" and not exact:
            raise ValueError(
                f"prompt_path='kv' is exact only when the prompted layers run to the last layer; {layers} leaves "
                "a gap where prompt outputs flow into unprompted layers. Use prompt_path='sequence' or 'auto'."
            )
        return exact

    @torch.no_grad()
    def reset_prompts(self, config: PromptConfigBase, backbone: Backbone) -> None:
        for name in self.visual_names:
            tensor = getattr(self, name)
            if tensor.is_meta:
                return
            if config.prompt_init == "xavier_patch":
                # Xavier-uniform as if each prompt were a patch-embedding kernel (fan_in = C * ph * pw, fan_out =
                # the patch embedding's width). One bound for every tensor: the official Swin code computes it
                # with the first stage's width for all stages.
                width = config.prompt_project_dim if self.prompt_proj is not None else backbone.layer_widths[0]
                bound = math.sqrt(6.0 / (backbone.patch_fan_in + width))
                tensor.uniform_(-bound, bound)
            elif config.prompt_init == "normal":
                tensor.normal_(0.0, PROMPT_INIT_STD)
            else:
                tensor.zero_()
        if self.prompt_proj is not None:
            nn.init.kaiming_normal_(self.prompt_proj.weight, a=0, mode="fan_out")

    @contextmanager
    def running_in_sequence(self) -> Iterator[None]:
        """Deep prompts through the blocks instead of the key-value path, for the duration.

        The two paths compute the same function where the key-value path is chosen; the in-sequence one also
        gives the prompts their own attention rows, which attention maps draw.
        """
        saved, self.uses_kv_path = self.uses_kv_path, False
        try:
            yield
        finally:
            self.uses_kv_path = saved

    @property
    def needs_extra_key_values(self) -> bool:
        """Whether the attention must be routed through :func:`vpt_peft.engine.attention.prompted_attention`."""
        reads_kv = self.uses_kv_path or "kv" in self.block_modes.values()
        return reads_kv and self.num_prompts > 0

    @property
    def sequence_tokens(self) -> int:
        """How many prompt tokens this bank leaves in the blocks' own sequence (0 on the key-value path, and on
        windowed backbones, whose prompt tokens travel beside the blocks' sequence)."""
        return 0 if self.uses_kv_path or self.block_modes else self.num_prompts

    def transform(self, prompts: torch.Tensor) -> torch.Tensor:
        """Hook for methods that map the prompts before use (VFPT's Fourier transform)."""
        return prompts

    def prompts(self, where: TensorRow, batch_size: int, dtype: torch.dtype) -> torch.Tensor:
        """The (batch, p, d) prompts stored at ``where`` (see :func:`stacked_rows`), in the model's dtype."""
        tensor, row = where
        prompts = getattr(self, tensor)[row]
        if self.prompt_proj is not None:
            prompts = self.prompt_proj(prompts)
        if not (self.training and self.prompt_dropout.p > 0):
            batch_size = 1  # identical for every sample: let the caller broadcast
        prompts = self.prompt_dropout(prompts.unsqueeze(0).expand(batch_size, -1, -1))
        return self.transform(prompts).to(dtype)

    def kv_prompt_key_values(self, layer_index: int, rows: int, dtype: torch.dtype) -> Optional[ExtraKeyValues]:
        """A method's own key-value prompts for layer ``layer_index`` (E2VPT), for ``rows`` attention rows."""
        return None

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
    ) -> Optional[ExtraKeyValues]:
        """Keys/values that layer ``layer_index``'s real tokens attend to besides their own."""
        visual = None
        where = self.layer_rows.get(layer_index)
        if self.uses_kv_path and where is not None and self.num_prompts > 0:
            prompts = self.prompts(where, batch_size, dtype)
            visual = prompt_key_values(prompts, norm, attention, k_proj, v_proj, head_dim)
        kv = self.kv_prompt_key_values(layer_index, batch_size, dtype)
        if kv is None or visual is None:
            return kv or visual
        return kv.cat(visual)
