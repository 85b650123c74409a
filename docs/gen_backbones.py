"""Print the tables of docs/backbones.md from ``vpt_peft.engine.backbones.BACKBONES`` and the recipe registry.

Usage (from the repository root)::

    python docs/gen_backbones.py            # print both Markdown tables
    python docs/gen_backbones.py --check    # exit 1 if docs/backbones.md does not contain them exactly

The first table is family x method: every registered recipe is a column, every family of the backbone table a
row, and a cell says whether the method runs there (dual-encoder recipes, DPT, on the towers of CLIP-like dual
encoders; the others everywhere). The second is the backbone table itself. The ``description`` of a
:class:`~vpt_peft.BackboneSpec` is read as ``"<model classes>: <notes>"``; a description without ``": "`` is all
model classes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vpt_peft.engine.backbones import BACKBONES, BackboneSpec
from vpt_peft.recipes import RECIPES, Recipe

COLUMNS = (
    "`config.model_type`",
    "Model classes",
    "Special tokens before the prompts",
    "Default heads (`modules_to_save`)",
    "Embeddings",
    "Blocks",
    "Attention (norm in front; key/value projections)",
    "Final norm",
    "Relative position bias (padded for prompts)",
    "How prompts enter",
    "Notes",
)


def _code(text: str) -> str:
    return f"`{text}`"


def _special_tokens(spec: BackboneSpec) -> str:
    n = spec.num_special_tokens
    if callable(n):
        return f"computed by `{getattr(n, '__name__', 'callable')}(config)`"
    return str(n)


def _older(spec: BackboneSpec) -> str:
    """The older transformers layouts of a family, as the names that differ."""
    layouts = [", ".join(f"{k} {_code(v)}" for k, v in layout.items()) for layout in spec.older_layouts]
    return "; ".join(f"older transformers: {text}" for text in layouts)


def _entry(spec: BackboneSpec) -> str:
    if not spec.prompts_in_sequence:
        return "tokens in every window, carried beside"
    return "sequence tokens or keys/values" + (" (rows of the fused qkv)" if spec.fused_qkv else "")


def row(model_type: str, spec: BackboneSpec) -> list[str]:
    classes, _, notes = spec.description.partition(": ")
    notes = "; ".join(text for text in (notes, _older(spec)) if text)
    return [
        _code(model_type),
        classes or "-",
        _special_tokens(spec),
        ", ".join(_code(h) for h in spec.heads) or "none",
        _code(spec.embeddings),
        _code(spec.layers),
        f"{_code(spec.attention)} ({_code(spec.attention_norm)}; {_code(spec.k_proj)}, {_code(spec.v_proj)})",
        _code(spec.final_norm) if spec.final_norm else "none",
        _code(spec.relative_position_bias) if spec.relative_position_bias else "none",
        _entry(spec),
        notes or "-",
    ]


def runs_on(recipe: Recipe, spec: BackboneSpec) -> bool:
    """Dual-encoder recipes (DPT) need a CLIP-like dual encoder around the tower; the others run on every family."""
    return recipe.base_model != "dual-encoder" or spec.dual_encoder_tower


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |" for cells in rows]
    return "\n".join(lines)


def method_table() -> str:
    """Family x method: one row per family, one column per registered recipe."""
    header = ["`config.model_type`", "Model classes", *(f"`{name}`" for name in RECIPES)]
    rows = []
    for model_type in sorted(BACKBONES):
        spec = BACKBONES[model_type]
        classes = spec.description.partition(": ")[0] or "-"
        rows.append([_code(model_type), classes, *("yes" if runs_on(r, spec) else "-" for r in RECIPES.values())])
    return _markdown(header, rows)


def table() -> str:
    return _markdown(list(COLUMNS), [row(model_type, BACKBONES[model_type]) for model_type in sorted(BACKBONES)])


def main(argv: list[str]) -> int:
    text = method_table() + "\n\n" + table()
    if "--check" in argv:
        page = Path(__file__).with_name("backbones.md").read_text(encoding="utf-8")
        if text not in page:
            print(
                "docs/backbones.md is out of date; paste the output of `python docs/gen_backbones.py`.", file=sys.stderr
            )
            return 1
        return 0
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
