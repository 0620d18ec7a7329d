"""The Kandinsky 2.1 / 2.2 prior: text (and pictures) -> CLIP image embeddings for a decoder.

``ImageEmbeddingPrior`` samples an image embedding from noise, guided by the
prompt's CLIP text embedding, or (emb2emb) starts from a picture's embedding
noised to ``strength``; ``interpolate`` mixes prompts and pictures by weighted
sums of embeddings. The families' public prior classes state only their
``__call__``.

Beyond the reference, ``__call__`` takes the text encoder's outputs instead of
the prompt (``prompt_embeds``, ``text_encoder_hidden_states``, ``text_mask`` and
their ``negative_`` triple), e.g. weighted by ``sfumato.prompts.weighted_embeddings``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..checkpoint.derived import cached
from ..outputs import BaseOutput
from .. import limits
from . import checks
from .base import DiffusionPipeline
from .text import encode_with_negatives, tokenize
from .loop import denoise, noise_latents, noised_latents, timesteps_for_strength

logger = logging.getLogger("sfumato")


@dataclass
class KandinskyPriorPipelineOutput(BaseOutput):
    """``image_embeds`` for the prompt and ``negative_image_embeds`` for the decoder's guidance."""

    image_embeds: torch.Tensor | np.ndarray
    negative_image_embeds: torch.Tensor | np.ndarray


TEXT_EMBEDDING_KEYWORDS = ("prompt_embeds", "text_encoder_hidden_states", "text_mask", "negative_prompt_embeds",
                           "negative_text_encoder_hidden_states", "negative_text_mask")


class EncodedPrompts:
    """Text encoder outputs standing in for a list of prompts: a row each of the pooled embedding, the token
    states and the mask. Joins and repeats as a list does, so the prior treats both alike."""

    def __init__(self, embeds: torch.Tensor, states: torch.Tensor, mask: torch.Tensor):
        self.embeds, self.states, self.mask = embeds, states, mask

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def __add__(self, other: "EncodedPrompts") -> "EncodedPrompts":
        return EncodedPrompts(*(torch.cat([a, b]) for a, b in zip(self.tensors, other.tensors)))

    def __mul__(self, times: int) -> "EncodedPrompts":
        return EncodedPrompts(*(torch.cat([t] * times) for t in self.tensors))

    __rmul__ = __mul__

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.embeds, self.states, self.mask

    def on(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (self.embeds.to(device=device, dtype=dtype), self.states.to(device=device, dtype=dtype),
                self.mask.to(device=device).bool())

    @classmethod
    def checked(cls, values: dict[str, Any], config) -> tuple["EncodedPrompts | None", "EncodedPrompts | None"]:
        """The positive and negative triples of ``values`` (keywords of ``TEXT_EMBEDDING_KEYWORDS``), checked
        against the prior's config; None for a triple not given."""
        out = []
        for prefix in ("", "negative_"):
            names = [f"{prefix}prompt_embeds", f"{prefix}text_encoder_hidden_states", f"{prefix}text_mask"]
            given = [values.get(name) for name in names]
            if all(value is None for value in given):
                out.append(None)
                continue
            missing = [name for name, value in zip(names, given) if value is None]
            if missing:
                raise ValueError(f"{', '.join(missing)} missing: {', '.join(names)} come together (the text "
                                 f"encoder's pooled embedding, token states and attention mask)")
            embeds = checks.as_batch(names[0], given[0], 2)
            states = checks.as_batch(names[1], given[1], 3)
            mask = checks.as_batch(names[2], given[2], 2)
            tokens = config.num_embeddings
            width = config.get("embedding_proj_dim") or config.embedding_dim
            if embeds.shape[1] != width:
                raise ValueError(f"{names[0]} has width {embeds.shape[1]}, but this prior reads {width} (its "
                                 f"embedding_proj_dim or embedding_dim)")
            if states.shape[:2] != (embeds.shape[0], tokens):
                raise ValueError(f"{names[1]} has shape {tuple(states.shape)}, but this prior needs "
                                 f"({embeds.shape[0]}, {tokens}, width): one row per {names[0]} row and "
                                 f"{tokens} tokens (its num_embeddings)")
            if tuple(mask.shape) != tuple(states.shape[:2]):
                raise ValueError(f"{names[2]} has shape {tuple(mask.shape)}, but {names[1]} needs "
                                 f"{tuple(states.shape[:2])}")
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError(f"{names[2]} must hold only 0 (padding) and 1 (token to read)")
            out.append(cls(embeds, states, mask))
        if out[0] is not None and out[1] is not None and len(out[1]) not in (1, len(out[0])):
            raise ValueError(f"negative_prompt_embeds has {len(out[1])} rows, but prompt_embeds has {len(out[0])}; "
                             f"pass one or one per prompt")
        return out[0], out[1]


class ImageEmbeddingPrior(DiffusionPipeline):
    """Prompt -> CLIP image embeddings (``image_embeds``, ``negative_image_embeds``)."""

    _exclude_from_cpu_offload = ["prior"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "text_encoder_hidden_states", "text_mask"]

    def __init__(self, prior, image_encoder, text_encoder, tokenizer, scheduler, image_processor):
        super().__init__()
        self.register_modules(prior=prior, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                              image_encoder=image_encoder, image_processor=image_processor)

    # ------------------------------------------------------------------ conditioning

    def encode_prompt(self, prompt: list[str], device, num_images_per_prompt: int, guided: bool,
                      negative_prompt: list[str] | None = None):
        """CLIP text embedding, hidden states and mask per image; unconditional rows first when guided."""
        if not isinstance(negative_prompt, EncodedPrompts):
            negative_prompt = checks.negative_prompts(negative_prompt, len(prompt))
        return encode_with_negatives(lambda texts: self._encode_texts(texts, device), prompt, negative_prompt, guided,
                                     num_images_per_prompt)

    def _encode_texts(self, texts, device):
        if isinstance(texts, EncodedPrompts):
            return texts.on(device, self.prior.dtype)
        ids, mask = tokenize(self.tokenizer, texts, self.tokenizer.model_max_length, device)
        output = self.text_encoder(ids)
        return output.text_embeds, output.last_hidden_state, mask.bool()

    def encode_image(self, image, device, num_images_per_prompt: int = 1) -> torch.Tensor:
        """CLIP image embedding of PIL image(s) or of a pixel tensor already prepared for CLIP."""
        if not isinstance(image, torch.Tensor):
            image = self.image_processor(image, return_tensors="pt").pixel_values
        image = image.to(device=device, dtype=self.image_encoder.dtype)
        return self.image_encoder(image)["image_embeds"].repeat_interleave(num_images_per_prompt, dim=0)

    def get_zero_embed(self, batch_size: int = 1, device=None) -> torch.Tensor:
        """The embedding of an all-zero picture: the decoder's default negative embedding.

        It depends on the image encoder's weights alone, so for an encoder loaded from files and unchanged since it
        is computed once per machine and kept (:mod:`sfumato.checkpoint.derived`): the same numbers, without a
        pass of the encoder at every call.
        """
        device = device or self.device
        encoder = self.image_encoder

        def embed() -> torch.Tensor:
            size = encoder.config.image_size
            zeros = torch.zeros(1, 3, size, size, device=device, dtype=encoder.dtype)
            return encoder(zeros)["image_embeds"]

        return cached(encoder, "zero-picture image_embeds", embed).to(device).repeat(batch_size, 1)

    # ------------------------------------------------------------------ sampling

    def check_inputs(self, *, prompt, negative_prompt, num_images_per_prompt, num_inference_steps, generator,
                     guidance_scale, output_type, callback_on_step_end=None, callback_on_step_end_tensor_inputs=None,
                     latents=None, strength=None, text_embeddings=None):
        """Check every argument before a model runs; returns the prompts to encode (negatives appended when
        given: they get their own embeddings), their negatives and the latents.

        ``text_embeddings``: the ``__call__``'s precomputed text keywords (see ``EncodedPrompts.checked``);
        given ones stand in for the prompts.
        """
        encoded, encoded_negative = EncodedPrompts.checked(text_embeddings or {}, self.prior.config)
        if encoded is not None and prompt is not None:
            raise ValueError("pass prompt or prompt_embeds (with text_encoder_hidden_states and text_mask), not both")
        if encoded_negative is not None and negative_prompt is not None:
            raise ValueError("pass negative_prompt or negative_prompt_embeds (with its hidden states and mask), "
                             "not both")
        if encoded_negative is not None and encoded is None:
            raise ValueError("negative_prompt_embeds goes with prompt_embeds; with a prompt, pass negative_prompt")
        prompt = encoded if encoded is not None else checks.prompts("prompt", prompt)
        if encoded_negative is not None:
            negative_prompt = encoded_negative
        elif negative_prompt is not None:
            if encoded is not None:
                raise ValueError("negative_prompt as text with prompt_embeds: pass negative_prompt_embeds (with "
                                 "negative_text_encoder_hidden_states and negative_text_mask) instead")
            negative_prompt = checks.prompts("negative_prompt", negative_prompt)
        checks.positive_int("num_inference_steps", num_inference_steps)
        checks.steps_fit(num_inference_steps, self.scheduler)
        checks.positive_int("num_images_per_prompt", num_images_per_prompt)
        limits.check_count(len(prompt) * num_images_per_prompt)
        checks.number("guidance_scale", guidance_scale)
        checks.one_of("output_type", output_type, ["pt", "np"])
        if strength is not None:
            checks.strength(strength, num_inference_steps)
        checks.callback_names(self, callback_on_step_end_tensor_inputs)
        checks.callable_or_none("callback_on_step_end", callback_on_step_end)
        if negative_prompt is not None:
            if len(negative_prompt) not in (1, len(prompt)):
                raise ValueError(f"negative_prompt has {len(negative_prompt)} entries, but prompt has {len(prompt)}")
            # the negative prompts get their own embeddings (the decoder's negative_image_embeds)
            negative_prompt = negative_prompt * (len(prompt) // len(negative_prompt))
            prompt, negative_prompt = prompt + negative_prompt, 2 * negative_prompt
        batch = len(prompt) * num_images_per_prompt
        checks.generators(generator, batch)
        if latents is not None:
            latents = checks.as_batch("latents", latents, 2)
            if tuple(latents.shape) != (batch, self.prior.config.embedding_dim):
                raise ValueError(f"latents has shape {tuple(latents.shape)}, but this call needs "
                                 f"{(batch, self.prior.config.embedding_dim)}")
        return prompt, negative_prompt, latents

    def sample_embeds(self, *, prompt, negative_prompt, num_images_per_prompt, num_inference_steps, generator,
                      guidance_scale, output_type, return_dict, callback_on_step_end=None,
                      callback_on_step_end_tensor_inputs=None, latents=None, start_embeds=None, strength=None,
                      text_embeddings=None):
        """Run the prior: from noise, or (``start_embeds``) from embeddings noised to ``strength``."""
        prompt, negative_prompt, latents = self.check_inputs(
            prompt=prompt, negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt,
            num_inference_steps=num_inference_steps, generator=generator, guidance_scale=guidance_scale,
            output_type=output_type, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, latents=latents, strength=strength,
            text_embeddings=text_embeddings)
        batch = len(prompt) * num_images_per_prompt

        device = self._execution_device
        self._guidance_scale = guidance_scale
        guided = self.do_classifier_free_guidance
        embeds, states, mask = self.encode_prompt(prompt=prompt, device=device, guided=guided,
                                                  num_images_per_prompt=num_images_per_prompt,
                                                  negative_prompt=negative_prompt)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        if start_embeds is None:
            latents = noise_latents(shape=(batch, self.prior.config.embedding_dim), scheduler=self.scheduler,
                                    generator=generator, device=device, dtype=embeds.dtype, latents=latents)
        else:
            timesteps = timesteps_for_strength(self.scheduler, num_inference_steps, strength)
            start = start_embeds.to(device=device, dtype=embeds.dtype)
            if start.shape[0] != batch:
                if batch % start.shape[0]:
                    raise ValueError(f"image has {start.shape[0]} embeddings, which cannot be spread over "
                                     f"{batch} prompts x images")
                start = torch.cat([start] * (batch // start.shape[0]))
            latents = noised_latents(clean=start, scheduler=self.scheduler, timestep=timesteps[:1],
                                     generator=generator)

        def predict(model_input, t, tensors):
            return self.prior(model_input, timestep=t, proj_embedding=tensors["prompt_embeds"],
                              encoder_hidden_states=tensors["text_encoder_hidden_states"],
                              attention_mask=tensors["text_mask"]).predicted_image_embedding

        tensors = {"prompt_embeds": embeds, "text_encoder_hidden_states": states, "text_mask": mask}
        latents = denoise(self, latents=latents, timesteps=timesteps, predict=predict, guidance_scale=guidance_scale,
                          guided=guided, tensors=tensors, generator=generator,
                          callback_on_step_end=callback_on_step_end,
                          callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs or ["latents"])
        image_embeds = self.prior.post_process_latents(latents)
        if negative_prompt is None:
            negative_embeds = self.get_zero_embed(image_embeds.shape[0], device=image_embeds.device)
        else:
            image_embeds, negative_embeds = image_embeds.chunk(2)
        self.maybe_free_model_hooks()
        if output_type == "np":
            image_embeds, negative_embeds = image_embeds.cpu().numpy(), negative_embeds.cpu().numpy()
        if not return_dict:
            return image_embeds, negative_embeds
        return KandinskyPriorPipelineOutput(image_embeds=image_embeds, negative_image_embeds=negative_embeds)

    @torch.no_grad()
    def __call__(self, prompt=None, negative_prompt=None, num_images_per_prompt: int = 1,
                 num_inference_steps: int = 25, generator=None, latents=None, guidance_scale: float = 4.0,
                 output_type: str | None = "pt", return_dict: bool = True, callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], *, prompt_embeds=None,
                 text_encoder_hidden_states=None, text_mask=None, negative_prompt_embeds=None,
                 negative_text_encoder_hidden_states=None, negative_text_mask=None):
        """Prompt (or its text encoder outputs: ``prompt_embeds`` (batch, embedding_dim), ``text_encoder_hidden_states``
        (batch, tokens, width) and ``text_mask`` (batch, tokens), and their ``negative_`` triple) -> image embeddings.

        As with ``negative_prompt``, ``negative_prompt_embeds`` get their own image embeddings (the
        ``negative_image_embeds``); without them the unconditional text is "" and the negative image
        embedding is the zero picture's.
        """
        text_embeddings = {name: value for name, value in locals().items() if name in TEXT_EMBEDDING_KEYWORDS}
        return self.sample_embeds(text_embeddings=text_embeddings, prompt=prompt, negative_prompt=negative_prompt,
                                  num_images_per_prompt=num_images_per_prompt,
                                  num_inference_steps=num_inference_steps, generator=generator,
                                  guidance_scale=guidance_scale, output_type=output_type, return_dict=return_dict,
                                  callback_on_step_end=callback_on_step_end,
                                  callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                                  latents=latents)

    @torch.no_grad()
    def interpolate(self, images_and_prompts: Sequence[Any], weights: Sequence[float],
                    num_images_per_prompt: int = 1, num_inference_steps: int = 25, generator=None, latents=None,
                    negative_prior_prompt: str | None = None, negative_prompt: str = "",
                    guidance_scale: float = 4.0, device=None) -> KandinskyPriorPipelineOutput:
        """A weighted sum of the embeddings of prompts (run through the prior) and pictures (CLIP)."""
        import PIL.Image

        if len(images_and_prompts) != len(weights):
            raise ValueError(f"images_and_prompts has {len(images_and_prompts)} items but weights has "
                             f"{len(weights)}; give one weight per item")
        if not images_and_prompts:
            raise ValueError("images_and_prompts must not be empty")
        for index, weight in enumerate(weights):
            checks.number(f"weights[{index}]", weight)
        for index, item in enumerate(images_and_prompts):
            if isinstance(item, torch.Tensor):
                checks.finite(f"images_and_prompts[{index}]", item)
            elif not isinstance(item, (str, PIL.Image.Image)):
                raise TypeError(f"images_and_prompts[{index}] must be a str, PIL.Image.Image or torch.Tensor, "
                                f"got {type(item).__name__}")
        device = device or self.device
        weighted = []
        for item, weight in zip(images_and_prompts, weights):
            if isinstance(item, str):
                embeds = self(item, num_inference_steps=num_inference_steps,
                              num_images_per_prompt=num_images_per_prompt, generator=generator, latents=latents,
                              negative_prompt=negative_prior_prompt, guidance_scale=guidance_scale).image_embeds
            elif isinstance(item, (PIL.Image.Image, torch.Tensor)):
                embeds = self.encode_image(item, device=device).repeat(num_images_per_prompt, 1)
            else:
                raise ValueError(f"images_and_prompts items must be str, PIL.Image.Image or torch.Tensor, "
                                 f"got {type(item).__name__}")
            weighted.append(embeds * weight)
        mixed = torch.stack(weighted).sum(dim=0)
        baseline = self(negative_prompt, num_inference_steps=num_inference_steps,
                        num_images_per_prompt=num_images_per_prompt, generator=generator, latents=latents,
                        negative_prompt=negative_prior_prompt, guidance_scale=guidance_scale)
        negative = baseline.negative_image_embeds if negative_prompt == "" else baseline.image_embeds
        return KandinskyPriorPipelineOutput(image_embeds=mixed, negative_image_embeds=negative)

    def start_embeds(self, image, num_images_per_prompt: int) -> torch.Tensor:
        """Where emb2emb starts: the pictures' CLIP embeddings (or embeddings given as an (N, D) tensor)."""
        import PIL.Image

        images = image if isinstance(image, list) else [image]
        if not images or not all(isinstance(i, (torch.Tensor, PIL.Image.Image)) for i in images):
            raise TypeError(f"image must be a PIL image, a tensor (pixels or embeddings) or a non-empty list of "
                            f"them, got {type(image).__name__} {image!r:.80}")
        for index, item in enumerate(images):
            if isinstance(item, torch.Tensor):
                checks.finite(f"image[{index}]", item)
        if isinstance(images[0], torch.Tensor):
            images = torch.cat(images, dim=0)
            if images.ndim == 2:  # already image embeddings
                return images.repeat_interleave(num_images_per_prompt, dim=0)
            if images.ndim != 4:
                raise ValueError(f"image as a tensor must be embeddings (N, D) or pixels (N, C, H, W), "
                                 f"got shape {tuple(images.shape)}")
        return self.encode_image(images, device=self._execution_device, num_images_per_prompt=num_images_per_prompt)
