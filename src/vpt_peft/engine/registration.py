"""Registration of vpt_peft's methods with peft, and the registry every other part of the library reads.

A method registers itself from its own package (``tuners/<method>/__init__.py``): :func:`register_method` makes
it a peft method and lists it in :data:`METHODS`; its recipes (presets, CLI names) register with
:func:`vpt_peft.recipes.register_recipe`. Nothing outside the method's folder names it.

peft keys everything (config class, tuner class, prefix) on members of its closed ``PeftType`` enum and
offers no plugin entry point. We add members at import time and fill peft's four mapping tables, the same
tables ``peft.utils.register_peft_method`` fills.

The member's *value* is what ``save_pretrained`` writes into ``adapter_config.json`` and what peft looks
up when it loads one. We make that value say how to fix a load without this package imported: peft then
fails with ``KeyError: 'VPT (requires: import vpt_peft)'`` instead of a bare ``KeyError: 'VPT'``.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft.mapping import (
    PEFT_TYPE_TO_CONFIG_MAPPING,
    PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
    PEFT_TYPE_TO_PREFIX_MAPPING,
    PEFT_TYPE_TO_TUNER_MAPPING,
)
from peft.utils.peft_types import PeftType

IMPORT_HINT = " (requires: import vpt_peft)"


def extend_peft_type(name: str) -> PeftType:
    """Add ``PeftType.<NAME>`` (idempotent: re-imports and reloads return the existing member)."""
    name = name.upper()
    if name in PeftType.__members__:
        return PeftType[name]
    value = name + IMPORT_HINT
    member = str.__new__(PeftType, value)
    member._name_ = name
    member._value_ = value
    member._sort_order_ = len(PeftType._member_names_)
    member.__objclass__ = PeftType
    type.__setattr__(PeftType, name, member)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[value] = member
    PeftType._member_names_.append(name)
    return member


@dataclass(frozen=True)
class Method:
    """A registered prompt method: its peft type, config class and tuner class."""

    peft_type: PeftType
    config_cls: type
    tuner_cls: type


METHODS: dict[str, Method] = {}
"""Every registered method by lower-case name (``"vpt"``, ``"vfpt"``, ...), in order of registration."""


def register_method(name: str, config_cls: type, model_cls: type) -> PeftType:
    """Make ``name`` a peft method: ``get_peft_model``/``PeftModel.from_pretrained`` then find our classes."""
    peft_type = extend_peft_type(name)
    prefix = model_cls.prefix
    taken = {p for t, p in PEFT_TYPE_TO_PREFIX_MAPPING.items() if t != peft_type}
    if any(prefix in other or other in prefix for other in taken):
        raise RuntimeError(f"vpt_peft: the prefix {prefix!r} of {name} collides with an installed peft method.")
    PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_cls
    PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = model_cls
    PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = prefix
    PEFT_TYPE_TO_MIXED_MODEL_MAPPING.pop(peft_type, None)
    METHODS[name.lower()] = Method(peft_type, config_cls, model_cls)
    return peft_type
