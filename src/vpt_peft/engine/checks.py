"""Validation of user-facing values, in one place: every config field and argument is checked by these.

Each check raises a ``ValueError`` that names the field, the value it got and what it accepts, before anything
is built or changed. Types are checked strictly (``"false"`` is not a boolean, ``True`` is not a number),
because a config read from JSON or typed on a command line otherwise slips through as a truthy string.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def check_bool(name: str, value: Any) -> None:
    """``value`` must be ``True`` or ``False`` (not a string, not a number)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r} ({type(value).__name__}).")


def check_count(name: str, value: Any, minimum: int = 0) -> None:
    """``value`` must be an integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def check_number(name: str, value: Any, minimum: float = -math.inf) -> None:
    """``value`` must be a finite real number (not a bool) >= ``minimum``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}.")


def check_fraction(name: str, value: Any, *, upper_inclusive: bool = True) -> None:
    """``value`` must be a real number (not a bool) in [0, 1] (or [0, 1))."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value) and value >= 0
    ok = ok and (value <= 1 if upper_inclusive else value < 1)
    if not ok:
        interval = "[0, 1]" if upper_inclusive else "[0, 1)"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}.")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """``value`` must be one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")


def check_index_list(name: str, value: Any) -> list[int]:
    """A non-empty list of distinct integers >= 0, returned sorted (a bare int or a string is refused)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a list of layer indices, got {value!r} ({type(value).__name__}).")
    items = list(value)
    if not items or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in items):
        raise ValueError(f"{name} must be a non-empty list of layer indices >= 0, got {items!r}.")
    if len(set(items)) != len(items):
        raise ValueError(f"{name} has duplicates: {items!r}.")
    return sorted(items)


def check_string_list(name: str, value: Any) -> list[str]:
    """A non-empty list of non-empty strings (a bare string is refused: it is not a list of one)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a list of strings, got {value!r} ({type(value).__name__}).")
    items = list(value)
    if not items or any(not isinstance(i, str) or not i.strip() for i in items):
        raise ValueError(f"{name} must be a non-empty list of non-empty strings, got {items!r}.")
    return items


def check_pixel_values(pixels: Any, num_channels: int | None, patch_fan_in: int | None = None) -> None:
    """A batch of images as the model takes them: a floating ``(batch, channels, height, width)`` tensor, or, for a
    family fed flattened patches (``patch_fan_in`` = channels * patch * patch), ``(batch, patches, patch_fan_in)``."""
    import torch

    if not isinstance(pixels, torch.Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixels).__name__}.")
    if patch_fan_in is not None and (pixels.dim() != 3 or pixels.shape[-1] != patch_fan_in):
        raise ValueError(
            f"pixel_values must be flattened patches (batch, patches, {patch_fan_in}), as the model's image processor "
            f"makes them, got shape {list(pixels.shape)}."
        )
    if patch_fan_in is None and pixels.dim() != 4:
        raise ValueError(
            f"pixel_values must have 4 dimensions (batch, channels, height, width), got shape {list(pixels.shape)}"
            + (": add the batch dimension with pixel_values[None]." if pixels.dim() == 3 else ".")
        )
    if not pixels.is_floating_point():
        raise TypeError(
            f"pixel_values must be floating point, got {pixels.dtype}: raw image bytes need the model's image "
            "processor (resize, rescale, normalise) first."
        )
    if patch_fan_in is None and num_channels is not None and pixels.shape[1] != num_channels:
        raise ValueError(
            f"pixel_values has {pixels.shape[1]} channels but the model takes {num_channels} "
            f"(shape {list(pixels.shape)}; channels come second)."
        )
