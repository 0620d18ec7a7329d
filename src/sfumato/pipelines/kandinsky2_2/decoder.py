"""Kandinsky 2.2 decoders: image embeddings (from the prior) -> pictures, through a UNet and the MoVQ.

``KandinskyV22Decoder`` is the family: it conditions the UNet on image
embeddings (and, for ControlNet, a ``hint``) only, no text. The five public
pipelines differ only in their task and their inputs.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .. import checks
from ..generation import Request, for_guidance, per_image
from ..movq import MoVQLatents
from ..tasks import ImageToImage, Inpaint, TextToImage


class KandinskyV22Decoder(MoVQLatents):
    """Shared body of the 2.2 decoder pipelines: a UNet, a scheduler and the MoVQ."""

    model_cpu_offload_seq = "unet->movq"
    _callback_tensor_inputs = ["latents", "image_embeds", "negative_image_embeds"]

    def __init__(self, unet, scheduler, movq):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, movq=movq)

    def hint_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the ControlNet hint: the UNet's hint network downsamples it 8x to the latents."""
        return (height // self.movq_scale_factor * 8, width // self.movq_scale_factor * 8)

    def check_conditioning(self, conditioning: dict[str, Any], request: Request) -> int:
        embeds, negative = checks.embeds_pair(conditioning["image_embeds"], conditioning["negative_image_embeds"])
        checks.embeds_width("image_embeds", embeds, self.unet.config.encoder_hid_dim)
        conditioning.update(image_embeds=embeds, negative_image_embeds=negative)
        if conditioning.get("hint") is not None:
            conditioning["hint"] = checks.hint(conditioning["hint"], embeds.shape[0],
                                               self.hint_size(request.height, request.width))
        return embeds.shape[0]

    def condition(self, conditioning: dict[str, Any], request: Request, guided: bool) -> dict[str, torch.Tensor]:
        n, device, dtype = request.num_images_per_prompt, self._execution_device, self.model_dtype
        embeds = per_image(conditioning["image_embeds"], n).to(device=device, dtype=dtype)
        negative = per_image(conditioning["negative_image_embeds"], n).to(device=device, dtype=dtype)
        tensors = {"image_embeds": torch.cat([negative, embeds]) if guided else embeds,
                   "negative_image_embeds": negative}
        if conditioning.get("hint") is not None:
            tensors["hint"] = for_guidance(per_image(conditioning["hint"], n).to(device=device, dtype=dtype), guided)
        return tensors

    def predict(self, model_input: torch.Tensor, t: torch.Tensor, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        added = {"image_embeds": tensors["image_embeds"]}
        if "hint" in tensors:
            added["hint"] = tensors["hint"]
        return self.unet(sample=self.with_inpaint_inputs(model_input, tensors), timestep=t,
                         encoder_hidden_states=None, added_cond_kwargs=added, return_dict=False)[0]


class KandinskyV22Pipeline(KandinskyV22Decoder):
    """Text-to-image decoder of Kandinsky 2.2: image embeddings (from the prior) -> pictures."""

    def __call__(self, image_embeds, negative_image_embeds, height: int = 512, width: int = 512,
                 num_inference_steps: int = 100, guidance_scale: float = 4.0, num_images_per_prompt: int = 1,
                 generator=None, latents=None, output_type: str | None = "pil", return_dict: bool = True,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs: list[str] = ["latents"], **kwargs):
        return self.generate(conditioning=dict(image_embeds=image_embeds, negative_image_embeds=negative_image_embeds),
                             task=TextToImage(), request=Request.of(locals()))


class KandinskyV22Img2ImgPipeline(KandinskyV22Decoder):
    """Image-to-image: the picture is noised to ``strength`` and denoised towards the embeddings."""

    pt_output_in_unit_range = True

    def __call__(self, image_embeds, image, negative_image_embeds, height: int = 512, width: int = 512,
                 num_inference_steps: int = 100, guidance_scale: float = 4.0, strength: float = 0.3,
                 num_images_per_prompt: int = 1, generator=None, output_type: str | None = "pil",
                 return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], **kwargs):
        return self.generate(conditioning=dict(image_embeds=image_embeds, negative_image_embeds=negative_image_embeds),
                             task=ImageToImage(image, strength), request=Request.of(locals()))


class KandinskyV22InpaintPipeline(KandinskyV22Decoder):
    """Inpainting: repaint where ``mask_image`` is white (1), keep the rest of ``image``."""

    _callback_tensor_inputs = ["latents", "image_embeds", "negative_image_embeds", "masked_image", "mask_image"]

    def __call__(self, image_embeds, image, mask_image, negative_image_embeds, height: int = 512, width: int = 512,
                 num_inference_steps: int = 100, guidance_scale: float = 4.0, num_images_per_prompt: int = 1,
                 generator=None, latents=None, output_type: str | None = "pil", return_dict: bool = True,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs: list[str] = ["latents"], **kwargs):
        return self.generate(conditioning=dict(image_embeds=image_embeds, negative_image_embeds=negative_image_embeds),
                             task=Inpaint(image, mask_image, blend=True), request=Request.of(locals()))


class KandinskyV22ControlnetPipeline(KandinskyV22Decoder):
    """ControlNet text-to-image: the ``hint`` (e.g. a depth map, N3HW in [0, 1]) steers the layout."""

    def __call__(self, image_embeds, negative_image_embeds, hint, height: int = 512, width: int = 512,
                 num_inference_steps: int = 100, guidance_scale: float = 4.0, num_images_per_prompt: int = 1,
                 generator=None, latents=None, output_type: str | None = "pil", callback=None,
                 callback_steps: int = 1, return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"]):
        hint = checks.required("hint", hint)
        return self.generate(conditioning=dict(image_embeds=image_embeds, negative_image_embeds=negative_image_embeds,
                                               hint=hint), task=TextToImage(), request=Request.of(locals()))


class KandinskyV22ControlnetImg2ImgPipeline(KandinskyV22Decoder):
    """ControlNet image-to-image: a picture noised to ``strength``, steered by the ``hint``."""

    pt_output_in_unit_range = True

    def __call__(self, image_embeds, image, negative_image_embeds, hint, height: int = 512, width: int = 512,
                 num_inference_steps: int = 100, guidance_scale: float = 4.0, strength: float = 0.3,
                 num_images_per_prompt: int = 1, generator=None, output_type: str | None = "pil", callback=None,
                 callback_steps: int = 1, return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"]):
        hint = checks.required("hint", hint)
        return self.generate(conditioning=dict(image_embeds=image_embeds, negative_image_embeds=negative_image_embeds,
                                               hint=hint), task=ImageToImage(image, strength),
                             request=Request.of(locals()))
