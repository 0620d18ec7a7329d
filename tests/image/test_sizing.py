"""Latent-friendly sizes and resizing against the reference helpers."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor as Reference
from diffusers.pipelines.kandinsky.pipeline_kandinsky import get_new_h_w
from diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2 import downscale_height_and_width as reference_v22
from diffusers.pipelines.kandinsky3.pipeline_kandinsky3 import downscale_height_and_width as reference_v3

from sfumato.image.sizing import downscale_height_and_width, resize_pil, resize_tensor


def test_downscale_height_and_width_matches_reference():
    for height in (1, 63, 64, 65, 500, 512, 768, 1000):
        for width in (64, 100, 768):
            for factor in (2, 8):
                expected = reference_v22(height, width, factor)
                assert downscale_height_and_width(height, width, factor) == expected
                assert expected == reference_v3(height, width, factor) == get_new_h_w(height, width, factor)
    assert downscale_height_and_width(768, 500) == (96, 64)


def test_downscale_height_and_width_bad_input():
    with pytest.raises(ValueError, match="height must be a positive integer, got 0"):
        downscale_height_and_width(0, 64)
    with pytest.raises(ValueError, match="width must be a positive integer, got 64.0"):
        downscale_height_and_width(64, 64.0)


@pytest.mark.parametrize("resample", ["lanczos", "bicubic", "bilinear", "nearest"])
@pytest.mark.parametrize("mode", ["default", "fill", "crop"])
def test_resize_pil_matches_reference(resample, mode):
    rng = np.random.default_rng(0)
    picture = PIL.Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    reference = Reference(resample=resample, reducing_gap=1)
    for height, width in ((24, 40), (40, 24), (30, 50)):
        ours = resize_pil(picture, width, height, resample, reducing_gap=1, mode=mode)
        theirs = reference.resize(picture, height, width, resize_mode=mode)
        assert ours.size == theirs.size == (width, height)
        assert np.array_equal(np.array(ours), np.array(theirs))


def test_resize_tensor_and_array_match_reference():
    images = torch.rand(2, 3, 10, 14, generator=torch.Generator().manual_seed(1))
    assert torch.equal(resize_tensor(images, 7, 21), Reference().resize(images, 7, 21))
    array = images.permute(0, 2, 3, 1).numpy()
    assert np.array_equal(resize_tensor(array, 7, 21), Reference().resize(array, 7, 21))


def test_resize_pil_bad_mode():
    with pytest.raises(ValueError, match=r"resize_mode must be one of \['default', 'fill', 'crop'\], got 'cover'"):
        resize_pil(PIL.Image.new("RGB", (8, 8)), 4, 4, mode="cover")
