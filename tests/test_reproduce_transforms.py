"""The benchmarks' preprocessing against tensors computed by hand (spec §1.6 VTAB/FGVC, §4.5 CLIP few-shot)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from vpt_peft.reproduce.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipTransform,
    FgvcTransform,
    VtabTransform,
    mean_std,
    random_resized_crop_box,
    resize_short_side,
)


def image_of(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array.astype(np.uint8))


def gradient(width: int, height: int) -> np.ndarray:
    """An (H, W, 3) image whose pixels all differ, so any crop or flip is recognisable."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs * 5, ys * 7, (xs + ys) % 256], axis=-1)


def normalized(array: np.ndarray, mean, std) -> torch.Tensor:
    pixels = torch.tensor(array, dtype=torch.float32).permute(2, 0, 1) / 255
    return (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def test_vtab_upsamples_a_2x2_image_like_tensorflow_bilinear():
    """2x2 -> 4x4 with half-pixel centres: output rows/cols sample the input at 0, 0.25, 0.75, 1 (edges clamp)."""
    colours = np.array([[[0, 40, 200], [100, 80, 0]], [[200, 120, 60], [40, 0, 255]]])
    weights = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    planes = torch.tensor(colours, dtype=torch.float32).permute(2, 0, 1)
    by_hand = torch.stack([weights @ plane @ weights.T for plane in planes]) / 255
    want = (by_hand - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    got = VtabTransform(4, IMAGENET_MEAN, IMAGENET_STD)(image_of(colours))
    assert torch.allclose(got, want, atol=1e-6)


def test_vtab_downsamples_without_antialiasing():
    """6x6 -> 2x2 samples input pixels 1 and 4 exactly (TensorFlow's default), rather than averaging blocks."""
    array = gradient(6, 6)
    got = VtabTransform(2, (0, 0, 0), (1, 1, 1))(image_of(array))
    assert torch.allclose(got, normalized(array[1::3, 1::3], (0, 0, 0), (1, 1, 1)), atol=1e-6)


def test_vtab_does_not_keep_the_aspect_ratio():
    assert VtabTransform(8, IMAGENET_MEAN, IMAGENET_STD)(image_of(gradient(20, 5))).shape == (3, 8, 8)


@pytest.mark.parametrize(
    "size, short, want", [((20, 10), 32, (64, 32)), ((10, 30), 32, (32, 96)), ((27, 20), 32, (43, 32))]
)
def test_resize_short_side_truncates_the_long_side(size, short, want):
    assert resize_short_side(Image.new("RGB", size), short, Image.Resampling.BILINEAR).size == want


def test_fgvc_evaluation_resizes_by_256_over_224_then_centre_crops():
    """At image_size 28 the short side goes to round(28*256/224) = 32: a 40x32 image is not resized, and the
    28x28 centre crop starts at row round(4/2) = 2, column round(12/2) = 6."""
    array = gradient(40, 32)
    got = FgvcTransform(28, IMAGENET_MEAN, IMAGENET_STD, train=False)(image_of(array))
    assert torch.allclose(got, normalized(array[2:30, 6:34], IMAGENET_MEAN, IMAGENET_STD), atol=1e-6)


def test_fgvc_training_takes_a_random_crop_flipped_half_of_the_time():
    array = gradient(40, 32)
    candidates = {}
    for top in range(0, 5):
        for left in range(0, 13):
            crop = array[top : top + 28, left : left + 28]
            candidates[(top, left, False)] = normalized(crop, IMAGENET_MEAN, IMAGENET_STD)
            candidates[(top, left, True)] = normalized(crop[:, ::-1].copy(), IMAGENET_MEAN, IMAGENET_STD)
    transform = FgvcTransform(28, IMAGENET_MEAN, IMAGENET_STD, train=True)
    torch.manual_seed(0)
    drawn = []
    for _ in range(40):
        got = transform(image_of(array))
        drawn.append(next(key for key, want in candidates.items() if torch.allclose(got, want, atol=1e-6)))
    flips = sum(flipped for *_, flipped in drawn)
    assert 8 < flips < 32 and len({(top, left) for top, left, _ in drawn}) > 10


def test_clip_evaluation_resizes_the_short_side_then_centre_crops():
    """A 40x32 image at size 32 keeps its size (bicubic to the same size is the identity); the crop starts at 4."""
    array = gradient(40, 32)
    got = ClipTransform(32, CLIP_MEAN, CLIP_STD, train=False)(image_of(array))
    assert torch.allclose(got, normalized(array[:, 4:36], CLIP_MEAN, CLIP_STD), atol=1e-6)


def test_clip_training_crops_and_resizes_to_the_square_size():
    colour = np.full((30, 50, 3), (10, 200, 90))
    torch.manual_seed(0)
    got = ClipTransform(16, CLIP_MEAN, CLIP_STD, train=True)(image_of(colour))
    assert torch.allclose(got, normalized(colour[:16, :16], CLIP_MEAN, CLIP_STD), atol=1e-6)


def test_random_resized_crop_draws_a_share_of_the_area_within_the_aspect_range():
    torch.manual_seed(0)
    for _ in range(50):
        left, top, right, bottom = random_resized_crop_box(200, 100)
        assert 0 <= left < right <= 200 and 0 <= top < bottom <= 100
        width, height = right - left, bottom - top
        assert 0.08 * 0.9 <= width * height / 20000 <= 1.0
        assert 0.7 <= width / height <= 1.4


def test_random_resized_crop_falls_back_to_the_widest_allowed_central_crop():
    """A 100x2 strip fits no 8-100 % crop at ratio 3/4..4/3, so the crop is 3x2 (ratio 4/3) in the centre."""
    assert random_resized_crop_box(100, 2) == (48, 0, 51, 2)


def test_processor_normalization_uses_the_processors_mean_and_std():
    processor = SimpleNamespace(image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])
    mean, std = mean_std("processor", processor, (IMAGENET_MEAN, IMAGENET_STD))
    white = VtabTransform(2, mean, std)(Image.new("RGB", (3, 3), (255, 255, 255)))
    assert mean == (0.5, 0.5, 0.5) and torch.allclose(white, torch.full((3, 2, 2), 2.0))
    assert mean_std("official", None, (CLIP_MEAN, CLIP_STD)) == (CLIP_MEAN, CLIP_STD)


def test_normalization_and_size_errors_name_what_is_accepted():
    with pytest.raises(ValueError, match="needs processor="):
        mean_std("processor", None, (IMAGENET_MEAN, IMAGENET_STD))
    with pytest.raises(ValueError, match="one of"):
        mean_std("imagenet", None, (IMAGENET_MEAN, IMAGENET_STD))
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        VtabTransform(0, IMAGENET_MEAN, IMAGENET_STD)
