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
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import torch

from .. import limits
from ..image.processor import OUTPUT_TYPES
from . import checks
from .base import DiffusionPipeline, ImagePipelineOutput
from .loop import denoise


@dataclasses.dataclass(frozen=True)
class Request:
    """The keywords every generation shares, under the reference's names."""

    height: int = 512
    width: int = 512
    num_inference_steps: int = 100
    guidance_scale: float = 4.0
    num_images_per_prompt: int = 1
    generator: Any = None
    latents: torch.Tensor | None = None
    output_type: str | None = "pil"
    return_dict: bool = True
    callback_on_step_end: Callable | None = None
    callback_on_step_end_tensor_inputs: Sequence[str] | None = None
    callback: Callable | None = None
    callback_steps: int = 1

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

    def check(self, pipeline: "GenerationPipeline") -> None:
        checks.one_of("output_type", self.output_type or "pil", OUTPUT_TYPES)
        checks.positive_int("num_inference_steps", self.num_inference_steps)
        checks.positive_int("num_images_per_prompt", self.num_images_per_prompt)
        checks.number("guidance_scale", self.guidance_scale)
        checks.size(self.height, self.width, pipeline.size_multiple())
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
    rewrites the latents after every scheduler step, ``finish`` once at the end.
    """

    latents: torch.Tensor
    timesteps: torch.Tensor
    tensors: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    after_step: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor] | None = None
    finish: Callable[[torch.Tensor], torch.Tensor] | None = None


class GenerationPipeline(DiffusionPipeline):
    """A pipeline on the shared body. Families fill in the hooks below; tasks come from ``tasks``."""

    # ------------------------------------------------------------------ what a family supplies

    def size_multiple(self) -> int:
        """Heights and widths must be multiples of this."""
        raise NotImplementedError

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

    # ------------------------------------------------------------------ the body

    @torch.no_grad()
    def generate(self, *, conditioning: dict[str, Any], task: Any, request: Request):
        # 1. everything that can be wrong is found before any model runs
        request.check(self)
        batch = self.check_conditioning(conditioning, request)
        limits.check_request(pictures=batch * request.num_images_per_prompt, height=request.height,
                             width=request.width, dtype_size=self.model_dtype.itemsize)
        checks.generators(request.generator, batch * request.num_images_per_prompt)
        task.check(self, request, batch)
        callback = request.step_callback(self.scheduler)

        # 2. condition
        self._guidance_scale = request.guidance_scale
        guided = self.do_classifier_free_guidance
        tensors = self.condition(conditioning, request, guided)

        # 3. starting latents
        self.scheduler.set_timesteps(request.num_inference_steps, device=self._execution_device)
        start = task.start(self, request, batch)
        tensors.update({name: for_guidance(value, guided) for name, value in start.tensors.items()})

        # 4. denoise
        latents = denoise(self, latents=start.latents, timesteps=start.timesteps, predict=self.predict,
                          guidance_scale=request.guidance_scale, guided=guided, tensors=tensors,
                          generator=request.generator, after_step=start.after_step, callback_on_step_end=callback,
                          callback_on_step_end_tensor_inputs=request.callback_on_step_end_tensor_inputs
                          or ["latents"])
        if start.finish is not None:
            latents = start.finish(latents)

        # 5. decode
        output_type = request.output_type or "pil"
        images = latents if output_type == "latent" else self.decode(latents, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if request.return_dict else (images,)

    @property
    def model_dtype(self) -> torch.dtype:
        """The dtype the denoiser computes in; conditioning and latents are cast to it."""
        return self.unet.dtype


def per_image(tensor: torch.Tensor, num_images_per_prompt: int) -> torch.Tensor:
    """Each row repeated for every image made from it (rows of one prompt stay together)."""
    return tensor.repeat_interleave(num_images_per_prompt, dim=0)


def for_guidance(tensor: torch.Tensor, guided: bool) -> torch.Tensor:
    """A tensor the unconditional and the conditional half of a guided batch both read."""
    return torch.cat([tensor, tensor]) if guided else tensor


def broadcast(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """One picture (or mask) for every prompt: a batch of 1 repeated to ``batch``."""
    return tensor.expand(batch, *tensor.shape[1:]) if tensor.shape[0] == 1 and batch > 1 else tensor
