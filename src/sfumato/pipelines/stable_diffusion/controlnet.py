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
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Mapping

import numpy as np
import PIL.Image
import torch

from ...image import ImageProcessor
from .. import checks
from ..generation import Request, broadcast, for_guidance, per_image
from ..tasks import ImageToImage, TextToImage
from .pipeline import StableDiffusionFamily

# the keywords of a ControlNet __call__ that say how the control image steers
_CONTROL = ("controlnet_conditioning_scale", "guess_mode", "control_guidance_start", "control_guidance_end")


@dataclasses.dataclass(frozen=True)
class _ControlSettings:
    scale: float
    guess_mode: bool  # the ControlNet sees the prompt-conditioned half only; the unconditional half gets nothing
    start: float
    end: float


class StableDiffusionControlNetFamily(StableDiffusionFamily):
    """The Stable Diffusion family with a ``controlnet`` component whose residuals join every UNet call."""

    # the reference's ControlNet pipelines take the scheduler config as it is
    _scheduler_fixes: Mapping[str, Any] = {}
    # what callbacks (and the denoising loop) call the prepared control image
    _control_name = "control_image"

    def __init__(self, vae, text_encoder, tokenizer, unet, controlnet, scheduler, safety_checker, feature_extractor,
                 image_encoder=None, requires_safety_checker: bool = True):
        if isinstance(controlnet, (list, tuple)):
            raise NotImplementedError("several ControlNets at once (MultiControlNetModel) are not supported by "
                                      "sfumato; pass one ControlNetModel as controlnet=")
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                         image_encoder=image_encoder, requires_safety_checker=requires_safety_checker)
        self.register_modules(controlnet=controlnet)

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
        items = control_image if isinstance(control_image, (list, tuple)) else [control_image]
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
        pixels = self.control_image_processor.preprocess(image, request.height, request.width).to(torch.float32)
        channels = self.controlnet.config.conditioning_channels
        if pixels.shape[1] != channels:
            raise ValueError(f"{name} has {pixels.shape[1]} channels, but this ControlNet reads {channels}")
        checks.finite(name, pixels)
        if pixels.shape[0] not in (1, count):
            raise ValueError(f"{name} has batch size {pixels.shape[0]}, but there are {count} prompts; pass one "
                             f"control image for all or one per prompt")
        conditioning.update(control_image=pixels, prompt_count=count)
        conditioning["control_settings"] = self._control_settings(conditioning)

    def _control_settings(self, conditioning: dict[str, Any]) -> _ControlSettings:
        scale = _single("controlnet_conditioning_scale", conditioning["controlnet_conditioning_scale"])
        start = _single("control_guidance_start", conditioning["control_guidance_start"])
        end = _single("control_guidance_end", conditioning["control_guidance_end"])
        if not 0 <= start < end <= 1:
            raise ValueError(f"control_guidance_start and control_guidance_end must satisfy 0 <= start < end <= 1 "
                             f"(fractions of the steps), got start={start}, end={end}")
        guess_mode = conditioning["guess_mode"]
        if not isinstance(guess_mode, (bool, np.bool_)):
            raise TypeError(f"guess_mode must be True or False, got {guess_mode!r}")
        guess_mode = bool(guess_mode) or bool(self.controlnet.config.global_pool_conditions)
        return _ControlSettings(scale=scale, guess_mode=guess_mode, start=start, end=end)

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
        control = per_image(broadcast(conditioning["control_image"], conditioning["prompt_count"]),
                            request.num_images_per_prompt)
        control = control.to(device=self._execution_device, dtype=self.controlnet.dtype)
        # in guess mode the ControlNet runs on the conditional half alone
        tensors[self._control_name] = for_guidance(control, guided and not self._control.guess_mode)
        return tensors

    def unet_residuals(self, model_input: torch.Tensor, t: torch.Tensor,
                       tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        step, self._control_step = self._control_step, self._control_step + 1
        control, total = self._control, self._num_timesteps
        if step / total < control.start or (step + 1) / total > control.end:
            return {}  # outside the control window its residuals are zero
        split = control.guess_mode and self._control_guided
        embeds = tensors["prompt_embeds"]
        down, mid = self.controlnet(
            sample=model_input.chunk(2)[1] if split else model_input, timestep=t,
            encoder_hidden_states=embeds.chunk(2)[1] if split else embeds, controlnet_cond=tensors[self._control_name],
            conditioning_scale=control.scale, guess_mode=control.guess_mode, return_dict=False,
        )
        if split:  # the unconditional half gets no control
            down = [torch.cat([torch.zeros_like(residual), residual]) for residual in down]
            mid = torch.cat([torch.zeros_like(mid), mid])
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


def _single(name: str, value: Any) -> float:
    """A number, or a list holding one (the reference's per-ControlNet lists, for one ControlNet)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"{name} has {len(value)} values, but there is one ControlNet; pass one number")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return checks.number(name, value)


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
