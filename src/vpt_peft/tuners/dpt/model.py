"""The DPT tuner: attaches the text and vision sidecars to a ``CLIPModel`` and orchestrates each call.

``PeftModel.forward`` calls ``CLIPModel.forward``, which runs vision before text, but CAVPT needs the
class text features inside the vision pass. A forward pre-hook on the ``CLIPModel`` therefore runs the
text tower once on all class prompts (and, when needed, the frozen unprompted vision pass for top-K
selection and the warm-up), hands the top-K text features to the vision sidecar, and lets
``CLIPModel.forward`` run the prompted vision pass with a one-token dummy text input instead of
re-encoding the classes. A forward hook then builds :class:`~.loss.DualPromptOutput` (logits, loss).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner
from torch import nn
from transformers import CLIPModel, PreTrainedModel

from ..._compat import checkpointing_enable_call
from ...attention import ensure_installed
from ...backbones import find_backbone
from ..prompt.layer import remove_owned_hooks
from ..prompt.model import SIDECAR_NAME, PromptTunerModel, _check_same_backbone
from .config import DualPromptConfig
from .layer import DualPromptVisionLayer
from .loss import DualPromptOutput, dual_prompt_loss, in_warmup
from .text import DualPromptTextLayer, tokenize_class_prompts

TEXT_EMBEDDINGS = "text_model.embeddings"


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


class DualPromptModel(PromptTunerModel):
    """peft tuner for :class:`~vpt_peft.DualPromptConfig` on ``transformers.CLIPModel``."""

    prefix = "dpt_"
    tuner_layer_cls = DualPromptVisionLayer

    def _prepare_adapter_config(self, peft_config: DualPromptConfig, model_config: dict) -> DualPromptConfig:
        if not isinstance(self.model, CLIPModel):
            raise TypeError(
                f"DualPromptConfig prompts a transformers.CLIPModel (text + vision towers), got "
                f"{type(self.model).__name__}. For a vision-only model use VisualPromptConfig."
            )
        backbone = find_backbone(self.model)
        _check_same_backbone(peft_config, backbone)
        peft_config.cavpt_layers(backbone.num_layers)
        self._tokens = None
        if peft_config.tokenizer is not None or peft_config.text_length is None:
            # Creating an adapter (a loaded one brings its token ids as buffers, so needs no tokenizer).
            limit = self.model.config.text_config.max_position_embeddings
            self._tokens = tokenize_class_prompts(_load_tokenizer(peft_config), peft_config, limit)
        names = [backbone.qualified(backbone.spec.embeddings), TEXT_EMBEDDINGS]
        peft_config.target_modules = "|".join(re.escape(name) for name in names)
        peft_config.backbone = backbone.describe()
        self._backbone = backbone
        return peft_config

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key) -> None:
        if current_key == TEXT_EMBEDDINGS:
            sidecar = getattr(target, SIDECAR_NAME, None)
            if sidecar is None:
                sidecar = DualPromptTextLayer()
                target.add_module(SIDECAR_NAME, sidecar)
                target.token_embedding.register_forward_hook(sidecar.token_embedding_hook)
            sidecar.update_layer(adapter_name, peft_config, target.token_embedding, self._tokens)
            return
        sidecar = getattr(target, SIDECAR_NAME, None)
        if sidecar is None:
            sidecar = DualPromptVisionLayer(self._backbone, self.model.config.projection_dim)
            target.add_module(SIDECAR_NAME, sidecar)
            sidecar.register_hooks(self._backbone)
            self.model.register_forward_pre_hook(self._clip_pre_hook, with_kwargs=True)
            self.model.register_forward_hook(self._clip_post_hook, with_kwargs=True)
        sidecar.update_layer(adapter_name, peft_config, self._backbone)

    def _post_injection_hook(self, model: nn.Module, config: DualPromptConfig, adapter_name: str) -> None:
        if any(self._needs_extra_kv(m, adapter_name) for m in model.modules()):
            for module in model.modules():
                if isinstance(module, PreTrainedModel):
                    ensure_installed(module.config)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        for layer_name in (DualPromptVisionLayer.adapter_layer_names[0], DualPromptTextLayer.adapter_layer_names[0]):
            marker = f".{layer_name}.{adapter_name}."
            if marker in key:
                return key.replace(marker, f".{layer_name}.", 1)
        return BaseTuner._remove_adapter_name_from_key(key, adapter_name)

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

    def _clip_pre_hook(self, clip: CLIPModel, args: tuple, kwargs: dict):
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
        if vision_bank.cavpt_slots and torch.is_grad_enabled():
            _check_checkpointing(self._backbone.layers)
        labels = kwargs.pop("labels", None)
        pixel_values = kwargs["pixel_values"]
        state = _CallState(labels=labels, text_features=text_layer.class_features(clip, text_bank))
        warmup = labels is not None and in_warmup(config, self.epoch)
        if vision_bank.cavpt_slots or warmup:
            template = text_layer.template_features(clip, text_bank)
            with torch.no_grad(), vision_layer.bypassed():
                pooled = clip.vision_model(
                    pixel_values=pixel_values, interpolate_pos_encoding=kwargs.get("interpolate_pos_encoding", False)
                )
                zero_shot = _normalize(clip.visual_projection(pooled.pooler_output))
            if vision_bank.cavpt_slots:
                scores = zero_shot @ _normalize(template).T
                state.top_k = scores.topk(vision_bank.num_class_tokens, dim=-1).indices
                vision_bank.queries = state.text_features[state.top_k]
            if warmup:
                state.template_features = template
                state.coop_logits = clip.logit_scale.exp() * zero_shot @ _normalize(state.text_features).T
        self.__dict__["_call_state"] = state
        dummy = text_bank.class_token_ids[:1, :1]  # CLIPModel.forward always runs its text tower: keep it cheap
        return args, {**kwargs, "input_ids": dummy, "attention_mask": None, "position_ids": None, "return_loss": False}

    def _clip_post_hook(self, clip: CLIPModel, args: tuple, kwargs: dict, output: Any):
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

    def _unload_and_optionally_merge(
        self,
        merge: bool = True,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
    ):
        if not merge:
            text_layer = self._sidecars()[0]
            remove_owned_hooks(text_layer, self.model)
            remove_owned_hooks(self, self.model)
            delattr(self.model.text_model.embeddings, SIDECAR_NAME)
        return super()._unload_and_optionally_merge(merge, progressbar, safe_merge, adapter_names)
