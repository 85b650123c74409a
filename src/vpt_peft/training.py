"""A plain PyTorch training loop that follows the papers' recipe, for in-memory tensors or a map-style dataset.

The HF ``Trainer`` is the route for ``vpt-peft train`` (see :mod:`vpt_peft.cli`); this loop is what the sweeps
of :mod:`vpt_peft.reproduce` and the demo run, because the papers' protocol is epoch-based and small: SGD from
:func:`vpt_peft.recipes.make_optimizer`, the epoch-level warm-up + cosine stepped after each epoch, last-epoch
accuracy. Data is either ``(pixel_values, labels)`` tensors (the demo's tasks, sliced in memory) or a dataset
whose items are ``{"pixel_values": FloatTensor[C, H, W], "labels": int}`` (the benchmark loaders'), read
through a ``DataLoader``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import recipes

Tensors = tuple[torch.Tensor, torch.Tensor]
Data = Union[Tensors, Dataset]
"""What the loop reads: ``(pixel_values, labels)`` tensors or a dataset of ``{"pixel_values", "labels"}`` items."""

Scheduler = torch.optim.lr_scheduler.LRScheduler


class LabelledTensors(Dataset):
    """In-memory ``(pixel_values, labels)`` as a dataset of ``{"pixel_values", "labels"}`` items (the task
    contract's shape); the loop slices the tensors directly instead of collating items one by one."""

    def __init__(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> None:
        if len(pixel_values) != len(labels):
            raise ValueError(f"{len(pixel_values)} images but {len(labels)} labels.")
        self.pixel_values, self.labels = pixel_values, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.pixel_values[index], "labels": int(self.labels[index])}


@dataclass
class FitResult:
    """What one run produced: per-epoch loss (and eval accuracy when asked), and what the training cost.

    ``seconds`` is wall-clock time, ``cpu_seconds`` the process's CPU time (``time.process_time``) over the
    same span, ``images`` the training examples processed (epochs x set size, less with ``max_steps``).
    """

    losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    images: int = 0
    steps: int = 0


def num_examples(data: Data) -> int:
    return len(data[1]) if isinstance(data, tuple) else len(data)


def batches(
    data: Data,
    batch_size: int,
    generator: Optional[torch.Generator] = None,
    num_workers: int = 0,
    device: Optional[torch.device] = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """``{"pixel_values", "labels"}`` batches of ``data`` on ``device``, shuffled by ``generator`` when given."""
    if isinstance(data, LabelledTensors):
        data = (data.pixel_values, data.labels)
    if isinstance(data, tuple):
        x, y = data
        order = torch.arange(len(y)) if generator is None else torch.randperm(len(y), generator=generator)
        pairs = ((x[index], y[index]) for index in order.split(batch_size))
    else:
        loader = DataLoader(
            data, batch_size=batch_size, shuffle=generator is not None, generator=generator, num_workers=num_workers
        )
        pairs = ((batch["pixel_values"], torch.as_tensor(batch["labels"])) for batch in loader)
    for pixel_values, labels in pairs:
        if device is not None:
            pixel_values, labels = pixel_values.to(device), labels.to(device)
        yield {"pixel_values": pixel_values, "labels": labels}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, batch_size: int = 512, num_workers: int = 0) -> float:
    """Top-1 accuracy of ``model`` on ``data``, in eval mode (the class scores are ``outputs.logits``)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for batch in batches(data, batch_size, num_workers=num_workers, device=_device(model)):
        correct += (model(pixel_values=batch["pixel_values"]).logits.argmax(-1) == batch["labels"]).sum().item()
        total += len(batch["labels"])
    model.train(was_training)
    return correct / total


def fit(
    model: nn.Module,
    train: Data,
    test: Optional[Data],
    *,
    epochs: int,
    base_lr: float,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    warmup_epochs: int = 0,
    seed: int = 0,
    desc: str = "training",
    optimizer_fn: Optional[Callable[[nn.Module], torch.optim.Optimizer]] = None,
    scheduler_fn: Optional[Callable[[torch.optim.Optimizer], Scheduler]] = None,
    epoch_start: Optional[Callable[[nn.Module, int], None]] = None,
    max_steps: Optional[int] = None,
    num_workers: int = 0,
) -> FitResult:
    """Train with the VPT recipe (SGD, lr x batch/256, epoch-level warm-up + cosine); evaluate ``test`` every epoch.

    ``optimizer_fn``/``scheduler_fn`` replace the SGD recipe and its schedule (the demo pretrains its backbone
    with AdamW; DPT has its own solver); the scheduler is stepped once per epoch. ``epoch_start(model, epoch)``
    runs before each epoch (DPT's warm-up needs the epoch). ``max_steps`` stops early (smoke runs).
    """
    optimizer = (
        optimizer_fn(model) if optimizer_fn else recipes.make_optimizer(model, base_lr, weight_decay, batch_size)
    )
    scheduler = scheduler_fn(optimizer) if scheduler_fn else recipes.epoch_scheduler(optimizer, warmup_epochs, epochs)
    generator = torch.Generator().manual_seed(seed)
    result, start, cpu_start = FitResult(), time.perf_counter(), time.process_time()
    model.train()
    bar = tqdm(range(epochs), desc=desc, leave=False)
    for epoch in bar:
        if epoch_start is not None:
            epoch_start(model, epoch)
        total, seen = 0.0, 0
        for batch in batches(train, batch_size, generator, num_workers, _device(model)):
            if max_steps is not None and result.steps >= max_steps:
                break
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.item() * len(batch["labels"])
            seen += len(batch["labels"])
            result.steps += 1
        scheduler.step()
        result.images += seen
        result.losses.append(total / max(seen, 1))
        if test is not None:
            result.accuracies.append(evaluate(model, test, num_workers=num_workers))
            bar.set_postfix(loss=f"{result.losses[-1]:.3f}", acc=f"{result.accuracies[-1]:.3f}")
        if max_steps is not None and result.steps >= max_steps:
            break
    result.seconds = time.perf_counter() - start
    result.cpu_seconds = time.process_time() - cpu_start
    model.eval()
    return result
