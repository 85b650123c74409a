"""The reproduce package as users meet it: docs tables that match the loaders, and imports that stay light."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vpt_peft.reproduce
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


def test_modules_import_pil_and_datasets_only_inside_the_functions_that_read_images():
    """``import vpt_peft.reproduce`` must work without the ``data`` extra; loading a task needs it."""
    for module in Path(vpt_peft.reproduce.__file__).parent.glob("*.py"):
        top_level = [
            node for node in ast.parse(module.read_text()).body if isinstance(node, (ast.Import, ast.ImportFrom))
        ]
        names = {alias.name for node in top_level for alias in node.names}
        names |= {node.module for node in top_level if isinstance(node, ast.ImportFrom) and node.module}
        assert not {name.split(".")[0] for name in names} & {"PIL", "datasets"}, module.name
