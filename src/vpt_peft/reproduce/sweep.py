"""The sweep driver: the protocol's stages over every (task, method) pair, resumable, on any backend.

Each stage gathers the missing trials of *all* pairs before running them, so a Ray backend sees the whole
19-task x 40-cell grid at once rather than one task at a time. Finished trials (rows in the store) are
skipped, so a rerun after a crash or a kill retrains only what had not been recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from .backends import Backend, InProcessBackend
from .protocol import FINAL, REWIND, SCORES, TUNE, MethodSpec, Trial, grid_trials, select_candidate, select_cell
from .store import TrialStore
from .tasks import BENCHMARKS
from .trial import Job, SweepSettings


@dataclass
class Entry:
    """One (task, method) pair of a sweep and what its stages have decided so far."""

    task: str
    spec: MethodSpec
    cell: Optional[tuple[float, float]] = None
    candidate: Optional[tuple[float, float]] = None
    scores: Optional[dict[str, list]] = field(default=None, repr=False)


def _settings_record(settings: SweepSettings, spec: MethodSpec) -> dict[str, Any]:
    """What makes two trials of one (task, method) comparable; grids and seeds may grow between runs."""
    return dict(
        model=settings.model,
        load={k: v for k, v in settings.load.items() if k != "processor"},
        max_train_steps=settings.max_train_steps,
        config_cls=None if spec.config_cls is None else spec.config_cls.__name__,
        config=dict(spec.config),
        epochs=spec.epochs,
        warmup_epochs=spec.warmup_epochs,
        batch_size=spec.batch_size,
        solver=spec.solver,
        prune=None if spec.prune is None else dict(spec.prune),
    )


def run_sweep(
    settings: SweepSettings,
    entries: Sequence[Entry],
    backend: Optional[Backend] = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run the protocol for every entry; return every row in the store afterwards."""
    if settings.benchmark in BENCHMARKS and settings.benchmark_module is None:
        module = BENCHMARKS[settings.benchmark].load.__module__
        settings = replace(settings, benchmark_module=module)
    backend = backend or InProcessBackend()
    store = TrialStore(settings.output)
    for entry in entries:
        store.check_settings(
            settings.benchmark, f"{entry.task}/{entry.spec.name}", _settings_record(settings, entry.spec)
        )

    def run(stage: str, jobs: list[Job]) -> None:
        missing = [job for job in jobs if not store.done(job.trial.id)]
        log(f"[{stage}] {len(jobs)} trials, {len(jobs) - len(missing)} already done, {len(missing)} to run")
        backend.run(missing, lambda row: _recorded(store, row, log))
        store.write_index()

    def job(entry: Entry, stage: str, seed: int, prune: Optional[tuple[float, float]] = None) -> Job:
        lr, wd = entry.cell
        trial = Trial(settings.benchmark, entry.task, entry.spec.name, stage, lr, wd, seed, prune)
        return Job(settings, entry.spec, trial, entry.scores if prune is not None else None)

    tune = {id(e): grid_trials(settings.benchmark, e.task, e.spec) for e in entries}
    run(TUNE, [Job(settings, e.spec, t) for e in entries for t in tune[id(e)]])
    for entry in entries:
        rows = [store.get(t.id) for t in tune[id(entry)]]
        entry.cell = select_cell(rows) if rows else (entry.spec.lr_grid[0], entry.spec.wd_grid[0])
        log(f"{entry.task} / {entry.spec.name}: lr {entry.cell[0]:g}, wd {entry.cell[1]:g}" + _best(rows))

    pruned = [e for e in entries if e.spec.prune is not None]
    run(SCORES, [job(e, SCORES, e.spec.seeds[0]) for e in pruned])
    for entry in pruned:
        entry.scores = store.get(job(entry, SCORES, entry.spec.seeds[0]).trial.id)["scores"]
    rewinds = {id(e): [job(e, REWIND, e.spec.seeds[0], tuple(c)) for c in e.spec.prune_grid] for e in pruned}
    run(REWIND, [j for e in pruned for j in rewinds[id(e)]])
    for entry in pruned:
        entry.candidate = select_candidate([store.get(j.trial.id) for j in rewinds[id(entry)]])
        log(
            f"{entry.task} / {entry.spec.name}: prune {entry.candidate[0]:g} of the tokens, "
            f"{entry.candidate[1]:g} of the segments"
        )

    run(FINAL, [job(e, FINAL, seed, e.candidate) for e in entries for seed in e.spec.seeds])
    return store.rows()


def _best(rows: list[dict[str, Any]]) -> str:
    return f" (val top-1 {max(r['accuracy'] for r in rows):.4f} over {len(rows)} cells)" if rows else " (one cell)"


def _recorded(store: TrialStore, row: dict[str, Any], log: Callable[[str], None]) -> None:
    store.write_index()
    log(f"  {row['trial']}: {row['scored_on']} top-1 {row['accuracy']:.4f} ({row['train_wall_s']:.1f} s)")
