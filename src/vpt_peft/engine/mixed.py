"""Mixed-task batches: ``model(pixel_values, adapter_names=[...])``, one adapter name per sample.

peft's convention for LoRA, carried over to prompts. Each sample gets its own adapter's prompts and head;
``"__base__"`` runs the frozen base model (no prompts, the original head).

How one batch holds tasks with different prompts (the sequence length is one per batch):

* **Sequence prompts** (shallow, or deep on the in-sequence path): the batch reserves ``P`` slots after the
  special tokens, ``P`` = the largest prompt count in the batch. A sample whose task has ``p < P`` prompts
  (or none: ``__base__``, key-value-path tasks, layers before its task's first prompted layer) leaves the
  other slots as padding. Token-wise modules (norms, MLPs, projections) run on the padded batch; each
  attention runs once per *key layout* (tasks with the same number of real prompt tokens and extra keys)
  on exactly the real positions of its samples (:class:`~vpt_peft.engine.attention.KeyGroup`), so padding never
  enters a softmax, as a key or as a query. The slots are stripped at the end like ordinary prompts.
* **Key-value prompts** (deep fast path, E2VPT): each task's extra keys/values are computed once and
  gathered per sample; tasks with different extra-key counts fall into different key layouts.

A batch whose tasks share one layout (the usual serving case: equal prompt counts) runs every attention
as one call, as a single-task batch does. Grouping is per task, never per sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Protocol

import torch
from peft.utils.other import ModulesToSaveWrapper
from torch import nn

from .attention import ExtraKeyValues, KeyGroup, ensure_installed_for
from .bank import PromptBank
from .heads import BASE_ADAPTER, head_width
from .tokens import insert_prompts, replace_prompts, widen_block_mask


class PromptAdapterLayer(Protocol):
    """What a mixed batch reads from a sidecar (:class:`vpt_peft.engine.sidecar.PromptAdapterLayer`)."""

    banks: nn.ModuleDict
    num_special_tokens: int
    k_proj: str
    v_proj: str
    head_dims: list[int]
    mixed_batch: Optional[MixedBatch]


class SingleTaskPlan:
    """A forward with one adapter for the whole batch (or none: disabled): what every ordinary call runs.

    A plan answers the sidecar's hooks: what enters a block (:meth:`layer_inputs`), which extra keys/values an
    attention gets (:meth:`extra_key_values`), how many prompt slots the sequence holds (:meth:`sequence_slots`).
    :class:`MixedBatch` answers the same questions for a batch whose samples run different adapters.
    """

    def __init__(self, bank: Optional[PromptBank]) -> None:
        self.bank = bank

    def sequence_slots(self, layer: PromptAdapterLayer) -> tuple[int, int]:
        """(prompt slots in the sequence, the block that opens them); (0, -1) when none."""
        bank = self.bank
        return (0, -1) if bank is None or not bank.sequence_tokens else (bank.sequence_tokens, bank.first_layer)

    def layer_inputs(self, layer: PromptAdapterLayer, index: int, block: nn.Module, args: tuple, kwargs: dict) -> Any:
        """Insert the prompts at the first prompted block, overwrite them at every later one."""
        bank = self.bank
        if bank is None:
            return None
        p, n = bank.sequence_tokens, layer.num_special_tokens
        if p == 0 or index < bank.first_layer:
            return args, kwargs
        hidden = args[0]
        row = bank.layer_rows.get(index)
        if row is not None:
            prompts = bank.prompts(row, hidden.shape[0], hidden.dtype)
            splice = insert_prompts if index == bank.first_layer else replace_prompts
            hidden = splice(hidden, prompts, at=n)
        return widen_block_mask((hidden, *args[1:]), kwargs, hidden.shape[1] - p, p, n)

    def embeddings_output(self, blocks: Sequence[nn.Module], output: Any) -> Any:
        """The embeddings' output, made to require grad when checkpointed blocks must pass gradients to prompts.

        Reentrant checkpointing only backpropagates into a block whose inputs require grad. Key-value prompts
        never enter the residual stream, and sequence prompts enter it in a block's pre-hook, which
        transformers < 5.23 runs inside the checkpoint (it checkpoints the block's ``__call__``), where
        reentrant checkpointing's forward records no graph: either way no block input would require grad and
        the prompts would get none. This runs on the embeddings' output because that is outside every block's
        checkpoint. Detaching loses nothing: an output that does not require grad has no graph behind it.
        """
        bank = self.bank
        if bank is None or not (bank.needs_extra_key_values or bank.sequence_tokens) or not torch.is_grad_enabled():
            return None
        if not any(getattr(block, "gradient_checkpointing", False) and block.training for block in blocks):
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        if hidden.requires_grad:
            return None
        hidden = hidden.detach().requires_grad_()
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def extra_key_values(
        self, layer: PromptAdapterLayer, index: int, norm: nn.Module, attention: nn.Module, hidden: torch.Tensor
    ) -> Optional[ExtraKeyValues]:
        """The bank's extra keys/values for block ``index`` (key-value prompts, the fast path), if any."""
        if self.bank is None:
            return None
        extra = self.bank.extra_key_values(
            index, norm, attention, hidden.shape[0], hidden.dtype, layer.k_proj, layer.v_proj, layer.head_dims[index]
        )
        if extra is not None:
            ensure_installed_for(attention)
        return extra


class MixedBatch:
    """Which sample runs which adapter, for one forward call (set on every prompt layer while it runs)."""

    def __init__(
        self, adapter_names: Sequence[str], device: Optional[torch.device], pad_widths: Optional[dict] = None
    ) -> None:
        self.adapter_names = list(adapter_names)
        self.pad_widths: dict[str, int] = pad_widths or {}  # head wrapper path -> the batch's widest head there
        self.names = list(dict.fromkeys(adapter_names))  # the batch's tasks, in order of first appearance
        index = {name: i for i, name in enumerate(self.names)}
        self.sample_tasks = [index[name] for name in adapter_names]  # task of each sample, as plain ints
        self.task = torch.tensor(self.sample_tasks, device=device)  # (B,) task per sample
        self._layouts: dict[tuple, tuple] = {}
        self._row_tasks: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}

    def row_tasks(self, rows: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(task of each attention row, each task's rows) for an attention call over ``rows`` rows.

        Windowed attention (Swin) runs ``B * windows`` rows, sample-major; every other backbone ``B``. The index
        tensors are built from the names in Python, not found in a tensor (``nonzero``), so their sizes are known
        when tracing: a compiled model routes a mixed batch without a graph break.
        """
        if rows not in self._row_tasks:
            batch = len(self.sample_tasks)
            if rows % batch:
                raise ValueError(f"An attention over {rows} rows cannot be split into {batch} samples.")
            row_task = [task for task in self.sample_tasks for _ in range(rows // batch)]
            device = self.task.device
            task_rows = [
                torch.tensor([r for r, t in enumerate(row_task) if t == i], dtype=torch.long, device=device)
                for i in range(len(self.names))
            ]
            self._row_tasks[rows] = (torch.tensor(row_task, device=device), task_rows)
        return self._row_tasks[rows]

    def banks(self, layer: PromptAdapterLayer) -> list[Optional[PromptBank]]:
        """Each task's bank in ``layer`` (``None``: the base model, or an adapter this layer does not hold)."""
        return [layer.banks[name] if name in layer.banks else None for name in self.names]

    def sequence_slots(self, layer: PromptAdapterLayer) -> tuple[int, int]:
        """(slots the batch reserves in the sequence, the block that opens them); (0, -1) when none."""
        banks = [bank for bank in self.banks(layer) if bank is not None and bank.sequence_tokens]
        if not banks:
            return 0, -1
        return max(bank.sequence_tokens for bank in banks), min(bank.first_layer for bank in banks)

    # ---------------------------------------------------------------------------------- sequence path
    def embeddings_output(self, blocks: Sequence[nn.Module], output: Any) -> None:
        """Nothing: a mixed batch's key-value prompts get no help under reentrant checkpointing (serving)."""
        return None

    def layer_inputs(self, layer: PromptAdapterLayer, index: int, block: nn.Module, args: tuple, kwargs: dict) -> Any:
        """Open the slots at the first prompted block, then write each task's prompts into its samples' slots."""
        slots, opening = self.sequence_slots(layer)
        if slots == 0 or index < opening:
            return None
        hidden, n = args[0], layer.num_special_tokens
        if index == opening:
            padding = hidden.new_zeros(hidden.shape[0], slots, hidden.shape[2])
            hidden = torch.cat([hidden[:, :n], padding, hidden[:, n:]], dim=1)
        writers = [
            (task, bank, bank.layer_rows[index])
            for task, bank in enumerate(self.banks(layer))
            if bank is not None and bank.sequence_tokens and index in bank.layer_rows
        ]
        if writers:
            table = hidden.new_zeros(len(self.names), slots, hidden.shape[2])
            write = torch.zeros(len(self.names), slots, dtype=torch.bool, device=hidden.device)
            for task, bank, slot in writers:
                table[task, : bank.num_prompts] = bank.prompts(slot, 1, hidden.dtype)[0]
                write[task, : bank.num_prompts] = True
            region = torch.where(write[self.task][..., None], table[self.task], hidden[:, n : n + slots])
            hidden = torch.cat([hidden[:, :n], region, hidden[:, n + slots :]], dim=1)
        return widen_block_mask((hidden, *args[1:]), kwargs, hidden.shape[1] - slots, slots, n)

    # ---------------------------------------------------------------------------------- attention
    def extra_key_values(
        self, layer: PromptAdapterLayer, index: int, norm: nn.Module, attention: nn.Module, hidden: torch.Tensor
    ) -> Optional[list[KeyGroup]]:
        """The key layouts of block ``index``'s attention, or ``None`` when it is the base model's for all."""
        slots, opening = self.sequence_slots(layer)
        open_slots = slots if 0 <= opening <= index else 0
        layouts: dict[tuple[int, int], list[int]] = {}
        extras: list[Optional[ExtraKeyValues]] = []
        for task, bank in enumerate(self.banks(layer)):
            extra = None
            if bank is not None:
                extra = bank.extra_key_values(
                    index, norm, attention, 1, hidden.dtype, layer.k_proj, layer.v_proj, layer.head_dims[index]
                )
            real = bank.sequence_tokens if bank is not None and open_slots and index >= bank.first_layer else 0
            extras.append(extra)
            layouts.setdefault((real, 0 if extra is None else extra.num_tokens), []).append(task)
        if len(layouts) == 1 and next(iter(layouts))[0] == open_slots and all(e is None for e in extras):
            return None
        ensure_installed_for(attention)
        groups = []
        for (real, _), tasks in layouts.items():
            rows, positions = self._layout(tuple(tasks), real, open_slots, layer.num_special_tokens, hidden.shape[:2])
            groups.append(KeyGroup(rows, positions, self._gather(extras, tasks, hidden.shape[0])))
        return groups

    def _layout(self, tasks: tuple[int, ...], real: int, slots: int, n: int, shape: torch.Size):
        """(rows, positions) of a layout: ``None`` for all rows / all positions (cached: blocks repeat them)."""
        key = (tasks, real, slots, tuple(shape))
        if key not in self._layouts:
            task_rows = self.row_tasks(shape[0])[1]
            length = shape[1]
            rows = None if len(tasks) == len(self.names) else torch.cat([task_rows[t] for t in tasks])
            positions = None
            if real < slots:
                device = self.task.device
                positions = torch.cat(
                    [torch.arange(n + real, device=device), torch.arange(n + slots, length, device=device)]
                )
            self._layouts[key] = (rows, positions)
        return self._layouts[key]

    def _gather(self, extras: list[Optional[ExtraKeyValues]], tasks: list[int], rows: int) -> Optional[ExtraKeyValues]:
        """One batch of extra keys/values for ``tasks``' attention rows, in the row order of their layout."""
        chosen = [extras[t] for t in tasks]
        if chosen[0] is None:
            return None
        if len(tasks) == 1:
            return chosen[0]  # batch 1: broadcast over the task's samples, as a single-task batch does
        row_task, task_rows = self.row_tasks(rows)
        if len(tasks) == len(self.names):
            local = row_task  # rows in batch order
        else:  # the layout's rows, task after task: position i of task j's block is row j (sizes known in Python)
            blocks = [[j] * len(task_rows[t]) for j, t in enumerate(tasks)]
            local = torch.tensor([j for block in blocks for j in block], device=self.task.device)
        key = torch.cat([e.key for e in chosen])[local]
        value = torch.cat([e.value for e in chosen])[local]
        keep = None
        if any(e.keep is not None for e in chosen):
            keep = torch.cat([e.keep_mask(1) for e in chosen])[local]
        return ExtraKeyValues(key, value, keep)


def plan_mixed_batch(
    model: nn.Module, adapter_names: Sequence[str], known: Sequence[str], args: tuple, kwargs: dict
) -> MixedBatch:
    """Validate ``adapter_names`` against the model and the batch; the plan every hook reads while the batch runs."""
    adapter_names = _check_names(adapter_names, known, args, kwargs)
    if model.training:
        raise ValueError("adapter_names (mixed-task batches) is for inference: call model.eval() first.")
    pad_widths = {}
    for path, wrapper in model.named_modules():
        if not isinstance(wrapper, ModulesToSaveWrapper):
            continue
        missing = [n for n in set(adapter_names) - {BASE_ADAPTER} if n not in wrapper.modules_to_save]
        if missing:
            raise ValueError(
                f"Adapter(s) {sorted(missing)} have no copy of the head {type(wrapper.original_module).__name__}."
            )
        widths = {head_width(wrapper, name) for name in adapter_names}
        if len(widths) > 1 and None not in widths:
            if kwargs.get("labels") is not None:
                raise ValueError(
                    f"The tasks in this batch have heads of different sizes {sorted(widths)}; the model cannot "
                    "compute one loss over them. Drop labels and compute each task's loss from its logits."
                )
            pad_widths[path] = max(widths)
    device = next((p.device for p in model.parameters()), None)
    return MixedBatch(adapter_names, device, pad_widths)


def _check_names(adapter_names: Any, known: Sequence[str], args: tuple, kwargs: dict) -> list[str]:
    if isinstance(adapter_names, str) or not all(isinstance(n, str) for n in adapter_names):
        raise TypeError(f"adapter_names must be a list of adapter names, one per sample, got {adapter_names!r}.")
    adapter_names = list(adapter_names)
    unknown = sorted(set(adapter_names) - set(known) - {BASE_ADAPTER})
    if unknown:
        raise ValueError(
            f"Unknown adapter(s) {unknown} in adapter_names; this model has {sorted(known)} "
            f"(and {BASE_ADAPTER!r} for the base model)."
        )
    pixels = kwargs.get("pixel_values", args[0] if args else None)
    if isinstance(pixels, torch.Tensor) and len(pixels) != len(adapter_names):
        raise ValueError(f"adapter_names has {len(adapter_names)} names for a batch of {len(pixels)} samples.")
    return adapter_names
