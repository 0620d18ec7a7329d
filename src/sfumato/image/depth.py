"""Depth hints for the depth ControlNets, from a transformers ``depth-estimation`` model.

The guides make a depth hint with ``depth_estimator = pipeline("depth-estimation")`` and a
few lines of numpy; these functions are those lines, for one picture or a batch:

* ``load_depth_estimator(folder)``: the transformers pipeline, from a local model folder
  (a DPT / Depth Anything checkpoint with its image processor); nothing is downloaded;
* ``estimate_depth(images, estimator)``: grayscale depth maps (near = bright), each the
  size of its picture;
* ``depth_hint(images, estimator)``: the Kandinsky 2.2 ControlNet ``hint``, a float tensor
  N x 3 x H x W in [0, 1] (the guide's ``make_hint``);
* ``depth_control_image(images, estimator)``: the Stable Diffusion ControlNet
  ``control_image``, RGB pictures with the depth in every channel.

``estimator`` is anything that behaves like the transformers pipeline (called with a PIL
image, returns ``{"depth": PIL image, ...}``; with a list, a list of those), or the path of a
local folder to load one from. Load it once and pass it to every call: loading a model
per call is slow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
import PIL.Image
import torch

from .convert import ImageInput, to_pil

DepthEstimator = Union[Callable[..., Any], str, os.PathLike]


def load_depth_estimator(model: str | os.PathLike, device: Any = None, torch_dtype: Any = None):
    """The transformers ``depth-estimation`` pipeline for the model folder ``model`` (local files only)."""
    folder = Path(model).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"model must be a local folder holding a transformers depth-estimation model (config.json, weights and "
            f"its image processor's preprocessor_config.json), got {str(model)!r}; nothing is downloaded"
        )
    from transformers import pipeline  # heavy: only when a model is asked for

    options: dict[str, Any] = {"device": device} if device is not None else {}
    if torch_dtype is not None:
        options["dtype"] = torch_dtype  # transformers 5 spelling
    return pipeline("depth-estimation", model=str(folder), **options)


def _estimator(depth_estimator: DepthEstimator) -> Callable[..., Any]:
    if isinstance(depth_estimator, (str, os.PathLike)):
        return load_depth_estimator(depth_estimator)
    if not callable(depth_estimator):
        raise TypeError(f"depth_estimator must be a transformers depth-estimation pipeline (or a local model folder), "
                        f"got {type(depth_estimator).__name__}")
    return depth_estimator


def _pictures(images: ImageInput) -> list[PIL.Image.Image]:
    if images is None or isinstance(images, (str, os.PathLike)):
        raise TypeError(f"images must be a PIL image, a list of them, a numpy array or a tensor in [0, 1], got "
                        f"{type(images).__name__}; load files with sfumato.utils.load_image first")
    if isinstance(images, (list, tuple)) and not images:
        raise ValueError("images must hold at least one picture, got an empty list")
    pictures = to_pil(images)
    return [picture.convert("RGB") for picture in pictures]


def estimate_depth(images: ImageInput, depth_estimator: DepthEstimator) -> list[PIL.Image.Image]:
    """One grayscale (``"L"``) depth map per picture, each the size of its picture."""
    pictures = _pictures(images)
    estimator = _estimator(depth_estimator)
    results = estimator(pictures if len(pictures) > 1 else pictures[0])
    results = results if isinstance(results, list) else [results]
    depths = []
    for index, (picture, result) in enumerate(zip(pictures, results)):
        depth = result.get("depth") if isinstance(result, dict) else None
        if not isinstance(depth, PIL.Image.Image):
            raise TypeError(f"depth_estimator must return {{'depth': PIL image}} per picture (a transformers "
                            f"depth-estimation pipeline does), got {type(result).__name__} for picture {index}")
        if depth.size != picture.size:  # estimators that answer at their own resolution
            depth = depth.resize(picture.size, PIL.Image.BICUBIC)
        depths.append(depth.convert("L"))
    return depths


def depth_hint(images: ImageInput, depth_estimator: DepthEstimator) -> torch.Tensor:
    """The Kandinsky 2.2 ControlNet ``hint``: float32 N x 3 x H x W in [0, 1], depth in all three channels.

    All pictures must share one size (a batch is one tensor); for the ControlNet pipelines
    the size must be the generation's ``height`` x ``width``.
    """
    depths = estimate_depth(images, depth_estimator)
    sizes = sorted({depth.size for depth in depths})
    if len(sizes) > 1:
        raise ValueError(f"images must all have one size to make one hint tensor, got sizes (width, height) {sizes}")
    maps = np.stack([np.asarray(depth, dtype=np.float32) / 255.0 for depth in depths])  # N x H x W
    return torch.from_numpy(maps)[:, None].repeat(1, 3, 1, 1)


def depth_control_image(images: ImageInput,
                        depth_estimator: DepthEstimator) -> PIL.Image.Image | list[PIL.Image.Image]:
    """The Stable Diffusion depth ControlNet's ``control_image``: RGB depth picture(s), one per input picture.

    A single PIL picture in gives a single picture out; anything else gives a list.
    """
    controls = [depth.convert("RGB") for depth in estimate_depth(images, depth_estimator)]
    return controls[0] if isinstance(images, PIL.Image.Image) else controls
