"""timm for the tests, or a clean skip when it is not installed.

The CPU build of torch the suite runs on has no matching torchvision build on PyPI: the PyPI torchvision is linked
against CUDA torch, so its C++ operators do not load and its import stops at registering fake kernels for two of
them. timm imports torchvision at import time but its ViTs use none of those operators, so when (and only when)
torchvision's operators are missing, their two schemas are declared here first. A normal install is untouched.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import pytest
import torch

_declared: list[torch.library.Library] = []


def _declare_missing_torchvision_operators() -> None:
    if hasattr(torch.ops.torchvision, "nms") or _declared:
        return
    library = torch.library.Library("torchvision", "DEF")
    for name in ("nms", "qnms"):
        library.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _declared.append(library)


def import_timm():
    """The ``timm`` module; skips the calling test when timm is not installed."""
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (pip install vpt_peft[timm])")
    try:
        return importlib.import_module("timm")
    except RuntimeError:  # torchvision without its operators (see the module docstring): declare them, import again
        for name in [m for m in sys.modules if m.split(".")[0] in ("timm", "torchvision")]:
            del sys.modules[name]
        _declare_missing_torchvision_operators()
        return importlib.import_module("timm")
