"""The text side of DPT: CoOp context vectors spliced into CLIP's token embeddings.

Each class prompt is tokenized once as ``"X X ... X {classname}."`` (or ``"{ctx_init} {classname}."``);
a forward hook on the text tower's ``token_embedding`` overwrites the placeholder positions 1..n_ctx
with the learnable context while the class prompts are being encoded, so positional embeddings, the
causal mask and EOS pooling (which reads the token ids) stay CLIP's own. The token ids are buffers of
the adapter, so a saved adapter reloads without the tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ...engine.config import PROMPT_INIT_STD
from ...engine.sidecar import SidecarLayer
from ...engine.tokens import replace_prompts
from ...engine.tuner import AdapterMismatchError
from .config import DualPromptConfig

PLACEHOLDER = "X"


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text)["input_ids"])


def tokenize_class_prompts(tokenizer: Any, config: DualPromptConfig, max_length: int) -> dict[str, torch.Tensor]:
    """Token ids of the learnable class prompts, the zero-shot template prompts and the ctx_init phrase.

    Also fixes ``config.text_n_ctx`` (the ctx_init phrase's token count) and ``config.text_length`` (the
    longest prompt: padding beyond it cannot change the EOS feature under the causal mask).
    """
    names = [name.replace("_", " ") for name in config.class_names]
    templates = [config.zero_shot_template.format(name) for name in names]
    init_ids: list[int] = []
    if config.ctx_init:
        init_ids = _ids(tokenizer, config.ctx_init)[1:-1]  # without BOS/EOS
        config.text_n_ctx = len(init_ids)
    if config.text_n_ctx == 0:
        prompts = templates
    else:
        prefix = config.ctx_init or " ".join([PLACEHOLDER] * config.text_n_ctx)
        prompts = [f"{prefix} {name}." for name in names]
    encoded = [_ids(tokenizer, text) for text in prompts + templates]
    length = max(len(ids) for ids in encoded)
    if length > max_length:
        raise ValueError(
            f"A class prompt needs {length} tokens but the text tower takes at most {max_length}; "
            "shorten text_n_ctx, ctx_init, the template or the class names."
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    table = torch.tensor([ids + [pad] * (length - len(ids)) for ids in encoded])
    class_ids, template_ids = table[: len(names)], table[len(names) :]
    if config.text_n_ctx:
        expected = init_ids or _ids(tokenizer, PLACEHOLDER)[1:-1] * config.text_n_ctx
        if (
            len(expected) != config.text_n_ctx
            or not (class_ids[:, 1 : 1 + config.text_n_ctx] == torch.tensor(expected)).all()
        ):
            raise ValueError(
                "The tokenizer did not give the context exactly text_n_ctx tokens right after BOS; "
                "use a CLIPTokenizer (or a ctx_init phrase it tokenizes independently of the class name)."
            )
    config.text_length = length
    return {
        "class_token_ids": class_ids,
        "template_token_ids": template_ids,
        "init_ids": torch.tensor(init_ids, dtype=torch.long),
    }


class TextPromptBank(nn.Module):
    """One adapter's text side: ``ctx`` (n_ctx, d), or (C, n_ctx, d) with ``csc``, and the prompts' token ids."""

    def __init__(self, config: DualPromptConfig, token_embedding: nn.Embedding, tokens: dict | None) -> None:
        super().__init__()
        shape = (config.num_classes, config.text_length)
        self.register_buffer("class_token_ids", torch.zeros(shape, dtype=torch.long))
        self.register_buffer("template_token_ids", torch.zeros(shape, dtype=torch.long))
        self.ctx = None
        if config.text_n_ctx:
            width = token_embedding.embedding_dim
            ctx_shape = (config.num_classes, config.text_n_ctx, width) if config.csc else (config.text_n_ctx, width)
            self.ctx = nn.Parameter(torch.empty(ctx_shape, device=token_embedding.weight.device))
        self.template_cache: torch.Tensor | None = None
        self.register_load_state_dict_pre_hook(self._forget_template_cache)
        if tokens is not None:
            self.reset(tokens, token_embedding)

    @torch.no_grad()
    def reset(self, tokens: dict, token_embedding: nn.Embedding) -> None:
        device = token_embedding.weight.device
        if device.type == "meta":
            return
        self.class_token_ids.copy_(tokens["class_token_ids"].to(device))
        self.template_token_ids.copy_(tokens["template_token_ids"].to(device))
        if self.ctx is None or self.ctx.is_meta:
            return
        if tokens["init_ids"].numel():
            self.ctx.copy_(token_embedding(tokens["init_ids"].to(device)).expand_as(self.ctx))
        else:
            self.ctx.normal_(0.0, PROMPT_INIT_STD)

    def _forget_template_cache(self, *args) -> None:
        self.template_cache = None

    def check_incoming(self, state: dict[str, torch.Tensor]) -> None:
        """Called with this bank's tensors before an adapter file is loaded: a changed class list is named as such."""
        loaded = state.get("class_token_ids")
        if loaded is not None and loaded.shape != self.class_token_ids.shape:
            raise AdapterMismatchError(
                f"The adapter was trained for {loaded.shape[0]} classes (prompts of {loaded.shape[1]} tokens) but the "
                f"config lists {self.class_token_ids.shape[0]} classes ({self.class_token_ids.shape[1]} tokens). DPT "
                "adapters keep their class list: load with the saved adapter_config.json."
            )

    def context(self) -> torch.Tensor:
        """``(1 or C, n_ctx, d)``: shared (generic) context broadcasts over the classes."""
        return self.ctx if self.ctx.dim() == 3 else self.ctx.unsqueeze(0)


class DualPromptTextLayer(SidecarLayer):
    """Sidecar on ``text_model.embeddings``: owns each adapter's :class:`TextPromptBank` and the splice hook."""

    adapter_layer_names: tuple[str, ...] = ("dpt_text",)
    parameter_role = "text_prompt"

    def __init__(self) -> None:
        super().__init__()
        self._splicing: TextPromptBank | None = None

    def update_layer(
        self, adapter_name: str, config: DualPromptConfig, token_embedding: nn.Embedding, tokens: dict | None
    ) -> None:
        self.add_bank(adapter_name, TextPromptBank(config, token_embedding, tokens), token_embedding)

    @contextmanager
    def splicing(self, bank: TextPromptBank) -> Iterator[None]:
        """Only the class prompts get the context; any other text the model encodes stays CLIP's."""
        self._splicing = bank
        try:
            yield
        finally:
            self._splicing = None

    def token_embedding_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        bank = self._splicing
        if bank is None:
            return None
        return replace_prompts(output, bank.context().to(output.dtype), at=1)  # after BOS

    def class_features(self, clip: nn.Module, bank: TextPromptBank) -> torch.Tensor:
        """``(C, projection_dim)`` un-normalized features of the learnable class prompts (one text pass)."""
        if bank.ctx is None:
            return self.template_features(clip, bank)
        with self.splicing(bank):
            pooled = clip.text_model(input_ids=bank.class_token_ids).pooler_output
        return clip.text_projection(pooled)

    @torch.no_grad()
    def template_features(self, clip: nn.Module, bank: TextPromptBank) -> torch.Tensor:
        """Frozen zero-shot features of the hand-crafted template, computed on first use and cached."""
        if bank.template_cache is None or bank.template_cache.device != bank.template_token_ids.device:
            pooled = clip.text_model(input_ids=bank.template_token_ids).pooler_output
            bank.template_cache = clip.text_projection(pooled)
        return bank.template_cache
