"""Sidecars: the peft tuner layers that own prompts, and the hooks that put them into an unmodified HF backbone.

A sidecar is attached as a child named ``prompt_adapter`` of a module the backbone runs (its embeddings), keeps
one bank per adapter, and registers bound-method hooks (never closures: deep copies and pickles of the model
must carry their own prompts). :class:`SidecarLayer` is the peft boilerplate every sidecar shares;
:class:`PromptAdapterLayer` is the visual one, with hooks on the backbone's blocks:

* a forward pre-hook on every block inserts the prompts after the special tokens at the first prompted
  block and overwrites them at every later prompted block (the in-sequence path);
* a forward pre-hook on every block's attention hands it extra keys/values (the key-value path, see
  :mod:`vpt_peft.engine.attention`; a fused-qkv attention gets them through :mod:`vpt_peft.engine.fused_qkv`);
* forward hooks on the final norm and the backbone remove prompt positions from what the model returns.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .attention import EXTRA_KV_ATTRIBUTE, set_extra_key_values
from .backbones import Backbone, get_path
from .bank import PromptBank
from .checks import check_pixel_values
from .config import PromptConfigBase
from .fused_qkv import append_key_rows, drop_appended_rows, write_key_values
from .mixed import MixedBatch, SingleTaskPlan
from .tokens import open_prompt_slots, strip_prompts
from .windows import WindowedPrompts

SIDECAR_NAME = "prompt_adapter"


def _owned_by(hook: Any, owner: object) -> bool:
    func = hook.func if isinstance(hook, functools.partial) else hook
    return getattr(func, "__self__", None) is owner


def has_owned_hook(module: nn.Module, owner: object) -> bool:
    """Whether ``module`` already has a forward (pre-)hook that is a bound method of ``owner``."""
    hooks = [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]
    return any(_owned_by(hook, owner) for hook in hooks)


def remove_owned_hooks(owner: object, root: nn.Module) -> None:
    """Remove every forward (pre-)hook under ``root`` that is a bound method of ``owner``."""
    for module in root.modules():
        for hooks, with_kwargs in (
            (module._forward_pre_hooks, module._forward_pre_hooks_with_kwargs),
            (module._forward_hooks, module._forward_hooks_with_kwargs),
        ):
            for key in [k for k, hook in hooks.items() if _owned_by(hook, owner)]:
                del hooks[key]
                with_kwargs.pop(key, None)


class SidecarLayer(nn.Module, BaseTunerLayer):
    """peft's tuner-layer contract for a module that wraps no base layer and owns one bank per adapter.

    Subclasses name their bank dict in ``adapter_layer_names`` (the name is in every state-dict key).
    """

    adapter_layer_names: tuple[str, ...] = ()
    parameter_role: str = "prompt"
    """What this sidecar's tensors are for optimisers and reports (see :mod:`vpt_peft.recipes.roles`)."""

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._active_adapter = "default"
        self.kwargs: dict = {}
        setattr(self, self.adapter_layer_names[0], nn.ModuleDict())

    @property
    def banks(self) -> nn.ModuleDict:
        return getattr(self, self.adapter_layer_names[0])

    def add_bank(self, adapter_name: str, bank: nn.Module, device_reference: nn.Module) -> None:
        """Register ``bank`` on the device of ``device_reference`` (unless either lives on the meta device), in this
        sidecar's mode: a bank added to a model in eval mode must not apply prompt dropout (``nn.Module`` starts in
        training mode, so ``add_adapter`` after ``model.eval()`` would otherwise give random outputs)."""
        device = next((p.device for p in device_reference.parameters() if not p.is_meta), None)
        if device is not None and not any(p.is_meta for p in bank.parameters()):
            bank.to(device)
        bank.train(self.training)
        self.banks[adapter_name] = bank
        self.set_adapter(self.active_adapters)

    def active_bank(self) -> Optional[nn.Module]:
        """The active adapter's bank; ``None`` when adapters are disabled or this sidecar lacks the adapter."""
        if self.disable_adapters:
            return None
        names = self.active_adapters
        if len(names) > 1:
            raise ValueError(f"Only one prompt adapter can be active at a time, got {names}.")
        if not names or names[0] not in self.banks:
            return None
        return self.banks[names[0]]

    def _get_base_layer_device_and_dtype(self, base_layer: nn.Module):
        # There is no wrapped base layer (peft's default would recurse through BaseTunerLayer.weight): keep the
        # prompts on their device and in float32; the hooks cast them to the activations' dtype.
        return next((p.device for p in self.parameters() if not p.is_meta), None), None

    def merge(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError("Prompts are extra tokens, not weight deltas, so they cannot be merged; use unload().")

    def unmerge(self) -> None:
        return None

    def remove_hooks(self, root: nn.Module) -> None:
        """Remove every hook this sidecar registered under ``root`` (and anything it parked on modules)."""
        remove_owned_hooks(self, root)
        helper = getattr(self, "windows", None)
        if helper is not None:
            remove_owned_hooks(helper, root)
        for module in root.modules():
            module.__dict__.pop(EXTRA_KV_ATTRIBUTE, None)


class PromptAdapterLayer(SidecarLayer):
    """The sidecar of a visual-prompt method: owns one :class:`PromptBank` per adapter and the block hooks."""

    adapter_layer_names: tuple[str, ...] = ("vpt_prompts",)
    bank_cls: type[PromptBank] = PromptBank

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.num_special_tokens = backbone.num_special_tokens
        self.head_dims = backbone.layer_head_dims
        self.k_proj, self.v_proj = backbone.spec.k_proj, backbone.spec.v_proj
        self.strips_at_final_norm = backbone.spec.final_norm is not None
        self.num_channels = getattr(backbone.config, "num_channels", None)
        self.patch_fan_in = backbone.patch_fan_in if backbone.spec.patch_inputs else None
        self.input_defaults = backbone.spec.input_defaults
        self.mixed_batch: Optional[MixedBatch] = None  # set only while a mixed-task batch runs
        self.windows: Optional[WindowedPrompts] = None  # the hooks' owner on windowed backbones

    def make_bank(self, config: PromptConfigBase, backbone: Backbone) -> PromptBank:
        """Build one adapter's bank (methods whose banks need more than the config override this)."""
        return self.bank_cls(config, backbone)

    def update_layer(self, adapter_name: str, config: PromptConfigBase, backbone: Backbone) -> None:
        self.add_bank(adapter_name, self.make_bank(config, backbone), backbone.sub(backbone.spec.embeddings))

    # ----------------------------------------------------------------------------------------- hooks
    def register_hooks(self, backbone: Backbone) -> None:
        spec = backbone.spec
        if spec.windows is not None:
            # Windowed attention: prompt tokens travel beside the blocks' sequence (engine/windows.py).
            backbone.module.register_forward_pre_hook(self._backbone_input_hook, with_kwargs=True)
            self.windows = WindowedPrompts(self, backbone)
            self.windows.register_hooks(backbone)
            return
        embeddings_hook = functools.partial(self._embeddings_hook, backbone.layers)
        backbone.sub(spec.embeddings).register_forward_hook(embeddings_hook)
        for index, layer in enumerate(backbone.layers):
            layer.register_forward_pre_hook(functools.partial(self._layer_pre_hook, index), with_kwargs=True)
            attention = get_path(layer, spec.attention)
            norm = get_path(layer, spec.attention_norm)
            attention.register_forward_pre_hook(
                functools.partial(self._attention_pre_hook, index, norm), with_kwargs=True
            )
            if spec.fused_qkv:  # extra keys/values enter through the fused projection (engine/fused_qkv.py)
                attention.register_forward_pre_hook(self._fused_input_hook, with_kwargs=True)
                fused = get_path(attention, spec.k_proj)
                fused.register_forward_hook(functools.partial(self._fused_projection_hook, attention))
                attention.register_forward_hook(self._fused_output_hook)
            attention.register_forward_hook(self._attention_post_hook)
            bias = get_path(layer, spec.relative_position_bias) if spec.relative_position_bias else None
            if bias is not None:
                bias.register_forward_hook(functools.partial(self._bias_hook, index))
        if spec.final_norm is not None:
            backbone.sub(spec.final_norm).register_forward_hook(self._final_norm_hook)
        backbone.module.register_forward_pre_hook(self._backbone_input_hook, with_kwargs=True)
        backbone.module.register_forward_hook(self._backbone_output_hook)

    def plan(self) -> SingleTaskPlan | MixedBatch:
        """What the running forward computes: a mixed-task batch's plan, or the active adapter's (or none)."""
        return self.mixed_batch if self.mixed_batch is not None else SingleTaskPlan(self.active_bank())

    def prompt_slots(self) -> int:
        """Prompt slots in the residual stream of the running forward, stripped from what the model returns."""
        return self.plan().sequence_slots(self)[0]

    def _embeddings_hook(self, blocks: list[nn.Module], module: nn.Module, args: tuple, output: Any):
        return self.plan().embeddings_output(blocks, output)

    def _layer_pre_hook(self, index: int, module: nn.Module, args: tuple, kwargs: dict):
        return self.plan().layer_inputs(self, index, module, args, kwargs)

    def _attention_pre_hook(self, index: int, norm: nn.Module, module: nn.Module, args: tuple, kwargs: dict):
        hidden = args[0] if args else kwargs["hidden_states"]
        set_extra_key_values(module, self.plan().extra_key_values(self, index, norm, module, hidden))
        return None

    def _fused_input_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        return append_key_rows(module, args, kwargs)

    def _fused_projection_hook(self, attention: nn.Module, module: nn.Module, args: tuple, output: torch.Tensor):
        return write_key_values(attention, output)

    def _fused_output_hook(self, module: nn.Module, args: tuple, output: torch.Tensor):
        return drop_appended_rows(module, output)

    def _attention_post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        # Drop the reference so the prompts' graph is not kept alive until the next call.
        set_extra_key_values(module, None)

    def _strip(self, sequence: torch.Tensor, count: int) -> torch.Tensor:
        return strip_prompts(sequence, count, at=self.num_special_tokens)

    def _bias_hook(self, index: int, module: nn.Module, args: tuple, bias: torch.Tensor):
        """Relative position biases are built for the real tokens: prompts get zero bias (no position)."""
        count, opening = self.plan().sequence_slots(self)
        count = count if 0 <= opening <= index else 0
        return open_prompt_slots(bias, count, at=self.num_special_tokens) if count else None

    def _final_norm_hook(self, module: nn.Module, args: tuple, output: torch.Tensor):
        count = self.prompt_slots()
        return self._strip(output, count) if count else None

    def _backbone_input_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        """Refuse malformed images with a message that says what is wrong (not an unpacking error deep inside), and
        give the forward the inputs the family needs while prompted (``BackboneSpec.input_defaults``)."""
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        if pixels is not None:
            check_pixel_values(pixels, self.num_channels, self.patch_fan_in)
        defaults = self.input_defaults(module, args, kwargs) if self.input_defaults is not None else None
        return (args, {**kwargs, **defaults}) if defaults else None

    def _backbone_output_hook(self, module: nn.Module, args: tuple, output: Any):
        """Give ``last_hidden_state`` and ``hidden_states`` the base model's shapes."""
        p = self.prompt_slots()
        if p == 0 or not hasattr(output, "keys"):
            return None
        last = output.get("last_hidden_state")
        if last is not None and not self.strips_at_final_norm:
            output["last_hidden_state"] = last = self._strip(last, p)
        states = output.get("hidden_states")
        if states is not None and last is not None:
            base = last.shape[1]
            output["hidden_states"] = tuple(
                self._strip(h, p) if h is not None and h.dim() == 3 and h.shape[1] == base + p else h for h in states
            )
        return output
