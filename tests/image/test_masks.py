"""Masks: Kandinsky's prepare_mask_and_masked_image / prepare_mask and the Stable Diffusion mask helpers,
against the diffusers module-level functions and VaeImageProcessor."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor as Reference
from diffusers.pipelines.kandinsky.pipeline_kandinsky_inpaint import (
    prepare_mask_and_masked_image as reference_prepare_v21,
)
from diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2_inpainting import (
    prepare_mask as reference_prepare_mask,
)
from diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2_inpainting import (
    prepare_mask_and_masked_image as reference_prepare,
)

from sfumato.image.masks import (
    apply_overlay,
    blur,
    get_crop_region,
    grow_repaint_region,
    kandinsky_latent_mask,
    prepare_mask,
    prepare_mask_and_masked_image,
    preprocess_mask,
)


def _picture(width, height, mode="RGB", seed=0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return PIL.Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode)


def _blob_mask(width, height, box, mode="L") -> PIL.Image.Image:
    """Black picture with a white rectangle ``box`` (the part to repaint)."""
    mask = np.zeros((height, width), np.uint8)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = 255
    picture = PIL.Image.fromarray(mask, mode="L")
    return picture.convert(mode)


def _clone(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value.copy()


def _check_kandinsky(image, mask, height, width):
    ours_mask, ours_image = prepare_mask_and_masked_image(_clone(image), _clone(mask), height, width)
    for reference in (reference_prepare, reference_prepare_v21):
        their_mask, their_image = reference(_clone(image), _clone(mask), height, width)
        assert ours_mask.shape == their_mask.shape and ours_mask.dtype == their_mask.dtype
        assert ours_image.shape == their_image.shape and ours_image.dtype == their_image.dtype
        assert torch.equal(ours_mask, their_mask)
        assert torch.equal(ours_image, their_image)
    return ours_mask, ours_image


@pytest.mark.parametrize("height, width", [(32, 48), (48, 32), (40, 40)])
def test_kandinsky_prepare_pil_matches_reference(height, width):
    picture = _picture(50, 30, seed=1)
    soft_mask = PIL.Image.fromarray(
        (np.random.default_rng(2).random((30, 50)) * 255).astype(np.uint8), mode="L"
    )  # lanczos + threshold decide per pixel
    for mask in (soft_mask, _blob_mask(50, 30, (10, 5, 30, 20), mode="RGB")):
        keep, image = _check_kandinsky(picture, mask, height, width)
        assert keep.shape == (1, 1, height, width) and image.shape == (1, 3, height, width)
        assert set(keep.unique().tolist()) <= {0.0, 1.0}
    _check_kandinsky([picture, _picture(50, 30, seed=3)], [soft_mask, soft_mask], height, width)


def test_kandinsky_white_means_repaint():
    keep, _ = prepare_mask_and_masked_image(_picture(32, 32), _blob_mask(32, 32, (8, 8, 24, 24)), 32, 32)
    assert keep[0, 0, 16, 16] == 0  # inside the white box: repaint -> not kept
    assert keep[0, 0, 2, 2] == 1


def test_kandinsky_prepare_numpy_matches_reference():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (24, 40, 3)).astype(np.uint8)  # numpy pictures are 0..255 here
    mask = rng.random((24, 40)).astype(np.float32)  # numpy masks are 0..1
    _check_kandinsky(image, mask, 24, 40)
    _check_kandinsky([image, image], [mask, 1 - mask], 24, 40)
    _check_kandinsky(image.astype(np.float64), mask.astype(np.float64), 24, 40)
    _check_kandinsky(image, (mask > 0.5).astype(np.uint8), 24, 40)


@pytest.mark.parametrize(
    "image_shape, mask_shape",
    [
        ((3, 16, 24), (16, 24)),
        ((3, 16, 24), (1, 16, 24)),
        ((2, 3, 16, 24), (2, 16, 24)),
        ((2, 3, 16, 24), (2, 1, 16, 24)),
    ],
)
def test_kandinsky_prepare_tensors_matches_reference(image_shape, mask_shape):
    generator = torch.Generator().manual_seed(5)
    image = torch.rand(image_shape, generator=generator) * 2 - 1
    mask = torch.rand(mask_shape, generator=generator)
    _check_kandinsky(image, mask, 999, 999)  # tensors are not resized
    _check_kandinsky(image.double(), mask.half(), 8, 8)
    original = mask.clone()
    prepare_mask_and_masked_image(image, mask, 8, 8)
    assert torch.equal(mask, original)  # the caller's mask is left alone (the reference binarizes it in place)


def test_kandinsky_prepare_bad_input():
    image, mask = torch.zeros(3, 8, 8), torch.zeros(8, 8)
    with pytest.raises(ValueError, match="image must be given"):
        prepare_mask_and_masked_image(None, mask, 8, 8)
    with pytest.raises(ValueError, match="mask_image must be given"):
        prepare_mask_and_masked_image(image, None, 8, 8)
    with pytest.raises(TypeError, match="image is a torch.Tensor, so mask_image must be one too, got Image"):
        prepare_mask_and_masked_image(image, PIL.Image.new("L", (8, 8)), 8, 8)
    with pytest.raises(TypeError, match="mask_image is a torch.Tensor, so image must be one too"):
        prepare_mask_and_masked_image(PIL.Image.new("RGB", (8, 8)), mask, 8, 8)
    with pytest.raises(ValueError, match=r"must be 3HW \(RGB\), got shape \(4, 8, 8\)"):
        prepare_mask_and_masked_image(torch.zeros(4, 8, 8), mask, 8, 8)
    with pytest.raises(ValueError, match="same height and width"):
        prepare_mask_and_masked_image(image, torch.zeros(8, 9), 8, 8)
    with pytest.raises(ValueError, match="same batch size, got 2 and 3"):
        prepare_mask_and_masked_image(torch.zeros(2, 3, 8, 8), torch.zeros(3, 8, 8), 8, 8)
    with pytest.raises(ValueError, match=r"image as a tensor must be in \[-1, 1\], got values in \[0.0, 2.0\]"):
        prepare_mask_and_masked_image(torch.full((3, 8, 8), 2.0).index_fill(1, torch.tensor([0]), 0), mask, 8, 8)
    with pytest.raises(ValueError, match=r"mask_image as a tensor must be in \[0, 1\]"):
        prepare_mask_and_masked_image(image, mask - 1, 8, 8)
    with pytest.raises(TypeError, match="image must be a PIL image"):
        prepare_mask_and_masked_image("frog.png", "mask.png", 8, 8)
    with pytest.raises(ValueError, match="height must be a positive integer, got None"):
        prepare_mask_and_masked_image(PIL.Image.new("RGB", (8, 8)), PIL.Image.new("L", (8, 8)), None, 8)
    with pytest.raises(ValueError, match=r"mask_image\[0\] as a numpy array must be HW"):
        prepare_mask_and_masked_image(np.zeros((8, 8, 3)), np.zeros((8, 8, 1)), 8, 8)


def test_grow_repaint_region_matches_reference_prepare_mask():
    generator = torch.Generator().manual_seed(6)
    binary = (torch.rand(3, 1, 12, 17, generator=generator) > 0.2).float()
    soft = torch.rand(2, 1, 9, 11, generator=generator).round(decimals=1)  # values other than 0 / 1 too
    sparse = torch.ones(1, 1, 10, 10)
    sparse[0, 0, 0, 0] = sparse[0, 0, 9, 9] = sparse[0, 0, 4, 6] = sparse[0, 0, 0, 9] = 0
    for keep in (binary, soft, sparse, torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 3, 5)):
        ours = grow_repaint_region(keep.clone())
        assert torch.equal(ours, reference_prepare_mask(keep.clone()))
    assert prepare_mask is grow_repaint_region


def test_kandinsky_latent_mask_matches_pipeline_steps():
    keep, _ = prepare_mask_and_masked_image(_picture(64, 48), _blob_mask(64, 48, (20, 10, 40, 30)), 48, 64)
    expected = reference_prepare_mask(F.interpolate(keep.clone(), (6, 8), mode="nearest"))
    assert torch.equal(kandinsky_latent_mask(keep, (6, 8)), expected)
    with pytest.raises(ValueError, match=r"NCHW torch.Tensor, got a tensor of shape \(6, 8\)"):
        grow_repaint_region(torch.ones(6, 8))


@pytest.mark.parametrize("size", [None, (16, 24), (40, 24)])
def test_preprocess_mask_matches_stable_diffusion_mask_processor(size):
    height, width = size or (None, None)
    reference = Reference(vae_scale_factor=8, do_normalize=False, do_binarize=True, do_convert_grayscale=True)
    for mask in (_blob_mask(45, 30, (5, 5, 20, 25)), _blob_mask(45, 30, (5, 5, 20, 25), mode="RGB")):
        ours = preprocess_mask(mask, height, width)
        assert torch.equal(ours, reference.preprocess(mask, height, width))
        assert ours.shape[:2] == (1, 1)


@pytest.mark.parametrize("pad", [0, 4, 40])
@pytest.mark.parametrize(
    "box",
    [  # odd growth in the interior, at the borders, the whole picture, one pixel
        (10, 5, 30, 12), (10, 20, 30, 27), (20, 10, 27, 30), (2, 0, 8, 40),
        (50, 30, 64, 48), (0, 0, 64, 48), (31, 20, 32, 21),
    ],
)
@pytest.mark.parametrize("target", [(512, 512), (768, 512), (512, 768)])
def test_get_crop_region_matches_reference(pad, box, target):
    mask = _blob_mask(64, 48, box)
    width, height = target
    assert get_crop_region(mask, width, height, pad) == Reference.get_crop_region(mask, width, height, pad)


def test_get_crop_region_empty_mask():
    with pytest.raises(ValueError, match="all black"):
        get_crop_region(PIL.Image.new("L", (16, 16)), 64, 64)


@pytest.mark.parametrize("crop", [None, (10, 4, 42, 36), (0, 8, 64, 40)])
def test_apply_overlay_and_blur_match_reference(crop):
    init_image, generated = _picture(64, 48, seed=7), _picture(64, 48, seed=8)
    mask = blur(_blob_mask(64, 48, (12, 6, 40, 30)), 3)
    assert np.array_equal(np.array(mask), np.array(Reference.blur(_blob_mask(64, 48, (12, 6, 40, 30)), 3)))
    if crop is not None:
        generated = _picture(24, 24, seed=9)
    ours = apply_overlay(mask, init_image, generated, crop)
    theirs = Reference().apply_overlay(mask, init_image, generated, crop)
    assert ours.mode == theirs.mode == "RGB" and ours.size == (64, 48)
    assert np.array_equal(np.array(ours), np.array(theirs))


# --- keep_unmasked: the original's pixels back outside the mask, with a soft seam ---------------


def _half_mask(width=32, height=32):
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:, width // 2:] = 255  # repaint the right half
    return PIL.Image.fromarray(mask)


def test_keep_unmasked_keeps_every_kept_pixel_and_fades_in_inside_the_mask():
    from sfumato.image import keep_unmasked

    original, generated, mask = _picture(32, 32, seed=1), _picture(32, 32, seed=2), _half_mask()
    result = keep_unmasked(generated, original, mask, blur_radius=2)
    out, old, new = (np.asarray(p, dtype=np.int16) for p in (result, original, generated))
    assert result.mode == "RGB" and result.size == (32, 32)
    assert np.array_equal(out[:, :16], old[:, :16])  # the kept half is the original, exactly
    assert np.array_equal(out[:, 24:], new[:, 24:])  # deep inside the mask: the new picture
    # the seam: from the original towards the new picture, column by column
    share = [float(np.mean((out[:, c] - old[:, c]) / np.where(new[:, c] == old[:, c], 1, new[:, c] - old[:, c])))
             for c in range(16, 24)]
    assert 0 <= share[0] < 0.4 and share[-1] > 0.95 and all(a <= b + 0.05 for a, b in zip(share, share[1:]))


def test_keep_unmasked_hard_edge_sizes_and_batches():
    from sfumato.image import keep_unmasked

    original, mask = _picture(64, 64, seed=3), _half_mask(64, 64)
    generated = [_picture(32, 32, seed=4), _picture(32, 32, seed=5)]
    results = keep_unmasked(generated, original, mask, blur_radius=0)
    assert isinstance(results, list) and len(results) == 2
    resized = np.asarray(original.resize((32, 32), resample=PIL.Image.Resampling.BICUBIC, reducing_gap=1))
    for result, new in zip(results, generated):
        out = np.asarray(result)
        assert np.array_equal(out[:, :16], resized[:, :16]) and np.array_equal(out[:, 16:], np.asarray(new)[:, 16:])
    # a grey mask below one half keeps, as the pipelines binarize it
    grey = PIL.Image.new("L", (32, 32), 127)
    assert np.array_equal(np.asarray(keep_unmasked(generated[0], generated[1], grey)), np.asarray(generated[1]))


def test_keep_unmasked_bad_input():
    from sfumato.image import keep_unmasked

    picture = _picture(8, 8)
    with pytest.raises(TypeError, match="generated"):
        keep_unmasked(np.zeros((8, 8, 3)), picture, picture)
    with pytest.raises(ValueError, match="mask_image has 2 pictures for 3"):
        keep_unmasked([picture] * 3, picture, [picture, picture])
    with pytest.raises(ValueError, match="blur_radius"):
        keep_unmasked(picture, picture, picture, blur_radius=-1)
