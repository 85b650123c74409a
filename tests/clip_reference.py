"""An independent DPT forward for the tiny CLIP, written from the weights in float64 (no HF layer calls).

Follows the reference implementation's layout, not the library's: prompts are appended *after* the
patches and stripped after each block; CAVPT is written out as single-head cross-attention. The blocks of both
towers are tests/reference.py's (one reference per family).
"""

from __future__ import annotations

import math

import torch

from .reference import CLIP_LAYOUT, block, layer_norm, linear


def _w(t):
    return t.detach().double()


def text_features(clip, ids, ctx=None):
    """(C, e): CLIP text features with positions 1..n_ctx of the token embeddings replaced by ``ctx``."""
    tm = clip.text_model
    x = _w(tm.embeddings.token_embedding.weight)[ids]
    if ctx is not None:
        ctx = _w(ctx).expand(ids.shape[0], -1, -1)  # (n, d) generic or (C, n, d) class-specific
        x = torch.cat([x[:, :1], ctx, x[:, 1 + ctx.shape[1] :]], dim=1)
    x = x + _w(tm.embeddings.position_embedding.weight)[: ids.shape[1]]
    for layer in tm.encoder.layers:
        x = block(layer, x, CLIP_LAYOUT, clip.config.text_config.num_attention_heads, causal=True)
    x = layer_norm(x, tm.final_layer_norm)
    eos = (ids == clip.config.text_config.eos_token_id).int().argmax(-1)
    return linear(x[torch.arange(ids.shape[0]), eos], clip.text_projection)


def cavpt(gen, tokens, queries):
    """(prompts (B, K, d), aux (B, K, C)) of the written-out CAVPT generator."""
    q0 = linear(queries, gen.meta_net)
    kv = torch.cat([tokens, _w(gen.extra_kv).expand(tokens.shape[0], -1, -1)], dim=1)
    a = (linear(q0, gen.w_q) @ linear(kv, gen.w_k).transpose(1, 2) / math.sqrt(gen.w_q.out_features)).softmax(-1)
    o = linear(a @ kv, gen.w_o)
    return layer_norm(o + q0, gen.norm_out), linear(layer_norm(o, gen.norm_aux), gen.classifier)


def image_features(clip, pixels, prompts=None, generators=None, queries=None):
    """(B, e) image features; prompts {layer: (p, d)}, generators {layer: CAVPT module} (queries (B, K, e))."""
    vm = clip.vision_model
    emb = vm.embeddings
    conv = emb.patch_embedding
    x = torch.nn.functional.conv2d(pixels.double(), _w(conv.weight), stride=conv.stride).flatten(2).transpose(1, 2)
    x = torch.cat([_w(emb.class_embedding).expand(x.shape[0], 1, -1), x], dim=1) + _w(emb.position_embedding.weight)
    x = layer_norm(x, vm.pre_layrnorm)
    prompts, generators, aux = prompts or {}, generators or {}, []
    for i, layer in enumerate(vm.encoder.layers):
        extra = None
        if i in generators:
            extra, logits = cavpt(generators[i], x, queries)
            aux.append(logits)
        elif i in prompts:
            extra = _w(prompts[i]).expand(x.shape[0], -1, -1)
        n = x.shape[1]
        if extra is not None:
            x = torch.cat([x, extra], dim=1)  # appended after the patches, as the reference
        x = block(layer, x, CLIP_LAYOUT, clip.config.vision_config.num_attention_heads)[:, :n]  # strip
    return linear(layer_norm(x[:, 0], vm.post_layernorm), clip.visual_projection), aux


def cosine_logits(clip, image, text):
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    return _w(clip.logit_scale).exp() * image @ text.T
