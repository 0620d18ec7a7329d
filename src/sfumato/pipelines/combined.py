"""Prior + decoder in one call: the combined pipelines of the two-stage Kandinsky families.

A combined pipeline holds the prior's components under ``prior_*`` names and
the decoder's under their own, builds one pipeline of each over them, runs
the prior to get image embeddings and passes them, with the pictures, to the
decoder. Every decoder argument is checked before the prior runs.

Beyond the reference, the prompt may come as the prior's text encoder outputs
(``prior_prompt_embeds``, ``prior_text_encoder_hidden_states``, ``prior_text_mask``
and their ``prior_negative_`` triple; for Kandinsky 2.1 also the decoder's
``prompt_embeds`` / ``text_encoder_hidden_states`` and their ``negative_`` pair),
as ``sfumato.prompts.weighted_embeddings`` makes them.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from . import checks
from .base import DiffusionPipeline

PRIOR = "prior_"


class PriorDecoderPipeline(DiffusionPipeline):
    """Shared body: the two sub-pipelines and the plumbing between them."""

    _load_connected_pipes = True
    _exclude_from_cpu_offload = ["prior_prior"]
    prior_class: type
    decoder_class: type
    # the decoder reads the prompt too (Kandinsky 2.1), one per image embedding
    decoder_takes_prompt = False

    def _assemble(self, components: Mapping[str, Any]) -> None:
        components = {k: v for k, v in components.items() if k not in ("self", "__class__")}
        self.register_modules(**components)
        self.prior_pipe = self.prior_class(**{k[len(PRIOR):]: v for k, v in components.items() if k.startswith(PRIOR)})
        self.decoder_pipe = self.decoder_class(**{k: v for k, v in components.items() if not k.startswith(PRIOR)})

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        # pipe.scheduler = ... must reach the sub-pipeline that uses it
        if name.startswith(PRIOR) and "prior_pipe" in self.__dict__ and name != "prior_pipe":
            setattr(self.prior_pipe, name[len(PRIOR):], value)
        elif "decoder_pipe" in self.__dict__ and name in self.decoder_pipe.components:
            setattr(self.decoder_pipe, name, value)

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        super().set_progress_bar_config(**kwargs)
        self.prior_pipe.set_progress_bar_config(**kwargs)
        self.decoder_pipe.set_progress_bar_config(**kwargs)

    def enable_model_cpu_offload(self, gpu_id=None, device=None) -> None:
        self.prior_pipe.enable_model_cpu_offload(gpu_id=gpu_id, device=device)
        self.decoder_pipe.enable_model_cpu_offload(gpu_id=gpu_id, device=device)

    def maybe_free_model_hooks(self) -> None:
        self.prior_pipe.maybe_free_model_hooks()
        self.decoder_pipe.maybe_free_model_hooks()

    @torch.no_grad()
    def prior_then_decoder(self, call: Mapping[str, Any]):
        """Run the prior, then the decoder with one picture (and prompt) per image embedding.

        ``call`` is the public ``__call__``'s ``locals()``: the prior's keywords
        (``prior_*``, the prompts, ``latents``) go to the prior, the rest to the decoder.
        """
        call = {k: v for k, v in call.items() if k not in ("self", "__class__")}
        prompt, n, generator = call["prompt"], call["num_images_per_prompt"], call.get("generator")
        decoder_kwargs = {k: v for k, v in call.items() if k not in _PRIOR_KEYWORDS and k not in _PRIOR_TEXT}
        # the prior's text encoder outputs, given instead of the prompt (prior_prompt_embeds, ...)
        prior_text = {k[len(PRIOR):]: call[k] for k in _PRIOR_TEXT if call.get(k) is not None}
        if prompt is None and "prompt_embeds" in prior_text:
            count = len(checks.as_batch("prior_prompt_embeds", prior_text["prompt_embeds"], 2))
        else:
            count = len(checks.prompts("prompt", prompt))
        checks.positive_int("num_images_per_prompt", n)
        for name in _PICTURES:
            if name in decoder_kwargs:
                decoder_kwargs[name] = per_embedding(name, decoder_kwargs[name], count, n)
        if self.decoder_takes_prompt:
            if decoder_kwargs.get("prompt_embeds") is not None or prompt is None:
                # the decoder's own text encoder outputs, one row per prompt: one per image embedding
                for name in _DECODER_TEXT:
                    value = decoder_kwargs.get(name)
                    if isinstance(value, torch.Tensor) and value.ndim >= 2 and value.shape[0] == count:
                        decoder_kwargs[name] = value.repeat_interleave(n, dim=0)
                decoder_kwargs["prompt"] = None
            else:
                prompts = [prompt] if isinstance(prompt, str) else list(prompt)
                decoder_kwargs["prompt"] = [p for p in prompts for _ in range(n)]
        # every decoder argument is checked, on stand-in embeddings, before the prior runs
        stand_in = torch.zeros(count * n, self.prior_pipe.prior.config.embedding_dim)
        with self.decoder_pipe.checking_only():
            self.decoder_pipe(image_embeds=stand_in, negative_image_embeds=stand_in, **decoder_kwargs)
        callbacks = {k[len(PRIOR):]: call[k] for k in _PRIOR_CALLBACKS if k in call}
        embeds, negative = self.prior_pipe(prompt=prompt, negative_prompt=call["negative_prompt"],
                                           num_images_per_prompt=n, num_inference_steps=call["prior_num_inference_steps"],
                                           generator=generator, latents=call["latents"],
                                           guidance_scale=call["prior_guidance_scale"], output_type="pt",
                                           return_dict=False, **callbacks, **prior_text)
        return self.decoder_pipe(image_embeds=embeds, negative_image_embeds=negative, **decoder_kwargs)


_PRIOR_CALLBACKS = ("prior_callback_on_step_end", "prior_callback_on_step_end_tensor_inputs")
_PRIOR_KEYWORDS = {"prompt", "negative_prompt", "num_images_per_prompt", "prior_guidance_scale",
                   "prior_num_inference_steps", "latents", *_PRIOR_CALLBACKS}
_PICTURES = ("image", "mask_image")
# beyond the reference: the prior's text encoder outputs (see ImageEmbeddingPrior.__call__), and the 2.1
# decoder's (see KandinskyDecoder)
_PRIOR_TEXT = ("prior_prompt_embeds", "prior_text_encoder_hidden_states", "prior_text_mask",
               "prior_negative_prompt_embeds", "prior_negative_text_encoder_hidden_states", "prior_negative_text_mask")
_DECODER_TEXT = ("prompt_embeds", "text_encoder_hidden_states", "negative_prompt_embeds",
                 "negative_text_encoder_hidden_states")


def per_embedding(name: str, pictures: Any, prompts: int, num_images_per_prompt: int) -> Any:
    """Give every image embedding its picture: one per prompt, repeated for each image of that prompt."""
    import numpy as np
    import PIL.Image

    if pictures is None:
        raise ValueError(f"{name} is required, got None")
    if not isinstance(pictures, (torch.Tensor, np.ndarray, PIL.Image.Image, list, tuple)):
        raise TypeError(f"{name} must be a PIL image, a numpy array, a torch tensor or a list of them, "
                        f"got {type(pictures).__name__}")
    if isinstance(pictures, (list, tuple)) and not pictures:
        raise ValueError(f"{name} is an empty list; pass at least one picture")
    if isinstance(pictures, (torch.Tensor, np.ndarray)) and not (pictures.ndim == 4 and pictures.shape[0] > 1):
        return pictures  # one picture for everything: the decoder broadcasts it
    if isinstance(pictures, PIL.Image.Image):
        return pictures
    items = list(pictures) if isinstance(pictures, (list, tuple)) else [p[None] for p in pictures]
    if len(items) == 1:
        return items
    if len(items) != prompts:
        raise ValueError(f"{name} has {len(items)} pictures, but there are {prompts} prompts; "
                         f"pass one picture or one per prompt")
    repeated = [item for item in items for _ in range(num_images_per_prompt)]
    if isinstance(repeated[0], torch.Tensor):
        return torch.cat(repeated)
    if isinstance(repeated[0], np.ndarray) and repeated[0].ndim == 4:
        return np.concatenate(repeated)
    return repeated
