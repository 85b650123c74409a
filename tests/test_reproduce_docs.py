"""docs/reproducing.md's task tables say what the loaders do: a row per task with its name and class count."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpt_peft.reproduce import BENCHMARKS

PAGE = Path(__file__).resolve().parents[1] / "docs" / "reproducing.md"
SECTIONS = {"vtab-1k": "#### VTAB-1k", "fgvc": "#### FGVC", "fewshot": "#### CLIP few-shot"}


def table_rows(heading: str) -> dict[str, str]:
    """The rows of the tables under ``heading`` (up to the next heading), by their first cell."""
    section = PAGE.read_text().split(heading, 1)[1].split("\n#", 1)[0]
    return {line.split("|")[1].strip(" `"): line for line in section.splitlines() if line.startswith("| `")}


@pytest.mark.parametrize("benchmark", list(SECTIONS))
def test_each_task_has_a_row_with_its_preset_and_class_count(benchmark):
    rows = table_rows(SECTIONS[benchmark])
    assert set(rows) == set(BENCHMARKS[benchmark].tasks)
    for name, info in BENCHMARKS[benchmark].infos.items():
        assert rows[name].rstrip(" |").endswith(f"| {info.num_classes}"), rows[name]
        assert info.preset_task is None or f"| `{info.preset_task}` |" in rows[name], rows[name]
