"""Picture sizes: resampling filters, resizing PIL images and tensors, latent-friendly sizes."""

from __future__ import annotations

import numbers

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

# Filter names accepted by ``resample=`` (the reference's names).
RESAMPLE_FILTERS = {
    "linear": PIL.Image.Resampling.BILINEAR,
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "lanczos": PIL.Image.Resampling.LANCZOS,
    "nearest": PIL.Image.Resampling.NEAREST,
}

# How ``resize`` fits a picture into a box of another aspect ratio.
RESIZE_MODES = ("default", "fill", "crop")


def resample_filter(name: str) -> PIL.Image.Resampling:
    """The PIL filter called ``name`` ("lanczos", "bicubic", "bilinear", "linear" or "nearest")."""
    if name not in RESAMPLE_FILTERS:
        raise ValueError(f"resample must be one of {sorted(RESAMPLE_FILTERS)}, got {name!r}")
    return RESAMPLE_FILTERS[name]


def check_size(name: str, value, allow_none: bool = False) -> None:
    """Fail unless ``value`` is a positive integer (or None when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        wanted = "a positive integer or None" if allow_none else "a positive integer"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")


def floor_to_multiple(value: int, factor: int, name: str) -> int:
    """``value`` rounded down to a multiple of ``factor`` (the VAE works on whole latent pixels)."""
    snapped = int(value) - int(value) % factor
    if snapped < 1:
        raise ValueError(f"{name} must be at least vae_scale_factor={factor} pixels, got {value}")
    return snapped


def downscale_height_and_width(height: int, width: int, scale_factor: int = 8) -> tuple[int, int]:
    """Latent height and width for a Kandinsky picture of ``height`` x ``width`` pixels.

    Kandinsky's UNet halves the latent ``scale_factor`` times more, so each side is
    rounded *up* to a multiple of ``scale_factor ** 2`` pixels and then divided by
    ``scale_factor``: 768 -> 96, 500 -> 64.
    """
    check_size("height", height)
    check_size("width", width)
    check_size("scale_factor", scale_factor)
    block = scale_factor**2
    return -(-height // block) * scale_factor, -(-width // block) * scale_factor


def resize_pil(
    image: PIL.Image.Image,
    width: int,
    height: int,
    resample: str = "lanczos",
    reducing_gap: int | None = None,
    mode: str = "default",
) -> PIL.Image.Image:
    """Resize a PIL image to ``width`` x ``height``.

    ``mode`` says what happens when the aspect ratio changes: "default"
    stretches; "crop" scales to cover the box and cuts the overflow around the
    centre; "fill" scales to fit inside and fills the bands by stretching the
    picture's edge rows or columns. "crop" and "fill" return RGB pictures.
    """
    if mode == "default":
        return image.resize((width, height), resample=resample_filter(resample), reducing_gap=reducing_gap)
    if mode == "crop":
        return _resize_and_crop(image, width, height, resample)
    if mode == "fill":
        return _resize_and_fill(image, width, height, resample)
    raise ValueError(f"resize_mode must be one of {list(RESIZE_MODES)}, got {mode!r}")


def resize_tensor(images: torch.Tensor | np.ndarray, height: int, width: int) -> torch.Tensor | np.ndarray:
    """Nearest-neighbour resize of an NCHW tensor, or of an NHWC array (returned as float32 NHWC)."""
    if isinstance(images, np.ndarray):
        from .convert import numpy_to_pt, pt_to_numpy

        return pt_to_numpy(F.interpolate(numpy_to_pt(images), size=(height, width)))
    return F.interpolate(images, size=(height, width))


def _centered_paste(picture: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
    canvas = PIL.Image.new("RGB", (width, height))
    canvas.paste(picture, box=(width // 2 - picture.width // 2, height // 2 - picture.height // 2))
    return canvas


def _resize_and_crop(image: PIL.Image.Image, width: int, height: int, resample: str) -> PIL.Image.Image:
    box_is_wider = width / height > image.width / image.height
    scaled_width = width if box_is_wider else image.width * height // image.height
    scaled_height = image.height * width // image.width if box_is_wider else height
    scaled = image.resize((scaled_width, scaled_height), resample=resample_filter(resample))
    return _centered_paste(scaled, width, height)


def _resize_and_fill(image: PIL.Image.Image, width: int, height: int, resample: str) -> PIL.Image.Image:
    box_ratio, picture_ratio = width / height, image.width / image.height
    box_is_narrower = box_ratio < picture_ratio
    scaled_width = width if box_is_narrower else image.width * height // image.height
    scaled_height = image.height * width // image.width if box_is_narrower else height
    scaled = image.resize((scaled_width, scaled_height), resample=resample_filter(resample))
    canvas = _centered_paste(scaled, width, height)

    # Stretch the outermost row (or column) of the picture over each empty band;
    # a zero-thickness source box makes PIL sample exactly that edge line.
    if box_is_narrower:
        band = height // 2 - scaled_height // 2
        if band > 0:
            top_edge = scaled.resize((width, band), box=(0, 0, width, 0))
            bottom_edge = scaled.resize((width, band), box=(0, scaled.height, width, scaled.height))
            canvas.paste(top_edge, box=(0, 0))
            canvas.paste(bottom_edge, box=(0, band + scaled_height))
    elif box_ratio > picture_ratio:
        band = width // 2 - scaled_width // 2
        if band > 0:
            left_edge = scaled.resize((band, height), box=(0, 0, 0, height))
            right_edge = scaled.resize((band, height), box=(scaled.width, 0, scaled.width, height))
            canvas.paste(left_edge, box=(0, 0))
            canvas.paste(right_edge, box=(band + scaled_width, 0))
    return canvas
