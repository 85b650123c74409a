"""Test-wide settings: offline, one thread, a private HF cache, hub kernels only where installed."""

from __future__ import annotations

import os

import pytest
import torch

from .timm_support import declare_missing_torchvision_operators

declare_missing_torchvision_operators()  # before transformers imports torchvision (see tests/timm_support.py)

from transformers.utils import is_kernels_available  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

# transformers >= 5.25 turns hub kernels on in from_pretrained and raises there without a compatible `kernels`
# package: the suite must not depend on it. Where a compatible one is installed, kernels stay on, as users get them.
if not is_kernels_available():
    os.environ.setdefault("USE_HUB_KERNELS", "0")


@pytest.fixture
def pixels():
    torch.manual_seed(123)
    return torch.randn(2, 3, 32, 32)


@pytest.fixture(autouse=True)
def _hf_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf_home"))
