"""The modules that own the prompts, and the hooks that put them into an unmodified HF backbone.

A :class:`PromptBank` holds one adapter's tensors. A :class:`PromptAdapterLayer` (the peft "tuner layer")
is attached as a child named ``prompt_adapter`` of the backbone's embeddings module, keeps one bank per
adapter, and registers bound-method hooks (never closures: deep copies and pickles of the model must carry
their own prompts) on the backbone's blocks:

* a forward pre-hook on every block inserts the prompts after the special tokens at the first prompted
  block and overwrites them at every later prompted block (the in-sequence path);
* a forward pre-hook on every block's attention hands it extra keys/values (the key-value path, see
  :mod:`vpt_peft.attention`);
* forward hooks on the final norm and the backbone remove prompt positions from what the model returns.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ...attention import EXTRA_KV_ATTRIBUTE, ExtraKeyValues, ensure_installed, set_extra_key_values, split_heads
from ...backbones import Backbone, _get_path
from ...tokens import insert_prompts, open_prompt_slots, replace_prompts, strip_prompts
from .config import PromptConfigBase
from .mixed import MixedBatch


def kv_path_is_exact(layers: list[int], num_layers: int) -> bool:
    """Deep prompts may skip the blocks iff no block ever reads a previous block's prompt outputs.

    Block i's prompt outputs are read by block i+1 unless i+1 brings its own prompts (or i is the last
    block), so the prompted blocks must run without a gap to the end.
    """
    return layers == list(range(layers[0], num_layers))


Slot = tuple[str, int]


def stacked_slots(layers: list[int], widths: list[int], name: str) -> dict[int, Slot]:
    """Where each layer's tensor lives: ``{layer: (tensor name, row)}``, one stacked tensor per width.

    A backbone of one width (every ViT-like family) gets a single tensor called ``name``, row ``j`` for the
    ``j``-th listed layer. Backbones whose width changes with depth (Swin's stages) get one tensor per
    width, ``stage{k}_{name}``, in order of first appearance.
    """
    distinct = list(dict.fromkeys(widths[layer] for layer in layers))
    slots, rows = {}, dict.fromkeys(distinct, 0)
    for layer in layers:
        width = widths[layer]
        tensor = name if len(distinct) == 1 else f"stage{distinct.index(width)}_{name}"
        slots[layer] = (tensor, rows[width])
        rows[width] += 1
    return slots


def stacked_shapes(slots: dict[int, Slot], widths: list[int]) -> dict[str, tuple[int, int]]:
    """``{tensor name: (rows, width)}`` for the tensors :func:`stacked_slots` laid out."""
    shapes: dict[str, tuple[int, int]] = {}
    for layer, (tensor, row) in slots.items():
        shapes[tensor] = (row + 1, widths[layer])
    return shapes


class PromptBank(nn.Module):
    """One adapter's visual prompts for one backbone: ``prompt_embeddings`` of shape (L, p, d).

    Row ``j`` belongs to the ``j``-th prompted layer (one tensor per stage width on Swin, see
    :func:`stacked_slots`). Each use goes projection -> batch expansion -> dropout (an independent mask per
    sample, token and channel, as the official code) -> :meth:`transform`.
    """

    def __init__(self, config: PromptConfigBase, backbone: Backbone) -> None:
        super().__init__()
        layers = config.prompted_layers(backbone.num_layers)
        self.layer_slots = stacked_slots(layers, backbone.layer_widths, "prompt_embeddings")
        self.first_layer = layers[0]
        self.num_prompts = config.num_prompts
        self.uses_kv_path = self.choose_kv_path(config, layers, backbone)
        shapes = stacked_shapes(self.layer_slots, backbone.layer_widths)
        projected = config.prompt_project_dim > 0
        if projected and len(shapes) > 1:
            raise ValueError("prompt_project_dim needs a backbone of one width; this one changes width with depth.")
        self.visual_names = tuple(shapes)
        for tensor, (rows, width) in shapes.items():
            dim = config.prompt_project_dim if projected else width
            setattr(self, tensor, nn.Parameter(torch.empty(rows, config.num_prompts, dim)))
        self.prompt_proj = nn.Linear(config.prompt_project_dim, backbone.hidden_size) if projected else None
        self.prompt_dropout = nn.Dropout(config.effective_prompt_dropout)
        self.reset_prompts(config, backbone)

    @staticmethod
    def choose_kv_path(config: PromptConfigBase, layers: list[int], backbone: Backbone) -> bool:
        if not backbone.spec.prompts_in_sequence:
            if config.prompt_path == "sequence":
                raise ValueError(
                    f"{backbone.model_type} attends within windows, so prompt tokens cannot join the sequence: "
                    "prompt_path='sequence' is not available; use 'auto' (prompts as keys/values in every window)."
                )
            return True
        if not config.deep or config.prompt_path == "sequence":
            return False
        exact = kv_path_is_exact(layers, backbone.num_layers)
        if config.prompt_path == "kv" and not exact:
            raise ValueError(
                f"prompt_path='kv' is exact only when the prompted layers run to the last layer; {layers} leaves "
                "a gap where prompt outputs flow into unprompted layers. Use prompt_path='sequence' or 'auto'."
            )
        return exact

    @torch.no_grad()
    def reset_prompts(self, config: PromptConfigBase, backbone: Backbone) -> None:
        for name in self.visual_names:
            tensor = getattr(self, name)
            if tensor.is_meta:
                return
            if config.prompt_init == "xavier_patch":
                # Xavier-uniform as if each prompt were a patch-embedding kernel (fan_in = C * ph * pw).
                bound = math.sqrt(6.0 / (backbone.patch_fan_in + tensor.shape[-1]))
                tensor.uniform_(-bound, bound)
            elif config.prompt_init == "normal":
                tensor.normal_(0.0, 0.02)
            else:
                tensor.zero_()
        if self.prompt_proj is not None:
            nn.init.kaiming_normal_(self.prompt_proj.weight, a=0, mode="fan_out")

    @property
    def needs_extra_key_values(self) -> bool:
        """Whether the attention must be routed through :func:`vpt_peft.attention.prompted_attention`."""
        return self.uses_kv_path and self.num_prompts > 0

    @property
    def sequence_tokens(self) -> int:
        """How many prompt tokens this bank leaves in the residual stream (0 on the key-value path)."""
        return 0 if self.uses_kv_path else self.num_prompts

    def transform(self, prompts: torch.Tensor) -> torch.Tensor:
        """Hook for methods that map the prompts before use (VFPT's Fourier transform)."""
        return prompts

    def prompts(self, slot: Slot, batch_size: int, dtype: torch.dtype) -> torch.Tensor:
        """The (batch, p, d) prompts stored at ``slot`` (see :func:`stacked_slots`), in the model's dtype."""
        tensor, row = slot
        prompts = getattr(self, tensor)[row]
        if self.prompt_proj is not None:
            prompts = self.prompt_proj(prompts)
        if not (self.training and self.prompt_dropout.p > 0):
            batch_size = 1  # identical for every sample: let the caller broadcast
        prompts = self.prompt_dropout(prompts.unsqueeze(0).expand(batch_size, -1, -1))
        return self.transform(prompts).to(dtype)

    def extra_key_values(
        self,
        layer_index: int,
        norm: nn.Module,
        attention: nn.Module,
        batch_size: int,
        dtype: torch.dtype,
        k_proj: str,
        v_proj: str,
        head_dim: int,
    ) -> Optional[ExtraKeyValues]:
        """Keys/values that layer ``layer_index``'s real tokens attend to besides their own."""
        slot = self.layer_slots.get(layer_index)
        if not self.uses_kv_path or slot is None or self.num_prompts == 0:
            return None
        normed = norm(self.prompts(slot, batch_size, dtype))
        key = split_heads(getattr(attention, k_proj)(normed), head_dim)
        value = split_heads(getattr(attention, v_proj)(normed), head_dim)
        return ExtraKeyValues(key, value)


def _open_mask_slots(args: tuple, kwargs: dict, length: int, count: int, at: int) -> tuple[tuple, dict]:
    """Open prompt slots in a block's attention mask that the model built for ``length`` real tokens."""

    def widen(mask: Any) -> Any:
        if isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.shape[-1] == length:
            return open_prompt_slots(mask, count, at)
        return mask

    if len(args) > 1:
        return (args[0], widen(args[1]), *args[2:]), kwargs
    if "attention_mask" in kwargs:
        kwargs = {**kwargs, "attention_mask": widen(kwargs["attention_mask"])}
    return args, kwargs


def _owned_by(hook: Any, owner: object) -> bool:
    func = hook.func if isinstance(hook, functools.partial) else hook
    return getattr(func, "__self__", None) is owner


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


class PromptAdapterLayer(nn.Module, BaseTunerLayer):
    """The tuner layer of a prompt method: owns one :class:`PromptBank` per adapter and the hooks."""

    adapter_layer_names: tuple[str, ...] = ("vpt_prompts",)
    bank_cls: type[PromptBank] = PromptBank

    def __init__(self, backbone: Backbone) -> None:
        nn.Module.__init__(self)
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._active_adapter = "default"
        self.kwargs: dict = {}
        setattr(self, self.adapter_layer_names[0], nn.ModuleDict())
        self.num_special_tokens = backbone.num_special_tokens
        self.head_dims = backbone.layer_head_dims
        self.k_proj, self.v_proj = backbone.spec.k_proj, backbone.spec.v_proj
        self.strips_at_final_norm = backbone.spec.final_norm is not None
        self.mixed_batch: Optional[MixedBatch] = None  # set only while a mixed-task batch runs

    @property
    def banks(self) -> nn.ModuleDict:
        return getattr(self, self.adapter_layer_names[0])

    def make_bank(self, config: PromptConfigBase, backbone: Backbone) -> PromptBank:
        """Build one adapter's bank (methods whose banks need more than the config override this)."""
        return self.bank_cls(config, backbone)

    def update_layer(self, adapter_name: str, config: PromptConfigBase, backbone: Backbone) -> None:
        bank = self.make_bank(config, backbone)
        reference = backbone.sub(backbone.spec.embeddings)
        device = next((p.device for p in reference.parameters() if not p.is_meta), None)
        if device is not None and not any(p.is_meta for p in bank.parameters()):
            bank.to(device)
        self.banks[adapter_name] = bank
        self.set_adapter(self.active_adapters)

    def _get_base_layer_device_and_dtype(self, base_layer: nn.Module):
        # There is no wrapped base layer (peft's default would recurse through BaseTunerLayer.weight): keep the
        # prompts on their device and in float32; the hooks cast them to the activations' dtype.
        return next((p.device for p in self.parameters() if not p.is_meta), None), None

    def merge(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError("Prompts are extra tokens, not weight deltas, so they cannot be merged; use unload().")

    def unmerge(self) -> None:
        return None

    # ----------------------------------------------------------------------------------------- hooks
    def register_hooks(self, backbone: Backbone) -> None:
        spec = backbone.spec
        embeddings_hook = functools.partial(self._embeddings_hook, backbone.layers)
        backbone.sub(spec.embeddings).register_forward_hook(embeddings_hook)
        for index, layer in enumerate(backbone.layers):
            layer.register_forward_pre_hook(functools.partial(self._layer_pre_hook, index), with_kwargs=True)
            attention = _get_path(layer, spec.attention)
            norm = _get_path(layer, spec.attention_norm)
            attention.register_forward_pre_hook(
                functools.partial(self._attention_pre_hook, index, norm), with_kwargs=True
            )
            attention.register_forward_hook(self._attention_post_hook)
            bias = _get_path(layer, spec.relative_position_bias) if spec.relative_position_bias else None
            if bias is not None:
                bias.register_forward_hook(functools.partial(self._bias_hook, index))
        if spec.final_norm is not None:
            backbone.sub(spec.final_norm).register_forward_hook(self._final_norm_hook)
        backbone.module.register_forward_hook(self._backbone_output_hook)

    def remove_hooks(self, root: nn.Module) -> None:
        remove_owned_hooks(self, root)
        for module in root.modules():
            module.__dict__.pop(EXTRA_KV_ATTRIBUTE, None)

    def active_bank(self) -> Optional[PromptBank]:
        if self.disable_adapters:
            return None
        names = self.active_adapters
        if len(names) > 1:
            raise ValueError(f"Only one prompt adapter can be active at a time, got {names}.")
        if not names or names[0] not in self.banks:
            return None
        return self.banks[names[0]]

    def prompt_slots(self) -> int:
        """Prompt slots in the residual stream of the running forward, stripped from what the model returns."""
        if self.mixed_batch is not None:
            return self.mixed_batch.sequence_slots(self)[0]
        bank = self.active_bank()
        return 0 if bank is None else bank.sequence_tokens

    def _layer_pre_hook(self, index: int, module: nn.Module, args: tuple, kwargs: dict):
        if self.mixed_batch is not None:
            return self.mixed_batch.layer_inputs(self, index, args, kwargs, _open_mask_slots)
        bank = self.active_bank()
        if bank is None:
            return None
        p, n = bank.sequence_tokens, self.num_special_tokens
        if p == 0 or index < bank.first_layer:
            return args, kwargs
        hidden = args[0]
        slot = bank.layer_slots.get(index)
        if slot is not None:
            prompts = bank.prompts(slot, hidden.shape[0], hidden.dtype)
            splice = insert_prompts if index == bank.first_layer else replace_prompts
            hidden = splice(hidden, prompts, at=n)
        return _open_mask_slots((hidden, *args[1:]), kwargs, hidden.shape[1] - p, p, n)

    def _embeddings_hook(self, layers: list[nn.Module], module: nn.Module, args: tuple, output: Any):
        """Make the blocks' input require grad when checkpointed blocks must pass gradients to key-value prompts.

        Reentrant checkpointing only backpropagates into a block whose inputs require grad; with no prompt
        in the residual stream nothing does, and the key-value prompts would get no gradient. This is done on
        the embeddings' output because it is outside every block's checkpoint: transformers < 5.23 checkpoints
        a block's ``__call__``, so the block's own pre-hooks run inside the checkpoint, too late.
        """
        bank = self.active_bank() if self.mixed_batch is None else None
        if bank is None or not bank.needs_extra_key_values or not torch.is_grad_enabled():
            return None
        if not any(getattr(layer, "gradient_checkpointing", False) and layer.training for layer in layers):
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        if hidden.requires_grad:
            return None
        hidden = hidden.detach().requires_grad_()
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def _attention_pre_hook(self, index: int, norm: nn.Module, module: nn.Module, args: tuple, kwargs: dict):
        hidden = args[0] if args else kwargs["hidden_states"]
        if self.mixed_batch is not None:
            set_extra_key_values(module, self.mixed_batch.key_groups(self, index, norm, module, hidden))
            return None
        bank = self.active_bank()
        extra = None
        if bank is not None:
            extra = bank.extra_key_values(
                index, norm, module, hidden.shape[0], hidden.dtype, self.k_proj, self.v_proj, self.head_dims[index]
            )
        if extra is not None:
            ensure_installed(module.config)
        set_extra_key_values(module, extra)
        return None

    def _attention_post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        # Drop the reference so the prompts' graph is not kept alive until the next call.
        set_extra_key_values(module, None)

    def _strip(self, sequence: torch.Tensor, count: int) -> torch.Tensor:
        return strip_prompts(sequence, count, at=self.num_special_tokens)

    def _bias_hook(self, index: int, module: nn.Module, args: tuple, bias: torch.Tensor):
        """Relative position biases are built for the real tokens: prompts get zero bias (no position)."""
        if self.mixed_batch is not None:
            count, opening = self.mixed_batch.sequence_slots(self)
            count = count if 0 <= opening <= index else 0
        else:
            bank = self.active_bank()
            count = 0 if bank is None or index < bank.first_layer else bank.sequence_tokens
        return open_prompt_slots(bias, count, at=self.num_special_tokens) if count else None

    def _final_norm_hook(self, module: nn.Module, args: tuple, output: torch.Tensor):
        count = self.prompt_slots()
        return self._strip(output, count) if count else None

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
