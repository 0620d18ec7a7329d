"""ImageProcessor.preprocess / postprocess and postprocess() against diffusers' VaeImageProcessor."""

from __future__ import annotations

import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor as Reference

from sfumato.image.processor import ImageProcessor, VaeImageProcessor, postprocess


def _picture(width, height, mode="RGB", seed=0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return PIL.Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode)


def _reference_preprocess(settings, *args, **kwargs):
    with warnings.catch_warnings():  # it warns about [-1, 1] tensors and lists of batches
        warnings.simplefilter("ignore", FutureWarning)
        return Reference(**settings).preprocess(*args, **kwargs)


def _check_preprocess(settings, image, *args, clone=lambda x: x, **kwargs):
    """Same tensor (values, dtype, shape) from both processors."""
    ours = ImageProcessor(**settings).preprocess(clone(image), *args, **kwargs)
    theirs = _reference_preprocess(settings, clone(image), *args, **kwargs)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert torch.equal(ours, theirs), (ours - theirs).abs().max()
    return ours


KANDINSKY = {"vae_scale_factor": 8, "resample": "bicubic", "reducing_gap": 1}


@pytest.mark.parametrize(
    "settings",
    [
        {},
        KANDINSKY,
        {"resample": "nearest", "vae_scale_factor": 4},
        {"resample": "bilinear", "do_normalize": False},
        {"do_convert_rgb": True},
        {"do_resize": False},
    ],
)
@pytest.mark.parametrize("size", [None, (40, 24), (37, 53)])
def test_preprocess_pil_matches_reference(settings, size):
    height, width = size or (None, None)
    pictures = [_picture(45, 30, seed=1), _picture(45, 30, seed=2)]
    if settings.get("do_resize", True) is False:
        pictures = [_picture(16, 24, seed=1)]
    for image in (pictures[0], pictures, _picture(45, 30, mode="RGBA", seed=3)):
        _check_preprocess(settings, image, height, width)


def test_preprocess_pil_kandinsky_call_passes_width_as_height():
    # The Kandinsky img2img pipelines call preprocess(image, width, height)
    # positionally; the numbers only match if we keep the same signature.
    picture = _picture(70, 50)
    ours = _check_preprocess(KANDINSKY, picture, 64, 48)
    assert ours.shape == (1, 3, 64, 48)


@pytest.mark.parametrize("resize_mode", ["fill", "crop"])
@pytest.mark.parametrize("picture_size", [(60, 20), (20, 60), (32, 32)])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_preprocess_resize_modes_match_reference(resize_mode, picture_size, mode):
    picture = _picture(*picture_size, mode=mode, seed=3)
    _check_preprocess({}, picture, 24, 40, resize_mode=resize_mode)
    _check_preprocess({}, picture, 40, 24, resize_mode=resize_mode)


def test_preprocess_crops_coords_match_reference():
    picture = _picture(64, 48, seed=4)
    _check_preprocess({}, picture, crops_coords=(5, 3, 45, 40))
    _check_preprocess({}, [picture, picture], 16, 24, crops_coords=(0, 8, 64, 48), resize_mode="crop")


def _unit_batch(shape, seed=0, dtype=torch.float32):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("settings", [{}, KANDINSKY, {"do_resize": False}, {"do_normalize": False}])
@pytest.mark.parametrize("size", [None, (16, 24), (21, 35)])
def test_preprocess_numpy_matches_reference(settings, size):
    height, width = size or (None, None)
    nhwc = _unit_batch((2, 20, 28, 3)).numpy()
    forms = [nhwc, nhwc[0], list(nhwc), [nhwc, nhwc], nhwc[0, :, :, 0], nhwc.astype(np.float64)]
    for image in forms:
        _check_preprocess(settings, image, height, width)


@pytest.mark.parametrize("settings", [{}, KANDINSKY, {"do_resize": False}, {"vae_latent_channels": 3}])
@pytest.mark.parametrize("size", [None, (16, 24), (21, 35)])
def test_preprocess_tensor_matches_reference(settings, size):
    height, width = size or (None, None)
    nchw = _unit_batch((2, 3, 20, 28), seed=1)
    signed = nchw * 2 - 1  # taken as already normalized
    latents = _unit_batch((1, 4, 16, 24), seed=2) * 4 - 2  # passed through untouched
    forms = [nchw, nchw[0], list(nchw), [nchw, nchw], signed, signed[1], latents, nchw.double()]
    for image in forms:
        _check_preprocess(settings, image, height, width, clone=_clone)
    assert torch.equal(ImageProcessor().preprocess(latents), latents)  # latents pass through


def _clone(tensors):
    return [t.clone() for t in tensors] if isinstance(tensors, list) else tensors.clone()


MASKS = {"do_normalize": False, "do_binarize": True, "do_convert_grayscale": True}


@pytest.mark.parametrize("size", [None, (16, 24), (40, 24)])
def test_preprocess_masks_match_reference(size):
    height, width = size or (None, None)
    rng = np.random.default_rng(5)
    gray = rng.random((24, 32)).astype(np.float32)
    forms = [
        _picture(32, 24, mode="L", seed=5),
        _picture(32, 24, mode="RGB", seed=6),
        [_picture(32, 24, mode="L", seed=7)] * 2,
        gray,  # HW
        gray[None],  # 1HW -> taken as NHW
        gray[..., None],  # HW1
        np.stack([gray, gray]),  # NHW
        torch.from_numpy(gray)[None],  # 1HW
        torch.from_numpy(np.stack([gray, 1 - gray])),  # NHW
        torch.from_numpy(gray)[None, None],  # N1HW
        [torch.from_numpy(gray), torch.from_numpy(1 - gray)],  # list of HW
        (rng.random((24, 32)) > 0.5).astype(np.uint8),  # 0/1 integers
    ]
    for mask in forms:
        result = _check_preprocess(MASKS, mask, height, width)
        assert set(result.unique().tolist()) <= {0.0, 1.0}
        assert result.shape[1] == 1
    assert torch.equal(ImageProcessor.for_masks().preprocess(forms[0]), _reference_preprocess(MASKS, forms[0]))


def test_preprocess_does_not_change_the_input():
    nchw = _unit_batch((1, 3, 16, 16))
    original = nchw.clone()
    ImageProcessor(do_binarize=True, do_resize=False, do_normalize=False).preprocess(nchw)
    assert torch.equal(nchw, original)


def _decoded(seed=0):
    return _unit_batch((2, 3, 6, 10), seed=seed) * 2.4 - 1.2  # a decoder overshoots [-1, 1]


def _same_output(ours, theirs):
    if isinstance(theirs, list):
        assert [p.size for p in ours] == [p.size for p in theirs]
        assert all(np.array_equal(np.array(a), np.array(b)) for a, b in zip(ours, theirs))
    elif isinstance(theirs, np.ndarray):
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)
    else:
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)


@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "latent"])
@pytest.mark.parametrize("settings", [{}, {"do_normalize": False}])
@pytest.mark.parametrize("do_denormalize", [None, [True, False], [False, True]])
def test_postprocess_matches_reference(output_type, settings, do_denormalize):
    images = _decoded()
    ours = ImageProcessor(**settings).postprocess(images, output_type, do_denormalize)
    theirs = Reference(**settings).postprocess(images, output_type, do_denormalize)
    _same_output(ours, theirs)


def _kandinsky_inline_postprocess(image, output_type):
    """What the Kandinsky text-to-image / inpaint pipelines write at the end of __call__."""
    from diffusers import DiffusionPipeline

    if output_type in ["np", "pil"]:
        image = image * 0.5 + 0.5
        image = image.clamp(0, 1)
        image = image.cpu().permute(0, 2, 3, 1).float().numpy()
    if output_type == "pil":
        image = DiffusionPipeline.numpy_to_pil(image)
    return image


@pytest.mark.parametrize("output_type", ["pil", "np", "pt"])
def test_postprocess_function_matches_kandinsky_pipelines(output_type):
    images = _decoded(seed=3)
    ours = postprocess(images, output_type, denormalize_pt=False)
    _same_output(ours, _kandinsky_inline_postprocess(images, output_type))
    _same_output(postprocess(images, output_type), Reference().postprocess(images, output_type))
    latents = _decoded(seed=4)
    assert postprocess(latents, "latent") is latents


def test_config_and_alias():
    processor = VaeImageProcessor(vae_scale_factor=16, resample="bicubic", reducing_gap=1)
    assert processor.config.vae_scale_factor == 16 and processor.config.resample == "bicubic"
    assert processor.config.do_normalize is True
    reference = Reference(vae_scale_factor=16, resample="bicubic", reducing_gap=1)
    for field in ("do_resize", "vae_latent_channels", "do_binarize", "do_convert_rgb", "do_convert_grayscale"):
        assert getattr(processor.config, field) == getattr(reference.config, field)
    assert processor.get_default_height_width(_picture(70, 50)) == reference.get_default_height_width(_picture(70, 50))


def test_bad_input():
    processor = ImageProcessor()
    with pytest.raises(ValueError, match="output_type must be one of 'pil', 'np', 'pt', 'latent', got 'jpeg'"):
        processor.postprocess(_decoded(), "jpeg")
    with pytest.raises(ValueError, match="output_type must be one of"):
        postprocess(_decoded(), "numpy")
    with pytest.raises(TypeError, match="images must be a torch.Tensor .* got ndarray"):
        processor.postprocess(np.zeros((1, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"one bool per image \(2\), got 3 values"):
        processor.postprocess(_decoded(), "pt", [True, True, False])
    with pytest.raises(ValueError, match="do_convert_rgb and do_convert_grayscale"):
        ImageProcessor(do_convert_rgb=True, do_convert_grayscale=True)
    with pytest.raises(ValueError, match="resample must be one of .* got 'cubic'"):
        ImageProcessor(resample="cubic")
    with pytest.raises(ValueError, match="vae_scale_factor must be a positive integer, got 0"):
        ImageProcessor(vae_scale_factor=0)
    with pytest.raises(ValueError, match="resize_mode must be one of .* got 'stretch'"):
        processor.preprocess(_picture(16, 16), resize_mode="stretch")
    with pytest.raises(ValueError, match="resize_mode='fill' works on PIL images only"):
        processor.preprocess(_unit_batch((1, 3, 16, 16)), resize_mode="fill")
    with pytest.raises(ValueError, match="height must be a positive integer or None, got -8"):
        processor.preprocess(_picture(16, 16), height=-8)
    with pytest.raises(ValueError, match="height must be at least vae_scale_factor=8 pixels, got 5"):
        processor.preprocess(_picture(16, 16), height=5)
    with pytest.raises(TypeError, match="image must be a PIL image, numpy array, torch tensor .* got str"):
        processor.preprocess("frog.png")
    with pytest.raises(TypeError, match="non-empty list"):
        processor.preprocess([])
    with pytest.raises(TypeError, match=r"one kind .* got \['Image', 'ndarray'\]"):
        processor.preprocess([_picture(16, 16), np.zeros((16, 16, 3), np.float32)])
    with pytest.raises(ValueError, match="same shape"):
        processor.preprocess([np.zeros((16, 16, 3), np.float32), np.zeros((8, 16, 3), np.float32)])
    with pytest.raises(TypeError, match="floats in \\[0, 1\\], got dtype torch.uint8; divide 8-bit pictures by 255"):
        processor.preprocess(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match=r"2, 3 or 4 dimensions, got shape \(1, 1, 3, 16, 16\)"):
        processor.preprocess(torch.zeros(1, 1, 3, 16, 16))
