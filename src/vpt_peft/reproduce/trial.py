"""One trial of the protocol, start to finish: fresh model, train, score, save the adapter, record the row.

A :class:`Job` carries everything a trial needs and nothing it shares with another trial, so a backend may run
it in this process or ship it to a Ray worker (on a cluster, ``output`` must be a shared file system).
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..atomic import staged_save
from ..engine.backbones import find_backbone
from ..training import batches, evaluate, fit, num_examples
from .protocol import SCORES, MethodSpec, Trial
from .store import TrialStore
from .tasks import BENCHMARKS, TaskData, load_task


@dataclass(frozen=True)
class SweepSettings:
    """What every trial of a sweep shares: base model, benchmark, data options, output folder, limits.

    ``load`` holds :class:`~vpt_peft.reproduce.tasks.LoadOptions` fields (``root``, ``image_size``,
    ``normalization``, ``shots``, ``classes``); the seed is the trial's. ``max_train_steps`` caps each
    training run (smoke runs). ``benchmark_module`` is imported by a worker process that does not know the
    benchmark yet (a Ray worker): the module that registered it.
    """

    model: str
    benchmark: str
    output: Path
    benchmark_module: Optional[str] = None
    load: Mapping[str, Any] = field(default_factory=dict)
    max_train_steps: Optional[int] = None
    num_workers: int = 0
    eval_batch_size: int = 256


@dataclass(frozen=True)
class Job:
    """A trial plus what it is run with; ``scores`` are E2VPT's stored importance scores (rewind and final)."""

    settings: SweepSettings
    spec: MethodSpec
    trial: Trial
    scores: Optional[Mapping[str, list]] = None


@functools.lru_cache(maxsize=8)
def _task(benchmark: str, task: str, seed: int, options: tuple) -> TaskData:
    return load_task(benchmark, task, seed=seed, **dict(options))


def task_data(settings: SweepSettings, task: str, seed: int) -> TaskData:
    """The task's splits for a trial's seed (a few-shot benchmark draws its K shots from it), cached per process."""
    if settings.benchmark not in BENCHMARKS and settings.benchmark_module:
        importlib.import_module(settings.benchmark_module)
    return _task(settings.benchmark, task, seed, tuple(sorted(settings.load.items())))


def base_model(path: str, data: TaskData, kind: str) -> nn.Module:
    """The frozen model a trial adapts: a dual encoder as saved, or a classifier with a new head for the task
    (initialised from the torch seed, as ``nn.Linear`` initialises)."""
    from transformers import AutoModel, AutoModelForImageClassification
    from transformers.utils import logging

    if kind == "dual-encoder":
        return AutoModel.from_pretrained(path)
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()  # "newly initialized: classifier" is the point here, not news
    logging.disable_progress_bar()  # one "Loading weights" bar per trial would bury the sweep's log
    try:
        model = AutoModelForImageClassification.from_pretrained(
            path, num_labels=data.info.num_classes, ignore_mismatched_sizes=True
        )
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
    # A checkpoint whose head already has the task's size keeps it through from_pretrained: the protocol trains
    # a new head for every task (a kept head, tuned to other features, can stall training at chance).
    for name in find_backbone(model).heads:
        for module in model.get_submodule(name).modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return model


def build_model(job: Job, data: TaskData) -> nn.Module:
    """A fresh model for the trial, seeded so that the same (trial, seed) always starts from the same values."""
    from peft import get_peft_model

    torch.manual_seed(job.trial.seed)
    model = base_model(job.settings.model, data, job.spec.base_model)
    config = job.spec.make_config(data.class_names, job.settings.model)
    model = model if config is None else get_peft_model(model, config)
    if job.trial.prune is not None:
        from ..tuners.e2vpt.pruning import apply_pruning, select_pruning

        token_scores, segment_scores = (torch.tensor(job.scores[k]) for k in ("token_scores", "segment_scores"))
        selection = select_pruning(token_scores, segment_scores, *job.trial.prune)
        apply_pruning(model, selection, rewind=job.spec.prune["rewind"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; a pruned E2VPT adapter counts only its kept tokens x segments (spec §3.3)."""
    from ..recipes import HEAD, HEAD_BIAS, parameter_roles
    from ..tuners.e2vpt import KVPromptLayer, effective_prompt_parameters

    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    configs = getattr(model, "peft_config", {})
    if any(isinstance(m, KVPromptLayer) for m in model.modules()) and any(
        getattr(c, "pruned", False) for c in configs.values()
    ):
        roles = parameter_roles(model)
        heads = (HEAD, HEAD_BIAS)
        head = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and roles[n] in heads)
        trainable = effective_prompt_parameters(model) + head
    return trainable, total


def _solver(job: Job) -> dict[str, Any]:
    """``fit`` arguments for the method's solver: VPT's SGD recipe, or DPT's own optimizer and schedule."""
    spec, trial = job.spec, job.trial
    if spec.solver == "sgd":
        return dict(base_lr=trial.lr, weight_decay=trial.wd, warmup_epochs=spec.warmup_epochs)
    from ..recipes import dual_prompt_optimizer, dual_prompt_scheduler, set_epoch

    return dict(
        base_lr=trial.lr,
        optimizer_fn=lambda model: dual_prompt_optimizer(model, lr_visual=trial.lr, weight_decay=trial.wd),
        scheduler_fn=lambda optimizer: dual_prompt_scheduler(optimizer, spec.epochs),
        epoch_start=set_epoch,
    )


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix in (".safetensors", ".bin"))


def run_job(job: Job) -> dict[str, Any]:
    """Run the trial, save its adapter, then record its row (in that order: a row means a saved adapter)."""
    trial, spec, settings = job.trial, job.spec, job.settings
    data = task_data(settings, trial.task, trial.seed)
    train_role, eval_role = trial.roles
    model = build_model(job, data)
    trainable, total = trainable_parameters(model)
    curve = fit(
        model,
        data.splits[train_role],
        None,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        seed=trial.seed,
        desc=trial.id,
        max_steps=settings.max_train_steps,
        num_workers=settings.num_workers,
        **_solver(job),
    )
    extra: dict[str, Any] = {}
    if trial.stage == SCORES:
        extra["scores"] = _importance_scores(job, model, data)
    evaluation = data.splits[eval_role]
    wall, cpu = time.perf_counter(), time.process_time()
    accuracy = evaluate(model, evaluation, settings.eval_batch_size, settings.num_workers)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    store = TrialStore(settings.output)
    folder = store.adapter_dir(trial.id)
    with staged_save(folder) as staging:
        model.save_pretrained(staging)
    row = dict(
        trial=trial.id,
        benchmark=trial.benchmark,
        task=trial.task,
        group=data.info.group,
        preset_task=data.info.preset_task,
        num_classes=data.info.num_classes,
        method=trial.method,
        stage=trial.stage,
        lr=trial.lr,
        wd=trial.wd,
        seed=trial.seed,
        prune=None if trial.prune is None else list(trial.prune),
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        steps=curve.steps,
        losses=curve.losses,
        accuracy=accuracy,
        scored_on=eval_role,
        trainable=trainable,
        total=total,
        trainable_pct=100 * trainable / total,
        adapter_bytes=_folder_bytes(folder),
        train_images=curve.images,
        train_wall_s=curve.seconds,
        train_cpu_s=curve.cpu_seconds,
        eval_images=num_examples(evaluation),
        eval_wall_s=wall,
        eval_cpu_s=cpu,
        device=str(next(model.parameters()).device),
        model=settings.model,
        **extra,
    )
    store.put(row)
    return row


def _importance_scores(job: Job, model: nn.Module, data: TaskData) -> dict[str, list]:
    """E2VPT's scores of the trained prompts over one pass of the training split (spec §3.3 step 3)."""
    from ..tuners.e2vpt import importance_scores

    device = next(model.parameters()).device
    train = data.splits[job.trial.roles[0]]
    token, segment = importance_scores(
        model,
        batches(train, job.spec.batch_size, num_workers=job.settings.num_workers, device=device),
        importance=job.spec.prune.get("importance", "signed"),
    )
    return {"token_scores": token.tolist(), "segment_scores": segment.tolist()}
