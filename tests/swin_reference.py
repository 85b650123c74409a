"""An independent float64 re-implementation of the official prompted Swin (spec methods.md §1.9).

Written from the specification, not from the library: every op is plain tensor math on the weights of a HF
``SwinForImageClassification`` (no HF layer is called). What it computes, per sample:

* embeddings: patch convolution, LayerNorm, absolute position embeddings if the config has them;
* prompts are real tokens: in every block they go through ``layernorm_before``, are prepended to every
  window (queries and keys/values, zero relative-position bias, never blocked by the shifted-window mask),
  their outputs are averaged over the sample's windows, then residual and MLP like any token;
* patch merging widens the prompts to 4 copies along channels through the same norm and reduction;
* the final norm runs on prompts and patches, and the pooled feature is the mean over all of them;
* shallow: one (1, p, C0) tensor carried through every block and merge; deep: before every block the prompt
  tokens are replaced by that block's own (official layout: ``prompt_embeddings`` for block 0,
  ``deep_prompt_embeddings_0`` rows for the other blocks of stage 0, ``deep_prompt_embeddings_s`` for stage s);
* E2VPT: per-block key/value prompts appended to every window's keys and values after the projections
  (zero bias, never masked), channel ``h * head_dim + j`` of a (T, C) tensor belonging to head ``h``;
* VFPT: a prompt transform (the real 2-D DFT of the first m prompts, :func:`fourier`) applied at every use.

The official code mixes the windows of different samples at batch > 1 (a bug, spec §1.9); this reference
computes each sample on its own, which is the official function at batch 1. Dropout is off (eval).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Optional

import torch
import torch.nn.functional as F

from .reference import _gelu, _lin, _ln

Transform = Callable[[torch.Tensor], torch.Tensor]


def fourier(prompts: torch.Tensor, m: int) -> torch.Tensor:
    """VFPT on a (p, d) prompt tensor: the first m rows become Re(DFT_seq(DFT_hidden(rows))), unnormalised.

    Written as the real linear map ``C_m X C_d - S_m X S_d`` (spec §2.1), not with ``torch.fft``.
    """
    if m == 0:
        return prompts
    x = prompts[:m].double()
    d = x.shape[-1]

    def cos_sin(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = torch.arange(n, dtype=torch.float64)
        angle = 2 * math.pi * torch.outer(j, j) / n
        return torch.cos(angle), torch.sin(angle)

    cm, sm = cos_sin(m)
    cd, sd = cos_sin(d)
    return torch.cat([cm @ x @ cd - sm @ x @ sd, prompts[m:].double()], dim=0)


def gated(prompts: torch.Tensor, token: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """E2VPT masks on a (p, d) tensor: token gate ``token[i]``, segment gate ``segment[i, c mod R]`` (strided)."""
    r = segment.shape[1]
    channel_gate = segment.double()[:, torch.arange(prompts.shape[-1]) % r]
    return prompts.double() * token.double()[:, None] * channel_gate


def _window_layout(config, stage: int, block: int, height: int, width: int) -> tuple[int, int]:
    """(window, shift) of one block: odd blocks shift by half a window; a map no larger than a window is one
    unshifted window."""
    window, shift = config.window_size, (config.window_size // 2 if block % 2 else 0)
    if min(height, width) <= window:
        window, shift = min(height, width), 0
    if height % window or width % window:
        raise ValueError("the reference follows the official Swin, which has no padding: use divisible sizes")
    return window, shift


def _relative_bias(table: torch.Tensor, window: int) -> torch.Tensor:
    """(heads, N, N) bias of a window's N = window**2 tokens, from their coordinate differences."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    index = (ys[:, None] - ys[None, :] + window - 1) * (2 * window - 1) + (xs[:, None] - xs[None, :] + window - 1)
    return table.detach().double()[index].permute(2, 0, 1)


def _shift_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """(windows, N, N): -100 between tokens that the cyclic shift brought together from different regions."""
    if shift == 0:
        return torch.zeros(1, window * window, window * window, dtype=torch.float64)

    def region(n: int) -> torch.Tensor:
        i = torch.arange(n)
        return (i >= n - window).long() + (i >= n - shift).long()

    label = (region(height)[:, None] * 3 + region(width)[None, :]).double()
    label = _to_windows(label[..., None], window)[..., 0]
    return (label[:, :, None] != label[:, None, :]).double() * -100.0


def _to_windows(grid: torch.Tensor, window: int) -> torch.Tensor:
    """(H, W, C) -> (windows, window*window, C), windows row-major, tokens row-major inside a window."""
    h, w, c = grid.shape
    return grid.view(h // window, window, w // window, window, c).permute(0, 2, 1, 3, 4).reshape(-1, window * window, c)


def _from_windows(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    c = windows.shape[-1]
    return windows.view(h // window, w // window, window, window, c).permute(0, 2, 1, 3, 4).reshape(h, w, c)


def _block(
    layer,
    config,
    stage: int,
    block: int,
    x: torch.Tensor,
    prompts: torch.Tensor,
    height: int,
    width: int,
    kv: Optional[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Swin block on one sample: patches ``x`` (H*W, C) and prompt tokens (p, C)."""
    window, shift = _window_layout(config, stage, block, height, width)
    channels = x.shape[-1]
    attn = layer.attention
    heads = attn.num_attention_heads
    head_dim = channels // heads
    p = prompts.shape[0]

    normed = _ln(x, layer.layernorm_before).view(height, width, channels)
    normed = torch.roll(normed, shifts=(-shift, -shift), dims=(0, 1))
    windows = _to_windows(normed, window)
    count, n = windows.shape[0], window * window
    tokens = torch.cat([_ln(prompts, layer.layernorm_before).expand(count, -1, -1), windows], dim=1)

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], -1, heads, head_dim).transpose(1, 2)

    q, k, v = split(_lin(tokens, attn.q_proj)), split(_lin(tokens, attn.k_proj)), split(_lin(tokens, attn.v_proj))
    bias = torch.zeros(count, heads, p + n, p + n, dtype=torch.float64)
    bias[:, :, p:, p:] = _relative_bias(attn.relative_position_bias.relative_position_bias_table, window)
    bias[:, :, p:, p:] += _shift_mask(height, width, window, shift)[:, None]
    if kv is not None:
        extra_k, extra_v = (split(t.double()[None]).expand(count, -1, -1, -1) for t in kv)
        k, v = torch.cat([extra_k, k], dim=2), torch.cat([extra_v, v], dim=2)
        bias = torch.cat([bias.new_zeros(count, heads, p + n, extra_k.shape[2]), bias], dim=-1)
    weights = (q @ k.transpose(-1, -2) / math.sqrt(head_dim) + bias).softmax(-1)
    out = _lin((weights @ v).transpose(1, 2).reshape(count, p + n, channels), attn.o_proj)

    prompt_out = out[:, :p].mean(0)
    patch_out = torch.roll(_from_windows(out[:, p:], window, height, width), shifts=(shift, shift), dims=(0, 1))
    seq = torch.cat([prompts + prompt_out, x + patch_out.reshape(-1, channels)], dim=0)
    seq = seq + _lin(_gelu(_lin(_ln(seq, layer.layernorm_after), layer.mlp.fc1)), layer.mlp.fc2)
    return seq[p:], seq[:p]


def _merge(merging, x: torch.Tensor, prompts: torch.Tensor, height: int, width: int):
    grid = x.view(height, width, -1)
    quads = torch.cat([grid[0::2, 0::2], grid[1::2, 0::2], grid[0::2, 1::2], grid[1::2, 1::2]], dim=-1)
    x = _lin(_ln(quads.reshape(-1, quads.shape[-1]), merging.norm), merging.reduction)
    prompts = _lin(_ln(prompts.repeat(1, 4), merging.norm), merging.reduction)
    return x, prompts


def block_prompts(
    prompt_embeddings: torch.Tensor, deep_prompt_embeddings: Optional[Sequence[torch.Tensor]], depths: Sequence[int]
) -> Optional[list[torch.Tensor]]:
    """Each block's own (p, C_s) prompts in the official deep layout, in block order (None for shallow)."""
    if deep_prompt_embeddings is None:
        return None
    rows = [prompt_embeddings[0]] + list(deep_prompt_embeddings[0])
    for stage in range(1, len(depths)):
        rows += list(deep_prompt_embeddings[stage])
    assert len(rows) == sum(depths), "deep_prompt_embeddings_0 has depths[0]-1 rows, stage s has depths[s]"
    return rows


def official_swin_pooled(
    model,
    pixel_values: torch.Tensor,
    prompt_embeddings: torch.Tensor,
    deep_prompt_embeddings: Optional[Sequence[torch.Tensor]] = None,
    kv_prompts: Optional[Sequence[Optional[tuple[torch.Tensor, torch.Tensor]]]] = None,
    transform: Optional[Transform] = None,
) -> torch.Tensor:
    """(B, C_last) pooled features of the official prompted Swin, each sample computed alone, in float64.

    ``prompt_embeddings`` (1, p, C0) is the official shallow tensor (the first block's in deep mode);
    ``deep_prompt_embeddings`` the official per-stage deep tensors, or None for shallow; ``kv_prompts`` one
    ``(key, value)`` pair of (T, C_s) per block, or None entries / None for no E2VPT prompts; ``transform`` maps
    a (p, C) prompt tensor at every use (VFPT's Fourier transform, E2VPT's gates).
    """
    swin = model.swin
    config = swin.config
    transform = transform or (lambda t: t.double())
    per_block = block_prompts(prompt_embeddings, deep_prompt_embeddings, config.depths)
    conv = swin.embeddings.patch_embeddings.projection
    pooled = []
    for sample in pixel_values.double():
        x = F.conv2d(sample[None], conv.weight.detach().double(), conv.bias.detach().double(), stride=conv.stride)
        height, width = x.shape[-2:]
        x = _ln(x.flatten(2)[0].T, swin.embeddings.norm)
        if swin.embeddings.position_embeddings is not None:
            x = x + swin.embeddings.position_embeddings.detach().double()[0]
        prompts = transform(prompt_embeddings[0]).double()
        index = 0
        for stage, stage_module in enumerate(swin.encoder.layers):
            for block, layer in enumerate(stage_module.blocks):
                if per_block is not None:
                    prompts = transform(per_block[index]).double()
                kv = None if kv_prompts is None else kv_prompts[index]
                x, prompts = _block(layer, config, stage, block, x, prompts, height, width, kv)
                index += 1
            if stage_module.downsample is not None:
                x, prompts = _merge(stage_module.downsample, x, prompts, height, width)
                height, width = height // 2, width // 2
        pooled.append(_ln(torch.cat([prompts, x], dim=0), swin.layernorm).mean(0))
    return torch.stack(pooled)


def official_swin_logits(model, pixel_values: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """(B, classes) logits: the classifier on :func:`official_swin_pooled`."""
    return _lin(official_swin_pooled(model, pixel_values, *args, **kwargs), model.classifier)
