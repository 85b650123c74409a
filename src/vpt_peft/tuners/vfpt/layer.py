from __future__ import annotations

import torch

from ...engine.backbones import Backbone
from ...engine.bank import PromptBank
from ...engine.sidecar import PromptAdapterLayer
from .config import FourierPromptConfig


def fourier_transform(prompts: torch.Tensor, dims: str) -> torch.Tensor:
    """Real part of the unnormalised DFT over the prompts' sequence and/or hidden axes, in float32.

    torch's FFT does not run in float16/bfloat16 on CPU (and cuFFT half precision needs power-of-two
    lengths), so the transform always runs in float32; callers cast the result back.
    """
    x = prompts.float()
    if dims == "all":
        return torch.fft.fft2(x, dim=(-2, -1)).real
    return torch.fft.fft(x, dim=-2 if dims == "sequence" else -1).real


class FourierPromptBank(PromptBank):
    """VPT prompts whose first m rows per layer are Fourier-transformed on every use (after dropout)."""

    def __init__(self, config: FourierPromptConfig, backbone: Backbone) -> None:
        super().__init__(config, backbone)
        self.num_fourier = config.num_fourier_prompts
        self.fourier_dims = config.fourier_dims
        self.fourier_first = config.fourier_location == "prepend"

    def transform(self, prompts: torch.Tensor) -> torch.Tensor:
        if self.num_fourier == 0:
            return prompts
        fourier = fourier_transform(prompts[:, : self.num_fourier], self.fourier_dims).to(prompts.dtype)
        plain = prompts[:, self.num_fourier :]
        return torch.cat([fourier, plain] if self.fourier_first else [plain, fourier], dim=1)


class FourierPromptLayer(PromptAdapterLayer):
    """Holds each VFPT adapter's bank under ``vfpt_prompts.<adapter>.prompt_embeddings``."""

    adapter_layer_names = ("vfpt_prompts",)
    bank_cls = FourierPromptBank
