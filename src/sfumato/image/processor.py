"""Pictures in and out of a VAE / MoVQ: ``ImageProcessor`` and ``postprocess``.

``ImageProcessor.preprocess`` turns what a user passes as ``image=`` into the
NCHW tensor an encoder takes; ``postprocess`` turns a decoder's output into
what ``output_type`` asks for. Same settings and numbers as the reference's
``VaeImageProcessor`` (its name is kept as an alias).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import PIL.Image
import torch

from . import masks
from .convert import (
    ImageInput,
    denormalize,
    normalize,
    numpy_to_pil,
    numpy_to_pt,
    pil_to_numpy,
    pt_to_numpy,
)
from .sizing import RESIZE_MODES, check_size, floor_to_multiple, resample_filter, resize_pil, resize_tensor

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def postprocess(
    images: torch.Tensor,
    output_type: str = "pil",
    do_denormalize: bool | Sequence[bool] = True,
    *,
    denormalize_pt: bool = True,
):
    """A decoder's NCHW output -> what ``output_type`` asks for.

    * ``"pil"``: list of PIL images; ``"np"``: NHWC float32 array in [0, 1];
    * ``"pt"``: NCHW tensor in [0, 1];
    * ``"latent"``: ``images`` unchanged (they are latents, not decoded).

    ``do_denormalize`` says whether the input is in [-1, 1] (True, a decoder's
    output) or already in [0, 1] (False); a list gives one answer per image.
    ``denormalize_pt=False`` returns "pt" output as given, in [-1, 1]: the
    Kandinsky text-to-image, inpaint and ControlNet pipelines do that.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (NCHW) to postprocess, got {type(images).__name__}")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {', '.join(map(repr, OUTPUT_TYPES))}, got {output_type!r}")
    if output_type == "latent":
        return images
    if output_type == "pt" and not denormalize_pt:
        return images

    images = _denormalize_where(images, do_denormalize)
    if output_type == "pt":
        return images
    array = pt_to_numpy(images)
    return array if output_type == "np" else numpy_to_pil(array)


def _denormalize_where(images: torch.Tensor, do_denormalize: bool | Sequence[bool]) -> torch.Tensor:
    if isinstance(do_denormalize, (bool, np.bool_)):
        return denormalize(images) if do_denormalize else images
    flags = list(do_denormalize)
    if len(flags) != images.shape[0]:
        raise ValueError(
            f"do_denormalize must be a bool or one bool per image ({images.shape[0]}), got {len(flags)} values"
        )
    return torch.stack([denormalize(image) if flag else image for image, flag in zip(images, flags)])


@dataclasses.dataclass(frozen=True)
class ImageProcessorConfig:
    """The settings of an ``ImageProcessor`` (field names as in the reference's config)."""

    do_resize: bool = True  # snap sizes down to multiples of vae_scale_factor (and to height / width)
    vae_scale_factor: int = 8  # pixels per latent pixel
    vae_latent_channels: int = 4  # a tensor with this many channels is taken as latents and passed through
    resample: str = "lanczos"  # PIL filter for resizing pictures
    reducing_gap: int | None = None  # PIL's two-step resize speed-up (Kandinsky uses 1)
    do_normalize: bool = True  # [0, 1] -> [-1, 1] on the way in, back on the way out
    do_binarize: bool = False  # threshold at 0.5 (masks)
    do_convert_rgb: bool = False
    do_convert_grayscale: bool = False  # one channel (masks)


class ImageProcessor:
    """Turns user pictures into encoder input, and decoder output into pictures.

    ``preprocess`` accepts a PIL image, a numpy array (HW, HWC, NHWC, floats in
    [0, 1]), a torch tensor (CHW / NCHW in [0, 1], or in [-1, 1], which is then
    left as it is), or a list of one kind of these; it returns an NCHW tensor,
    in [-1, 1] when ``do_normalize``.
    """

    def __init__(
        self,
        do_resize: bool = True,
        vae_scale_factor: int = 8,
        vae_latent_channels: int = 4,
        resample: str = "lanczos",
        reducing_gap: int | None = None,
        do_normalize: bool = True,
        do_binarize: bool = False,
        do_convert_rgb: bool = False,
        do_convert_grayscale: bool = False,
    ):
        if do_convert_rgb and do_convert_grayscale:
            raise ValueError("do_convert_rgb and do_convert_grayscale cannot both be True: pick one target mode")
        check_size("vae_scale_factor", vae_scale_factor)
        check_size("vae_latent_channels", vae_latent_channels)
        check_size("reducing_gap", reducing_gap, allow_none=True)
        resample_filter(resample)  # fail now on an unknown filter name, not at the first resize
        self.config = ImageProcessorConfig(
            do_resize=do_resize,
            vae_scale_factor=int(vae_scale_factor),
            vae_latent_channels=int(vae_latent_channels),
            resample=resample,
            reducing_gap=reducing_gap,
            do_normalize=do_normalize,
            do_binarize=do_binarize,
            do_convert_rgb=do_convert_rgb,
            do_convert_grayscale=do_convert_grayscale,
        )

    @classmethod
    def for_masks(cls, vae_scale_factor: int = 8, **settings) -> "ImageProcessor":
        """The mask processor of the Stable Diffusion inpaint pipelines: grayscale, binarized, not normalized."""
        settings = {"do_normalize": False, "do_binarize": True, "do_convert_grayscale": True, **settings}
        return cls(vae_scale_factor=vae_scale_factor, **settings)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(self.config).items())
        return f"{type(self).__name__}({fields})"

    # --- the reference's building blocks, kept as methods for callers that use them

    numpy_to_pil = staticmethod(numpy_to_pil)
    pil_to_numpy = staticmethod(pil_to_numpy)
    numpy_to_pt = staticmethod(numpy_to_pt)
    pt_to_numpy = staticmethod(pt_to_numpy)
    normalize = staticmethod(normalize)
    denormalize = staticmethod(denormalize)
    blur = staticmethod(masks.blur)
    get_crop_region = staticmethod(masks.get_crop_region)

    @staticmethod
    def convert_to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
        return image.convert("RGB")

    @staticmethod
    def convert_to_grayscale(image: PIL.Image.Image) -> PIL.Image.Image:
        return image.convert("L")

    def binarize(self, image: torch.Tensor) -> torch.Tensor:
        return masks.binarize(image)

    def apply_overlay(self, mask, init_image, image, crop_coords=None) -> PIL.Image.Image:
        """``masks.apply_overlay`` with this processor's resampling filter."""
        return masks.apply_overlay(mask, init_image, image, crop_coords, resample=self.config.resample)

    # --- sizes

    def get_default_height_width(
        self, image: PIL.Image.Image | np.ndarray | torch.Tensor, height: int | None = None, width: int | None = None
    ) -> tuple[int, int]:
        """``height`` / ``width`` (or the image's own), rounded down to multiples of ``vae_scale_factor``.

        Arrays are read as NHW(C), tensors as NCHW.
        """
        check_size("height", height, allow_none=True)
        check_size("width", width, allow_none=True)
        if isinstance(image, PIL.Image.Image):
            own_height, own_width = image.height, image.width
        elif isinstance(image, torch.Tensor):
            own_height, own_width = image.shape[2], image.shape[3]
        else:
            own_height, own_width = image.shape[1], image.shape[2]
        factor = self.config.vae_scale_factor
        height = floor_to_multiple(own_height if height is None else height, factor, "height")
        width = floor_to_multiple(own_width if width is None else width, factor, "width")
        return height, width

    def resize(self, image, height: int, width: int, resize_mode: str = "default"):
        """Resize a PIL image (with this processor's filter), an NCHW tensor or an NHWC array (nearest).

        ``resize_mode`` "fill" / "crop" keep the aspect ratio (PIL images only; see ``sizing.resize_pil``).
        """
        _check_resize_mode(resize_mode)
        if isinstance(image, PIL.Image.Image):
            return resize_pil(
                image, width, height, self.config.resample, self.config.reducing_gap, mode=resize_mode
            )
        if resize_mode != "default":
            raise ValueError(f"resize_mode={resize_mode!r} works on PIL images only, got {type(image).__name__}")
        if isinstance(image, (torch.Tensor, np.ndarray)):
            return resize_tensor(image, height, width)
        raise TypeError(f"image must be a PIL image, torch tensor or numpy array, got {type(image).__name__}")

    # --- in and out

    def preprocess(
        self,
        image: ImageInput,
        height: int | None = None,
        width: int | None = None,
        resize_mode: str = "default",
        crops_coords: tuple[int, int, int, int] | None = None,
    ) -> torch.Tensor:
        """User picture(s) -> NCHW tensor ready for the encoder.

        ``height`` / ``width`` default to the (first) picture's size; both are
        rounded down to multiples of ``vae_scale_factor``. ``crops_coords``
        (x1, y1, x2, y2) crops PIL pictures first. A tensor with
        ``vae_latent_channels`` channels is taken as latents and returned as is.
        """
        _check_resize_mode(resize_mode)
        items = self._as_items(image)
        if isinstance(items[0], PIL.Image.Image):
            batch = self._pictures_to_tensor(items, height, width, resize_mode, crops_coords)
        else:
            if resize_mode != "default":
                raise ValueError(f"resize_mode={resize_mode!r} works on PIL images only, got {type(items[0]).__name__}")
            batch = self._join(items)
            if isinstance(items[0], torch.Tensor) and batch.shape[1] == self.config.vae_latent_channels:
                return batch  # latents: nothing to do
            batch = self._resize_batch(batch, height, width)

        # Tensors already in [-1, 1] (any negative value) are taken as normalized.
        if self.config.do_normalize and not batch.min() < 0:
            batch = normalize(batch)
        if self.config.do_binarize:
            batch = masks.binarize(batch)
        return batch

    def postprocess(self, image: torch.Tensor, output_type: str = "pil", do_denormalize: Sequence[bool] | None = None):
        """Decoder output -> ``output_type`` ("pil", "np", "pt" or "latent"); see ``postprocess``.

        ``do_denormalize`` defaults to this processor's ``do_normalize``.
        """
        if do_denormalize is None:
            do_denormalize = self.config.do_normalize
        return postprocess(image, output_type, do_denormalize)

    # --- helpers

    def _as_items(self, image) -> list:
        """``image`` as a non-empty list of one kind of picture (PIL, array or tensor)."""
        if self.config.do_convert_grayscale and isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 3:
            image = _add_grayscale_axis(image)
        if isinstance(image, (PIL.Image.Image, np.ndarray, torch.Tensor)):
            if not isinstance(image, PIL.Image.Image) and image.ndim not in (2, 3, 4):
                raise ValueError(f"image must have 2, 3 or 4 dimensions, got shape {tuple(image.shape)}")
            return [image]
        if not isinstance(image, (list, tuple)) or not image:
            raise TypeError(
                "image must be a PIL image, numpy array, torch tensor or a non-empty list of one of these, "
                f"got {type(image).__name__}"
            )
        kind = next((k for k in (PIL.Image.Image, np.ndarray, torch.Tensor) if isinstance(image[0], k)), None)
        if kind is None or not all(isinstance(item, kind) for item in image):
            kinds = sorted({type(item).__name__ for item in image})
            raise TypeError(f"image as a list must hold one kind of PIL images, numpy arrays or tensors, got {kinds}")
        if kind is not PIL.Image.Image:
            dims = {item.ndim for item in image}
            # A list of batches is joined into one batch; otherwise every item is one picture.
            if not (dims <= {2, 3} or dims == {4}):
                raise ValueError(
                    "image as a list must hold single pictures (2 or 3 dims) or batches (4 dims), "
                    f"got items with {sorted(dims)} dims"
                )
        _check_same_size(image)
        return list(image)

    def _pictures_to_tensor(self, pictures, height, width, resize_mode, crops_coords) -> torch.Tensor:
        if crops_coords is not None:
            pictures = [picture.crop(crops_coords) for picture in pictures]
        if self.config.do_resize:
            height, width = self.get_default_height_width(pictures[0], height, width)
            pictures = [self.resize(picture, height, width, resize_mode) for picture in pictures]
        if self.config.do_convert_rgb:
            pictures = [picture.convert("RGB") for picture in pictures]
        elif self.config.do_convert_grayscale:
            pictures = [picture.convert("L") for picture in pictures]
        return numpy_to_pt(pil_to_numpy(pictures))

    def _join(self, items: list) -> torch.Tensor:
        """Arrays (HW, HWC, NHWC) or tensors (CHW, NCHW) -> one NCHW tensor, dtype kept."""
        if isinstance(items[0], np.ndarray):
            batch = numpy_to_pt(np.concatenate(items) if items[0].ndim == 4 else np.stack(items))
        else:
            batch = torch.cat(items) if items[0].ndim == 4 else torch.stack(items)
            if self.config.do_convert_grayscale and batch.ndim == 3:
                batch = batch.unsqueeze(1)
        if batch.ndim != 4:
            raise ValueError(f"image tensors must be CHW or NCHW, got a batch of shape {tuple(batch.shape)}")
        # Integer pictures (0..255) would be normalized into nonsense; masks may be integers.
        if self.config.do_normalize and not batch.is_floating_point():
            raise TypeError(
                f"image arrays and tensors must hold floats in [0, 1], got dtype {batch.dtype}; "
                "divide 8-bit pictures by 255 first"
            )
        return batch

    def _resize_batch(self, batch: torch.Tensor, height: int | None, width: int | None) -> torch.Tensor:
        if not self.config.do_resize:
            check_size("height", height, allow_none=True)
            check_size("width", width, allow_none=True)
            return batch
        return resize_tensor(batch, *self.get_default_height_width(batch, height, width))


VaeImageProcessor = ImageProcessor  # the reference's name


def _check_resize_mode(resize_mode: str) -> None:
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {list(RESIZE_MODES)}, got {resize_mode!r}")


def _add_grayscale_axis(image):
    """A 3-dim grayscale batch gets its channel axis (reference rules for telling NHW from HW1 / 1HW)."""
    if isinstance(image, torch.Tensor):
        # NHW and 1HW both become N1HW / 11HW: the new axis goes at position 1 either way.
        return image.unsqueeze(1)
    # numpy: HW1 is one picture (add a batch axis); otherwise NHW (add a channel axis).
    return image[None] if image.shape[-1] == 1 else image[..., None]


def _check_same_size(items) -> None:
    if isinstance(items[0], PIL.Image.Image):
        return  # pictures are resized to one size (or fail clearly in pil_to_numpy)
    shapes = {tuple(item.shape[-3:] if item.ndim == 4 else item.shape) for item in items}
    if len(shapes) > 1:
        raise ValueError(f"all images in a list must have the same shape to form a batch, got {sorted(shapes)}")
