"""Independent reference forwards, written from the weights with plain tensor math (no HF layer calls).

Computed in float64 so that comparisons at 1e-5 measure the library, not rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _lin(x, module):
    w = module.weight.detach().double()
    b = None if module.bias is None else module.bias.detach().double()
    return x @ w.T + (0 if b is None else b)


def _ln(x, module):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + module.eps) * module.weight.detach().double() + module.bias.detach().double()


def _gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def vit_embed(backbone, pixel_values, num_special):
    emb = backbone.embeddings
    conv = emb.patch_embeddings.projection
    x = F.conv2d(pixel_values.double(), conv.weight.detach().double(), conv.bias.detach().double(), stride=conv.stride)
    x = x.flatten(2).transpose(1, 2)
    specials = [emb.cls_token]
    if num_special == 2:
        specials.append(emb.distillation_token)
    specials = [t.detach().double().expand(x.shape[0], -1, -1) for t in specials]
    x = torch.cat([*specials, x], dim=1)
    return x + emb.position_embeddings.detach().double()


def projections(layer_attn, out_proj="o_proj"):
    """The (query, key, value, output) linear layers of an attention module, in the layout it has.

    transformers 5.18 gave Dinov2 ``q_proj``/``k_proj``/``v_proj``/``o_proj`` on the attention module; before,
    they sat at ``attention.query``/``key``/``value`` and ``output.dense``. Read from the module, like the library.
    """
    if hasattr(layer_attn, "k_proj"):
        return layer_attn.q_proj, layer_attn.k_proj, layer_attn.v_proj, getattr(layer_attn, out_proj)
    inner = layer_attn.attention
    return inner.query, inner.key, inner.value, layer_attn.output.dense


def attention(layer_attn, h, num_heads, extra_kv=None, out_proj="o_proj"):
    """Multi-head attention; ``extra_kv`` = (k, v) of shape (B, T, d) appended to the keys/values."""
    B, S, d = h.shape
    hd = d // num_heads

    def heads(t):
        return t.view(B, -1, num_heads, hd).transpose(1, 2)

    q_proj, k_proj, v_proj, o_proj = projections(layer_attn, out_proj)
    q, k, v = heads(_lin(h, q_proj)), heads(_lin(h, k_proj)), heads(_lin(h, v_proj))
    if extra_kv is not None:
        k = torch.cat([k, heads(extra_kv[0].double().expand(B, -1, -1))], dim=2)
        v = torch.cat([v, heads(extra_kv[1].double().expand(B, -1, -1))], dim=2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    out = scores.softmax(-1) @ v
    return _lin(out.transpose(1, 2).reshape(B, S, d), o_proj)


def vit_reference(model, pixel_values, prompts=None, num_special=1, kv_prompts=None, visual_as_kv=False):
    """Logits-ready final sequence of a ViT/DeiT backbone with VPT prompts.

    prompts: {layer_index: (p, d) tensor}; the first entry inserts, later ones replace; prompt positions
    are removed after the final norm. kv_prompts: {layer_index: ((T, d) key, (T, d) value)} extra keys
    and values given to that layer's attention without projection (E2VPT). visual_as_kv: feed the
    visual prompts as projected extra keys/values instead of sequence tokens (must give the same result).
    """
    backbone = getattr(model, "vit", None) or getattr(model, "deit", None) or model
    num_heads = backbone.config.num_attention_heads
    x = vit_embed(backbone, pixel_values, num_special)
    prompts = prompts or {}
    kv_prompts = kv_prompts or {}
    n, inserted = num_special, 0
    for i, layer in enumerate(backbone.layers):
        extra = None
        if i in prompts and not visual_as_kv:
            P = prompts[i].double().unsqueeze(0).expand(x.shape[0], -1, -1)
            if inserted == 0:
                x = torch.cat([x[:, :n], P, x[:, n:]], dim=1)
                inserted = P.shape[1]
            else:
                x = torch.cat([x[:, :n], P, x[:, n + inserted :]], dim=1)
        h = _ln(x, layer.layernorm_before)
        if i in prompts and visual_as_kv:
            hp = _ln(prompts[i].double().unsqueeze(0), layer.layernorm_before)
            extra = (_lin(hp, layer.attention.k_proj), _lin(hp, layer.attention.v_proj))
        if i in kv_prompts:
            kk, vv = (t.double().unsqueeze(0) for t in kv_prompts[i])
            extra = (kk, vv) if extra is None else (torch.cat([kk, extra[0]], 1), torch.cat([vv, extra[1]], 1))
        x = x + attention(layer.attention, h, num_heads, extra)
        h = _ln(x, layer.layernorm_after)
        x = x + _lin(_gelu(_lin(h, layer.mlp.fc1)), layer.mlp.fc2)
    x = _ln(x, backbone.layernorm)
    if inserted:
        x = torch.cat([x[:, :n], x[:, n + inserted :]], dim=1)
    return x


def classifier_logits(model, sequence):
    return _lin(sequence[:, 0], model.classifier)
