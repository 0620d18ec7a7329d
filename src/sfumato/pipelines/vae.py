"""The latent space of an ``AutoencoderKL`` (``self.vae``): sizes, encoding, inpainting inputs, decoding.

Stable Diffusion (and the pipelines built on it: ControlNet, the upscalers,
SDXL) denoise in this space. Latents are the VAE's posterior draws times
``vae.config.scaling_factor``; pictures are encoded with the caller's
generator, as the reference draws them.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping

import PIL.Image
import torch
import torch.nn.functional as F

from ..image import ImageProcessor, postprocess
from .generation import GenerationPipeline


class VaeLatents(GenerationPipeline):
    """A ``GenerationPipeline`` whose latents are an ``AutoencoderKL``'s and whose denoiser is ``self.unet``."""

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def image_processor(self) -> ImageProcessor:
        return ImageProcessor(vae_scale_factor=self.vae_scale_factor, vae_latent_channels=self.latent_channels)

    @property
    def mask_processor(self) -> ImageProcessor:
        return ImageProcessor.for_masks(vae_scale_factor=self.vae_scale_factor)

    def size_multiple(self) -> int:
        """Whole latent pixels; the UNet copes with any latent size."""
        return self.vae_scale_factor

    def default_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """The UNet's training size where ``height`` / ``width`` are None."""
        sample_size = self.unet.config.sample_size
        default_height, default_width = (sample_size if isinstance(sample_size, (list, tuple))
                                         else (sample_size, sample_size))
        return (height or default_height * self.vae_scale_factor, width or default_width * self.vae_scale_factor)

    def picture_size(self, pixels: torch.Tensor) -> tuple[int, int]:
        scale = self.vae_scale_factor if pixels.shape[1] == self.latent_channels else 1
        return (pixels.shape[-2] * scale, pixels.shape[-1] * scale)

    def latent_shape(self, samples: int, height: int, width: int) -> tuple[int, ...]:
        scale = self.vae_scale_factor
        return (samples, self.latent_channels, height // scale, width // scale)

    # ------------------------------------------------------------------ pictures in

    def preprocess_pictures(self, image: Any, height: int | None, width: int | None) -> torch.Tensor:
        """Pictures -> NCHW in [-1, 1] at ``height`` x ``width``; latents of this VAE pass through unchanged."""
        pixels = self.image_processor.preprocess(image, height, width)
        self._check_channels("image", pixels)
        return pixels

    def encode_pictures(self, pixels: torch.Tensor, generator: Any = None) -> torch.Tensor:
        """Latents of ``pixels``: a draw from the VAE's posterior (a list of generators: one per row), scaled.

        Latents (this VAE's channel count) are returned as they are.
        """
        device, dtype = self._execution_device, self.model_dtype
        if pixels.shape[1] == self.latent_channels:
            return pixels.to(device=device, dtype=dtype)
        with self.vae_precision(decoding=False):
            posterior = self.vae.encode(pixels.to(device=device, dtype=self.vae.dtype)).latent_dist
            sample = posterior.sample(generator)
        return self.to_latents(sample.to(dtype))

    def inpaint_pixels(self, image: Any, mask_image: Any, height: int, width: int,
                       crop: tuple[int, int, int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The repaint mask (1 = repaint, binarized) and the picture in [-1, 1], at ``height`` x ``width``.

        With ``crop`` (x1, y1, x2, y2) both are cut to it first and fitted to the size.
        """
        self._check_inpaint_unet()
        mode = "fill" if crop is not None else "default"
        pixels = self.image_processor.preprocess(image, height, width, crops_coords=crop, resize_mode=mode)
        self._check_channels("image", pixels)
        mask = self.mask_processor.preprocess(mask_image, height, width, crops_coords=crop, resize_mode=mode)
        if mask.shape[1] != 1:
            raise ValueError(f"mask_image must have one channel (white = repaint), got shape {tuple(mask.shape)}")
        # latents (another pipeline's output_type="latent") stand for pictures vae_scale_factor times their size
        size = self.picture_size(pixels)
        if tuple(mask.shape[-2:]) != tuple(size):
            raise ValueError(f"mask_image has size {tuple(mask.shape[-2:])} (height, width), but image has "
                             f"{tuple(size)}; they must be the same size (pass height and width to match "
                             f"latents given as image)")
        if pixels.shape[1] == self.latent_channels and self.unet.config.in_channels != self.latent_channels:
            raise ValueError("image was given as latents, which cannot be masked, but this inpainting UNet also "
                             "reads the masked picture; pass the picture itself")
        return mask, pixels.to(torch.float32)

    def inpaint_inputs(self, mask: torch.Tensor, pixels: torch.Tensor, *, image_latents: torch.Tensor | None,
                       generator: Any = None, masked_image_latents: torch.Tensor | None = None,
                       ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The UNet's inpainting inputs and the keep mask at latent size, one row per row of ``mask``.

        ``mask`` is the repaint mask at latent size (nearest), ``masked_image_latents``
        the latents of the picture with the repaint region blacked out (drawn with
        ``generator``) unless the caller gave them.
        """
        device, dtype = self._execution_device, self.model_dtype
        latent_mask = F.interpolate(mask, size=tuple(s // self.vae_scale_factor for s in mask.shape[-2:]))
        latent_mask = latent_mask.to(device=device, dtype=dtype)
        if masked_image_latents is None and pixels.shape[1] == self.latent_channels:
            # latents cannot be masked; only a UNet that does not read the masked picture gets here
            return {"mask": latent_mask}, 1 - latent_mask
        masked = pixels * (mask < 0.5) if masked_image_latents is None else masked_image_latents
        masked_latents = self.encode_pictures(masked, generator=generator)
        return {"mask": latent_mask, "masked_image_latents": masked_latents}, 1 - latent_mask

    def inpaint_blends(self) -> bool:
        """A UNet that does not see the mask (as many input channels as the latents) needs the known region
        put back after every step."""
        return self.unet.config.in_channels == self.latent_channels

    def inpaint_crop(self, image: Any, mask_image: Any, height: int, width: int, *, padding: int,
                     output_type: str | None) -> tuple[int, int, int, int]:
        """The crop (x1, y1, x2, y2) around the repaint region, grown by ``padding`` pixels."""
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding_mask_crop must be a non-negative int (pixels), got {padding!r}")
        for name, value in (("image", image), ("mask_image", mask_image)):
            if not isinstance(value, PIL.Image.Image):
                raise ValueError(f"padding_mask_crop needs {name} as one PIL image, got {type(value).__name__}")
        if (output_type or "pil") != "pil":
            raise ValueError(f"padding_mask_crop pastes the result into the picture, so output_type must be 'pil', "
                             f"got {output_type!r}")
        return self.mask_processor.get_crop_region(mask_image, width, height, pad=padding)

    def paste_crops(self, images: list, image: Any, mask_image: Any, crop: tuple[int, int, int, int]) -> list:
        """Each repainted crop pasted back into the original picture where the mask is white."""
        return [self.image_processor.apply_overlay(mask_image, image, picture, crop) for picture in images]

    def with_inpaint_inputs(self, model_input: torch.Tensor, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The inpainting UNet's input: latents, then the repaint mask, then the masked picture's latents."""
        if "mask" not in tensors or self.unet.config.in_channels == model_input.shape[1]:
            return model_input
        return torch.cat([model_input, tensors["mask"], tensors["masked_image_latents"]], dim=1)

    # ------------------------------------------------------------------ the VAE's samples <-> latents

    def to_latents(self, sample: torch.Tensor) -> torch.Tensor:
        """A draw from the VAE's posterior -> the latents the UNet denoises."""
        return self.vae.config.scaling_factor * sample

    def from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents the UNet denoised -> what the VAE decodes (``to_latents`` undone)."""
        return latents / self.vae.config.scaling_factor

    @contextlib.contextmanager
    def vae_precision(self, *, decoding: bool) -> Iterator[None]:
        """The VAE's dtype while it encodes or decodes: its own here (a family may run it in float32)."""
        yield

    # ------------------------------------------------------------------ pictures out

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Final latents -> the VAE's pictures, NCHW in about [-1, 1]."""
        with self.vae_precision(decoding=True):
            return self.vae.decode(self.from_latents(latents.to(self.vae.dtype)), return_dict=False)[0]

    def decode(self, latents: torch.Tensor, output_type: str) -> Any:
        return postprocess(self.decode_latents(latents), output_type)

    # ------------------------------------------------------------------ checks

    def _check_channels(self, name: str, pixels: torch.Tensor) -> None:
        channels, pictures = pixels.shape[1], self.vae.config.in_channels
        if channels not in (pictures, self.latent_channels):
            raise ValueError(
                f"{name} has {channels} channels, but this pipeline takes pictures ({pictures} channels) or latents "
                f"of its VAE ({self.latent_channels} channels); latents of another model cannot be used here"
            )

    def _check_inpaint_unet(self) -> None:
        latent, unet = self.latent_channels, self.unet.config.in_channels
        inpainting = 2 * latent + 1  # latents, mask, masked picture's latents
        if unet not in (latent, inpainting):
            raise ValueError(
                f"inpainting needs a UNet with {inpainting} input channels (latents, mask, masked picture) or "
                f"{latent} (a text-to-image UNet; the known region is put back after every step), but this unet "
                f"has in_channels={unet}"
            )
