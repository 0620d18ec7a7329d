"""Inpainting masks.

The user-facing convention everywhere: white (1) marks the part to repaint,
black (0) the part to keep. Two families prepare masks differently:

* Stable Diffusion style: ``preprocess_mask`` -> N1HW float tensor in {0, 1},
  1 = repaint (the ``ImageProcessor.for_masks()`` settings), plus the helpers
  for ``padding_mask_crop`` (``get_crop_region``, ``apply_overlay``, ``blur``).
* Kandinsky 2.1 / 2.2: ``prepare_mask_and_masked_image`` turns the mask into a
  *keep* mask (1 = keep, 0 = repaint) and the image into [-1, 1];
  ``kandinsky_latent_mask`` brings that keep mask to latent size.

After decoding, ``keep_unmasked`` puts the original pixels back where the mask
is black, with a soft seam: latent inpainting regenerates every pixel, so
without it the kept part changes too. The reference-compatible pipelines do
not call it (their numbers stay the reference's); the command line does.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import PIL.Image
import PIL.ImageFilter
import PIL.ImageOps
import torch
import torch.nn.functional as F

from .sizing import resize_pil


def binarize(mask: torch.Tensor) -> torch.Tensor:
    """Values below 0.5 become 0, the others 1 (a new tensor; NaN stays NaN, like the reference)."""
    result = mask.clone()
    result[mask < 0.5] = 0
    result[mask >= 0.5] = 1
    return result


def preprocess_mask(
    mask,
    height: int | None = None,
    width: int | None = None,
    vae_scale_factor: int = 8,
    resample: str = "lanczos",
) -> torch.Tensor:
    """Any mask form -> N1HW float tensor in {0, 1}, 1 = repaint (Stable Diffusion's mask processor).

    PIL masks are converted to grayscale and resized with ``resample``; arrays
    and tensors are taken as values in [0, 1] and resized nearest-neighbour.
    Sizes are rounded down to multiples of ``vae_scale_factor``.
    """
    from .processor import ImageProcessor  # processor imports this module

    processor = ImageProcessor.for_masks(vae_scale_factor=vae_scale_factor, resample=resample)
    return processor.preprocess(mask, height=height, width=width)


def blur(image: PIL.Image.Image, blur_factor: int = 4) -> PIL.Image.Image:
    """Gaussian blur of radius ``blur_factor``: softens a mask's edge so the repaint blends in."""
    if not isinstance(image, PIL.Image.Image):
        raise TypeError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
    return image.filter(PIL.ImageFilter.GaussianBlur(blur_factor))


def get_crop_region(mask_image: PIL.Image.Image, width: int, height: int, pad: int = 0) -> tuple[int, int, int, int]:
    """The box ``(x1, y1, x2, y2)`` around the white part of ``mask_image``, widened to ``width / height``.

    ``pad`` pixels are added on every side first (clipped to the picture); then
    the shorter side grows about the centre, shifting inward at the borders,
    until the box has the aspect ratio of the size the pipeline works at.
    """
    if not isinstance(mask_image, PIL.Image.Image):
        raise TypeError(f"mask_image must be a PIL.Image.Image, got {type(mask_image).__name__}")
    mask = np.array(mask_image.convert("L"))
    picture_height, picture_width = mask.shape
    columns = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    if columns.size == 0:
        raise ValueError("mask_image is all black: there is nothing to repaint, so no crop region")

    x1 = max(int(columns[0]) - pad, 0)
    y1 = max(int(rows[0]) - pad, 0)
    x2 = min(int(columns[-1]) + 1 + pad, picture_width)
    y2 = min(int(rows[-1]) + 1 + pad, picture_height)

    target_ratio = width / height
    if (x2 - x1) / (y2 - y1) > target_ratio:
        extra = int((x2 - x1) / target_ratio - (y2 - y1))
        y1, y2 = _grow_span(y1, y2, extra, picture_height)
    else:
        extra = int((y2 - y1) * target_ratio - (x2 - x1))
        x1, x2 = _grow_span(x1, x2, extra, picture_width)
    return x1, y1, x2, y2


def _grow_span(start: int, stop: int, extra: int, limit: int) -> tuple[int, int]:
    """Widen ``[start, stop)`` by ``extra`` about its centre, sliding it back inside ``[0, limit]``."""
    start -= extra // 2
    stop += extra - extra // 2
    if stop >= limit:
        start -= stop - limit
        stop = limit
    if start < 0:
        stop -= start
        start = 0
    return start, min(stop, limit)


def apply_overlay(
    mask: PIL.Image.Image,
    init_image: PIL.Image.Image,
    image: PIL.Image.Image,
    crop_coords: tuple[int, int, int, int] | None = None,
    resample: str = "lanczos",
) -> PIL.Image.Image:
    """Paste the kept part of ``init_image`` (where ``mask`` is black) over the generated ``image``.

    With ``crop_coords`` the generated image covers only that box of the
    original (it is resized into it, "crop" mode, and the rest stays empty before
    the overlay). Returns an RGB picture of ``init_image``'s size.
    """
    for name, value in (("mask", mask), ("init_image", init_image), ("image", image)):
        if not isinstance(value, PIL.Image.Image):
            raise TypeError(f"{name} must be a PIL.Image.Image, got {type(value).__name__}")
    width, height = init_image.size

    # Keep the original where the mask is black: alpha = inverted mask.
    # "RGBa" (premultiplied) makes the masked-out pixels fully transparent black.
    kept = PIL.Image.new("RGBa", (width, height))
    kept.paste(init_image.convert("RGBA").convert("RGBa"), mask=PIL.ImageOps.invert(mask.convert("L")))
    kept = kept.convert("RGBA")

    if crop_coords is not None:
        x1, y1, x2, y2 = crop_coords
        canvas = PIL.Image.new("RGBA", (width, height))
        canvas.paste(resize_pil(image, x2 - x1, y2 - y1, resample=resample, mode="crop"), (x1, y1))
        image = canvas.convert("RGB")

    composed = image.convert("RGBA")
    composed.alpha_composite(kept)
    return composed.convert("RGB")


def keep_unmasked(generated, image, mask_image, blur_radius: float = 2.0):
    """``generated`` with ``image``'s own pixels wherever ``mask_image`` is black (kept), softly seamed.

    Latent inpainting decodes the whole picture again, and a small latent
    (8x8 for a 64x64 picture) spreads every latent pixel over a large part of
    it, so the kept part comes back changed. Inpainting tools therefore paste
    the original over the result through a blurred mask. Here the blur is
    turned into a fade that lies inside the repainted part: every kept pixel
    (mask < 0.5, the pipelines' threshold) is ``image``'s exactly, and from the
    mask's edge inwards the new picture fades in over about ``2 * blur_radius``
    pixels (a Gaussian blur of that radius, as ``blur`` makes it). ``blur_radius=0``
    gives a hard edge.

    ``generated`` is a PIL image or a list of them; ``image`` and ``mask_image``
    (white = repaint) are one PIL image each, or one per generated picture, and
    are resized to the generated size as the pipelines resize them (bicubic,
    Lanczos). Returns RGB pictures in the same form as ``generated``.
    """
    pictures = [generated] if isinstance(generated, PIL.Image.Image) else list(generated)
    if not pictures or not all(isinstance(p, PIL.Image.Image) for p in pictures):
        raise TypeError(f"generated must be a PIL image or a non-empty list of them, got {_describe(generated)}")
    originals = _one_per("image", image, len(pictures))
    masks = _one_per("mask_image", mask_image, len(pictures))
    if not isinstance(blur_radius, (int, float)) or not 0 <= blur_radius < float("inf"):
        raise ValueError(f"blur_radius must be a number of pixels >= 0, got {blur_radius!r}")
    results = []
    for picture, original, mask in zip(pictures, originals, masks):
        size = picture.size
        original = original.convert("RGB")
        if original.size != size:
            original = original.resize(size, resample=PIL.Image.Resampling.BICUBIC, reducing_gap=1)
        mask = mask.convert("L")
        if mask.size != size:
            mask = mask.resize(size, resample=PIL.Image.Resampling.LANCZOS)
        repaint = np.asarray(mask) >= 128  # 128 / 255 >= 0.5, the pipelines' binarize
        alpha = repaint.astype(np.float32)
        if blur_radius > 0:
            blurred = np.asarray(blur(PIL.Image.fromarray((repaint * 255).astype(np.uint8)), blur_radius))
            # the blurred edge is 0.5 at the mask's border: 2b - 1 starts the fade there, inside the mask
            alpha = np.clip(blurred.astype(np.float32) / 127.5 - 1.0, 0.0, 1.0) * repaint
        new = np.asarray(picture.convert("RGB"), dtype=np.float32)
        old = np.asarray(original, dtype=np.float32)
        mixed = old + alpha[..., None] * (new - old)
        results.append(PIL.Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8), mode="RGB"))
    return results[0] if isinstance(generated, PIL.Image.Image) else results


def _one_per(name: str, value, count: int) -> list:
    items = [value] if isinstance(value, PIL.Image.Image) else list(value) if isinstance(value, (list, tuple)) else None
    if not items or not all(isinstance(i, PIL.Image.Image) for i in items):
        raise TypeError(f"{name} must be a PIL image or a list of them, got {_describe(value)}")
    if len(items) not in (1, count):
        raise ValueError(f"{name} has {len(items)} pictures for {count} generated ones; pass one, or one each")
    return items * count if len(items) == 1 else items


# --- Kandinsky 2.1 / 2.2 -------------------------------------------------------


def prepare_mask_and_masked_image(image, mask, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Kandinsky inpainting inputs -> ``(keep_mask, image)``, both NCHW tensors.

    ``mask`` uses the user convention (white / 1 = repaint) and comes back
    *inverted*: 1 = keep, 0 = repaint, binarized at 0.5, shape N1HW. ``image``
    comes back as float32 in [-1, 1], shape N3HW. (Despite the name, the image is
    not yet masked: the pipeline multiplies it by the latent-size keep mask.)

    Accepted forms, as in the reference:

    * tensors (both must be): image CHW / NCHW already in [-1, 1]; mask HW,
      1HW, NHW or N1HW in [0, 1]. Not resized: ``height`` / ``width`` are unused.
    * PIL images or lists of them: resized to ``width`` x ``height`` (image
      bicubic, mask Lanczos), image converted to RGB, mask to grayscale.
    * numpy arrays or lists of them: image HWC with values in [0, 255], mask HW
      with values in [0, 1]. Not resized.
    """
    if image is None:
        raise ValueError("image must be given: the picture to inpaint (PIL image, numpy array or torch tensor)")
    if mask is None:
        raise ValueError("mask_image must be given: white (1) marks the part to repaint")
    if isinstance(image, torch.Tensor) != isinstance(mask, torch.Tensor):
        if isinstance(image, torch.Tensor):
            tensor_name, other_name, other = "image", "mask_image", mask
        else:
            tensor_name, other_name, other = "mask_image", "image", image
        raise TypeError(f"{tensor_name} is a torch.Tensor, so {other_name} must be one too, got {type(other).__name__}")
    if isinstance(image, torch.Tensor):
        keep_mask, image = _kandinsky_tensors(image, mask)
    else:
        image = _kandinsky_pictures(image, height, width)
        keep_mask = _kandinsky_masks(mask, height, width)
    return keep_mask, image


def _kandinsky_tensors(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if image.ndim == 3:
        if image.shape[0] != 3:
            raise ValueError(f"image as a single tensor must be 3HW (RGB), got shape {tuple(image.shape)}")
        image = image.unsqueeze(0)
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        # 1HW is one mask with its channel; NHW is a batch without channels.
        mask = mask.unsqueeze(0) if mask.shape[0] == 1 else mask.unsqueeze(1)
    if image.ndim != 4 or mask.ndim != 4:
        raise ValueError(
            f"image must be CHW or NCHW and mask_image HW, 1HW, NHW or N1HW, "
            f"got shapes {tuple(image.shape)} and {tuple(mask.shape)}"
        )
    if image.shape[-2:] != mask.shape[-2:]:
        raise ValueError(
            f"image and mask_image must have the same height and width, "
            f"got {tuple(image.shape[-2:])} and {tuple(mask.shape[-2:])}"
        )
    if image.shape[0] != mask.shape[0]:
        raise ValueError(
            f"image and mask_image must have the same batch size, got {image.shape[0]} and {mask.shape[0]}"
        )
    if image.min() < -1 or image.max() > 1:
        raise ValueError(
            f"image as a tensor must be in [-1, 1], got values in [{image.min().item()}, {image.max().item()}]"
        )
    if mask.min() < 0 or mask.max() > 1:
        raise ValueError(
            f"mask_image as a tensor must be in [0, 1], got values in [{mask.min().item()}, {mask.max().item()}]"
        )
    return 1 - binarize(mask), image.to(dtype=torch.float32)


def _as_list(value, name: str, kinds: tuple) -> list:
    items = [value] if isinstance(value, kinds) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(i, kinds) for i in items):
        raise TypeError(
            f"{name} must be a PIL image, a numpy array, a torch tensor or a non-empty list of PIL images "
            f"or numpy arrays, got {type(value).__name__}"
        )
    if len({type(i) is np.ndarray for i in items}) > 1:
        raise TypeError(f"{name} must not mix PIL images and numpy arrays in one list")
    return list(items)


def _kandinsky_pictures(image, height: int, width: int) -> torch.Tensor:
    pictures = _as_list(image, "image", (PIL.Image.Image, np.ndarray))
    if isinstance(pictures[0], PIL.Image.Image):
        _check_target_size(height, width)
        pictures = [
            np.array(p.resize((width, height), resample=PIL.Image.Resampling.BICUBIC, reducing_gap=1).convert("RGB"))
            for p in pictures
        ]
    for index, picture in enumerate(pictures):
        if picture.ndim != 3:
            raise ValueError(f"image[{index}] as a numpy array must be HWC, got shape {picture.shape}")
    batch = np.stack(pictures, axis=0).transpose(0, 3, 1, 2)
    # 8-bit levels (numpy input too) -> [-1, 1]
    return torch.from_numpy(batch).to(dtype=torch.float32) / 127.5 - 1.0


def _kandinsky_masks(mask, height: int, width: int) -> torch.Tensor:
    masks = _as_list(mask, "mask_image", (PIL.Image.Image, np.ndarray))
    if isinstance(masks[0], PIL.Image.Image):
        _check_target_size(height, width)
        resized = [m.resize((width, height), resample=PIL.Image.Resampling.LANCZOS).convert("L") for m in masks]
        batch = np.stack([np.array(m) for m in resized], axis=0)[:, None].astype(np.float32) / 255.0
    else:
        for index, m in enumerate(masks):
            if m.ndim != 2:
                raise ValueError(f"mask_image[{index}] as a numpy array must be HW, got shape {m.shape}")
        batch = np.stack(masks, axis=0)[:, None]
        if batch.dtype == np.bool_:  # torch cannot subtract bools
            batch = batch.astype(np.float32)
    return 1 - binarize(torch.from_numpy(batch))


def _check_target_size(height, width) -> None:
    from .sizing import check_size

    check_size("height", height)
    check_size("width", width)


def grow_repaint_region(keep_mask: torch.Tensor) -> torch.Tensor:
    """Kandinsky's latent-mask touch-up (the reference's ``prepare_mask``).

    Every latent pixel that is not "keep" (value != 1) also clears six of its
    neighbours - up, left, up-left, down, right, down-right (not the other
    diagonal, as in the reference) - so the repainted region grows by one
    latent pixel and its seam is regenerated too. Input and output: N1HW (the
    first channel decides, all channels are cleared).
    """
    if not isinstance(keep_mask, torch.Tensor) or keep_mask.ndim != 4:
        raise ValueError(f"keep_mask must be an NCHW torch.Tensor, got {_describe(keep_mask)}")
    not_kept = (keep_mask[:, :1] != 1).to(torch.float32)
    # A pixel is cleared when a not-kept pixel sits at one of these offsets
    # from it: the mirror images of the six neighbours listed above.
    padded = F.pad(not_kept, (1, 1, 1, 1))
    height, width = keep_mask.shape[-2:]
    cleared = torch.zeros_like(not_kept, dtype=torch.bool)
    for dy, dx in ((1, 0), (0, 1), (1, 1), (-1, 0), (0, -1), (-1, -1)):
        cleared |= padded[:, :, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width] > 0
    return keep_mask.masked_fill(cleared, 0)


prepare_mask = grow_repaint_region  # the reference's name for it


def kandinsky_latent_mask(keep_mask: torch.Tensor, latent_size: Sequence[int]) -> torch.Tensor:
    """A pixel-size keep mask -> the latent-size keep mask the Kandinsky inpaint UNet sees.

    Nearest-neighbour downsizing to ``latent_size`` (height, width), then
    ``grow_repaint_region``, exactly as the reference pipelines do.
    """
    return grow_repaint_region(F.interpolate(keep_mask, tuple(latent_size), mode="nearest"))


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__
