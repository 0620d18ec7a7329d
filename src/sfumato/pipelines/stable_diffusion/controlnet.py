"""Stable Diffusion steered by a ControlNet: a control image (depth map, edges, pose ...) fixes the layout.

``StableDiffusionControlNetFamily`` is the Stable Diffusion family plus a
``ControlNetModel``. The control image is conditioning like the prompt: it is
checked and prepared with it (``check_conditioning`` / ``condition``), and at
every step the ControlNet's residuals enter the UNet call (``unet_residuals``).
The two public pipelines differ from their plain siblings only in that.

The control image must have the size of the picture being made (``height`` x
``width``, or the size they default to), in multiples of the VAE's scale as
everywhere: a control image of another size is refused, not stretched.
Outside ``control_guidance_start`` .. ``control_guidance_end`` (fractions of
the steps run) the ControlNet's share is zero, so it does not run there.

Several ControlNets (``controlnet=[depth, edges]``, a ``MultiControlNetModel``)
each read their own control image (``image`` is then a list with one entry
per ControlNet), with their own scale and window (a number for all, or a list
with one per ControlNet), and their residuals add up.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Mapping

import numpy as np
import PIL.Image
import torch

from ...image import ImageProcessor
from ...models.controlnet import ControlNetModel, MultiControlNetModel, sum_residuals
from .. import checks
from ..generation import Request, broadcast, for_guidance, per_image
from ..tasks import ImageToImage, Inpaint, TextToImage
from .pipeline import StableDiffusionFamily

# the keywords of a ControlNet __call__ that say how the control image steers
_CONTROL = ("controlnet_conditioning_scale", "guess_mode", "control_guidance_start", "control_guidance_end")


@dataclasses.dataclass(frozen=True)
class _ControlSettings:
    scales: tuple[float, ...]  # one per ControlNet
    guess_mode: bool  # the ControlNets see the prompt-conditioned half only; the unconditional half gets nothing
    windows: tuple[tuple[float, float], ...]  # (start, end) of each, fractions of the steps run


class StableDiffusionControlNetFamily(StableDiffusionFamily):
    """The Stable Diffusion family with a ``controlnet`` component whose residuals join every UNet call."""

    # the reference's ControlNet pipelines take the scheduler config as it is
    _scheduler_fixes: Mapping[str, Any] = {}
    # what callbacks (and the denoising loop) call the prepared control image
    _control_name = "control_image"

    def __init__(self, vae, text_encoder, tokenizer, unet, controlnet, scheduler, safety_checker, feature_extractor,
                 image_encoder=None, requires_safety_checker: bool = True):
        if isinstance(controlnet, (list, tuple)):
            controlnet = MultiControlNetModel(controlnet)
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                         image_encoder=image_encoder, requires_safety_checker=requires_safety_checker)
        self.register_modules(controlnet=controlnet)

    def controlnets(self) -> list[ControlNetModel]:
        """The ControlNets, in order (one, or a MultiControlNetModel's)."""
        return list(self.controlnet.nets) if isinstance(self.controlnet, MultiControlNetModel) else [self.controlnet]

    def _control_images(self, control_image: Any) -> list[Any]:
        """Each ControlNet's control image(s): with several, ``control_image`` has one entry per ControlNet."""
        count = len(self.controlnets())
        if count == 1:
            return [control_image]
        if not isinstance(control_image, (list, tuple)) or len(control_image) != count:
            got = f"a list of {len(control_image)}" if isinstance(control_image, (list, tuple)) \
                else type(control_image).__name__
            raise ValueError(f"{self._control_name} must be a list with one control image (or list of them) per "
                             f"ControlNet: there are {count} ControlNets, got {got}")
        return list(control_image)

    @property
    def control_image_processor(self) -> ImageProcessor:
        """Control images go in as RGB in [0, 1] (not normalised to [-1, 1] as pictures for the VAE are)."""
        return ImageProcessor(vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True, do_normalize=False)

    def control_conditioning(self, call_locals: Mapping[str, Any], control_image: Any) -> dict[str, Any]:
        """The prompt keywords of a ``__call__`` and its control image and settings."""
        return {**self.text_conditioning(call_locals), "control_image": control_image,
                **{name: call_locals[name] for name in _CONTROL}}

    # ------------------------------------------------------------------ the control image

    def control_image_size(self, control_image: Any) -> tuple[int, int]:
        """(height, width) of the control image(s), in multiples of the VAE's scale (the size the call would get)."""
        name = self._control_name
        checks.required(name, control_image)
        items = [item for images in self._control_images(control_image)
                 for item in (images if isinstance(images, (list, tuple)) else [images])]
        kinds = (PIL.Image.Image, np.ndarray, torch.Tensor)
        if not items or not all(isinstance(item, kinds) for item in items):
            raise TypeError(f"{name} must be a PIL image, numpy array, torch tensor or a non-empty list of one of "
                            f"these, got {type(control_image).__name__}")
        processor = self.control_image_processor
        sizes = set()
        for item in items:
            if not isinstance(item, PIL.Image.Image) and item.ndim not in (3, 4):
                raise ValueError(f"{name} arrays and tensors must be one picture (HWC / CHW) or a batch (NHWC / NCHW), "
                                 f"got shape {tuple(item.shape)}")
            if not isinstance(item, PIL.Image.Image) and item.ndim == 3:
                item = item[None]
            sizes.add(processor.get_default_height_width(item))
        if len(sizes) > 1:
            raise ValueError(f"{name} pictures must all have one size, got (height, width) {sorted(sizes)}")
        return sizes.pop()

    def _check_control(self, conditioning: dict[str, Any], request: Request, count: int) -> None:
        name = self._control_name
        image = checks.required(name, conditioning["control_image"])
        size = self.control_image_size(image)
        if size != (request.height, request.width):
            raise ValueError(
                f"{name} has size {size} (height, width, in multiples of {self.vae_scale_factor}), but this call makes "
                f"pictures of {(request.height, request.width)}; pass a control image of that size (e.g. "
                f"{name}.resize(({request.width}, {request.height})) for a PIL image), or leave height and width out"
            )
        nets = self.controlnets()
        controls = []
        for number, (net, images) in enumerate(zip(nets, self._control_images(image))):
            which = name if len(nets) == 1 else f"{name}[{number}]"
            pixels = self.control_image_processor.preprocess(images, request.height, request.width).to(torch.float32)
            channels = net.config.conditioning_channels
            if pixels.shape[1] != channels:
                raise ValueError(f"{which} has {pixels.shape[1]} channels, but this ControlNet reads {channels}")
            checks.finite(which, pixels)
            if pixels.shape[0] not in (1, count):
                raise ValueError(f"{which} has batch size {pixels.shape[0]}, but there are {count} prompts; pass one "
                                 f"control image for all or one per prompt")
            controls.append(pixels)
        conditioning.update(control_image=controls, prompt_count=count)
        conditioning["control_settings"] = self._control_settings(conditioning)

    def _control_settings(self, conditioning: dict[str, Any]) -> _ControlSettings:
        count = len(self.controlnets())
        scales = _per_controlnet("controlnet_conditioning_scale", conditioning["controlnet_conditioning_scale"], count)
        starts = _per_controlnet("control_guidance_start", conditioning["control_guidance_start"], count)
        ends = _per_controlnet("control_guidance_end", conditioning["control_guidance_end"], count)
        for start, end in zip(starts, ends):
            if not 0 <= start < end <= 1:
                raise ValueError(f"control_guidance_start and control_guidance_end must satisfy 0 <= start < end <= 1 "
                                 f"(fractions of the steps), got start={start}, end={end}")
        guess_mode = conditioning["guess_mode"]
        if not isinstance(guess_mode, (bool, np.bool_)):
            raise TypeError(f"guess_mode must be True or False, got {guess_mode!r}")
        # as in the reference, the first ControlNet's global pooling decides for all
        guess_mode = bool(guess_mode) or bool(self.controlnets()[0].config.global_pool_conditions)
        return _ControlSettings(scales=scales, guess_mode=guess_mode, windows=tuple(zip(starts, ends)))

    # ------------------------------------------------------------------ the family's hooks

    def check_conditioning(self, conditioning: dict[str, Any], request: Request) -> int:
        count = super().check_conditioning(conditioning, request)
        self._check_control(conditioning, request, count)
        return count

    def condition(self, conditioning: dict[str, Any], request: Request, guided: bool) -> dict[str, torch.Tensor]:
        tensors = super().condition(conditioning, request, guided)
        self._control = conditioning["control_settings"]
        self._control_guided = guided
        self._control_step = 0
        controls = []
        for pixels in conditioning["control_image"]:
            control = per_image(broadcast(pixels, conditioning["prompt_count"]), request.num_images_per_prompt)
            control = control.to(device=self._execution_device, dtype=self.controlnet.dtype)
            # in guess mode the ControlNets run on the conditional half alone
            controls.append(for_guidance(control, guided and not self._control.guess_mode))
        # one ControlNet: its tensor; several: their list (what callbacks see under this name, as in the reference)
        tensors[self._control_name] = controls[0] if len(controls) == 1 else controls
        return tensors

    def unet_residuals(self, model_input: torch.Tensor, t: torch.Tensor,
                       tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        step, self._control_step = self._control_step, self._control_step + 1
        control, total = self._control, self._num_timesteps
        images = tensors[self._control_name]
        images = images if isinstance(images, list) else [images]
        # outside its window a ControlNet's residuals are zero: it does not run
        running = [(net, image, scale) for net, image, scale, (start, end)
                   in zip(self.controlnets(), images, control.scales, control.windows)
                   if not (step / total < start or (step + 1) / total > end)]
        if not running:
            return {}
        split = control.guess_mode and self._control_guided
        embeds = tensors["prompt_embeds"]
        down, mid = sum_residuals(net(
            sample=model_input.chunk(2)[1] if split else model_input, timestep=t,
            encoder_hidden_states=embeds.chunk(2)[1] if split else embeds, controlnet_cond=image,
            conditioning_scale=scale, guess_mode=control.guess_mode, return_dict=False,
        ) for net, image, scale in running)
        if split:  # the unconditional half gets no control
            down = [torch.cat([torch.zeros_like(residual), residual]) for residual in down]
            mid = torch.cat([torch.zeros_like(mid), mid])
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


def _per_controlnet(name: str, value: Any, count: int) -> tuple[float, ...]:
    """One number per ControlNet: a number for all of them, or a list with one per ControlNet."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * count
    if len(values) != count:
        there = "there is one ControlNet; pass one number" if count == 1 \
            else f"there are {count} ControlNets; pass one number, or a list of {count}"
        raise ValueError(f"{name} has {len(values)} values, but {there}")
    for item in values:
        if isinstance(item, bool) or not isinstance(item, numbers.Real):
            raise TypeError(f"{name} must be a number{'' if count == 1 else ' or a list of numbers'}, got {value!r}")
    return tuple(checks.number(name, item) for item in values)


# ---------------------------------------------------------------------------------------------- tasks


class _SizedByControlImage(TextToImage):
    """Text-to-image whose size, where the call leaves it out, is the control image's."""

    def __init__(self, control_image: Any):
        self.control_image = control_image

    def size(self, pipeline: Any, request: Request) -> tuple[int | None, int | None]:
        if request.height is not None and request.width is not None:
            return request.height, request.width
        height, width = pipeline.control_image_size(checks.required(pipeline._control_name, self.control_image))
        return request.height or height, request.width or width


# ---------------------------------------------------------------------------------------------- pipelines


class StableDiffusionControlNetPipeline(StableDiffusionControlNetFamily):
    """Text-to-image steered by the control image ``image``; the pictures have its size unless height / width
    say otherwise (it must then have theirs)."""

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _control_name = "image"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "image"]

    def __call__(self, prompt=None, image=None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 50, timesteps: list[int] = None, sigmas: list[float] = None,
                 guidance_scale: float = 7.5, negative_prompt=None, num_images_per_prompt: int | None = 1,
                 eta: float = 0.0, generator=None, latents=None, prompt_embeds=None, negative_prompt_embeds=None,
                 ip_adapter_image=None, ip_adapter_image_embeds=None, output_type: str | None = "pil",
                 return_dict: bool = True, cross_attention_kwargs=None, controlnet_conditioning_scale=1.0,
                 guess_mode: bool = False, control_guidance_start=0.0, control_guidance_end=1.0,
                 clip_skip: int | None = None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], **kwargs):
        return self.generate(conditioning=self.control_conditioning(locals(), image),
                             task=_SizedByControlImage(image), request=Request.of(locals()))


class StableDiffusionControlNetImg2ImgPipeline(StableDiffusionControlNetFamily):
    """Image-to-image steered by ``control_image``: ``image`` noised to ``strength``, then denoised towards the
    prompt while the ControlNet holds the layout (the guide's depth ControlNet)."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "control_image"]

    def __call__(self, prompt=None, image=None, control_image=None, height: int | None = None,
                 width: int | None = None, strength: float = 0.8, num_inference_steps: int = 50,
                 guidance_scale: float = 7.5, negative_prompt=None, num_images_per_prompt: int | None = 1,
                 eta: float = 0.0, generator=None, latents=None, prompt_embeds=None, negative_prompt_embeds=None,
                 ip_adapter_image=None, ip_adapter_image_embeds=None, output_type: str | None = "pil",
                 return_dict: bool = True, cross_attention_kwargs=None, controlnet_conditioning_scale=0.8,
                 guess_mode: bool = False, control_guidance_start=0.0, control_guidance_end=1.0,
                 clip_skip: int | None = None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], **kwargs):
        return self.generate(conditioning=self.control_conditioning(locals(), control_image),
                             task=ImageToImage(image, strength), request=Request.of(locals()))


class StableDiffusionControlNetInpaintPipeline(StableDiffusionControlNetFamily):
    """Inpainting steered by ``control_image``: repaint where ``mask_image`` is white, keep the rest of ``image``,
    while the ControlNet holds the layout. A 9-channel inpainting UNet sees the mask and the masked picture; a
    4-channel one gets the known region put back after every step, as in plain inpainting."""

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "control_image", "mask",
                               "masked_image_latents"]

    def __call__(self, prompt=None, image=None, mask_image=None, control_image=None, height: int | None = None,
                 width: int | None = None, padding_mask_crop: int | None = None, strength: float = 1.0,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5, negative_prompt=None,
                 num_images_per_prompt: int | None = 1, eta: float = 0.0, generator=None, latents=None,
                 prompt_embeds=None, negative_prompt_embeds=None, ip_adapter_image=None, ip_adapter_image_embeds=None,
                 output_type: str | None = "pil", return_dict: bool = True, cross_attention_kwargs=None,
                 controlnet_conditioning_scale=0.5, guess_mode: bool = False, control_guidance_start=0.0,
                 control_guidance_end=1.0, clip_skip: int | None = None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], **kwargs):
        if padding_mask_crop is not None:
            raise ValueError("padding_mask_crop is not supported with a ControlNet: the control image would need the "
                             "same crop; crop the picture, mask and control image yourself, or leave it out")
        return self.generate(conditioning=self.control_conditioning(locals(), control_image),
                             task=Inpaint(image, mask_image, strength=strength, sized_by_image=True),
                             request=Request.of(locals()))
