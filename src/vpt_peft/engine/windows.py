"""Prompts on windowed-attention backbones (Swin), computing what the official code computes (spec methods.md §1.9).

The official prompted Swin treats prompts as real tokens: in every block they pass the block's first norm, are
prepended to *every* window as queries and keys/values (zero relative-position bias, never blocked by the
shifted-window mask), their outputs are averaged over the sample's windows, then get the residual and the MLP
like any token; each patch merging widens them to four copies through the same norm and reduction; the final
norm and the mean pool include them. Shallow prompts are one tensor carried through all of it; deep prompts
are replaced before every block, so only the last block's prompt outputs reach the pool.

HF's Swin block reshapes its input to the patch grid, so prompt tokens cannot ride in the block's sequence as on
ViT. :class:`WindowedPrompts` carries them *beside* it, with hooks on the unmodified model:

* block pre-hook: the block's own prompts (deep) replace the carried ones, or are kept for the key-value read;
* attention pre-hook: the normed prompts are prepended to every window, the shift mask (and, by the bias hook,
  the relative bias) get zero rows/columns for them; prompts read as keys/values are parked on the attention
  (:mod:`vpt_peft.engine.attention`);
* attention post-hook: the prompt rows are cut off the output and averaged over each sample's windows;
* block post-hook: residual and MLP for the prompts, with the block's own modules;
* merge post-hook: the stage's patch merging on four copies of each prompt;
* final-norm hook: the normed prompts join the sequence the model pools; the backbone's output hook removes
  them from ``last_hidden_state``, so every output has the base model's shapes.

Each sample is computed on its own. (The official code expands the prompts window-major while its windows are
batch-major, so at batch > 1 one sample's windows feed another sample's prompts; that is a bug, and this is the
official function at batch 1.) Prompt dropout is drawn as the official code draws it: per sample for the first
prompted block's tensor (the official shallow tensor, inserted with the patches), per tensor for every later
block's own prompts.

The fast path (:func:`block_modes`): a block whose prompt outputs are discarded (the next block brings its own
prompts) only needs the prompts as keys/values of its windows, which is exact and skips their queries in every
window, their averaging and their MLP. Deep prompts therefore run as tokens only in the last block.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional, Protocol

import torch
from torch import nn

from .attention import ExtraKeyValues, KeyGroup, ensure_installed, prompt_key_values, set_extra_key_values
from .backbones import Backbone, get_path
from .compat import checkpointing_enable_call
from .config import KV_ONLY, PromptConfigBase
from .tokens import open_prompt_slots

SEQUENCE, KV = "sequence", "kv"


class PromptBank(Protocol):
    """What the hooks read from a bank (:class:`vpt_peft.engine.bank.PromptBank`; not imported: it imports this)."""

    layer_rows: dict[int, tuple[str, int]]
    first_layer: int
    num_prompts: int
    block_modes: dict[int, str]
    needs_extra_key_values: bool

    def prompts(self, where: tuple[str, int], batch_size: int, dtype: torch.dtype) -> torch.Tensor: ...

    def kv_prompt_key_values(self, layer_index: int, rows: int, dtype: torch.dtype) -> Optional[ExtraKeyValues]: ...


class PromptAdapterLayer(Protocol):
    """What the hooks read from their sidecar (:class:`vpt_peft.engine.sidecar.PromptAdapterLayer`)."""

    mixed_batch: Any
    k_proj: str
    v_proj: str
    head_dims: list[int]

    def active_bank(self) -> Optional[PromptBank]: ...


def block_modes(config: PromptConfigBase, layers: list[int], backbone: Backbone) -> dict[int, str]:
    """How each block from the first prompted one on meets the prompts: ``"sequence"`` (as tokens) or ``"kv"``.

    A block may read its prompts as keys/values only when it has its own prompts and so has the next block
    (whose own prompts replace this block's prompt outputs before anything reads them); that is exact.
    ``prompt_path="sequence"`` runs every block with prompt tokens (the official computation, step by step);
    ``"kv_only"`` reads every prompted block's prompts as keys/values and nothing else (not the official
    function: prompt outputs are never computed, carried or pooled).
    """
    if config.prompt_path == KV_ONLY:
        return dict.fromkeys(layers, KV)
    prompted, fast = set(layers), config.prompt_path != SEQUENCE
    return {
        i: KV if fast and i in prompted and i + 1 in prompted else SEQUENCE
        for i in range(layers[0], backbone.num_layers)
    }


@dataclass
class _Task:
    """One adapter's samples in the running batch (``samples`` None: all of them; ``bank`` None: the base model)."""

    bank: Optional[PromptBank]
    samples: Optional[torch.Tensor]
    count: int


class _Call:
    """State of one forward call, keyed by block index so that recomputation under (non-reentrant) gradient
    checkpointing reads exactly what the first pass read."""

    def __init__(self, tasks: list[_Task], batch: int) -> None:
        self.tasks, self.batch = tasks, batch
        self.streams: dict[int, dict[int, torch.Tensor]] = {}  # block -> task -> (1 or n, p, C) entering it
        self.key_values: dict[int, dict[int, torch.Tensor]] = {}  # block -> task -> prompts read as keys/values
        self.slots: dict[int, int] = {}  # block -> prompt slots prepended to its windows
        self.attended: dict[int, torch.Tensor] = {}  # block -> (B, slots, C) window-averaged prompt outputs
        self.pooled_slots = 0


class WindowedPrompts:
    """The hooks of one sidecar on a windowed backbone (see the module docstring).

    Hooks are bound methods of this object (never closures), which the sidecar holds, so deep copies and pickles
    of the model carry their own; the per-call state is not copied.
    """

    def __init__(self, sidecar: PromptAdapterLayer, backbone: Backbone) -> None:
        self.sidecar = sidecar
        self.spec = backbone.spec
        self.num_blocks = backbone.num_layers
        self.call: Optional[_Call] = None
        self.keep_state = False
        # Blocks and stages that can run under gradient checkpointing (checked at the start of every call).
        self.checkpointable = [m for m in backbone.module.modules() if hasattr(m, "gradient_checkpointing")]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "call": None}

    # ------------------------------------------------------------------------------------------ registration
    def register_hooks(self, backbone: Backbone) -> None:
        spec, windows = self.spec, self.spec.windows
        backbone.module.register_forward_pre_hook(self._start)
        for index, block in enumerate(backbone.layers):
            block.register_forward_pre_hook(functools.partial(self._block_pre_hook, index), with_kwargs=True)
            block.register_forward_hook(functools.partial(self._block_post_hook, index))
            attention = get_path(block, spec.attention)
            norm = get_path(block, spec.attention_norm)
            attention.register_forward_pre_hook(
                functools.partial(self._attention_pre_hook, index, norm), with_kwargs=True
            )
            attention.register_forward_hook(functools.partial(self._attention_post_hook, index))
            if spec.relative_position_bias:
                bias = get_path(block, spec.relative_position_bias)
                bias.register_forward_hook(functools.partial(self._bias_hook, index))
        blocks, after = {id(block) for block in backbone.layers}, 0
        for stage in get_path(backbone.module, windows.stages):
            after += sum(id(module) in blocks for module in stage.modules())
            merge = getattr(stage, windows.merge, None)
            if merge is not None:
                merge.register_forward_hook(functools.partial(self._merge_hook, after))
        if spec.final_norm is not None:
            backbone.sub(spec.final_norm).register_forward_hook(self._final_norm_hook)
        backbone.module.register_forward_hook(self._finish)

    # ------------------------------------------------------------------------------------------ the call
    def _tasks(self, batch: int, device: torch.device) -> list[_Task]:
        mixed = self.sidecar.mixed_batch
        if mixed is None:
            bank = self.sidecar.active_bank()
            return [] if bank is None else [_Task(bank, None, batch)]
        tasks = []
        task_samples = mixed.row_tasks(len(mixed.sample_tasks))[1]  # index tensors built from the names
        for task, bank in enumerate(mixed.banks(self.sidecar)):
            samples = task_samples[task].to(device)
            tasks.append(_Task(bank, samples, len(samples)))
        return tasks

    def _start(self, module: nn.Module, args: tuple) -> None:
        self.call, self.keep_state = None, False  # the call is set up by block 0, which knows the batch size
        checkpointed = [m for m in self.checkpointable if m.gradient_checkpointing is True and m.training]
        bank = self.sidecar.active_bank() if self.sidecar.mixed_batch is None else None
        if not checkpointed or not torch.is_grad_enabled() or bank is None:
            return
        if not (bank.num_prompts or bank.needs_extra_key_values):
            return
        # Hooks inside checkpointed blocks and stages run again when backward recomputes them: keep this call's
        # state until the next call, so that they read what the first pass read.
        self.keep_state = True
        for m in checkpointed:
            func = getattr(m, "_gradient_checkpointing_func", None)
            if getattr(func, "keywords", {}).get("use_reentrant", True):
                raise ValueError(
                    "Swin prompts travel beside the checkpointed blocks and stages, which reentrant checkpointing "
                    "cannot differentiate (their forward runs without autograd): use "
                    f"{checkpointing_enable_call(False)}, the transformers default."
                )

    def _finish(self, module: nn.Module, args: tuple, output: Any) -> Any:
        call, slots = self.call, 0 if self.call is None else self.call.pooled_slots
        if not self.keep_state:
            self.call = None  # do not keep the prompts' graph alive until the next call
        if call is None or slots == 0 or not hasattr(output, "keys"):
            return None
        last = output.get("last_hidden_state")
        if last is not None:
            output["last_hidden_state"] = last[:, slots:]
        return output

    def _block_pre_hook(self, index: int, module: nn.Module, args: tuple, kwargs: dict):
        hidden = args[0] if args else kwargs["hidden_states"]
        if index == 0 or self.call is None:
            self.call = _Call(self._tasks(hidden.shape[0], hidden.device), hidden.shape[0])
        call = self.call
        streams = dict(call.streams.get(index, {}))
        reads = {}
        for t, task in enumerate(call.tasks):
            bank = task.bank
            where = None if bank is None else bank.layer_rows.get(index)
            if where is None or bank.num_prompts == 0:
                continue
            # Per sample for the first prompted block (the official shallow tensor), per tensor afterwards.
            batch = task.count if index == bank.first_layer else 1
            prompts = bank.prompts(where, batch, hidden.dtype)
            if bank.block_modes[index] == SEQUENCE:
                streams[t] = prompts
            else:
                reads[t] = prompts
                streams.pop(t, None)
        call.streams[index], call.key_values[index] = streams, reads
        return None

    # ------------------------------------------------------------------------------------------ attention
    def _attention_pre_hook(self, index: int, norm: nn.Module, module: nn.Module, args: tuple, kwargs: dict):
        call = self.call
        if call is None or not call.tasks:
            return None
        windows = args[0] if args else kwargs["hidden_states"]
        rows, length, channels = windows.shape
        per_sample = rows // call.batch
        streams = call.streams.get(index, {})
        counts = {t: stream.shape[1] for t, stream in streams.items()}
        slots = max([0, *counts.values()])  # not max(..., default=0): dynamo breaks the graph on it
        call.slots[index] = slots
        extras = {t: self._extra(t, index, norm, module, per_sample, windows.dtype) for t in range(len(call.tasks))}
        self._park(module, call, counts, slots, extras, rows, length)
        if slots == 0:
            return None
        prompt_rows = self._prompt_rows(call, streams, norm, slots, channels, windows)
        windows = torch.cat([prompt_rows.repeat_interleave(per_sample, dim=0), windows], dim=1)
        mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
        mask = open_prompt_slots(mask, slots, at=0)
        rest = args[2:] if len(args) > 2 else ()
        kwargs = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "attention_mask")}
        return (windows, mask, *rest), kwargs

    def _prompt_rows(self, call: _Call, streams: dict, norm: nn.Module, slots: int, channels: int, like: torch.Tensor):
        """(B, slots, C): each sample's normed prompt tokens; in a mixed batch, zeros where its task has fewer."""
        if len(call.tasks) == 1:
            return norm(streams[0]).expand(call.batch, -1, -1)
        table = like.new_zeros(call.batch, slots, channels)
        for t, stream in streams.items():
            table[call.tasks[t].samples, : stream.shape[1]] = norm(stream).to(table.dtype)
        return table

    def _extra(
        self, t: int, index: int, norm: nn.Module, attention: nn.Module, per_sample: int, dtype: torch.dtype
    ) -> Optional[ExtraKeyValues]:
        """Task ``t``'s extra keys/values in block ``index``, batch 1 or one row per attention row of the task."""
        call, sidecar = self.call, self.sidecar
        task = call.tasks[t]
        if task.bank is None:
            return None
        visual = None
        prompts = call.key_values[index].get(t)
        if prompts is not None:
            head_dim = sidecar.head_dims[index]
            visual = prompt_key_values(prompts, norm, attention, sidecar.k_proj, sidecar.v_proj, head_dim)
            if visual.key.shape[0] > 1:
                visual = ExtraKeyValues(*(x.repeat_interleave(per_sample, dim=0) for x in (visual.key, visual.value)))
        kv = task.bank.kv_prompt_key_values(index, task.count * per_sample, dtype)
        if kv is None or visual is None:
            return visual if kv is None else kv
        return kv.cat(visual)

    def _park(self, module: nn.Module, call: _Call, counts: dict, slots: int, extras: dict, rows: int, length: int):
        """Hand the attention its extra keys/values; in a mixed batch, one key layout per group of tasks."""
        if len(call.tasks) == 1:
            extra = extras[0]
            if extra is not None:
                ensure_installed(module.config)
            set_extra_key_values(module, extra)
            return
        layouts: dict[tuple[int, int], list[int]] = {}
        for t in range(len(call.tasks)):
            extra = extras[t]
            layouts.setdefault((counts.get(t, 0), 0 if extra is None else extra.num_tokens), []).append(t)
        if len(layouts) == 1 and next(iter(layouts)) == (slots, 0):
            set_extra_key_values(module, None)
            return
        per_sample = rows // call.batch
        device = call.tasks[0].samples.device
        groups = []
        for (real, _), tasks in layouts.items():
            samples = torch.cat([call.tasks[t].samples for t in tasks])
            group_rows = (samples[:, None] * per_sample + torch.arange(per_sample, device=device)).flatten()
            positions = None
            if real < slots:
                total = slots + length
                positions = torch.cat([torch.arange(real, device=device), torch.arange(slots, total, device=device)])
            groups.append(KeyGroup(group_rows, positions, self._gather(call, tasks, extras, per_sample)))
        ensure_installed(module.config)
        set_extra_key_values(module, groups)

    @staticmethod
    def _gather(call: _Call, tasks: list[int], extras: dict, per_sample: int) -> Optional[ExtraKeyValues]:
        """The group's extra keys/values, one per attention row in the group's row order."""
        if extras[tasks[0]] is None:
            return None
        keys, values = [], []
        for t in tasks:
            extra, count = extras[t], call.tasks[t].count * per_sample
            keys.append(extra.key.expand(count, -1, -1, -1))
            values.append(extra.value.expand(count, -1, -1, -1))
        return ExtraKeyValues(torch.cat(keys), torch.cat(values))

    def _bias_hook(self, index: int, module: nn.Module, args: tuple, bias: torch.Tensor):
        """The relative position bias is built for the window's patches: prompts get zero rows and columns."""
        slots = 0 if self.call is None else self.call.slots.get(index, 0)
        return open_prompt_slots(bias, slots, at=0) if slots else None

    def _attention_post_hook(self, index: int, module: nn.Module, args: tuple, output: Any):
        set_extra_key_values(module, None)  # do not keep the prompts' graph alive until the next call
        call = self.call
        slots = 0 if call is None else call.slots.get(index, 0)
        if slots == 0:
            return None
        out, *rest = output
        prompts = out[:, :slots]
        call.attended[index] = prompts.reshape(call.batch, -1, slots, prompts.shape[-1]).mean(1)
        return (out[:, slots:], *rest)

    # ------------------------------------------------------------------------------------------ the rest of a block
    def _block_post_hook(self, index: int, module: nn.Module, args: tuple, output: Any) -> None:
        call = self.call
        if call is None:
            return None
        windows = self.spec.windows
        attended = call.attended.pop(index, None)
        updated = {}
        for t, stream in call.streams.get(index, {}).items():
            samples, p = call.tasks[t].samples, stream.shape[1]
            branch = attended[:, :p] if samples is None else attended[samples, :p]
            for name in windows.attention_branch:
                branch = getattr(module, name)(branch)
            stream = stream + branch.to(stream.dtype)
            mlp = get_path(module, windows.mlp)(get_path(module, windows.mlp_norm)(stream))
            for name in windows.mlp_branch:
                mlp = getattr(module, name)(mlp)
            updated[t] = stream + mlp
        call.streams[index + 1] = updated
        return None

    def _merge_hook(self, after: int, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        """Prompts through the stage's patch merging: four copies of each, as a 2x2 patch of equal tokens."""
        call = self.call
        if call is None:
            return None
        merged = {}
        for t, stream in call.streams.get(after, {}).items():
            batch, p, channels = stream.shape
            quad = stream.reshape(batch * p, 1, channels).repeat(1, 4, 1)
            merged[t] = module.forward(quad, (2, 2)).reshape(batch, p, -1)
        call.streams[after] = merged
        return None

    def _final_norm_hook(self, module: nn.Module, args: tuple, output: torch.Tensor):
        """The normed prompts join the sequence the model mean-pools (removed again from ``last_hidden_state``)."""
        call = self.call
        streams = {} if call is None else call.streams.get(self.num_blocks, {})
        if not streams:
            return None
        if len(call.tasks) == 1:
            prompts = module.forward(streams[0]).expand(output.shape[0], -1, -1)
        else:
            prompts = self._pooled_prompt_slots(call, streams, module, output)
        call.pooled_slots = prompts.shape[1]
        return torch.cat([prompts.to(output.dtype), output], dim=1)

    @staticmethod
    def _pooled_prompt_slots(call: _Call, streams: dict, norm: nn.Module, output: torch.Tensor) -> torch.Tensor:
        """Mixed batch: every sample gets as many slots as the largest task; a sample's unused slots hold the mean
        of its own tokens, which leaves its mean pool exactly the mean over its real tokens."""
        slots = max(stream.shape[1] for stream in streams.values())
        table = output.new_zeros(output.shape[0], slots, output.shape[2])
        real = torch.zeros(output.shape[0], slots, 1, dtype=torch.bool, device=output.device)
        for t, stream in streams.items():
            samples, p = call.tasks[t].samples, stream.shape[1]
            table[samples, :p] = norm.forward(stream).to(output.dtype)
            real[samples, :p] = True
        counts = real.sum(1) + output.shape[1]
        mean = (table.sum(1, keepdim=True) + output.sum(1, keepdim=True)) / counts[:, None]
        return torch.where(real, table, mean)
