"""The peft tuners: :class:`PromptTuner`, the engine every prompt method shares (a ``BaseTuner``, LoRA-style, not
prompt learning), and :class:`ClassifierPromptTuner`, which adds per-adapter heads and mixed-task batches for the
methods that prompt a vision classifier (VPT, VFPT, E2VPT).

A method's tuner only says *which* sidecar it attaches *where* (:meth:`PromptTuner.sidecar_targets`,
:meth:`PromptTuner.attach_sidecar`) and what it checks (:meth:`PromptTuner.validate_config`); finding the
backbone, refusing a foreign adapter, key names in the state dict, eval-mode backbones and unloading are here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import PreTrainedModel

from .attention import ensure_installed, uninstall
from .backbones import Backbone, find_backbone
from .config import PromptConfigBase
from .heads import config_num_labels, init_heads_like_vpt, resize_heads
from .mixed import serve_mixed_batch
from .sidecar import SIDECAR_NAME, PromptAdapterLayer, SidecarLayer, remove_owned_hooks


class AdapterMismatchError(ValueError):
    """An adapter was made for a different backbone than the one it is being loaded onto."""


def check_same_backbone(config: PeftConfig, backbone: Backbone) -> None:
    """Refuse an adapter whose recorded backbone (``config.backbone``) differs from ``backbone``."""
    expected, actual = getattr(config, "backbone", None), backbone.describe()
    if expected is None:
        return
    differences = {k: (expected.get(k), actual[k]) for k in actual if expected.get(k) != actual[k]}
    if differences:
        detail = ", ".join(f"{k}: adapter {a!r} vs model {m!r}" for k, (a, m) in differences.items())
        raise AdapterMismatchError(
            f"This {type(config).__name__} adapter was made for a {expected} backbone but the model is {actual} "
            f"({detail}). Load it onto the base model it was trained on."
        )


class PromptTuner(BaseTuner):
    """Attach a method's sidecars to a model through hooks; the HF modules stay untouched."""

    prefix: str = "vpt_"
    tuner_layer_cls: type[SidecarLayer] = PromptAdapterLayer
    sidecar_classes: tuple[type[SidecarLayer], ...] = ()
    """Every sidecar class the method attaches (default: ``tuner_layer_cls`` alone); their bank names are keys."""
    target_module_mapping: dict = {}

    # ------------------------------------------------------------------------------ what a method decides
    def validate_config(self, peft_config: PeftConfig, backbone: Backbone) -> None:
        """Method-specific checks against the model, before anything is attached (override in a method)."""

    def sidecar_targets(self, peft_config: PeftConfig, backbone: Backbone) -> list[str]:
        """Qualified names of the modules that host this method's sidecars (default: the backbone's embeddings)."""
        return [backbone.qualified(backbone.spec.embeddings)]

    def attach_sidecar(self, target: nn.Module, target_key: str) -> SidecarLayer:
        """Create the sidecar for ``target`` (first adapter only) and register its hooks."""
        sidecar = self.tuner_layer_cls(self._backbone)
        target.add_module(SIDECAR_NAME, sidecar)
        sidecar.register_hooks(self._backbone)
        return sidecar

    def update_sidecar(self, sidecar: SidecarLayer, adapter_name: str, config: PeftConfig, target_key: str) -> None:
        """Add adapter ``adapter_name``'s bank to ``sidecar``."""
        sidecar.update_layer(adapter_name, config, self._backbone)

    # ------------------------------------------------------------------------------ peft's BaseTuner contract
    def _prepare_adapter_config(self, peft_config: PeftConfig, model_config: dict) -> PeftConfig:
        # Everything that can fail is checked here, before inject_adapter touches the model.
        backbone = find_backbone(self.model)
        check_same_backbone(peft_config, backbone)
        self.validate_config(peft_config, backbone)
        peft_config.target_modules = "|".join(re.escape(n) for n in self.sidecar_targets(peft_config, backbone))
        peft_config.backbone = backbone.describe()
        self._backbone = backbone
        return peft_config

    @classmethod
    def _sidecar_classes(cls) -> tuple[type[SidecarLayer], ...]:
        return cls.sidecar_classes or (cls.tuner_layer_cls,)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # A bank is a module, so its tensors sit below the adapter name at any depth
        # (``vpt_prompts.<adapter>.prompt_proj.weight``); peft's default only strips a second-to-last name.
        for sidecar_cls in cls._sidecar_classes():
            marker = f".{sidecar_cls.adapter_layer_names[0]}.{adapter_name}."
            if marker in key:
                return key.replace(marker, marker.removesuffix(f"{adapter_name}."), 1)
        return super()._remove_adapter_name_from_key(key, adapter_name)

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key) -> None:
        sidecar = getattr(target, SIDECAR_NAME, None)
        if sidecar is None:
            sidecar = self.attach_sidecar(target, current_key)
        self.update_sidecar(sidecar, adapter_name, peft_config, current_key)

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        """Inject, then finish the adapter: here, not in ``_post_injection_hook``, which peft calls for the first
        adapter only; ``add_adapter``/``load_adapter`` reuse what is done here (before any weights are loaded)."""
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        self.finish_adapter(model, self.peft_config[adapter_name], adapter_name)

    def finish_adapter(self, model: nn.Module, config: PeftConfig, adapter_name: str) -> None:
        """Route attention through vpt_peft's attention function if the new adapter needs extra keys/values."""
        if any(self._needs_extra_kv(m, adapter_name) for m in model.modules()):
            for module in model.modules():
                if isinstance(module, PreTrainedModel):
                    ensure_installed(module.config)

    @staticmethod
    def _needs_extra_kv(module: nn.Module, adapter_name: str) -> bool:
        if not isinstance(module, PromptAdapterLayer) or adapter_name not in module.banks:
            return False
        return module.banks[adapter_name].needs_extra_key_values

    def train(self, mode: bool = True) -> PromptTuner:
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

    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """Entered by ``PeftModel.forward``: peft would silently drop ``adapter_names``; refuse it instead."""
        if kwargs.get("adapter_names") is not None:
            kinds = sorted({type(c).__name__ for c in self.peft_config.values()})
            raise ValueError(f"{kinds} adapters do not serve mixed-task batches (adapter_names).")
        yield

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
            if isinstance(module, SidecarLayer):
                module.remove_hooks(self.model)
                parent = self.model.get_submodule(name.rpartition(".")[0])
                delattr(parent, name.rpartition(".")[2])
        remove_owned_hooks(self, self.model)
        for module in self.model.modules():
            if isinstance(module, PreTrainedModel):
                uninstall(module.config)
        return super()._unload_and_optionally_merge(merge=False, progressbar=progressbar, adapter_names=adapter_names)


class ClassifierPromptTuner(PromptTuner):
    """A prompt tuner for a vision classifier: each adapter has its own head, batches may mix adapters."""

    def _prepare_adapter_config(self, peft_config: PromptConfigBase, model_config: dict) -> PromptConfigBase:
        peft_config = super()._prepare_adapter_config(peft_config, model_config)
        backbone = self._backbone
        layers = peft_config.prompted_layers(backbone.num_layers)
        self.tuner_layer_cls.bank_cls.choose_kv_path(peft_config, layers, backbone)
        if peft_config.modules_to_save is None and backbone.heads:
            peft_config.modules_to_save = list(backbone.heads)
        return peft_config

    def finish_adapter(self, model: nn.Module, config: PromptConfigBase, adapter_name: str) -> None:
        if config.num_labels is not None:
            resize_heads(model, adapter_name, config.num_labels)
        if config.head_init == "vpt":
            init_heads_like_vpt(model, adapter_name)
        super().finish_adapter(model, config, adapter_name)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """Entered by ``PeftModel.forward`` with the call's arguments: serves ``adapter_names`` mixed batches."""
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            with self._config_num_labels_of(self.active_adapters):
                yield
            return
        layers = [m for m in self.model.modules() if isinstance(m, PromptAdapterLayer)]
        with (
            serve_mixed_batch(self.model, layers, adapter_names, list(self.peft_config), args, kwargs),
            self._config_num_labels_of(list(dict.fromkeys(adapter_names))),
        ):
            yield

    def _config_num_labels_of(self, adapter_names: list[str]):
        """While adapters with their own head size run, the HF config says that size (the model's loss reads it)."""
        config = getattr(self.model, "config", None)
        if config is None:
            return config_num_labels(None, set())
        sizes = {getattr(self.peft_config.get(n), "num_labels", None) or config.num_labels for n in adapter_names}
        return config_num_labels(config, sizes)
