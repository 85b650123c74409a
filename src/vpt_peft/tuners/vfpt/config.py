from __future__ import annotations

import math
from dataclasses import dataclass, field

from ...engine.checks import check_choice, check_fraction
from ...engine.config import PromptConfigBase

FOURIER_DIMS = ("all", "sequence", "hidden")
FOURIER_LOCATIONS = ("prepend", "append")


@dataclass
class FourierPromptConfig(PromptConfigBase):
    """VFPT (Zeng, Han et al., NeurIPS 2024): VPT whose first ``floor(fourier_ratio * num_prompts)`` prompts of
    every prompted layer pass through ``Re(FFT_seq(FFT_hidden(.)))`` (unnormalised, computed in float32).

    ``fourier_ratio=0`` is VPT exactly; the FFT adds no parameters. Defaults are the official code's
    (ratio 0.5, both dimensions, Fourier prompts first).
    """

    fourier_ratio: float = field(default=0.5, metadata={"help": "alpha = m / M, the share of Fourier prompts."})
    fourier_dims: str = field(default="all", metadata={"help": "'all' (sequence and hidden), 'sequence' or 'hidden'."})
    fourier_location: str = field(
        default="prepend", metadata={"help": "Fourier prompts before ('prepend') or after the plain ones."}
    )

    def __post_init__(self) -> None:
        from peft.utils.peft_types import PeftType

        self.peft_type = PeftType.VFPT
        super().__post_init__()
        check_fraction("fourier_ratio", self.fourier_ratio)
        check_choice("fourier_dims", self.fourier_dims, FOURIER_DIMS)
        check_choice("fourier_location", self.fourier_location, FOURIER_LOCATIONS)
        if self.fourier_ratio > 0 and self.num_prompts > 0 and self.num_fourier_prompts == 0:
            raise ValueError(
                f"fourier_ratio={self.fourier_ratio} with num_prompts={self.num_prompts} gives floor(alpha*M) = 0 "
                "Fourier prompts (the official code fails on the empty FFT). Use fourier_ratio=0 or more prompts."
            )

    @property
    def num_fourier_prompts(self) -> int:
        """m = floor(M * alpha), as the official code rounds."""
        return math.floor(self.num_prompts * self.fourier_ratio)
