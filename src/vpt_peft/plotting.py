"""Matplotlib, optional and headless, and crash-safe figure files: what the demo's plots and the reports share.

Install the ``demo`` extra for matplotlib (``pip install 'vpt-peft[demo]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from .atomic import atomic_open


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed), or a clear error naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("Plots need matplotlib: pip install 'vpt-peft[demo]' (or matplotlib).") from error
    return plt


def save_figure(fig: Any, path: Union[str, Path]) -> None:
    """Write the figure atomically (a reader never sees half a PNG); the format comes from the file suffix."""
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, dpi=110, format=path.suffix.lstrip(".") or None)
