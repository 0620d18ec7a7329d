"""The MoVQ latent space of the Kandinsky decoders: sizes, encoding, inpainting inputs, decoding.

Kandinsky 2.1 and 2.2 differ in how they condition their UNet, not in their
latent space; both build on ``MoVQLatents``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ..image import ImageProcessor, kandinsky_latent_mask, postprocess, prepare_mask_and_masked_image
from .generation import GenerationPipeline
from .sizes import movq_size_multiple


class MoVQLatents(GenerationPipeline):
    """A ``GenerationPipeline`` whose latents are a MoVQ's (``self.movq``) and whose denoiser is ``self.unet``."""

    # output_type="pt" gives the MoVQ's raw [-1, 1] output in the reference's text-to-image,
    # inpaint and ControlNet pipelines and [0, 1] in its image-to-image ones; we keep its numbers
    pt_output_in_unit_range = False
    # the 2.2 reference re-noises the known region of an inpainting with its starting latents, which a
    # scheduler's init_noise_sigma has scaled (1 for DDPM / DDIM); kept for its numbers
    inpaint_noise_from_start_latents = True

    @property
    def movq_scale_factor(self) -> int:
        return 2 ** (len(self.movq.config.block_out_channels) - 1)

    @property
    def image_processor(self) -> ImageProcessor:
        return ImageProcessor(vae_scale_factor=self.movq_scale_factor, resample="bicubic", reducing_gap=1)

    def size_multiple(self) -> int:
        """Every level of the UNet gets whole latent pixels, and the MoVQ whole pixels."""
        return movq_size_multiple(self.movq.config, self.unet.config)

    def latent_shape(self, samples: int, height: int, width: int) -> tuple[int, ...]:
        scale = self.movq_scale_factor
        return (samples, self.movq.config.latent_channels, height // scale, width // scale)

    # ------------------------------------------------------------------ pictures in

    def preprocess_pictures(self, image: Any, height: int, width: int) -> torch.Tensor:
        return self.image_processor.preprocess(image, height, width)

    def encode_pictures(self, pixels: torch.Tensor, generator: Any = None) -> torch.Tensor:
        """The MoVQ's latents of ``pixels`` (it draws nothing, so ``generator`` is not used)."""
        # the MoVQ may run in another dtype than the UNet (torch_dtype per component)
        latents = self.movq.encode(pixels.to(device=self._execution_device, dtype=self.movq.dtype))["latents"]
        return latents.to(self.model_dtype)

    def inpaint_pixels(self, image: Any, mask_image: Any, height: int, width: int,
                       crop: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The keep mask (1 = keep) and the picture in [-1, 1], checked, at pixel size.

        A mask given as an array or tensor keeps its own size, as in the reference: the latent grid samples it
        (nearest), so a 768 x 768 array steers a 512 x 512 picture (the Kandinsky guide's inpainting example
        does this)."""
        if crop is not None:
            raise ValueError("padding_mask_crop is not supported by the Kandinsky inpainting pipelines")
        self._check_inpaint_unet()
        keep, pixels = prepare_mask_and_masked_image(image, mask_image, height, width)
        if tuple(pixels.shape[-2:]) != (height, width):
            raise ValueError(
                f"image has size {tuple(pixels.shape[-2:])} (height, width), but height and width ask for "
                f"{(height, width)}; pass a picture of that size or PIL images (which are resized)"
            )
        return keep, pixels

    def inpaint_inputs(self, keep: torch.Tensor, pixels: torch.Tensor, *, image_latents: torch.Tensor | None,
                       generator: Any = None, masked_image_latents: Any = None) -> tuple[dict, torch.Tensor]:
        """The UNet's inpainting inputs (the keep mask at latent size, its repaint region grown by a latent
        pixel, and the picture's latents masked by it) and that keep mask, one row per row of ``keep``."""
        if masked_image_latents is not None:
            raise ValueError("masked_image_latents is not supported by the Kandinsky inpainting pipelines")
        if image_latents is None:
            image_latents = self.encode_pictures(pixels)
        keep = kandinsky_latent_mask(keep.to(device=image_latents.device, dtype=image_latents.dtype),
                                     image_latents.shape[-2:])
        return {"mask_image": keep, "masked_image": image_latents * keep}, keep

    def _check_inpaint_unet(self) -> None:
        latent = self.movq.config.latent_channels
        wanted = 2 * latent + 1  # latents, masked picture's latents, mask
        if self.unet.config.in_channels != wanted:
            raise ValueError(
                f"inpainting needs a UNet with {wanted} input channels (latents, masked picture, mask), but this "
                f"unet has in_channels={self.unet.config.in_channels}; load an inpainting checkpoint"
            )

    @staticmethod
    def with_inpaint_inputs(model_input: torch.Tensor, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The inpainting UNet's input: latents, then the masked picture's latents, then the keep mask."""
        if "mask_image" not in tensors:
            return model_input
        return torch.cat([model_input, tensors["masked_image"], tensors["mask_image"]], dim=1)

    # ------------------------------------------------------------------ pictures out

    def decode(self, latents: torch.Tensor, output_type: str) -> Any:
        decoded = self.movq.decode(latents.to(self.movq.dtype), force_not_quantize=True)["sample"]
        return postprocess(decoded, output_type, denormalize_pt=self.pt_output_in_unit_range)
