"""The papers' published numbers and qualitative claims, in one place, each cited by its spec section.

All VTAB-1k/FGVC numbers are last-epoch test top-1 (%) of ViT-B/16 pretrained on ImageNet-21k; group means are
means over the group's tasks; the "vtab-mean" is the 19-task mean as VFPT Table 1 prints it. DPT's few-shot
averages (ViT-B/32, 16 shots, 11 datasets) are not tabulated in the sources: they are derived from the gaps
the paper states and marked approximate (spec §4.6).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

from ..recipes import TASKS

GROUPS = ("natural", "specialized", "structured", "vtab-mean", "fgvc", "few-shot")
"""Report groups, in print order (VTAB-1k's three, its 19-task mean, FGVC's mean, the few-shot mean)."""


@dataclass(frozen=True)
class Number:
    value: float
    source: str
    approximate: bool = False


def _row(source: str, fgvc: float, natural: float, specialized: float, structured: float, vtab: float) -> dict:
    values = dict(fgvc=fgvc, natural=natural, specialized=specialized, structured=structured, **{"vtab-mean": vtab})
    return {group: Number(value, source) for group, value in values.items()}


GROUP_RESULTS: dict[str, dict[str, Number]] = {
    "full-ft": _row("spec §1.7 (VPT Table 1)", 88.54, 75.88, 83.36, 47.64, 65.57),
    "linear-probe": _row("spec §1.7 (VPT Table 1)", 79.32, 68.93, 77.16, 26.84, 52.94),
    "vpt-shallow": _row("spec §1.7 (VPT Table 1)", 84.62, 76.81, 79.66, 46.98, 64.85),
    "vpt-deep": _row("spec §1.7 (VPT Table 1)", 89.11, 78.48, 82.43, 54.98, 69.43),
    "vfpt": _row("spec §2.4 (VFPT Table 1)", 89.24, 81.35, 84.93, 60.19, 73.20),
    "e2vpt": _row("spec §3.5 (E2VPT Table 1)", 89.22, 80.01, 84.43, 57.39, 71.42),
    "dpt": {"few-shot": Number(79.5, "spec §4.6 (DPT, derived from stated gaps)", approximate=True)},
    "coop": {"few-shot": Number(76.0, "spec §4.6 (DPT, derived from stated gaps)", approximate=True)},
    "zero-shot-clip": {"few-shot": Number(61.9, "spec §4.6 (CoOp's templates)", approximate=True)},
}
"""``GROUP_RESULTS[method][group]``: the papers' group means (methods by recipe name; baselines as named)."""

TUNED_PERCENT: dict[str, Number] = {
    "vpt-deep": Number(0.73, "spec §2.4 (VFPT Table 1, 24 tasks)"),
    "vfpt": Number(0.66, "spec §2.4 (VFPT Table 1, 24 tasks)"),
    "e2vpt": Number(0.39, "spec §3.5 (E2VPT Table 1, 24 tasks)"),
}
"""Tuned / total parameters (%), averaged over the 24 tasks."""

_PER_TASK = {
    "vpt-deep": (
        "spec §1.7 (VFPT Tables S1-S4)",
        (78.8, 90.8, 65.8, 98.0, 88.3, 78.1, 49.6, 81.8, 96.1, 83.4, 68.4)
        + (68.5, 60.0, 46.5, 72.8, 73.6, 47.9, 32.9, 37.8, 88.5, 84.2, 99.0, 90.2, 83.6),
    ),
    "vfpt": (
        "spec §2.4 (VFPT Table 1)",
        (80.7, 91.4, 69.4, 99.3, 90.3, 85.6, 52.7, 83.5, 96.5, 84.4, 75.4)
        + (75.8, 63.2, 48.3, 79.3, 81.5, 56.0, 34.1, 43.4, 88.7, 84.5, 99.1, 90.4, 83.6),
    ),
    "e2vpt": (
        "spec §3.5 (E2VPT Table 1)",
        (78.6, 89.4, 67.8, 98.2, 88.5, 85.3, 52.3, 82.5, 96.8, 84.8, 73.6)
        + (71.7, 61.2, 47.9, 75.8, 80.8, 48.1, 31.7, 41.9, 89.1, 84.6, 99.1, 90.5, 82.8),
    ),
}
TASK_RESULTS: dict[str, dict[str, Number]] = {
    method: {task: Number(value, source) for task, value in zip(TASKS, values, strict=True)}
    for method, (source, values) in _PER_TASK.items()
}
"""``TASK_RESULTS[method][task]`` by the recipes' task names (:data:`vpt_peft.recipes.TASKS`)."""


def group_result(method: str, group: str) -> Optional[Number]:
    return GROUP_RESULTS.get(method, {}).get(group)


def task_result(method: str, task: Optional[str]) -> Optional[Number]:
    return TASK_RESULTS.get(method, {}).get(task) if task else None


@dataclass(frozen=True)
class Claim:
    """A qualitative claim: ``better`` scores above ``worse`` in each of ``groups`` (with fewer tuned parameters
    too, when ``fewer_parameters``)."""

    text: str
    better: str
    worse: str
    groups: tuple[str, ...]
    source: str
    fewer_parameters: bool = False


VTAB_GROUPS = ("natural", "specialized", "structured")
CLAIMS = (
    Claim("VPT-deep beats the linear probe in every group", "vpt-deep", "linear-probe", VTAB_GROUPS, "spec §1.7"),
    Claim("VPT-deep beats VPT-shallow in every group", "vpt-deep", "vpt-shallow", VTAB_GROUPS, "spec §1.7"),
    Claim(
        "VPT-deep beats full fine-tuning on Natural and Structured (not Specialized)",
        "vpt-deep",
        "full-ft",
        ("natural", "structured"),
        "spec §1.7",
    ),
    Claim("VFPT beats VPT-deep in every group", "vfpt", "vpt-deep", VTAB_GROUPS, "spec §2.4"),
    Claim(
        "E2VPT beats VPT-deep in every group with fewer tuned parameters",
        "e2vpt",
        "vpt-deep",
        VTAB_GROUPS,
        "spec §3.5",
        fewer_parameters=True,
    ),
)
"""The claims a run can check on its own numbers (DPT's need CoOp and zero-shot runs, which a sweep does not make)."""


def check_claim(claim: Claim, accuracy: Mapping[tuple[str, str], float], tuned: Mapping[str, float]) -> str:
    """One line: does ``claim`` hold on the measured ``accuracy[(method, group)]`` (and ``tuned[method]`` %)?"""
    groups = [g for g in claim.groups if (claim.better, g) in accuracy and (claim.worse, g) in accuracy]
    if not groups:
        return f"{claim.text} ({claim.source}): not measured in this run"
    won = [g for g in groups if accuracy[(claim.better, g)] > accuracy[(claim.worse, g)]]
    details = ", ".join(
        f"{g} {100 * accuracy[(claim.better, g)]:.1f} vs {100 * accuracy[(claim.worse, g)]:.1f}" for g in groups
    )
    failures = [] if len(won) == len(groups) else [f"ahead in {len(won)} of {len(groups)} groups"]
    if claim.fewer_parameters and claim.better in tuned and claim.worse in tuned:
        details += f"; tuned {tuned[claim.better]:.3f} % vs {tuned[claim.worse]:.3f} %"
        if tuned[claim.better] >= tuned[claim.worse]:
            failures.append("not fewer tuned parameters")
    verdict = f"DOES NOT HOLD ({'; '.join(failures)})" if failures else "HOLDS"
    return f"{claim.text} ({claim.source}): {verdict} here: {details}"
