"""Task heads: each adapter's own copy of the model's head (peft's ``ModulesToSaveWrapper``), how it is sized
and initialised, and how a mixed-task batch reads several of them.

Which modules are heads comes from the backbone table (``BackboneSpec.heads``); these functions only act
on the wrappers peft built around them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional

import torch
from peft.utils.other import ModulesToSaveWrapper
from torch import nn

BASE_ADAPTER = "__base__"
"""The adapter name that runs the frozen base model (no prompts, the original head) in a mixed batch."""

VPT_HEAD_BIAS = -math.log((1 - 0.01) / 0.01)
"""The official VPT head bias: a 1 % prior probability per class."""


def adapter_heads(model: nn.Module, adapter_name: str) -> Iterator[tuple[ModulesToSaveWrapper, nn.Module]]:
    """(wrapper, the adapter's copy of the head) for every head wrapper of ``model`` that holds the adapter."""
    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
            yield module, module.modules_to_save[adapter_name]


def resize_heads(model: nn.Module, adapter_name: str, num_labels: int) -> None:
    """Give the adapter its own head of ``num_labels`` classes (a new Linear, the default init)."""
    for wrapper, head in list(adapter_heads(model, adapter_name)):
        if not isinstance(head, nn.Linear):
            raise ValueError(f"num_labels needs a Linear head, {type(head).__name__} is not one.")
        if head.out_features == num_labels:
            continue
        new = nn.Linear(
            head.in_features, num_labels, bias=head.bias is not None, device=head.weight.device, dtype=head.weight.dtype
        )
        new.requires_grad_(head.weight.requires_grad)
        wrapper.modules_to_save[adapter_name] = new


@torch.no_grad()
def init_heads_like_vpt(model: nn.Module, adapter_name: str) -> None:
    """The official VPT head init: Kaiming-normal fan_out weights, bias -log(99) (a 1% prior)."""
    for _, head in adapter_heads(model, adapter_name):
        for linear in head.modules():
            if isinstance(linear, nn.Linear):
                nn.init.kaiming_normal_(linear.weight, a=0, mode="fan_out")
                if linear.bias is not None:
                    linear.bias.fill_(VPT_HEAD_BIAS)


@contextmanager
def config_num_labels(config: Any, sizes: set[int]) -> Iterator[None]:
    """While adapters with their own head size run, the HF config says that size (the model's loss reads it).

    Only when the running adapters agree on one size (``sizes``); otherwise the config is left alone.
    """
    if config is None or len(sizes) != 1 or sizes == {config.num_labels}:
        yield
        return
    saved = (config.id2label, config.label2id)
    config.num_labels = next(iter(sizes))
    try:
        yield
    finally:
        config.id2label, config.label2id = saved


def head_width(wrapper: ModulesToSaveWrapper, name: str) -> Optional[int]:
    """Classes of adapter ``name``'s head (``BASE_ADAPTER``: the original head); None if it is not a Linear."""
    module = wrapper.original_module if name == BASE_ADAPTER else wrapper.modules_to_save[name]
    return getattr(module, "out_features", None)


def pad_logits(output: torch.Tensor, width: int) -> torch.Tensor:
    """A narrower head's logits padded with ``-inf`` to the batch's widest head (``argmax``/``softmax`` unchanged)."""
    return nn.functional.pad(output, (0, width - output.shape[-1]), value=float("-inf"))


def split_logits(logits: torch.Tensor, adapter_names: Sequence[str], model: nn.Module) -> list[torch.Tensor]:
    """Each sample's logits at its task's size: row ``i`` of a mixed batch cut to its head's classes.

    A mixed batch whose tasks have heads of different sizes returns logits padded to the widest head with
    ``-inf`` (so ``argmax``/``softmax`` need no cutting); this undoes the padding.
    """
    wrapper = next(m for m in model.modules() if isinstance(m, ModulesToSaveWrapper))
    return [row[: head_width(wrapper, name)] for row, name in zip(logits, adapter_names)]
