"""The generation body every family shares: condition -> starting latents -> denoise -> decode.

A public pipeline's ``__call__`` keeps the reference's signature and hands
three things to ``GenerationPipeline.generate``, by keyword:

* ``conditioning``: the family's inputs (prompts, image embeddings, a hint),
  which the family checks (``check_conditioning``) and turns into the tensors
  its model reads (``condition``);
* ``task``: what the starting latents are and what the loop blends after each
  step (``sfumato.pipelines.tasks``: text-to-image, image-to-image, inpainting);
* ``request``: the keywords every generation shares (size, steps, guidance,
  seeds, output type, callbacks), as a ``Request``.

A family is a ``GenerationPipeline`` subclass that supplies how it conditions,
predicts and decodes; guidance, callbacks, offload hooks, progress and output
wrapping live here, once. Every input is checked before the first model runs.

Sizes a call leaves out (``height=None``) are filled in by the task: text-to-image
and inpainting take the family's default (Stable Diffusion: the UNet's sample
size), image-to-image the picture's own size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
from typing import Any, Callable, Mapping, Sequence

import torch

from .. import limits
from ..allocator import keep_freed_memory
from ..image.processor import OUTPUT_TYPES
from . import checks
from ..nn.batching import stacked_copies
from .base import DiffusionPipeline, ImagePipelineOutput
from .loop import denoise, noised_latents


@dataclasses.dataclass(frozen=True)
class Request:
    """The keywords every generation shares, under the reference's names."""

    height: int | None = None
    width: int | None = None
    num_inference_steps: int = 100
    timesteps: Sequence[int] | None = None
    sigmas: Sequence[float] | None = None
    guidance_scale: float = 4.0
    guidance_rescale: float = 0.0
    num_images_per_prompt: int = 1
    eta: float = 0.0
    generator: Any = None
    latents: torch.Tensor | None = None
    output_type: str | None = "pil"
    return_dict: bool = True
    callback_on_step_end: Callable | None = None
    callback_on_step_end_tensor_inputs: Sequence[str] | None = None
    callback: Callable | None = None
    callback_steps: int = 1
    # a cut of the schedule (SDXL's base -> refiner hand-off): start / stop that fraction of the way through
    denoising_start: float | None = None
    denoising_end: float | None = None

    @classmethod
    def of(cls, call_locals: Mapping[str, Any]) -> "Request":
        """The shared keywords of a ``__call__``, taken by name from its ``locals()``.

        Names that are not shared keywords (the conditioning, the task's inputs)
        are left alone; a ``kwargs`` dict (the reference's deprecated
        ``callback`` / ``callback_steps``) is read too, and anything else in it
        is an error.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in call_locals.items() if k in fields}
        extra = dict(call_locals.get("kwargs") or {})
        unknown = sorted(k for k in extra if k not in fields)
        if unknown:
            raise TypeError(f"unexpected keyword arguments {unknown}")
        return cls(**{**values, **extra})

    def sized(self, height: int | None, width: int | None) -> "Request":
        """This request for pictures of ``height`` x ``width``."""
        return dataclasses.replace(self, height=height, width=width)

    def check(self, pipeline: "GenerationPipeline") -> None:
        checks.one_of("output_type", self.output_type or "pil", OUTPUT_TYPES)
        checks.positive_int("num_inference_steps", self.num_inference_steps)
        checks.positive_int("num_images_per_prompt", self.num_images_per_prompt)
        checks.number("guidance_scale", self.guidance_scale)
        checks.number("guidance_rescale", self.guidance_rescale)
        checks.number("eta", self.eta)
        checks.custom_schedule(self.timesteps, self.sigmas)
        _check_denoising_cut(self.denoising_start, self.denoising_end)
        checks.size(self.height, self.width, pipeline.size_multiple())
        limits.check_request(pictures=self.num_images_per_prompt, height=self.height, width=self.width)
        checks.steps_fit(self.num_inference_steps, pipeline.scheduler)
        checks.callable_or_none("callback_on_step_end", self.callback_on_step_end)
        checks.callable_or_none("callback", self.callback)
        checks.callback_names(pipeline, self.callback_on_step_end_tensor_inputs)
        if self.latents is not None:
            if not isinstance(self.latents, torch.Tensor):
                raise TypeError(f"latents must be a torch.Tensor or None, got {type(self.latents).__name__}")
            checks.finite("latents", self.latents)

    def step_callback(self, scheduler: Any) -> Callable | None:
        """One ``callback_on_step_end``, with the legacy ``callback`` folded in."""
        return checks.merge_legacy_callback(self.callback_on_step_end, self.callback, self.callback_steps, scheduler)


@dataclasses.dataclass
class Start:
    """Where the loop starts: latents, the timesteps to run, and what the task adds to each step.

    ``tensors`` are extra named inputs of the model (inpainting's masked picture
    and mask), one per sample; the body doubles them for guidance. ``after_step``
    rewrites the latents after every scheduler step, ``finish`` once at the end;
    ``finish_images`` rewrites the final PIL pictures (inpainting pastes a crop back).
    """

    latents: torch.Tensor
    timesteps: torch.Tensor
    tensors: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    after_step: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor] | None = None
    finish: Callable[[torch.Tensor], torch.Tensor] | None = None
    finish_images: Callable[[list], list] | None = None


class GenerationPipeline(DiffusionPipeline):
    """A pipeline on the shared body. Families fill in the hooks below; tasks come from ``tasks``."""

    # what ``__call__`` returns with ``return_dict`` (without it: the tuple of ``outputs``' values)
    output_class: type = ImagePipelineOutput
    # inpainting re-noises the known region with the starting noise; a family whose reference uses the
    # starting latents instead (scaled by the scheduler's init_noise_sigma) says so
    inpaint_noise_from_start_latents: bool = False

    # ------------------------------------------------------------------ what a family supplies

    def size_multiple(self) -> int:
        """Heights and widths must be multiples of this."""
        raise NotImplementedError

    def default_size(self, height: int | None, width: int | None) -> tuple[int | None, int | None]:
        """``height`` and ``width``, the family's defaults where they are None (by default it has none)."""
        return height, width

    def picture_size(self, pixels: torch.Tensor) -> tuple[int, int]:
        """(height, width) of pictures as ``preprocess_pictures`` gives them."""
        return tuple(pixels.shape[-2:])

    def guidance_weight(self, guidance_scale: float) -> float:
        """The weight w of a guided prediction ``uncond + w * (cond - uncond)`` for ``guidance_scale``.

        The scale itself, except in a family that counts it from the conditional
        prediction (Kandinsky 3: ``(s + 1) * cond - s * uncond``).
        """
        return guidance_scale

    def check_conditioning(self, conditioning: dict[str, Any], request: Request) -> int:
        """Check the family's inputs (no model runs) and return the number of prompts / embeddings.

        May normalise ``conditioning`` in place (lists of tensors -> one tensor).
        """
        raise NotImplementedError

    def condition(self, conditioning: dict[str, Any], request: Request, guided: bool) -> dict[str, torch.Tensor]:
        """The named tensors ``predict`` reads, one row per image, unconditional rows first when guided."""
        raise NotImplementedError

    def predict(self, model_input: torch.Tensor, t: torch.Tensor, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The denoiser's output for ``model_input`` at ``t``."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor, output_type: str) -> Any:
        """Final latents -> pictures as ``output_type`` asks (never called for ``"latent"``)."""
        raise NotImplementedError

    def outputs(self, latents: torch.Tensor, output_type: str) -> dict[str, Any]:
        """The fields of ``output_class`` for the final latents (a family that reports more adds its fields)."""
        return {"images": latents if output_type == "latent" else self.decode(latents, output_type)}

    def noise_pictures(self, clean: torch.Tensor, *, timesteps: torch.Tensor, strength: float,
                       generator: Any) -> torch.Tensor:
        """A picture's latents noised to where the image-to-image schedule starts."""
        return noised_latents(clean=clean, scheduler=self.scheduler, timestep=timesteps[:1], generator=generator)

    # ------------------------------------------------------------------ the body

    @torch.no_grad()
    def generate(self, *, conditioning: dict[str, Any], task: Any, request: Request):
        # 1. everything that can be wrong is found before any model runs
        request = request.sized(*task.size(self, request))
        request.check(self)
        batch = self.check_conditioning(conditioning, request)
        limits.check_request(pictures=batch * request.num_images_per_prompt, height=request.height,
                             width=request.width, dtype_size=self.model_dtype.itemsize)
        checks.generators(request.generator, batch * request.num_images_per_prompt)
        task.check(self, request, batch)
        callback = request.step_callback(self.scheduler)
        if self._checking_only:
            return None

        # 2. condition (the same large activations come and go at every step: keep freed memory for reuse)
        keep_freed_memory()
        self._guidance_scale = request.guidance_scale
        guided = self.do_classifier_free_guidance
        tensors = self.condition(conditioning, request, guided)

        # 3-5: the models see which rows make each picture (the fast mode's int8 layers quantize per picture)
        with stacked_copies(1, batch * request.num_images_per_prompt):
            # 3. starting latents
            request = self._set_timesteps(request)
            start = task.start(self, request, batch)
            tensors.update({name: for_guidance(value, guided) for name, value in start.tensors.items()})

            # 4. denoise
            latents = denoise(self, latents=start.latents, timesteps=start.timesteps, predict=self.predict,
                              guidance_scale=self.guidance_weight(request.guidance_scale),
                              guidance_rescale=request.guidance_rescale,
                              guided=guided, tensors=tensors, generator=request.generator, eta=request.eta,
                              after_step=start.after_step, callback_on_step_end=callback,
                              callback_on_step_end_tensor_inputs=request.callback_on_step_end_tensor_inputs
                              or ["latents"])
            if start.finish is not None:
                latents = start.finish(latents)

            # 5. decode
            output_type = request.output_type or "pil"
            fields = self.outputs(latents, output_type)
            if start.finish_images is not None and output_type == "pil":
                fields["images"] = start.finish_images(fields["images"])
        self.maybe_free_model_hooks()
        return self.output_class(**fields) if request.return_dict else tuple(fields.values())

    def _set_timesteps(self, request: Request) -> Request:
        """Lay out the scheduler's steps: ``num_inference_steps`` of them, or the caller's ``timesteps`` / ``sigmas``.

        Custom ones decide the number of steps; the request returned says how many.
        """
        device = self._execution_device
        if request.timesteps is None and request.sigmas is None:
            self.scheduler.set_timesteps(request.num_inference_steps, device=device)
            return request
        name = "timesteps" if request.timesteps is not None else "sigmas"
        try:
            self.scheduler.set_timesteps(device=device, **{name: list(getattr(request, name))})
        except TypeError:
            raise ValueError(f"{name} were given, but {type(self.scheduler).__name__} does not take custom {name}; "
                             f"use num_inference_steps, or a scheduler that takes them (e.g. EulerDiscreteScheduler)"
                             ) from None
        return dataclasses.replace(request, num_inference_steps=len(self.scheduler.timesteps))

    _checking_only = False

    @contextlib.contextmanager
    def checking_only(self):
        """Calls inside this block check every input, then return ``None`` before any model runs.

        A combined pipeline checks its decoder's arguments this way before its prior runs.
        """
        self._checking_only = True
        try:
            yield self
        finally:
            self._checking_only = False

    @property
    def model_dtype(self) -> torch.dtype:
        """The dtype the denoiser computes in; conditioning and latents are cast to it."""
        return self.unet.dtype


def _check_denoising_cut(start: Any, end: Any) -> None:
    """``denoising_start`` / ``denoising_end``: fractions strictly between 0 and 1, the start before the end."""
    for name, value in (("denoising_start", start), ("denoising_end", end)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                                  or not 0 < value < 1):
            raise ValueError(f"{name} must be None or a fraction of the schedule strictly between 0 and 1 "
                             f"(e.g. 0.8), got {value!r}")
    if start is not None and end is not None and start >= end:
        raise ValueError(f"denoising_start={start} must be before denoising_end={end}: this call would run no step")


def per_image(tensor: torch.Tensor, num_images_per_prompt: int) -> torch.Tensor:
    """Each row repeated for every image made from it (rows of one prompt stay together)."""
    return tensor.repeat_interleave(num_images_per_prompt, dim=0)


def for_guidance(tensor: torch.Tensor, guided: bool) -> torch.Tensor:
    """A tensor the unconditional and the conditional half of a guided batch both read."""
    return torch.cat([tensor, tensor]) if guided else tensor


def broadcast(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """One picture (or mask) for every prompt: a batch of 1 repeated to ``batch``."""
    return tensor.expand(batch, *tensor.shape[1:]) if tensor.shape[0] == 1 and batch > 1 else tensor
