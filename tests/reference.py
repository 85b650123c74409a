"""The one independent reference forward of the ViT-like families, written from the weights with plain tensor math.

No HF layer is called after the embeddings: every block is re-computed from its parameters in float64, so a
comparison at 1e-5 measures the library, not rounding. A :class:`Layout` says where a family keeps its norms,
attention, layer scales and which activation its MLP uses; tests/backbone_cases.py gives each backbone row its
layout, and tests/clip_reference.py (DPT's reference) builds on :func:`block` for both CLIP towers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import nn


def linear(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    w = module.weight.detach().double()
    return x @ w.T + (0 if module.bias is None else module.bias.detach().double())


def layer_norm(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + module.eps) * module.weight.detach().double() + module.bias.detach().double()


def rms_norm(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    return x / torch.sqrt((x**2).mean(-1, keepdim=True) + module.variance_epsilon) * module.weight.detach().double()


def silu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


@dataclass(frozen=True)
class Layout:
    """How a ViT-like block computes (attribute paths inside a block / the backbone)."""

    norm1: str
    attention: str
    out_proj: str
    norm2: str
    activation: Callable[[torch.Tensor], torch.Tensor]
    scale1: Optional[str] = None
    scale2: Optional[str] = None
    pre_norm: Optional[str] = None  # applied to the embeddings before the first block (CLIP)
    final_norm: Optional[str] = None  # applied to every token after the last block
    norm: Callable[[torch.Tensor, nn.Module], torch.Tensor] = layer_norm
    mlp: tuple[str, ...] = ("mlp.fc1", "mlp.fc2")  # (in, out), or (gate, in, out): out(act(gate x) * in x)
    rope: bool = False  # the backbone's rope_embeddings rotate the queries and keys of the last patch tokens


VIT_LAYOUT = Layout("layernorm_before", "attention", "o_proj", "layernorm_after", gelu, final_norm="layernorm")
DINO_LAYOUT = Layout(
    "norm1",
    "attention",
    "o_proj",
    "norm2",
    gelu,
    "layer_scale1.lambda1",
    "layer_scale2.lambda1",
    final_norm="layernorm",
)
CLIP_LAYOUT = Layout("layer_norm1", "self_attn", "out_proj", "layer_norm2", quick_gelu, pre_norm="pre_layrnorm")
SIGLIP_LAYOUT = Layout("layer_norm1", "self_attn", "out_proj", "layer_norm2", gelu_tanh, final_norm="post_layernorm")
DINOV3_LAYOUT = replace(DINO_LAYOUT, final_norm="norm", mlp=("mlp.up_proj", "mlp.down_proj"), rope=True)
AIMV2_LAYOUT = Layout(
    "rms_norm1",
    "attention",
    "out_proj",
    "rms_norm2",
    silu,
    final_norm="rms_norm",
    norm=rms_norm,
    mlp=("ffn.gate_proj", "ffn.up_proj", "ffn.down_proj"),
)


def rotate_patches(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the last ``cos.shape[-2]`` tokens of ``t`` (B, heads, S, hd); the tokens before them stay as they are.

    Each half of the channels is rotated against the other: ``x * cos + [-x2, x1] * sin``.
    """
    patches = cos.shape[-2]
    head, tail = t[..., :-patches, :], t[..., -patches:, :]
    half = tail.shape[-1] // 2
    rotated = torch.cat([-tail[..., half:], tail[..., :half]], dim=-1)
    return torch.cat([head, tail * cos.double() + rotated * sin.double()], dim=-2)


def projections(attn: nn.Module, out_proj: str) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    """The (query, key, value, output) linear layers of an attention module, in the layout it has.

    transformers 5.18 gave Dinov2 ``q_proj``/``k_proj``/``v_proj``/``o_proj`` on the attention module; before,
    they sat at ``attention.query``/``key``/``value`` and ``output.dense``. Read from the module, like the library.
    """
    if hasattr(attn, "k_proj"):
        return attn.q_proj, attn.k_proj, attn.v_proj, getattr(attn, out_proj)
    inner = attn.attention
    return inner.query, inner.key, inner.value, attn.output.dense


def attention(
    attn: nn.Module,
    h: torch.Tensor,
    num_heads: int,
    out_proj: str,
    extra_kv: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    causal: bool = False,
    key_mask: Optional[torch.Tensor] = None,
    rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """Multi-head attention over ``h`` (B, S, d); ``extra_kv`` = unprojected (k, v) of shape (1 or B, T, d) appended
    to the keys/values (E2VPT); ``causal`` masks future positions (CLIP's text tower); ``key_mask`` (B, S) bool hides
    the keys where it is False (padding) from every query; ``rope`` = (cos, sin) rotates the last patch tokens."""
    B, S, d = h.shape
    hd = d // num_heads

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], -1, num_heads, hd).transpose(1, 2).expand(B, -1, -1, -1)

    q_proj, k_proj, v_proj, o_proj = projections(attn, out_proj)
    q, k, v = heads(linear(h, q_proj)), heads(linear(h, k_proj)), heads(linear(h, v_proj))
    if rope is not None:
        q, k = rotate_patches(q, *rope), rotate_patches(k, *rope)
    if extra_kv is not None:
        k = torch.cat([k, heads(extra_kv[0].double())], dim=2)
        v = torch.cat([v, heads(extra_kv[1].double())], dim=2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    if causal:
        scores = scores.masked_fill(torch.ones(S, k.shape[2], dtype=torch.bool).triu(1), float("-inf"))
    if key_mask is not None:
        hidden = torch.zeros(B, k.shape[2], dtype=torch.bool)
        hidden[:, :S] = ~key_mask
        scores = scores.masked_fill(hidden[:, None, None, :], float("-inf"))
    out = scores.softmax(-1) @ v
    return linear(out.transpose(1, 2).reshape(B, S, d), o_proj)


def mlp(layer: nn.Module, x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """The block's MLP: ``out(act(in x))``, or gated ``out(act(gate x) * in x)``."""
    *gate, up, down = (layer.get_submodule(name) for name in layout.mlp)
    hidden = layout.activation(linear(x, gate[0])) * linear(x, up) if gate else layout.activation(linear(x, up))
    return linear(hidden, down)


def block(
    layer: nn.Module,
    x: torch.Tensor,
    layout: Layout,
    num_heads: int,
    extra_kv: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    causal: bool = False,
    key_mask: Optional[torch.Tensor] = None,
    rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """One pre-norm transformer block: x + [scale1] attn(norm1 x), then + [scale2] mlp(norm2 x)."""
    normed = layout.norm(x, layer.get_submodule(layout.norm1))
    attn = layer.get_submodule(layout.attention)
    a = attention(attn, normed, num_heads, layout.out_proj, extra_kv, causal, key_mask, rope)
    x = x + (a * layer.get_parameter(layout.scale1).double() if layout.scale1 else a)
    m = mlp(layer, layout.norm(x, layer.get_submodule(layout.norm2)), layout)
    return x + (m * layer.get_parameter(layout.scale2).double() if layout.scale2 else m)


def embedded(backbone: nn.Module, inputs: dict) -> torch.Tensor:
    """The HF embeddings' output for the forward's keyword ``inputs`` (the images, SigLIP2's patch grid sizes,
    ViT-MAE's noise): prompting starts after them."""
    names = ("pixel_values", "spatial_shapes", "noise")
    out = backbone.embeddings(**{k: v for k, v in inputs.items() if k in names})
    return out[0] if isinstance(out, tuple) else out


def reference_sequence(
    backbone: nn.Module,
    layout: Layout,
    pixels: torch.Tensor | dict,
    prompts: dict[int, torch.Tensor],
    num_special: int,
    kv: Optional[dict[int, tuple[torch.Tensor, torch.Tensor]]] = None,
) -> torch.Tensor:
    """The backbone's final token sequence with prompts in the sequence, written out block by block.

    Prompting starts after the HF embeddings (prompts never get position embeddings). ``pixels``: the images, or
    the forward's keyword arguments (``pixel_attention_mask`` hides padding patches as keys from every token,
    prompts included). ``prompts``: ``{layer: (p, d)}``, the first listed layer inserts its prompts after the
    ``num_special`` tokens, later ones replace them; ``kv``: ``{layer: ((T, d) key, (T, d) value)}`` unprojected
    extra keys/values for that layer's attention (E2VPT). Prompt positions are dropped at the end. The layers are
    the backbone's blocks in order. With ``layout.rope`` the patch tokens (the last ones) are rotated by the
    backbone's own cos/sin; the tokens before them, prompts included, never are.
    """
    from vpt_peft import find_backbone

    inputs = pixels if isinstance(pixels, dict) else {"pixel_values": pixels}
    n, kv = num_special, kv or {}
    x = embedded(backbone, inputs).double()
    padding = inputs.get("pixel_attention_mask")
    rope = backbone.rope_embeddings(inputs["pixel_values"]) if layout.rope else None
    if layout.pre_norm:
        x = layout.norm(x, backbone.get_submodule(layout.pre_norm))
    inserted = 0
    for i, layer in enumerate(find_backbone(backbone).layers):
        if i in prompts:
            P = prompts[i].double().unsqueeze(0).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :n], P, x[:, n + inserted :]], dim=1)
            inserted = P.shape[1]
        key_mask = None
        if padding is not None:
            real = padding.bool()
            key_mask = torch.cat([real[:, :n], torch.ones(x.shape[0], inserted, dtype=torch.bool), real[:, n:]], 1)
        extra = tuple(t.double().unsqueeze(0) for t in kv[i]) if i in kv else None
        x = block(layer, x, layout, backbone.config.num_attention_heads, extra, key_mask=key_mask, rope=rope)
    if layout.final_norm:
        x = layout.norm(x, backbone.get_submodule(layout.final_norm))
    return torch.cat([x[:, :n], x[:, n + inserted :]], dim=1)


def classifier_logits(model: nn.Module, sequence: torch.Tensor) -> torch.Tensor:
    """A ViT classifier's logits from a reference sequence: its head on the CLS token, in float64."""
    return linear(sequence[:, 0], model.classifier)


def vit_sequence(
    model: nn.Module,
    pixels: torch.Tensor,
    prompts: dict[int, torch.Tensor],
    kv: Optional[dict[int, tuple[torch.Tensor, torch.Tensor]]] = None,
) -> torch.Tensor:
    """:func:`reference_sequence` of a tiny ViT/DeiT model (a classifier or the bare backbone)."""
    backbone = getattr(model, "vit", None) or getattr(model, "deit", None) or model
    num_special = 2 if backbone.config.model_type == "deit" else 1
    return reference_sequence(backbone, VIT_LAYOUT, pixels, prompts, num_special, kv)
