"""Where a prompted ViT looks: attention maps from CLS and from the prompts over the image, and the demo's plots.

Deep prompts normally take the key-value fast path, where prompts are extra keys/values and have no rows of
their own in the attention matrix. :func:`attention_maps` therefore runs the model once with eager attention
and the prompts in the token sequence (``prompt_path="sequence"`` semantics, which gives the same logits), so
every layer's weights have prompt rows and prompt columns. E2VPT's key-value prompts stay extra keys (they
never are tokens); their share of CLS's attention is counted with the prompts'.

Matplotlib is optional: install the ``demo`` extra (``pip install 'vpt-peft[demo]'``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn
from transformers import PreTrainedModel

from ..engine.backbones import find_backbone
from ..engine.sidecar import PromptAdapterLayer
from ..plotting import pyplot, save_figure


@dataclass
class AttentionMaps:
    """Per layer, head-averaged attention over the patch grid: ``cls`` (L, g, g), ``prompts`` (L, g, g) or
    None where a layer has no prompt tokens, and ``prompt_share`` (L,): CLS's attention mass on all prompts."""

    cls: torch.Tensor
    prompts: list[Optional[torch.Tensor]]
    prompt_share: torch.Tensor

    @property
    def num_layers(self) -> int:
        return self.cls.shape[0]


@contextlib.contextmanager
def _sequence_path_and_eager(model: nn.Module) -> Iterator[None]:
    """Temporarily put deep prompts in the sequence and switch every HF module to eager attention."""
    banks = [
        bank for layer in model.modules() if isinstance(layer, PromptAdapterLayer) for bank in layer.banks.values()
    ]
    configs = [m.config for m in model.modules() if isinstance(m, PreTrainedModel)]
    saved_attn = [config._attn_implementation for config in configs]
    in_sequence = not banks or find_backbone(model).spec.prompts_in_sequence
    with contextlib.ExitStack() as stack:
        for bank in banks if in_sequence else ():
            stack.enter_context(bank.running_in_sequence())
        try:
            for config in configs:
                # The prompt hooks re-route eager attention through the key-value wrapper when E2VPT needs it.
                config._attn_implementation = "eager"
            yield
        finally:
            for config, attn in zip(configs, saved_attn):
                config._attn_implementation = attn


@torch.no_grad()
def attention_maps(model: nn.Module, pixel_values: torch.Tensor) -> AttentionMaps:
    """Attention of CLS (and of the prompt tokens) over the patches, per layer, for the first image."""
    backbone = find_backbone(model)
    n = backbone.num_special_tokens
    if n == 0 or not backbone.spec.prompts_in_sequence:
        raise ValueError(
            f"Attention maps from CLS need a global-attention backbone with a CLS token; "
            f"{backbone.model_type} has none."
        )
    config = backbone.module.config
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    patches = (pixel_values.shape[-2] // patch) * (pixel_values.shape[-1] // patch)
    grid = math.isqrt(patches)
    was_training = model.training
    model.eval()
    with _sequence_path_and_eager(model):
        outputs = model(pixel_values=pixel_values[:1], output_attentions=True)
    model.train(was_training)
    cls_maps, prompt_maps, shares = [], [], []
    for weights in outputs.attentions:
        weights = weights[0].float().mean(0)  # (S_q, S_k), averaged over heads
        queries = weights.shape[0]
        prompts = queries - n - patches  # tokens in the sequence that are neither special nor patches
        patch_cols = slice(n + prompts, n + prompts + patches)
        cls_maps.append(weights[0, patch_cols].reshape(grid, grid))
        prompt_maps.append(weights[n : n + prompts, patch_cols].mean(0).reshape(grid, grid) if prompts else None)
        shares.append(weights[0, n : n + prompts].sum() + weights[0, queries:].sum())
    return AttentionMaps(torch.stack(cls_maps), prompt_maps, torch.stack(shares))


def save_attention_maps(
    model: nn.Module, pixel_values: torch.Tensor, path: Union[str, Path], title: str = ""
) -> AttentionMaps:
    """Write a PNG: the image, then per layer CLS's map (top row) and the prompts' mean map (bottom row)."""
    plt = pyplot()
    maps = attention_maps(model, pixel_values)
    has_prompts = any(m is not None for m in maps.prompts)
    rows, cols = (2 if has_prompts else 1), maps.num_layers + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.9 * rows), squeeze=False)
    image = pixel_values[0].float()
    image = ((image - image.min()) / (image.max() - image.min() + 1e-8)).permute(1, 2, 0).numpy()
    for row in range(rows):
        axes[row][0].imshow(image)
        axes[row][0].set_title("image" if row == 0 else "", fontsize=8)
    for layer in range(maps.num_layers):
        axes[0][layer + 1].imshow(maps.cls[layer].numpy(), cmap="inferno")
        axes[0][layer + 1].set_title(f"L{layer} CLS ({100 * maps.prompt_share[layer]:.0f}% on prompts)", fontsize=7)
        if has_prompts:
            prompt_map = maps.prompts[layer]
            if prompt_map is not None:
                axes[1][layer + 1].imshow(prompt_map.numpy(), cmap="viridis")
            axes[1][layer + 1].set_title(f"L{layer} prompts" if prompt_map is not None else "", fontsize=7)
    for ax in fig.axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return maps


def plot_accuracy_vs_params(rows: Sequence[dict], path: Union[str, Path]) -> None:
    """One point per (method, task): test accuracy against the trainable share (log scale), one colour per method."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in dict.fromkeys(row["method"] for row in rows):
        mine = [row for row in rows if row["method"] == method]
        ax.scatter([r["trainable_pct"] for r in mine], [r["accuracy"] for r in mine], label=method, s=28)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (% of the model, log)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_training_curves(
    curves: dict[str, dict[str, list[float]]], path: Union[str, Path], ylabel: str = "test accuracy"
) -> None:
    """Per task, one value per epoch (``ylabel``) for every method (``curves[task][method]``)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(3.4 * len(curves), 3.0), squeeze=False)
    for ax, (task, methods) in zip(axes[0], curves.items()):
        for method, accuracies in methods.items():
            ax.plot(range(1, len(accuracies) + 1), accuracies, label=method)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
