"""The peft tuners: :class:`PromptTuner`, the engine every prompt method shares (a ``BaseTuner``, LoRA-style, not
prompt learning), and :class:`ClassifierPromptTuner`, which adds per-adapter heads and mixed-task batches for the
methods that prompt a vision classifier (VPT, VFPT, E2VPT).

A method's tuner only says *which* sidecar it attaches *where* (:meth:`PromptTuner.sidecar_targets`,
:meth:`PromptTuner.attach_sidecar`) and what it checks (:meth:`PromptTuner.validate_config`); finding the
backbone, refusing a foreign adapter, key names in the state dict, eval-mode backbones and unloading are here.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import torch
from peft import PeftModel
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, delete_adapter, set_adapter
from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import PreTrainedModel

from .attention import ensure_installed, uninstall
from .backbones import Backbone, find_backbone
from .config import LOADING_MARK, PromptConfigBase
from .heads import config_num_labels, init_heads_like_vpt, pad_logits, resize_heads
from .mixed import plan_mixed_batch
from .sidecar import SIDECAR_NAME, PromptAdapterLayer, SidecarLayer, has_owned_hook, remove_owned_hooks


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


def check_incoming_adapter_tensors(tuner: PromptTuner, state_dict: dict, prefix: str, *args: Any) -> None:
    """Before any tensor is written: every adapter named in a state dict brings all its prompt tensors, at the shapes
    its config gives. Runs as a load_state_dict pre-hook of the tuner, which loads before any of its children, so
    a refused file leaves every adapter and head as it was.

    A missing tensor would otherwise keep its random init (peft only warns), and a shape mismatch fails half-way,
    after the heads were overwritten, with a message that names no config field.
    """
    incoming = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    names = {n for n in tuner.peft_config if any(f".{n}." in key for key in incoming)}
    for adapter_name in sorted(names):
        expected = {}
        for module_name, module in tuner.named_modules():
            if isinstance(module, SidecarLayer) and adapter_name in module.banks:
                bank, bank_prefix = module.banks[adapter_name], f"{module_name}.{module.adapter_layer_names[0]}."
                bank_prefix += f"{adapter_name}."
                if hasattr(bank, "check_incoming"):  # a bank that can say more precisely what does not match
                    bank.check_incoming(
                        {k[len(bank_prefix) :]: v for k, v in incoming.items() if k.startswith(bank_prefix)}
                    )
                expected.update({bank_prefix + k: v for k, v in bank.state_dict().items()})
        missing = [k for k, v in expected.items() if k not in incoming and v.numel() > 0]
        wrong = {k: (tuple(incoming[k].shape), tuple(v.shape)) for k, v in expected.items() if k in incoming}
        wrong = {k: shapes for k, shapes in wrong.items() if shapes[0] != shapes[1]}
        if not missing and not wrong:
            tuner.fresh_adapters.discard(adapter_name)
            tuner.__dict__.get("_initial_heads", {}).pop(adapter_name, None)  # loaded: its starting point is unknown
            continue
        config = tuner.peft_config[adapter_name]
        if missing:
            detail = f"lacks {len(missing)} prompt tensor(s) of adapter {adapter_name!r}, e.g. {missing[0]!r}"
            prompt_keys = sorted(k for k in incoming if "prompt" in k)[:3]
            if prompt_keys:
                detail += f" (its prompt tensors are named like {prompt_keys}: saved by another method?)"
        else:
            key, (got, want) = next(iter(wrong.items()))
            detail = f"has {key!r} of shape {list(got)}, but adapter {adapter_name!r}'s config gives {list(want)}"
        fields = {k: v for k, v in config.to_dict().items() if k in SHAPE_FIELDS and k != "peft_type"}
        tuner.roll_back_fresh_adapter(adapter_name)
        raise AdapterMismatchError(
            f"The adapter file {detail}. The weights and the {type(config).__name__} ({fields}) do not belong "
            "together: load the folder's own adapter_config.json with its adapter_model.safetensors (a new "
            "adapter_name), and check that neither file was edited or replaced."
        )


SHAPE_FIELDS = (
    "num_prompts",
    "deep",
    "prompt_layers",
    "prompt_project_dim",
    "num_kv_prompts",
    "share_kv",
    "kv_deep",
    "gates",
    "pruned",
    "num_segments",
    "visual_n_ctx",
    "text_n_ctx",
    "csc",
)
"""Config fields that decide the adapter's tensor shapes (quoted when a file does not match them)."""


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
        ours = self._sidecar_classes()
        foreign = {
            type(m).__name__
            for m in self.model.modules()
            if isinstance(m, (BaseTuner, PeftModel)) or (isinstance(m, BaseTunerLayer) and not isinstance(m, ours))
        }
        if foreign:
            raise ValueError(
                f"The model already carries adapters ({sorted(foreign)}): get_peft_model was called on a model that "
                "is already a PeftModel (or has another method's layers). Add this adapter with "
                "model.add_adapter(name, config), or start from the base model (model.unload())."
            )
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
        if not self.__dict__.get("_checks_loads"):
            self.register_load_state_dict_pre_hook(check_incoming_adapter_tensors)
            self.__dict__["_checks_loads"] = True
        if self.peft_config[adapter_name].__dict__.pop(LOADING_MARK, False):
            self.fresh_adapters.add(adapter_name)

    @property
    def fresh_adapters(self) -> set[str]:
        """Adapters created by a load (``from_pretrained``/``load_adapter``) whose weights have not arrived yet."""
        return self.__dict__.setdefault("_fresh_adapters", set())

    def roll_back_fresh_adapter(self, adapter_name: str) -> None:
        """Undo the creation of an adapter whose file was refused, so the failed load leaves the model as it was."""
        if adapter_name not in self.fresh_adapters:
            return
        self.fresh_adapters.discard(adapter_name)
        if len(self.peft_config) == 1:
            self._unload_and_optionally_merge(merge=False)
            self.peft_config.clear()
        else:
            self._delete_from_every_sidecar(adapter_name)

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """Activate one adapter (prompts of two adapters cannot run at once: use ``adapter_names`` to mix tasks)."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if len(names) != 1:
            raise ValueError(
                f"Only one prompt adapter can be active at a time, got {names}. To run several tasks in one batch, "
                "pass adapter_names=[...] (one name per sample) to the forward call."
            )
        unknown = [n for n in names if n not in self.peft_config]
        if unknown:
            raise ValueError(f"Unknown adapter {unknown[0]!r}; this model has {sorted(self.peft_config)}.")
        # In every sidecar: peft's own switch reaches only tuner_layer_cls layers, which would leave a method's other
        # sidecars (DPT's text context) on the previous adapter, and trainable.
        set_adapter(self.model, adapter_name, inference_mode=inference_mode, layer_cls=SidecarLayer)
        self.active_adapter = adapter_name

    def delete_adapter(self, adapter_name: str) -> None:
        """Delete an adapter; the last one cannot go (the model would have no prompts to run: use ``unload()``)."""
        if adapter_name in self.peft_config and len(self.peft_config) == 1:
            raise ValueError(
                f"{adapter_name!r} is the model's only adapter; deleting it would leave a PeftModel that cannot run. "
                "Use model.unload() to get the base model back, or add another adapter first."
            )
        self._delete_from_every_sidecar(adapter_name)

    def _delete_from_every_sidecar(self, adapter_name: str) -> None:
        """peft's own deletion reaches only ``tuner_layer_cls`` layers; a method may have more sidecars (DPT)."""
        if adapter_name not in self.peft_config:
            raise ValueError(f"Adapter {adapter_name} does not exist")
        del self.peft_config[adapter_name]
        remaining = delete_adapter(self.model, adapter_name=adapter_name, prefix=self.prefix, layer_cls=SidecarLayer)
        self.active_adapter = remaining or []

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
        if peft_config.num_labels is not None:
            for name in peft_config.modules_to_save or ():
                head = self.model.get_submodule(name)
                head = getattr(head, "original_module", head)
                if not isinstance(head, nn.Linear):
                    raise ValueError(
                        f"num_labels={peft_config.num_labels} gives the adapter a new Linear head, but the head "
                        f"{name!r} is a {type(head).__name__}; drop num_labels or set modules_to_save."
                    )
        return peft_config

    def finish_adapter(self, model: nn.Module, config: PromptConfigBase, adapter_name: str) -> None:
        if config.num_labels is not None:
            resize_heads(model, adapter_name, config.num_labels)
        if config.head_init == "vpt":
            init_heads_like_vpt(model, adapter_name)
        self.__dict__.setdefault("_initial_heads", {})[adapter_name] = {
            path: {k: v.detach().clone() for k, v in wrapper.modules_to_save[adapter_name].state_dict().items()}
            for path, wrapper in model.named_modules()
            if isinstance(wrapper, ModulesToSaveWrapper) and adapter_name in wrapper.modules_to_save
        }
        self._hook_heads(model, adapter_name)
        super().finish_adapter(model, config, adapter_name)

    def initial_heads(self, adapter_name: str) -> Optional[dict[str, dict]]:
        """``{wrapper path: state}`` of the adapter's heads at creation (what E2VPT's rewind restores); ``None``
        once weights were loaded into the adapter (its starting point is then unknown)."""
        return self.__dict__.get("_initial_heads", {}).get(adapter_name)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """Entered by ``PeftModel.forward`` with the call's arguments: serves ``adapter_names`` mixed batches.

        Only the plan changes per call; every hook it needs was registered once, when the adapters were added, so
        a compiled model (``torch.compile(fullgraph=True)``) runs mixed batches without a graph break.
        """
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            with self._config_num_labels_of(self.active_adapters):
                yield
            return
        plan = plan_mixed_batch(self.model, adapter_names, list(self.peft_config), args, kwargs)
        layers = [m for m in self.model.modules() if isinstance(m, PromptAdapterLayer)]
        self._mixed_plan = plan
        for layer in layers:
            layer.mixed_batch = plan
        try:
            with self._config_num_labels_of(list(dict.fromkeys(plan.adapter_names))):
                yield
        finally:
            self._mixed_plan = None
            for layer in layers:
                layer.mixed_batch = None

    def _hook_heads(self, model: nn.Module, adapter_name: str) -> None:
        """The head hooks of mixed batches, registered once per head module (they do nothing outside one)."""
        for path, wrapper in model.named_modules():
            if not isinstance(wrapper, ModulesToSaveWrapper) or adapter_name not in wrapper.modules_to_save:
                continue
            if not has_owned_hook(wrapper, self):
                wrapper.register_forward_pre_hook(self._head_pre_hook, with_kwargs=True)
            for head in (wrapper.original_module, wrapper.modules_to_save[adapter_name]):
                if not has_owned_hook(head, self):
                    head.register_forward_hook(functools.partial(self._head_post_hook, path))

    def _head_pre_hook(self, wrapper: nn.Module, args: tuple, kwargs: dict):
        """In a mixed batch, peft's head wrapper dispatches per sample on ``adapter_names``."""
        plan = getattr(self, "_mixed_plan", None)
        if plan is None:
            return None
        return args, {**kwargs, "adapter_names": plan.adapter_names}

    def _head_post_hook(self, path: str, head: nn.Module, args: tuple, output: torch.Tensor):
        """In a mixed batch of heads of different sizes, narrower logits are padded with ``-inf``."""
        plan = getattr(self, "_mixed_plan", None)
        width = None if plan is None else plan.pad_widths.get(path)
        return None if width is None else pad_logits(output, width)

    def _config_num_labels_of(self, adapter_names: list[str]):
        """While adapters with their own head size run, the HF config says that size (the model's loss reads it)."""
        config = getattr(self.model, "config", None)
        if config is None:
            return config_num_labels(None, set())
        sizes = {getattr(self.peft_config.get(n), "num_labels", None) or config.num_labels for n in adapter_names}
        return config_num_labels(config, sizes)
