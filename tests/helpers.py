"""Tiny models built from configs (no download) shared by the test suite."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

import vpt_peft  # noqa: F401  (registers the methods)

SIZES = dict(
    hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37, image_size=32, patch_size=8
)
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
TINY = {**SIZES, **NO_DROPOUT}

MODEL_CLASSES = {
    "vit": ViTForImageClassification,
    "vit-model": ViTModel,
    "deit": DeiTForImageClassification,
    "deit-teacher": DeiTForImageClassificationWithTeacher,
}


def tiny_vit(cls=ViTForImageClassification, attn="sdpa", seed=0, num_labels=3, **overrides):
    torch.manual_seed(seed)
    config_cls = DeiTConfig if "DeiT" in cls.__name__ else ViTConfig
    config = config_cls(**{**TINY, **overrides}, num_labels=num_labels)
    model = cls(config)
    model.set_attn_implementation(attn)
    return model.eval()


def assert_equal_to_rounding(got: torch.Tensor, want: torch.Tensor, atol: float = 1e-5) -> None:
    """The same math computed by different kernels agrees to float rounding, not bit for bit.

    A row's bits depend on where it sits in a batch, on the batch's size and composition and on the CPU's
    vector ISA (oneDNN's AVX-512/AMX kernels round rows differently by position). Use ``torch.equal`` only
    when both sides run the same ops on the same shapes; everywhere else this. A real bug (wrong prompts,
    a mask that lets padding in, another task's head) moves values by orders of magnitude more than ``atol``.
    """
    torch.testing.assert_close(got, want, rtol=1e-5, atol=atol)


def enable_checkpointing(model, reentrant: bool) -> None:
    """Turn on activation checkpointing by the installed transformers' current name (5.23 renamed it)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})


def sidecar(model):
    """The prompt adapter layer attached to a peft model's backbone."""
    return next(m for m in model.modules() if hasattr(m, "banks"))


def prompt_param(model):
    return next(p for n, p in model.named_parameters() if n.endswith("prompt_embeddings"))


def saved_sweep_vit(folder: Path) -> Path:
    """A tiny ViT for 16-pixel images saved as a sweep's base model (hidden 32: E2VPT's 16 segments divide it)."""
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=16, patch_size=8
    )
    ViTForImageClassification(config).save_pretrained(folder)
    return folder
