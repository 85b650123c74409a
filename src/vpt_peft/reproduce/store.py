"""Where a sweep keeps what it finished: one JSON file per trial, a CSV index, the adapters, the settings.

A trial is done when its row file exists. The row is written (atomically) only after the trial's adapter has
been committed, so a sweep killed at any instant loses at most the trials in flight, and a rerun retrains
exactly those. Each trial has its own file, so parallel trials (Ray) never write the same file, and a row can
never appear twice. ``trials.csv`` is rebuilt from the row files after every trial, for people and
spreadsheets; the row files are the truth.

Layout of ``<output>``::

    settings/<benchmark>/<method>.json   what the trials were trained with (a rerun must match)
    trials/<trial id>.json               one row per finished trial
    adapters/<trial id>/                 its adapter (``save_pretrained``)
    trials.csv                           every row, flat
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Union

from ..atomic import atomic_write

CSV_COLUMNS = (
    "trial",
    "benchmark",
    "task",
    "group",
    "method",
    "stage",
    "lr",
    "wd",
    "seed",
    "prune",
    "epochs",
    "batch_size",
    "accuracy",
    "trainable",
    "total",
    "trainable_pct",
    "adapter_bytes",
    "train_images",
    "train_wall_s",
    "train_cpu_s",
    "eval_images",
    "eval_wall_s",
    "eval_cpu_s",
)
"""The CSV's columns, in order (a row's other fields, e.g. E2VPT's importance scores, stay in its JSON file)."""


class SettingsMismatch(ValueError):
    """A rerun asked for different training settings than the trials already in the output folder."""


class TrialStore:
    """The finished trials of one sweep output folder."""

    def __init__(self, root: Union[str, Path]) -> None:
        self.root = Path(root)

    def row_path(self, trial_id: str) -> Path:
        return self.root / "trials" / f"{trial_id}.json"

    def adapter_dir(self, trial_id: str) -> Path:
        return self.root / "adapters" / trial_id

    def done(self, trial_id: str) -> bool:
        return self.row_path(trial_id).exists()

    def get(self, trial_id: str) -> dict[str, Any]:
        return json.loads(self.row_path(trial_id).read_text())

    def put(self, row: Mapping[str, Any]) -> None:
        """Record a finished trial (its adapter must already be saved)."""
        path = self.row_path(row["trial"])
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(row, indent=1, sort_keys=True))

    def rows(self) -> list[dict[str, Any]]:
        """Every finished trial, in trial-id order."""
        folder = self.root / "trials"
        if not folder.is_dir():
            return []
        return [json.loads(p.read_text()) for p in sorted(folder.rglob("*.json")) if not p.name.startswith(".")]

    def write_index(self) -> Path:
        """Rebuild ``trials.csv`` from the row files (atomically: a reader never sees half a table)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in self.rows():
            writer.writerow({k: _cell(row.get(k)) for k in CSV_COLUMNS})
        path = self.root / "trials.csv"
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(path, buffer.getvalue())
        return path

    def check_settings(self, benchmark: str, method: str, settings: Mapping[str, Any]) -> None:
        """Record the settings of a (benchmark, method) sweep, or refuse a rerun that trains differently.

        Grids may grow between runs (new cells are new trials); what changes a trial's meaning (the model,
        epochs, batch size, the adapter config, a step cap) may not: mixed rows would make the selection
        compare unlike runs.
        """
        path = self.root / "settings" / benchmark / f"{method}.json"
        wanted = json.loads(json.dumps(settings, sort_keys=True, default=str))
        if path.exists():
            stored = json.loads(path.read_text())
            changed = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
            if changed:
                details = "; ".join(f"{k}: {stored.get(k)!r} -> {wanted.get(k)!r}" for k in changed)
                raise SettingsMismatch(
                    f"{self.root} holds {method} trials on {benchmark} trained with other settings ({details}); "
                    "use another --output, or the same settings to resume."
                )
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(wanted, indent=1, sort_keys=True))


def _cell(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return "" if value is None else value


def rows_where(rows: Iterable[Mapping[str, Any]], **match: Any) -> list[Mapping[str, Any]]:
    """The rows whose fields equal ``match`` (e.g. ``stage="final", task="cifar"``)."""
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]
