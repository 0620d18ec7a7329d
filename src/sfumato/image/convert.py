"""Moving pictures between PIL, numpy and torch.

Three layouts meet in a pipeline:

* PIL images, what users hand in and get back;
* numpy arrays, NHWC float in [0, 1] (a single HWC image is a batch of one);
* torch tensors, NCHW, in [0, 1] or, for the VAE / MoVQ, in [-1, 1].

The small converters below are the building blocks (their names and numbers
match the reference's); ``to_pil`` / ``to_numpy`` / ``to_tensor`` take any of
the three forms and are what a caller usually wants.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import PIL.Image
import torch

# What pipelines accept as an image: one picture or a list of them, in any form.
ImageInput = Union[
    PIL.Image.Image,
    np.ndarray,
    torch.Tensor,
    Sequence[PIL.Image.Image],
    Sequence[np.ndarray],
    Sequence[torch.Tensor],
]

_RANGES = {(0.0, 1.0): "unit", (-1.0, 1.0): "signed"}


# --- the building blocks ----------------------------------------------------


def numpy_to_pil(images: np.ndarray) -> list[PIL.Image.Image]:
    """NHWC (or HWC) floats in [0, 1] -> list of 8-bit PIL images ("L" for one channel)."""
    if not isinstance(images, np.ndarray):
        raise TypeError(f"images must be a numpy array (NHWC or HWC, floats in [0, 1]), got {type(images).__name__}")
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be NHWC or HWC, got an array of shape {images.shape}")
    if images.ndim == 3:
        images = images[None]
    # Round (not truncate) to the nearest 8-bit level, as the reference does.
    levels = (images * 255).round().astype("uint8")
    if levels.shape[-1] == 1:
        return [PIL.Image.fromarray(level[..., 0], mode="L") for level in levels]
    return [PIL.Image.fromarray(level) for level in levels]


def pil_to_numpy(images: PIL.Image.Image | Sequence[PIL.Image.Image]) -> np.ndarray:
    """PIL image(s) -> float32 array N x H x W (x C) in [0, 1]; all images must share one size."""
    if isinstance(images, PIL.Image.Image):
        images = [images]
    for index, picture in enumerate(images):
        if not isinstance(picture, PIL.Image.Image):
            raise TypeError(f"images[{index}] must be a PIL.Image.Image, got {type(picture).__name__}")
    arrays = [np.array(picture).astype(np.float32) / 255.0 for picture in images]
    _check_same_shape(arrays, "images")
    return np.stack(arrays, axis=0)


def numpy_to_pt(images: np.ndarray) -> torch.Tensor:
    """NHWC array -> NCHW tensor (an NHW array is taken as single-channel NHW1). Values are not changed."""
    if not isinstance(images, np.ndarray):
        raise TypeError(f"images must be a numpy array, got {type(images).__name__}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"images must be NHWC (or NHW), got an array of shape {images.shape}")
    return torch.from_numpy(images.transpose(0, 3, 1, 2))


def pt_to_numpy(images: torch.Tensor) -> np.ndarray:
    """NCHW tensor -> NHWC float32 array on the CPU. Values are not changed."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be an NCHW torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must be an NCHW torch.Tensor, got shape {tuple(images.shape)}")
    return images.cpu().permute(0, 2, 3, 1).float().numpy()


def normalize(images: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """[0, 1] -> [-1, 1], the range the VAE / MoVQ encoders expect."""
    return 2.0 * images - 1.0


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped (decoders overshoot a little)."""
    return (images * 0.5 + 0.5).clamp(0, 1)


def pt_to_pil(images: torch.Tensor) -> list[PIL.Image.Image]:
    """NCHW tensor in [-1, 1] (a decoder's output) -> list of PIL images."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be an NCHW torch.Tensor in [-1, 1], got {type(images).__name__}")
    return numpy_to_pil(pt_to_numpy(denormalize(images)))


# --- any form in, one form out ---------------------------------------------


def to_pil(images: ImageInput, value_range: tuple[float, float] = (0.0, 1.0)) -> list[PIL.Image.Image]:
    """Any image form -> list of PIL images.

    Arrays are HWC / NHWC and tensors CHW / NCHW, with values in ``value_range``:
    ``(0, 1)`` (default) or ``(-1, 1)`` for a decoder's output.
    """
    if isinstance(images, PIL.Image.Image):
        return [images]
    if _is_list_of(images, PIL.Image.Image):
        return list(images)
    return numpy_to_pil(to_numpy(images, value_range))


def to_numpy(images: ImageInput, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Any image form -> NHWC float32 array in [0, 1] (see ``to_pil`` for ``value_range``)."""
    if isinstance(images, PIL.Image.Image) or _is_list_of(images, PIL.Image.Image):
        return pil_to_numpy(images)
    return pt_to_numpy(to_tensor(images, value_range))


def to_tensor(images: ImageInput, value_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Any image form -> NCHW float tensor in [0, 1] (see ``to_pil`` for ``value_range``).

    Numpy input keeps its float precision; PIL input becomes float32.
    """
    signed = _range_kind(value_range) == "signed"
    if isinstance(images, PIL.Image.Image) or _is_list_of(images, PIL.Image.Image):
        return numpy_to_pt(pil_to_numpy(images))
    if isinstance(images, np.ndarray):
        batch = numpy_to_pt(_as_batch(images, "HWC", "NHWC"))
    elif isinstance(images, torch.Tensor):
        batch = _as_batch(images, "CHW", "NCHW")
    elif _is_list_of(images, np.ndarray):
        batch = numpy_to_pt(_stack([_as_batch(a, "HWC", "NHWC") for a in images], np.concatenate))
    elif _is_list_of(images, torch.Tensor):
        batch = _stack([_as_batch(t, "CHW", "NCHW") for t in images], torch.cat)
    else:
        raise TypeError(
            "images must be a PIL image, a numpy array (HWC / NHWC), a torch tensor (CHW / NCHW) "
            f"or a list of one of these, got {_describe(images)}"
        )
    if not batch.is_floating_point():
        raise TypeError(f"images must hold floats in {list(value_range)}, got dtype {batch.dtype}")
    return denormalize(batch) if signed else batch


# --- helpers -----------------------------------------------------------------


def _range_kind(value_range: tuple[float, float]) -> str:
    try:
        key = (float(value_range[0]), float(value_range[1]))
    except (TypeError, ValueError, IndexError):
        key = None
    if key not in _RANGES:
        raise ValueError(f"value_range must be (0, 1) or (-1, 1), got {value_range!r}")
    return _RANGES[key]


def _as_batch(image, single: str, batched: str):
    if image.ndim == 3:
        return image[None]
    if image.ndim == 4:
        return image
    raise ValueError(f"an image must be {single} or {batched}, got shape {tuple(image.shape)}")


def _stack(batches, concatenate):
    _check_same_shape([b[0] for b in batches], "images")
    return concatenate(batches, 0)


def _check_same_shape(arrays, name: str) -> None:
    shapes = {tuple(a.shape) for a in arrays}
    if len(shapes) > 1:
        raise ValueError(
            f"all {name} must have the same size and channels to form a batch, got shapes {sorted(shapes)}"
        )


def _is_list_of(value, kind) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(v, kind) for v in value)


def _describe(value) -> str:
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"{type(value).__name__} of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        kinds = sorted({type(v).__name__ for v in value})
        return f"{type(value).__name__} of {', '.join(kinds) or 'nothing'}"
    return type(value).__name__
