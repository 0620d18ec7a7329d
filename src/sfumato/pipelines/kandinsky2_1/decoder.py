"""Kandinsky 2.1 decoders: prompt + image embeddings -> pictures, through a UNet and the MoVQ.

``KandinskyDecoder`` is the family. Unlike 2.2 it reads the prompt too: a
multilingual CLIP (XLM-RoBERTa + projection) gives a pooled text embedding and
hidden states, which the UNet takes beside the image embedding. The three
public pipelines differ only in their task and their inputs.

Beyond the reference, they take the text encoder's outputs instead of the
prompt (``prompt_embeds``: pooled, ``text_encoder_hidden_states``: tokens, and
their ``negative_`` pair), e.g. weighted by ``sfumato.prompts.weighted_embeddings``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ...schedulers import DDPMScheduler
from .. import checks
from ..generation import Request, per_image
from ..loop import noised_latents
from ..movq import MoVQLatents
from ..tasks import ImageToImage, Inpaint, TextToImage
from ..text import tokenize

# the reference tokenizes for the multilingual CLIP at this fixed length
TEXT_LENGTH = 77


class KandinskyDecoder(MoVQLatents):
    """Shared body of the 2.1 decoder pipelines: text encoder, tokenizer, UNet, scheduler and MoVQ."""

    model_cpu_offload_seq = "text_encoder->unet->movq"

    def __init__(self, text_encoder, tokenizer, unet, scheduler, movq):
        super().__init__()
        self.register_modules(text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                              movq=movq)

    def check_conditioning(self, conditioning: dict[str, Any], request: Request) -> int:
        embeds, negative = checks.embeds_pair(conditioning["image_embeds"], conditioning["negative_image_embeds"])
        checks.embeds_width("image_embeds", embeds, self.unet.config.cross_attention_dim)
        given, given_negative = _encoded_texts(conditioning, self.unet.config.cross_attention_dim)
        if given is not None:
            if conditioning["prompt"] is not None:
                raise ValueError("pass prompt or prompt_embeds (with text_encoder_hidden_states), not both")
            if conditioning.get("negative_prompt") is not None and given_negative is not None:
                raise ValueError("pass negative_prompt or negative_prompt_embeds (with "
                                 "negative_text_encoder_hidden_states), not both")
            if given_negative is None and given[1].shape[1] != TEXT_LENGTH:
                raise ValueError(f"text_encoder_hidden_states has {given[1].shape[1]} tokens, so the negative prompt "
                                 f"({TEXT_LENGTH} tokens when encoded here) would not match: pass "
                                 f"negative_prompt_embeds and negative_text_encoder_hidden_states too")
            count = given[0].shape[0]
            if count == 1 and embeds.shape[0] > 1:  # one prompt for every embedding
                given = tuple(torch.cat([t] * embeds.shape[0]) for t in given)
                count = embeds.shape[0]
            prompts = None
        else:
            if given_negative is not None:
                raise ValueError("negative_prompt_embeds goes with prompt_embeds; with a prompt, pass negative_prompt")
            prompts = checks.prompts("prompt", conditioning["prompt"])
            if len(prompts) == 1 and embeds.shape[0] > 1:
                prompts = prompts * embeds.shape[0]  # one prompt for every embedding
            count = len(prompts)
        if embeds.shape[0] != count:
            raise ValueError(f"image_embeds has {embeds.shape[0]} rows, but there are {count} prompts; "
                             f"pass one image embedding per prompt")
        if given_negative is not None:
            if given_negative[0].shape[0] == 1 and count > 1:
                given_negative = tuple(torch.cat([t] * count) for t in given_negative)
            if given_negative[0].shape[0] != count or given_negative[1].shape[1:] != given[1].shape[1:]:
                raise ValueError(f"negative_text_encoder_hidden_states has shape {tuple(given_negative[1].shape)}, "
                                 f"but text_encoder_hidden_states (one row per prompt) has {tuple(given[1].shape)}")
            negatives = None
        else:
            negatives = checks.negative_prompts(conditioning.get("negative_prompt"), count)
        conditioning.update(prompt=prompts, negative_prompt=negatives, image_embeds=embeds,
                            negative_image_embeds=negative, encoded=given, negative_encoded=given_negative)
        return count

    def condition(self, conditioning: dict[str, Any], request: Request, guided: bool) -> dict[str, torch.Tensor]:
        n, device, dtype = request.num_images_per_prompt, self._execution_device, self.model_dtype

        def encode(texts, given):
            return tuple(t.to(device) for t in given) if given is not None else self._encode_texts(texts)

        # as encode_with_negatives does: the prompts, then the negatives (first when guided), repeated per image
        prompt_embeds, hidden_states = encode(conditioning["prompt"], conditioning["encoded"])
        if guided:
            negative_embeds, negative_states = encode(conditioning["negative_prompt"], conditioning["negative_encoded"])
            prompt_embeds = torch.cat([negative_embeds, prompt_embeds])
            hidden_states = torch.cat([negative_states, hidden_states])
        prompt_embeds, hidden_states = (x.repeat_interleave(n, dim=0) for x in (prompt_embeds, hidden_states))
        embeds = per_image(conditioning["image_embeds"], n).to(device=device, dtype=dtype)
        negative = per_image(conditioning["negative_image_embeds"], n).to(device=device, dtype=dtype)
        return {"prompt_embeds": prompt_embeds.to(dtype), "text_encoder_hidden_states": hidden_states.to(dtype),
                "image_embeds": torch.cat([negative, embeds]) if guided else embeds}

    def _encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = tokenize(self.tokenizer, texts, TEXT_LENGTH, self._execution_device)
        return self.text_encoder(input_ids=ids, attention_mask=mask)

    def predict(self, model_input: torch.Tensor, t: torch.Tensor, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        added = {"text_embeds": tensors["prompt_embeds"], "image_embeds": tensors["image_embeds"]}
        return self.unet(sample=self.with_inpaint_inputs(model_input, tensors), timestep=t,
                         encoder_hidden_states=tensors["text_encoder_hidden_states"], added_cond_kwargs=added,
                         return_dict=False)[0]

    def noise_pictures(self, clean: torch.Tensor, *, timesteps: torch.Tensor, strength: float,
                       generator: Any) -> torch.Tensor:
        """2.1 noises the picture on a fixed linear schedule (whatever the scheduler), to ``1000 * strength - 2``.

        Kept for parity with the reference: its image-to-image starts there.
        """
        start = max(int(self.scheduler.config.num_train_timesteps * strength) - 2, 0)  # the reference wraps below 0
        clean = clean * self.scheduler.init_noise_sigma
        return noised_latents(clean=clean, scheduler=_LINEAR_SCHEDULE, timestep=torch.tensor(start),
                              generator=generator)


def _encoded_texts(conditioning: dict[str, Any], width: int):
    """The given text encoder outputs ``(prompt_embeds, text_encoder_hidden_states)`` and their negatives, checked;
    None for a pair not given."""
    out = []
    for prefix in ("", "negative_"):
        names = (f"{prefix}prompt_embeds", f"{prefix}text_encoder_hidden_states")
        given = [conditioning.get(name) for name in names]
        if given[0] is None and given[1] is None:
            out.append(None)
            continue
        if given[0] is None or given[1] is None:
            raise ValueError(f"{names[0]} and {names[1]} come together (the text encoder's pooled embedding and "
                             f"its token states); got only {names[0] if given[1] is None else names[1]}")
        embeds, states = checks.as_batch(names[0], given[0], 2), checks.as_batch(names[1], given[1], 3)
        if embeds.shape[1] != width:
            raise ValueError(f"{names[0]} has width {embeds.shape[1]}, but this UNet reads {width} (its "
                             f"cross_attention_dim)")
        if states.shape[0] != embeds.shape[0]:
            raise ValueError(f"{names[1]} has {states.shape[0]} rows, but {names[0]} has {embeds.shape[0]}")
        out.append((embeds, states))
    return out[0], out[1]


_TEXT_KEYWORDS = ("prompt_embeds", "text_encoder_hidden_states", "negative_prompt_embeds",
                  "negative_text_encoder_hidden_states")


def _conditioning(call_locals: dict[str, Any]) -> dict[str, Any]:
    """What a 2.1 decoder's ``__call__`` says to draw: prompts (or their encoder outputs) and image embeddings."""
    return {name: call_locals[name] for name in ("prompt", "negative_prompt", "image_embeds",
                                                  "negative_image_embeds") + _TEXT_KEYWORDS}


_LINEAR_SCHEDULE = DDPMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")


class KandinskyPipeline(KandinskyDecoder):
    """Text-to-image decoder of Kandinsky 2.1: prompt + image embeddings (from the prior) -> pictures."""

    def __call__(self, prompt=None, image_embeds=None, negative_image_embeds=None, negative_prompt=None,
                 height: int = 512, width: int = 512, num_inference_steps: int = 100, guidance_scale: float = 4.0,
                 num_images_per_prompt: int = 1, generator=None, latents=None, output_type: str | None = "pil",
                 callback=None, callback_steps: int = 1, return_dict: bool = True, *, prompt_embeds=None,
                 text_encoder_hidden_states=None, negative_prompt_embeds=None,
                 negative_text_encoder_hidden_states=None):
        return self.generate(conditioning=_conditioning(locals()), task=TextToImage(), request=Request.of(locals()))


class KandinskyImg2ImgPipeline(KandinskyDecoder):
    """Image-to-image: the picture is noised to ``strength`` and denoised towards prompt and embeddings."""

    pt_output_in_unit_range = True

    def __call__(self, prompt=None, image=None, image_embeds=None, negative_image_embeds=None, negative_prompt=None,
                 height: int = 512, width: int = 512, num_inference_steps: int = 100, strength: float = 0.3,
                 guidance_scale: float = 7.0, num_images_per_prompt: int = 1, generator=None,
                 output_type: str | None = "pil", callback=None, callback_steps: int = 1, return_dict: bool = True, *,
                 prompt_embeds=None, text_encoder_hidden_states=None, negative_prompt_embeds=None,
                 negative_text_encoder_hidden_states=None):
        return self.generate(conditioning=_conditioning(locals()), task=ImageToImage(image, strength),
                             request=Request.of(locals()))


class KandinskyInpaintPipeline(KandinskyDecoder):
    """Inpainting: repaint where ``mask_image`` is white (1); the 9-channel UNet sees what to keep."""

    def __call__(self, prompt=None, image=None, mask_image=None, image_embeds=None, negative_image_embeds=None,
                 negative_prompt=None, height: int = 512, width: int = 512, num_inference_steps: int = 100,
                 guidance_scale: float = 4.0, num_images_per_prompt: int = 1, generator=None, latents=None,
                 output_type: str | None = "pil", callback=None, callback_steps: int = 1, return_dict: bool = True, *,
                 prompt_embeds=None, text_encoder_hidden_states=None, negative_prompt_embeds=None,
                 negative_text_encoder_hidden_states=None):
        return self.generate(conditioning=_conditioning(locals()), task=Inpaint(image, mask_image, blend=False),
                             request=Request.of(locals()))
