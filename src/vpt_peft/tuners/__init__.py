"""One package per method, peft-style: ``config.py``, ``layer.py`` (modules owning the prompts), ``model.py``, and
``recipe.py`` (its presets). Each package registers itself on import (:func:`load_methods` imports them all), so a
new method is a new folder here and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil


def load_methods() -> list[str]:
    """Import (and so register) every method package in this folder; returns their names."""
    names = [info.name for info in pkgutil.iter_modules(__path__) if info.ispkg]
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names
