"""The backbones of the papers' tables, as Hugging Face loads them: ``backbone_preset(name).load()``.

VPT's main results use a ViT-B/16 supervised on ImageNet-21k; its Table 5 repeats them on two self-supervised
ViT-B/16s, MAE and MoCo v3 (VFPT's paper reports them too). A preset says which transformers class loads a
backbone, from where, with which options, how its images are normalised, and the learning-rate and
weight-decay grids to search. The spec records no separate grids for the self-supervised backbones, so they
search VPT's (:data:`~vpt_peft.recipes.LR_GRID`, :data:`~vpt_peft.recipes.WD_GRID`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Optional

from .schedules import LR_GRID, WD_GRID

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _load_mocov3(source: str, **kwargs: Any):
    from ..mocov3 import vit_from_mocov3

    return vit_from_mocov3(source, **kwargs)


@dataclass(frozen=True)
class BackbonePreset:
    """How to get one of the papers' backbones as a Hugging Face model, and how to tune prompts on it."""

    name: str
    description: str
    model_class: str
    """The transformers class that holds it (``ViTMAEModel``: the MAE encoder)."""
    checkpoint: Optional[str]
    """Its Hub id; ``None`` when the weights come from the authors' own file (pass it to :meth:`load`)."""
    load_kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    lr_grid: tuple[float, ...] = LR_GRID
    wd_grid: tuple[float, ...] = WD_GRID
    converter: Optional[Callable[..., Any]] = field(default=None, repr=False)
    """Builds the model from the authors' file when there is no Hub checkpoint."""

    def load(self, source: Optional[str] = None, **kwargs: Any):
        """The model, from ``source`` (a Hub id or folder; the authors' file for a converted backbone) or the
        preset's checkpoint; ``kwargs`` go to ``from_pretrained`` after the preset's own options."""
        if self.converter is not None:
            if source is None:
                raise ValueError(f"{self.name} has no Hub checkpoint: pass the path of the authors' file to load().")
            return self.converter(source, **kwargs)
        import transformers

        cls = getattr(transformers, self.model_class)
        return cls.from_pretrained(source or self.checkpoint, **{**self.load_kwargs, **kwargs})


BACKBONE_PRESETS: dict[str, BackbonePreset] = {
    preset.name: preset
    for preset in (
        BackbonePreset(
            "vit-b16-in21k",
            "VPT's main backbone: ViT-B/16 supervised on ImageNet-21k",
            "ViTForImageClassification",
            "google/vit-base-patch16-224-in21k",
        ),
        BackbonePreset(
            "mae-vit-b16",
            "VPT Table 5: the MAE encoder of ViT-B/16, random masking off (mask_ratio=0, required by vpt_peft)",
            "ViTMAEModel",
            "facebook/vit-mae-base",
            load_kwargs=MappingProxyType({"mask_ratio": 0.0}),
        ),
        BackbonePreset(
            "mocov3-vit-b16",
            "VPT Table 5: MoCo v3's ViT-B/16 base encoder, converted from the authors' checkpoint to a ViTModel",
            "ViTModel",
            None,
            converter=_load_mocov3,
        ),
    )
}


def backbone_preset(name: str) -> BackbonePreset:
    if name not in BACKBONE_PRESETS:
        raise ValueError(f"backbone must be one of {tuple(BACKBONE_PRESETS)}, got {name!r}.")
    return BACKBONE_PRESETS[name]
