"""A tiny random CLIPModel and a tiny CLIPTokenizer written into a temporary folder (no download)."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Optional

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

import vpt_peft  # noqa: F401  (registers the methods)

WORDS = ["a", "photo", "of", "x", "cat", "dog", "fish", "bird", "cow", "red", "fox", "owl", "small"]
CLASSES = ["cat", "dog", "fish", "bird", "red_fox", "owl"]


def tiny_tokenizer(folder) -> CLIPTokenizer:
    """Whole-word BPE: each word of WORDS (and every letter) is one token."""
    vocab: dict[str, int] = {}
    for c in "abcdefghijklmnopqrstuvwxyz.":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges = ["#version: 0.2"]
    for word in WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merge = f"{parts[0]} {parts[1]}"
            if merge not in merges:
                merges.append(merge)
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.setdefault(parts[0], len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


@functools.cache
def shared_tokenizer() -> CLIPTokenizer:
    """One tiny tokenizer for the session (the test matrix's dual-encoder rows); its files are read at construction."""
    with tempfile.TemporaryDirectory() as folder:
        return tiny_tokenizer(Path(folder))


def tiny_clip(
    tokenizer, attn="sdpa", seed=0, layers=3, vision: Optional[dict] = None, config_cls=CLIPConfig, model_cls=CLIPModel
) -> CLIPModel:
    """A tiny CLIPModel; ``vision`` overrides the vision tower's config (the matrix uses the other cases' sizes);
    ``config_cls``/``model_cls`` build another CLIP-like dual encoder of the same layout (MetaCLIP 2)."""
    torch.manual_seed(seed)
    ids = dict(
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    config = config_cls(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
            **ids,
        ),
        vision_config={
            **dict(
                hidden_size=24,
                intermediate_size=32,
                num_hidden_layers=layers,
                num_attention_heads=2,
                image_size=16,
                patch_size=8,
            ),
            **(vision or {}),
        },
        projection_dim=12,
    )
    model = model_cls(config)
    model.set_attn_implementation(attn)
    return model.eval()
