"""The package's shape: no import cycles, and a new method is one folder with no edit anywhere else."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import vpt_peft

PACKAGE = Path(vpt_peft.__file__).parent
TESTS = Path(__file__).parent


def _module_name(path: Path) -> str:
    parts = ["vpt_peft", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every vpt_peft module ``path`` imports, at any depth of the file (lazy imports count too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, modules) for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a list of modules (first == last), or [] if there is none."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "vpt_peft.engine.sidecar" in graph and graph["vpt_peft.cli.parser"]  # the walk sees the package
    assert find_cycle(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_the_engine_does_not_know_the_methods():
    """engine/ is shared machinery: it never imports a method, a recipe, the CLI or the demo."""
    for module, imported in import_graph().items():
        if module.startswith("vpt_peft.engine"):
            outside = {m for m in imported if not m.startswith("vpt_peft.engine")}
            assert not outside, (module, outside)


# A complete method in one folder: VPT with prompts scaled by a learnable scalar. Written as a user would.
THROWAWAY = {
    "__init__.py": '''
        """Scaled prompts: VPT whose prompts are multiplied by one learnable scalar."""

        from ...engine.registration import register_method
        from ...recipes import Preset, Recipe, register_recipe
        from .config import ScaledPromptConfig
        from .model import ScaledPromptModel

        register_method("scaled", ScaledPromptConfig, ScaledPromptModel)
        preset = lambda task: Preset("scaled", task, {"num_prompts": 2}, 8, ScaledPromptConfig)
        register_recipe(Recipe("scaled", ScaledPromptConfig, preset))
    ''',
    "config.py": """
        from dataclasses import dataclass

        from ...engine.config import PromptConfigBase


        @dataclass
        class ScaledPromptConfig(PromptConfigBase):
            def __post_init__(self):
                from peft.utils.peft_types import PeftType

                self.peft_type = PeftType.SCALED
                super().__post_init__()
    """,
    "layer.py": """
        import torch

        from ...engine.bank import PromptBank
        from ...engine.sidecar import PromptAdapterLayer


        class ScaledPromptBank(PromptBank):
            def __init__(self, config, backbone):
                super().__init__(config, backbone)
                self.scale = torch.nn.Parameter(torch.tensor(2.0))

            def transform(self, prompts):
                return prompts * self.scale


        class ScaledPromptLayer(PromptAdapterLayer):
            adapter_layer_names = ("scaled_prompts",)
            bank_cls = ScaledPromptBank
    """,
    "model.py": """
        from ...engine.tuner import ClassifierPromptTuner
        from .layer import ScaledPromptLayer


        class ScaledPromptModel(ClassifierPromptTuner):
            prefix = "scaled_"
            tuner_layer_cls = ScaledPromptLayer
    """,
}

CHECK = """
import torch
from peft import PeftModel, get_peft_model
from transformers import ViTConfig, ViTForImageClassification

import vpt_peft
from vpt_peft import recipes
from vpt_peft.cli import build_parser

assert "scaled" in vpt_peft.METHODS and "scaled" in recipes.recipe_names()
from tests.backbone_cases import CASES, matrix, method_case  # the backbone x method test matrix

assert type(method_case("scaled").config()).__name__ == "ScaledPromptConfig"
assert {f"{case.name}-scaled" for case in CASES} <= {cell.id for cell in matrix()}
args = build_parser().parse_args(["train", "--model", "m", "--dataset", "d", "--output", "o", "--method", "scaled"])
config = recipes.preset(args.method).make_config()
assert type(config).__name__ == "ScaledPromptConfig" and config.num_prompts == 2
vit = ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20, image_size=16,
                patch_size=8, num_labels=3)
def base():
    torch.manual_seed(0)
    return ViTForImageClassification(vit)


model = get_peft_model(base(), config).eval()
with torch.no_grad():
    model.base_model.model.vit.embeddings.prompt_adapter.scaled_prompts["default"].scale.fill_(3.0)
pixels = torch.randn(2, 3, 16, 16)
want = model(pixel_values=pixels).logits
model.save_pretrained("adapter")
loaded = PeftModel.from_pretrained(base(), "adapter").eval()
assert torch.equal(loaded(pixel_values=pixels).logits, want)
print("registered and round-tripped")
"""


def test_a_new_method_is_one_folder(tmp_path):
    """Copy the package, add one method folder, change nothing else: peft, the recipes, the CLI and the test
    matrix know it."""
    root = tmp_path / "src"
    shutil.copytree(PACKAGE, root / "vpt_peft", ignore=shutil.ignore_patterns("__pycache__"))
    folder = root / "vpt_peft" / "tuners" / "scaled"
    folder.mkdir()
    for name, text in THROWAWAY.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    result = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=tmp_path,
        env={"PYTHONPATH": f"{root}:{TESTS.parent}", "PATH": "", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "registered and round-tripped" in result.stdout
