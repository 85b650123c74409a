"""The DPT tuner: attaches the text and vision sidecars to a ``CLIPModel`` and orchestrates each call.

``PeftModel.forward`` calls ``CLIPModel.forward``, which runs vision before text, but CAVPT needs the
class text features inside the vision pass. A forward pre-hook on the ``CLIPModel`` therefore runs the
text tower once on all class prompts (and, when needed, the frozen unprompted vision pass for top-K
selection and the warm-up), hands the top-K text features to the vision sidecar, and lets
``CLIPModel.forward`` run the prompted vision pass with a one-token dummy text input instead of
re-encoding the classes. A forward hook then builds :class:`~.loss.DualPromptOutput` (logits, loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...engine.backbones import Backbone
from ...engine.compat import checkpointing_enable_call
from ...engine.sidecar import SIDECAR_NAME, SidecarLayer
from ...engine.tuner import PromptTuner
from .config import DualPromptConfig
from .layer import DualPromptVisionLayer
from .loss import DualPromptOutput, dual_prompt_loss, in_warmup
from .text import DualPromptTextLayer, tokenize_class_prompts

TEXT_EMBEDDINGS = "text_model.embeddings"
DUAL_ENCODER_PARTS = ("text_model", "vision_model", "text_projection", "visual_projection", "logit_scale")
"""What DPT needs of a CLIP-like model (its structure, not its class): two towers, two projections, a scale."""


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(p=2, dim=-1, keepdim=True)  # as CLIPModel.forward (no epsilon)


def _load_tokenizer(config: DualPromptConfig) -> Any:
    if config.tokenizer is not None:
        return config.tokenizer
    name = config.tokenizer_name_or_path or config.base_model_name_or_path
    if not name:
        raise ValueError(
            "DualPromptConfig needs a CLIPTokenizer to tokenize the class prompts once: pass "
            "DualPromptConfig(class_names=..., tokenizer=CLIPTokenizer.from_pretrained(...)) or tokenizer_name_or_path "
            "(the base model was not loaded with from_pretrained, so its name cannot be used)."
        )
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(name)


def _check_checkpointing(vision_layers: nn.ModuleList) -> None:
    """CAVPT queries come from outside the checkpointed blocks, which reentrant checkpointing cannot differentiate."""
    for layer in vision_layers:
        func = getattr(layer, "_gradient_checkpointing_func", None)
        if layer.training and getattr(layer, "gradient_checkpointing", False) and func is not None:
            if getattr(func, "keywords", {}).get("use_reentrant", True):
                raise ValueError(
                    f"CAVPT needs non-reentrant gradient checkpointing: {checkpointing_enable_call(False)} "
                    "(or use_cavpt=False)."
                )


@dataclass
class _CallState:
    """What the pre-hook computed for the call in flight."""

    labels: torch.Tensor | None
    text_features: torch.Tensor
    coop_logits: torch.Tensor | None = None
    template_features: torch.Tensor | None = None
    top_k: torch.Tensor | None = None


class DualPromptModel(PromptTuner):
    """peft tuner for :class:`~vpt_peft.DualPromptConfig` on a CLIP-like dual encoder (``transformers.CLIPModel``)."""

    prefix = "dpt_"
    tuner_layer_cls = DualPromptVisionLayer
    sidecar_classes = (DualPromptVisionLayer, DualPromptTextLayer)

    def validate_config(self, peft_config: DualPromptConfig, backbone: Backbone) -> None:
        missing = [part for part in DUAL_ENCODER_PARTS if not hasattr(self.model, part)]
        if missing:
            raise TypeError(
                f"DualPromptConfig prompts a CLIP-like model with text and vision towers (transformers.CLIPModel), "
                f"got {type(self.model).__name__}, which lacks {missing}. For a vision-only model use "
                "VisualPromptConfig."
            )
        peft_config.cavpt_layers(backbone.num_layers)
        self._tokens = None
        if peft_config.tokenizer is not None or peft_config.text_length is None:
            # Creating an adapter (a loaded one brings its token ids as buffers, so needs no tokenizer).
            limit = self.model.config.text_config.max_position_embeddings
            self._tokens = tokenize_class_prompts(_load_tokenizer(peft_config), peft_config, limit)

    def sidecar_targets(self, peft_config: DualPromptConfig, backbone: Backbone) -> list[str]:
        return [*super().sidecar_targets(peft_config, backbone), TEXT_EMBEDDINGS]

    def attach_sidecar(self, target: nn.Module, target_key: str) -> SidecarLayer:
        if target_key == TEXT_EMBEDDINGS:
            sidecar = DualPromptTextLayer()
            target.add_module(SIDECAR_NAME, sidecar)
            target.token_embedding.register_forward_hook(sidecar.token_embedding_hook)
            return sidecar
        sidecar = DualPromptVisionLayer(self._backbone, self.model.config.projection_dim)
        target.add_module(SIDECAR_NAME, sidecar)
        sidecar.register_hooks(self._backbone)
        self.model.register_forward_pre_hook(self._clip_pre_hook, with_kwargs=True)
        self.model.register_forward_hook(self._clip_post_hook, with_kwargs=True)
        return sidecar

    def update_sidecar(
        self, sidecar: SidecarLayer, adapter_name: str, config: DualPromptConfig, target_key: str
    ) -> None:
        if target_key == TEXT_EMBEDDINGS:
            token_embedding = self.model.get_submodule(TEXT_EMBEDDINGS).token_embedding
            sidecar.update_layer(adapter_name, config, token_embedding, self._tokens)
        else:
            super().update_sidecar(sidecar, adapter_name, config, target_key)

    # -------------------------------------------------------------------------------- per-call flow
    @property
    def epoch(self) -> int:
        return self.__dict__.get("_epoch", 0)

    def set_epoch(self, epoch: int) -> None:
        """The 0-based training epoch; the zero-shot-guided warm-up runs while it is below ``zs_warmup_epochs``."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an integer >= 0, got {epoch!r}.")
        self.__dict__["_epoch"] = epoch

    def _sidecars(self) -> tuple[DualPromptTextLayer, DualPromptVisionLayer]:
        model = self.model
        return getattr(model.text_model.embeddings, SIDECAR_NAME), getattr(model.vision_model.embeddings, SIDECAR_NAME)

    def _clip_pre_hook(self, clip: nn.Module, args: tuple, kwargs: dict):
        text_layer, vision_layer = self._sidecars()
        text_bank, vision_bank = text_layer.active_bank(), vision_layer.active_bank()
        if text_bank is None or vision_bank is None:
            return None  # adapter disabled: plain CLIP
        if args or kwargs.get("input_ids") is not None or kwargs.get("pixel_values") is None:
            raise ValueError(
                "A DPT model classifies images against its class prompts: call it as "
                "model(pixel_values=..., labels=...) with keyword arguments and no input_ids; use "
                "`with model.disable_adapter():` for plain CLIP."
            )
        config = self.peft_config[self.active_adapters[0]]
        vision_bank.clear()
        if vision_bank.cavpt_rows and torch.is_grad_enabled():
            _check_checkpointing(self._backbone.layers)
        labels = kwargs.pop("labels", None)
        pixel_values = kwargs["pixel_values"]
        state = _CallState(labels=labels, text_features=text_layer.class_features(clip, text_bank))
        warmup = labels is not None and in_warmup(config, self.epoch)
        if vision_bank.cavpt_rows or warmup:
            template = text_layer.template_features(clip, text_bank)
            with torch.no_grad(), vision_layer.bypassed():
                pooled = clip.vision_model(
                    pixel_values=pixel_values, interpolate_pos_encoding=kwargs.get("interpolate_pos_encoding", False)
                )
                zero_shot = _normalize(clip.visual_projection(pooled.pooler_output))
            if vision_bank.cavpt_rows:
                scores = zero_shot @ _normalize(template).T
                state.top_k = scores.topk(vision_bank.num_class_tokens, dim=-1).indices
                vision_bank.queries = state.text_features[state.top_k]
            if warmup:
                state.template_features = template
                state.coop_logits = clip.logit_scale.exp() * zero_shot @ _normalize(state.text_features).T
        self.__dict__["_call_state"] = state
        dummy = text_bank.class_token_ids[:1, :1]  # CLIPModel.forward always runs its text tower: keep it cheap
        return args, {**kwargs, "input_ids": dummy, "attention_mask": None, "position_ids": None, "return_loss": False}

    def _clip_post_hook(self, clip: nn.Module, args: tuple, kwargs: dict, output: Any):
        state: _CallState | None = self.__dict__.pop("_call_state", None)
        if state is None:
            return None
        vision_bank = self._sidecars()[1].active_bank()
        # The bank keeps this call's queries until the next call: checkpointed layers recompute CAVPT in backward.
        aux = tuple(vision_bank.aux_logits[i] for i in sorted(vision_bank.aux_logits)) or None
        scale = clip.logit_scale.exp()
        image, text = output.image_embeds, _normalize(state.text_features)
        result = DualPromptOutput(
            logits=scale * image @ text.T,
            coop_logits=state.coop_logits,
            vpt_logits=None
            if state.template_features is None
            else scale * image @ _normalize(state.template_features).T,
            aux_logits=aux,
            top_k=state.top_k,
            image_embeds=image,
            text_embeds=text,
        )
        if state.labels is not None:
            config = self.peft_config[self.active_adapters[0]]
            result.loss = dual_prompt_loss(result, state.labels, config, self.epoch)
        return result
