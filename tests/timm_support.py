"""timm for the tests, or a clean skip when it is not installed.

The CPU build of torch the suite runs on has no matching torchvision build on PyPI: the PyPI torchvision (which
timm requires) is linked against CUDA torch, so its C++ operators do not load and ``import torchvision`` stops
while registering fake kernels for two of them; transformers, which imports torchvision whenever it is installed,
stops with it. Neither timm's ViTs nor vpt_peft use those operators, so when (and only when) they failed to load,
:func:`declare_missing_torchvision_operators` declares their two schemas, before anything imports torchvision
(tests/conftest.py calls it first). A torchvision whose operators load is untouched.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

_declared: list[torch.library.Library] = []


def _torchvision_operators_load() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return True  # not installed: nothing to repair
    library = next(Path(spec.origin).parent.glob("_C*.so"), None)
    if library is None:
        return True
    try:
        torch.ops.load_library(str(library))
    except OSError:
        return False
    return True


def declare_missing_torchvision_operators() -> None:
    """Declare ``torchvision::nms``/``qnms`` when torchvision is installed but its operators cannot load."""
    if _declared or _torchvision_operators_load():
        return
    library = torch.library.Library("torchvision", "DEF")
    for name in ("nms", "qnms"):
        library.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _declared.append(library)


def import_timm():
    """The ``timm`` module; skips the calling test when timm is not installed."""
    declare_missing_torchvision_operators()
    return pytest.importorskip("timm")
