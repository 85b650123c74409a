"""The peft tuner shared by every visual-prompt method (a ``BaseTuner``, LoRA-style, not prompt learning)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import PreTrainedModel

from ...attention import ensure_installed, uninstall
from ...backbones import Backbone, find_backbone
from .config import PromptConfigBase
from .layer import PromptAdapterLayer
from .mixed import serve_mixed_batch

SIDECAR_NAME = "prompt_adapter"
VPT_HEAD_BIAS = -math.log((1 - 0.01) / 0.01)


class AdapterMismatchError(ValueError):
    """An adapter was made for a different backbone than the one it is being loaded onto."""


def _check_same_backbone(config: PromptConfigBase, backbone: Backbone) -> None:
    expected, actual = config.backbone, backbone.describe()
    if expected is None:
        return
    differences = {k: (expected.get(k), actual[k]) for k in actual if expected.get(k) != actual[k]}
    if differences:
        detail = ", ".join(f"{k}: adapter {a!r} vs model {m!r}" for k, (a, m) in differences.items())
        raise AdapterMismatchError(
            f"This {type(config).__name__} adapter was made for a {expected} backbone but the model is {actual} "
            f"({detail}). Load it onto the base model it was trained on."
        )


class PromptTunerModel(BaseTuner):
    """Attach prompt banks to a vision transformer through hooks; the HF modules stay untouched."""

    prefix: str = "vpt_"
    tuner_layer_cls: type[PromptAdapterLayer] = PromptAdapterLayer
    target_module_mapping: dict = {}

    def _prepare_adapter_config(self, peft_config: PromptConfigBase, model_config: dict) -> PromptConfigBase:
        # Everything that can fail is checked here, before inject_adapter touches the model.
        backbone = find_backbone(self.model)
        _check_same_backbone(peft_config, backbone)
        layers = peft_config.prompted_layers(backbone.num_layers)
        self.tuner_layer_cls.bank_cls.choose_kv_path(peft_config, layers, backbone)
        self.validate_config(peft_config, backbone)
        peft_config.target_modules = re.escape(backbone.qualified(backbone.spec.embeddings))
        if peft_config.modules_to_save is None and backbone.heads:
            peft_config.modules_to_save = list(backbone.heads)
        peft_config.backbone = backbone.describe()
        self._backbone = backbone
        return peft_config

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # A bank is a module, so its tensors sit below the adapter name at any depth
        # (``vpt_prompts.<adapter>.prompt_proj.weight``); peft's default only strips a second-to-last name.
        marker = f".{cls.tuner_layer_cls.adapter_layer_names[0]}.{adapter_name}."
        if marker in key:
            return key.replace(marker, marker.removesuffix(f"{adapter_name}."), 1)
        return super()._remove_adapter_name_from_key(key, adapter_name)

    def validate_config(self, peft_config: PromptConfigBase, backbone: Backbone) -> None:
        """Method-specific checks against the backbone (override in a method's tuner)."""

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key) -> None:
        sidecar = getattr(target, SIDECAR_NAME, None)
        if sidecar is None:
            sidecar = self.tuner_layer_cls(self._backbone)
            target.add_module(SIDECAR_NAME, sidecar)
            sidecar.register_hooks(self._backbone)
        sidecar.update_layer(adapter_name, peft_config, self._backbone)

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args, **kwargs) -> None:
        """Inject, then finish the adapter's heads: here, not in ``_post_injection_hook``, which peft calls for
        the first adapter only; ``add_adapter``/``load_adapter`` reuse the head copies made here (before any
        weights are loaded into them)."""
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        self._finish_adapter(model, self.peft_config[adapter_name], adapter_name)

    def _finish_adapter(self, model: nn.Module, config: PromptConfigBase, adapter_name: str) -> None:
        if getattr(config, "num_labels", None) is not None:  # methods with their own config class may lack it
            self._resize_heads(model, adapter_name, config.num_labels)
        if getattr(config, "head_init", "model") == "vpt":
            self._init_heads_like_vpt(model, adapter_name)
        if any(self._needs_extra_kv(m, adapter_name) for m in model.modules()):
            for module in model.modules():
                if isinstance(module, PreTrainedModel):
                    ensure_installed(module.config)

    @staticmethod
    def _needs_extra_kv(module: nn.Module, adapter_name: str) -> bool:
        if not isinstance(module, PromptAdapterLayer) or adapter_name not in module.banks:
            return False
        return module.banks[adapter_name].needs_extra_key_values

    @staticmethod
    def _resize_heads(model: nn.Module, adapter_name: str, num_labels: int) -> None:
        """Give the adapter its own head of ``num_labels`` classes (a new Linear, the default init)."""
        for module in model.modules():
            if isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
                head = module.modules_to_save[adapter_name]
                if not isinstance(head, nn.Linear):
                    raise ValueError(f"num_labels needs a Linear head, {type(head).__name__} is not one.")
                if head.out_features == num_labels:
                    continue
                new = nn.Linear(
                    head.in_features,
                    num_labels,
                    bias=head.bias is not None,
                    device=head.weight.device,
                    dtype=head.weight.dtype,
                )
                new.requires_grad_(head.weight.requires_grad)
                module.modules_to_save[adapter_name] = new

    @staticmethod
    @torch.no_grad()
    def _init_heads_like_vpt(model: nn.Module, adapter_name: str) -> None:
        """The official VPT head init: Kaiming-normal fan_out weights, bias -log(99) (a 1% prior)."""
        for module in model.modules():
            if isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save:
                for linear in module.modules_to_save[adapter_name].modules():
                    if isinstance(linear, nn.Linear):
                        nn.init.kaiming_normal_(linear.weight, a=0, mode="fan_out")
                        if linear.bias is not None:
                            linear.bias.fill_(VPT_HEAD_BIAS)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs) -> Iterator[None]:
        """Entered by ``PeftModel.forward`` with the call's arguments: serves ``adapter_names`` mixed batches."""
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            with self._config_num_labels_of(self.active_adapters):
                yield
            return
        unsupported = {type(c).__name__ for c in self.peft_config.values() if not isinstance(c, PromptConfigBase)}
        if unsupported:
            raise ValueError(f"{sorted(unsupported)} adapters do not serve mixed-task batches (adapter_names).")
        layers = [m for m in self.model.modules() if isinstance(m, PromptAdapterLayer)]
        with (
            serve_mixed_batch(self.model, layers, adapter_names, list(self.peft_config), args, kwargs),
            self._config_num_labels_of(list(dict.fromkeys(adapter_names))),
        ):
            yield

    @contextmanager
    def _config_num_labels_of(self, adapter_names: list[str]) -> Iterator[None]:
        """While adapters with their own head size run, the HF config says that size (the model's loss reads it).

        Only when the running adapters agree on one size; a mixed batch of several sizes refuses labels.
        """
        config = getattr(self.model, "config", None)
        if config is None:
            yield
            return
        sizes = {getattr(self.peft_config.get(n), "num_labels", None) or config.num_labels for n in adapter_names}
        if len(sizes) != 1 or sizes == {config.num_labels}:
            yield
            return
        saved = (config.id2label, config.label2id)
        config.num_labels = sizes.pop()
        try:
            yield
        finally:
            config.id2label, config.label2id = saved

    def train(self, mode: bool = True) -> PromptTunerModel:
        """Train the prompts and head while the frozen backbone keeps eval-mode behaviour (no dropout).

        Blocks and ``PreTrainedModel`` containers keep ``training=mode`` so that gradient checkpointing,
        which transformers gates on ``layer.training``, still runs.
        """
        super().train(mode)
        if not mode or not any(getattr(c, "backbone_eval_mode", False) for c in self.peft_config.values()):
            return self
        adapter_roots = [
            name for name, m in self.model.named_modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))
        ]
        for name, module in self.model.named_modules():
            if any(name == root or name.startswith(root + ".") for root in adapter_roots):
                continue
            if not isinstance(module, (GradientCheckpointingLayer, PreTrainedModel)):
                module.training = False
        return self

    def _unload_and_optionally_merge(
        self,
        merge: bool = True,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: Optional[list[str]] = None,
    ):
        if merge:
            raise ValueError("Prompts are extra tokens, not weight deltas, so they cannot be merged; use unload().")
        for name, module in list(self.model.named_modules()):
            if isinstance(module, PromptAdapterLayer):
                module.remove_hooks(self.model)
                parent = self.model.get_submodule(name.rpartition(".")[0])
                delattr(parent, name.rpartition(".")[2])
        for module in self.model.modules():
            if isinstance(module, PreTrainedModel):
                uninstall(module.config)
        return super()._unload_and_optionally_merge(merge=False, progressbar=progressbar, adapter_names=adapter_names)
