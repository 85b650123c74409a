"""The papers' preprocessing, written with PIL and torch so the library needs no torchvision.

Each benchmark's numbers depend on its official input pipeline (spec §1.6, §4.5), so each gets its own
transform, reproducing the operation the official code calls:

- VTAB-1k (VPT's TensorFlow pipeline): ``tf.image.resize`` to a square, bilinear with half-pixel centres and no
  anti-aliasing, aspect not kept; /255; no augmentation. :func:`torch.nn.functional.interpolate` with
  ``align_corners=False`` samples the same points, so it is used on the float image.
- FGVC (VPT's torchvision pipeline): train Resize(256, short side) -> RandomCrop(224) -> HFlip(0.5); evaluation
  Resize(256) -> CenterCrop(224). torchvision resizes PIL images with PIL's own bilinear filter, as done here.
- CLIP few-shot (Dassl, as DPT runs it): train bicubic RandomResizedCrop(224, scale 0.08-1, ratio 3/4-4/3) +
  HFlip(0.5); evaluation bicubic Resize(224, short side) -> CenterCrop(224).

The sizes scale with ``image_size`` (FGVC keeps the 256/224 ratio) so tests can run on tiny images. Random
draws use torch's global generator, so ``torch.manual_seed`` and DataLoader worker seeding govern them. The
transforms are frozen dataclasses, hence picklable for DataLoader workers and remote trials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

FGVC_RESIZE_RATIO = 256 / 224
"""FGVC resizes the short side to 256 before cropping 224; other sizes keep the ratio."""

RESIZED_CROP_SCALE = (0.08, 1.0)
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)
RESIZED_CROP_ATTEMPTS = 10


def to_tensor(image: Any) -> torch.Tensor:
    """An RGB PIL image as a float tensor (3, H, W) in [0, 1]."""
    array = np.asarray(image, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).div(255.0)


def normalize(pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Per-channel ``(x - mean) / std`` on a (3, H, W) tensor."""
    mean_t = torch.tensor(mean, dtype=pixels.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype).view(-1, 1, 1)
    return (pixels - mean_t) / std_t


def resize_square_like_tf(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) -> (3, size, size): TensorFlow's default bilinear resize (half-pixel centres, no anti-aliasing)."""
    return F.interpolate(pixels[None], size=(size, size), mode="bilinear", align_corners=False, antialias=False)[0]


def resize_short_side(image: Any, size: int, resample: int) -> Any:
    """Resize so the short side is ``size``; the long side is truncated to an integer, as torchvision does."""
    width, height = image.size
    if width <= height:
        new_size = (size, int(size * height / width))
    else:
        new_size = (int(size * width / height), size)
    return image if new_size == image.size else image.resize(new_size, resample)


def center_crop(image: Any, size: int) -> Any:
    """The central ``size`` x ``size`` square, its offset rounded as torchvision rounds it."""
    width, height = image.size
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def random_crop(image: Any, size: int) -> Any:
    """A uniformly placed ``size`` x ``size`` square."""
    width, height = image.size
    top = int(torch.randint(0, height - size + 1, (1,)))
    left = int(torch.randint(0, width - size + 1, (1,)))
    return image.crop((left, top, left + size, top + size))


def random_horizontal_flip(image: Any, probability: float = 0.5) -> Any:
    from PIL import Image

    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if float(torch.rand(1)) < probability else image


def random_resized_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of an Inception-style crop: a random share of the area (``RESIZED_CROP_SCALE``)
    at a log-uniform aspect ratio (``RESIZED_CROP_RATIO``), placed uniformly; after ``RESIZED_CROP_ATTEMPTS``
    draws that do not fit, the largest central crop whose aspect ratio is within range."""
    area = width * height
    log_low, log_high = math.log(RESIZED_CROP_RATIO[0]), math.log(RESIZED_CROP_RATIO[1])
    for _ in range(RESIZED_CROP_ATTEMPTS):
        target_area = area * float(torch.empty(1).uniform_(*RESIZED_CROP_SCALE))
        aspect = math.exp(float(torch.empty(1).uniform_(log_low, log_high)))
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(torch.randint(0, height - crop_h + 1, (1,)))
            left = int(torch.randint(0, width - crop_w + 1, (1,)))
            return left, top, left + crop_w, top + crop_h
    crop_w, crop_h = width, height
    if width / height < RESIZED_CROP_RATIO[0]:
        crop_h = int(round(width / RESIZED_CROP_RATIO[0]))
    elif width / height > RESIZED_CROP_RATIO[1]:
        crop_w = int(round(height * RESIZED_CROP_RATIO[1]))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


@dataclass(frozen=True)
class ImageTransform:
    """A PIL image to a normalised (3, ``size``, ``size``) tensor; ``train`` turns on the augmentation."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"image_size must be a positive integer (224 in the papers), got {self.size!r}.")


@dataclass(frozen=True)
class VtabTransform(ImageTransform):
    """VTAB-1k: square bilinear resize to ``size`` (TensorFlow's), /255, normalise; no augmentation in any role."""

    def __call__(self, image: Any) -> torch.Tensor:
        pixels = resize_square_like_tf(to_tensor(image), self.size)
        return normalize(pixels, self.mean, self.std)


@dataclass(frozen=True)
class FgvcTransform(ImageTransform):
    """FGVC: short side to ``size``·256/224, then a random crop + flip (``train``) or the centre crop."""

    def __call__(self, image: Any) -> torch.Tensor:
        from PIL import Image

        image = resize_short_side(image, int(round(self.size * FGVC_RESIZE_RATIO)), Image.Resampling.BILINEAR)
        if self.train:
            image = random_horizontal_flip(random_crop(image, self.size))
        else:
            image = center_crop(image, self.size)
        return normalize(to_tensor(image), self.mean, self.std)


@dataclass(frozen=True)
class ClipTransform(ImageTransform):
    """CLIP few-shot (Dassl): bicubic random-resized crop + flip (``train``), or bicubic resize + centre crop."""

    def __call__(self, image: Any) -> torch.Tensor:
        from PIL import Image

        bicubic = Image.Resampling.BICUBIC
        if self.train:
            # Crop, then resize: PIL's resize(box=...) would let the filter read pixels outside the box.
            crop = image.crop(random_resized_crop_box(*image.size))
            image = random_horizontal_flip(crop.resize((self.size, self.size), bicubic))
        else:
            image = center_crop(resize_short_side(image, self.size, bicubic), self.size)
        return normalize(to_tensor(image), self.mean, self.std)


NORMALIZATIONS = ("official", "processor")


def mean_std(normalization: str, processor: Any, official: tuple[tuple, tuple]) -> tuple[tuple, tuple]:
    """The (mean, std) to normalise with: the benchmark's ``official`` pair, or the image processor's own."""
    if normalization == "official":
        return official
    if normalization != "processor":
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if mean is None or std is None:
        raise ValueError(
            'normalization="processor" needs processor= an image processor with image_mean and image_std '
            f"(e.g. AutoImageProcessor.from_pretrained(model_id)); got {type(processor).__name__}."
        )
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
