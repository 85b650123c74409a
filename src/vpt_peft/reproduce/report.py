"""``vpt-peft report``: a sweep's final runs as Markdown and one PNG per group, next to the papers' numbers.

Accuracy is the last-epoch test top-1 of the final runs, mean ± sample standard deviation over the seeds;
a group's number is the mean of its tasks' means (as the papers average). Costs are measured in the run:
trainable share, adapter file size, and training and inference time per image, wall-clock and process CPU
time (``time.process_time``, which counts every thread of the process, so it can exceed wall time).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..atomic import atomic_write
from .protocol import FINAL
from .published import CLAIMS, GROUPS, VTAB_GROUPS, Number, check_claim, group_result, task_result

PAPER_BENCHMARKS = {"vtab-1k": VTAB_GROUPS, "fgvc": ("fgvc",), "fewshot": ("few-shot",)}
"""Benchmarks whose numbers the papers publish, and the report groups they feed."""


@dataclass
class TaskResult:
    """One (benchmark, task, method): the final runs' accuracies and what they cost."""

    benchmark: str
    task: str
    group: str
    method: str
    preset_task: Optional[str]
    accuracies: list[float]
    lr: float
    wd: float
    trainable_pct: float
    adapter_bytes: float
    train_ms: tuple[float, float]
    infer_ms: tuple[float, float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0


def report_group(benchmark: str, group: str) -> str:
    """The report group of a task: FGVC and few-shot benchmarks are one group each, VTAB keeps its three."""
    allowed = PAPER_BENCHMARKS.get(benchmark)
    return allowed[0] if allowed and len(allowed) == 1 else group.lower()


def _per_image_ms(rows: Sequence[Mapping[str, Any]], seconds: str, images: str) -> float:
    count = sum(r[images] for r in rows)
    return 1000 * sum(r[seconds] for r in rows) / count if count else float("nan")


def task_results(rows: Iterable[Mapping[str, Any]]) -> list[TaskResult]:
    """The final runs grouped by (benchmark, task, method), in first-seen order."""
    finals: dict[tuple[str, str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["stage"] == FINAL:
            finals[(row["benchmark"], row["task"], row["method"])].append(row)
    results = []
    for (benchmark, task, method), runs in finals.items():
        results.append(
            TaskResult(
                benchmark,
                task,
                report_group(benchmark, runs[0]["group"]),
                method,
                runs[0].get("preset_task"),
                [r["accuracy"] for r in runs],
                runs[0]["lr"],
                runs[0]["wd"],
                statistics.fmean(r["trainable_pct"] for r in runs),
                statistics.fmean(r["adapter_bytes"] for r in runs),
                (
                    _per_image_ms(runs, "train_wall_s", "train_images"),
                    _per_image_ms(runs, "train_cpu_s", "train_images"),
                ),
                (_per_image_ms(runs, "eval_wall_s", "eval_images"), _per_image_ms(runs, "eval_cpu_s", "eval_images")),
            )
        )
    return results


def group_means(results: Sequence[TaskResult]) -> dict[tuple[str, str, str], list[TaskResult]]:
    """``{(benchmark, group, method): task results}``, plus VTAB-1k's 19-task mean as the group ``vtab-mean``."""
    groups: dict[tuple[str, str, str], list[TaskResult]] = defaultdict(list)
    for result in results:
        groups[(result.benchmark, result.group, result.method)].append(result)
        if result.benchmark == "vtab-1k":
            groups[(result.benchmark, "vtab-mean", result.method)].append(result)
    order = {g: i for i, g in enumerate(GROUPS)}
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], len(order)), kv[0][1])))


def _paper(benchmark: str, number: Optional[Number]) -> str:
    if benchmark not in PAPER_BENCHMARKS or number is None:
        return "—"
    return f"{'≈' if number.approximate else ''}{number.value:.2f}"


def _size(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _ms(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.3g} / {pair[1]:.3g}"


def markdown(results: Sequence[TaskResult], title: str = "Sweep report") -> str:
    """The report: per group, per task, and the papers' claims checked on this run's group means."""
    lines = [
        f"# {title}",
        "",
        "Test top-1 (%) of the final runs, mean ± std over seeds; a group is the mean of its tasks. "
        "Time per image in ms, wall / process CPU. Paper: the published number (spec §1.7, §2.4, §3.5, §4.6); "
        "— where the benchmark or method has none.",
        "",
        "## Groups",
        "",
        "| benchmark | group | method | tasks | test top-1 | paper | Δ | trainable % | adapter | train ms/img "
        "| inference ms/img |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (benchmark, group, method), members in group_means(results).items():
        mean = statistics.fmean(r.mean for r in members)
        number = group_result(method, group)
        paper = _paper(benchmark, number)
        delta = f"{100 * mean - number.value:+.2f}" if paper != "—" else "—"
        lines.append(
            f"| {benchmark} | {group} | {method} | {len(members)} | {100 * mean:.2f} | {paper} | {delta} | "
            f"{statistics.fmean(r.trainable_pct for r in members):.3f} | "
            f"{_size(statistics.fmean(r.adapter_bytes for r in members))} | "
            f"{_ms(_mean_pair(r.train_ms for r in members))} | {_ms(_mean_pair(r.infer_ms for r in members))} |"
        )
    lines += [
        "",
        "## Tasks",
        "",
        "| benchmark | task | group | method | seeds | test top-1 | paper | lr | wd | trainable % | adapter "
        "| train ms/img | inference ms/img |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        paper = _paper(r.benchmark, task_result(r.method, r.preset_task))
        lines.append(
            f"| {r.benchmark} | {r.task} | {r.group} | {r.method} | {len(r.accuracies)} | "
            f"{100 * r.mean:.2f} ± {100 * r.std:.2f} | {paper} | {r.lr:g} | {r.wd:g} | {r.trainable_pct:.3f} | "
            f"{_size(r.adapter_bytes)} | {_ms(r.train_ms)} | {_ms(r.infer_ms)} |"
        )
    lines += ["", "## The papers' claims, checked on this run", ""]
    lines += [f"- {line}" for line in claim_lines(results)]
    return "\n".join(lines) + "\n"


def claim_lines(results: Sequence[TaskResult]) -> list[str]:
    """Each of the papers' qualitative claims, checked on this run's group means (honest either way)."""
    measured, tuned = {}, defaultdict(list)
    for (_, group, method), members in group_means(results).items():
        measured[(method, group)] = statistics.fmean(r.mean for r in members)
        tuned[method].extend(r.trainable_pct for r in members)
    mean_tuned = {m: statistics.fmean(v) for m, v in tuned.items()}
    return [check_claim(claim, measured, mean_tuned) for claim in CLAIMS]


def _mean_pair(pairs: Iterable[tuple[float, float]]) -> tuple[float, float]:
    pairs = list(pairs)
    return statistics.fmean(p[0] for p in pairs), statistics.fmean(p[1] for p in pairs)


def plot_groups(results: Sequence[TaskResult], folder: Path) -> list[Path]:
    """One PNG per (benchmark, group): measured test top-1 per method (bars) and the published number (marks)."""
    from ..plotting import pyplot, save_figure

    plt = pyplot()
    by_group: dict[tuple[str, str], dict[str, list[TaskResult]]] = defaultdict(dict)
    for (benchmark, group, method), members in group_means(results).items():
        by_group[(benchmark, group)][method] = members
    paths = []
    for (benchmark, group), methods in by_group.items():
        names = list(methods)
        means = [100 * statistics.fmean(r.mean for r in methods[m]) for m in names]
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(names), 3.4))
        ax.bar(range(len(names)), means, color="#4c72b0", label="this run")
        papers = [(i, group_result(m, group)) for i, m in enumerate(names)]
        papers = [(i, n.value) for i, n in papers if n is not None and benchmark in PAPER_BENCHMARKS]
        if papers:
            ax.scatter(*zip(*papers), marker="_", s=600, color="black", label="paper")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(f"{benchmark}: {group}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = folder / f"report-{benchmark}-{group}.png"
        save_figure(fig, path)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(rows: Iterable[Mapping[str, Any]], folder: Path, plots: bool = True) -> tuple[Path, list[Path]]:
    """``report.md`` and (with ``plots``) ``report-<benchmark>-<group>.png`` in ``folder``."""
    results = task_results(rows)
    if not results:
        raise ValueError(f"No final run in {folder}: run 'vpt-peft sweep' to the end first.")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "report.md"
    atomic_write(path, markdown(results))
    return path, plot_groups(results, folder) if plots else []
