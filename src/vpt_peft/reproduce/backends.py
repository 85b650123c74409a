"""Where trials run: in this process, one after another (the default), or as Ray Tune trials across a cluster.

Both backends run the same :func:`~vpt_peft.reproduce.trial.run_job`, which writes its own row; the driver
only rebuilds the CSV index as trials finish. Ray is an optional extra (``pip install 'vpt-peft[ray]'``) and
is imported only when :class:`RayBackend` runs, never by the default path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Protocol

from .trial import Job, run_job

OnDone = Callable[[dict[str, Any]], None]


class Backend(Protocol):
    def run(self, jobs: Sequence[Job], on_done: OnDone) -> None:
        """Run every job (each writes its row); call ``on_done(row)`` in the driver as each one is recorded."""


class InProcessBackend:
    """Trials one after another in this process, on its device (CUDA when available)."""

    def run(self, jobs: Sequence[Job], on_done: OnDone) -> None:
        for job in jobs:
            on_done(run_job(job))


@dataclass
class RayBackend:
    """Each trial a Ray Tune trial with ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs (a fraction packs
    several trials on one GPU). ``address`` joins a running cluster (``"auto"``); None starts a local Ray.
    On a cluster every node must see the sweep's output folder (a shared file system)."""

    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    address: Optional[str] = None
    max_concurrent_trials: Optional[int] = None

    def run(self, jobs: Sequence[Job], on_done: OnDone) -> None:
        if not jobs:
            return
        try:
            import ray
            from ray import tune
        except ImportError as error:
            raise ImportError("--backend ray needs Ray Tune: pip install 'vpt-peft[ray]'.") from error
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        threads = max(1, int(self.cpus_per_trial))
        trainable = tune.with_resources(
            tune.with_parameters(_ray_trial, jobs=list(jobs), threads=threads),
            {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial},
        )
        output = jobs[0].settings.output
        tuner = tune.Tuner(
            trainable,
            param_space={"index": tune.grid_search(list(range(len(jobs))))},
            tune_config=tune.TuneConfig(max_concurrent_trials=self.max_concurrent_trials),
            run_config=tune.RunConfig(storage_path=str(os.path.abspath(output / "ray")), name="trials", verbose=0),
        )
        results = tuner.fit()
        from .store import TrialStore

        store = TrialStore(output)
        for job in jobs:  # the rows the workers wrote; a failed trial has none and is retried by the next run
            if store.done(job.trial.id):
                on_done(store.get(job.trial.id))
        if results.errors:
            raise RuntimeError(f"{len(results.errors)} Ray trial(s) failed; the first: {results.errors[0]}")


def _ray_trial(config: dict[str, Any], jobs: list[Job], threads: int) -> None:
    """A Ray Tune function trainable: run one job with the trial's CPU share, report its accuracy."""
    import torch
    from ray import tune

    torch.set_num_threads(threads)
    row = run_job(jobs[config["index"]])
    tune.report({"accuracy": row["accuracy"]})
