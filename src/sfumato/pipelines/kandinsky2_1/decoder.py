"""Kandinsky 2.1 decoders: prompt + image embeddings -> pictures, through a UNet and the MoVQ.

``KandinskyDecoder`` is the family. Unlike 2.2 it reads the prompt too: a
multilingual CLIP (XLM-RoBERTa + projection) gives a pooled text embedding and
hidden states, which the UNet takes beside the image embedding. The three
public pipelines differ only in their task and their inputs.
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
from ..text import encode_with_negatives, tokenize

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
        prompts = checks.prompts("prompt", conditioning["prompt"])
        embeds, negative = checks.embeds_pair(conditioning["image_embeds"], conditioning["negative_image_embeds"])
        checks.embeds_width("image_embeds", embeds, self.unet.config.cross_attention_dim)
        if len(prompts) == 1 and embeds.shape[0] > 1:
            prompts = prompts * embeds.shape[0]  # one prompt for every embedding
        if embeds.shape[0] != len(prompts):
            raise ValueError(f"image_embeds has {embeds.shape[0]} rows, but there are {len(prompts)} prompts; "
                             f"pass one image embedding per prompt")
        negatives = checks.negative_prompts(conditioning.get("negative_prompt"), len(prompts))
        conditioning.update(prompt=prompts, negative_prompt=negatives, image_embeds=embeds,
                            negative_image_embeds=negative)
        return len(prompts)

    def condition(self, conditioning: dict[str, Any], request: Request, guided: bool) -> dict[str, torch.Tensor]:
        n, device, dtype = request.num_images_per_prompt, self._execution_device, self.model_dtype
        prompt_embeds, hidden_states = encode_with_negatives(
            self._encode_texts, conditioning["prompt"], conditioning["negative_prompt"], guided, n)
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


_LINEAR_SCHEDULE = DDPMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")


class KandinskyPipeline(KandinskyDecoder):
    """Text-to-image decoder of Kandinsky 2.1: prompt + image embeddings (from the prior) -> pictures."""

    def __call__(self, prompt, image_embeds, negative_image_embeds, negative_prompt=None, height: int = 512,
                 width: int = 512, num_inference_steps: int = 100, guidance_scale: float = 4.0,
                 num_images_per_prompt: int = 1, generator=None, latents=None, output_type: str | None = "pil",
                 callback=None, callback_steps: int = 1, return_dict: bool = True):
        return self.generate(conditioning=dict(prompt=prompt, negative_prompt=negative_prompt, image_embeds=image_embeds,
                                               negative_image_embeds=negative_image_embeds),
                             task=TextToImage(), request=Request.of(locals()))


class KandinskyImg2ImgPipeline(KandinskyDecoder):
    """Image-to-image: the picture is noised to ``strength`` and denoised towards prompt and embeddings."""

    pt_output_in_unit_range = True

    def __call__(self, prompt, image, image_embeds, negative_image_embeds, negative_prompt=None, height: int = 512,
                 width: int = 512, num_inference_steps: int = 100, strength: float = 0.3, guidance_scale: float = 7.0,
                 num_images_per_prompt: int = 1, generator=None, output_type: str | None = "pil", callback=None,
                 callback_steps: int = 1, return_dict: bool = True):
        return self.generate(conditioning=dict(prompt=prompt, negative_prompt=negative_prompt, image_embeds=image_embeds,
                                               negative_image_embeds=negative_image_embeds),
                             task=ImageToImage(image, strength), request=Request.of(locals()))


class KandinskyInpaintPipeline(KandinskyDecoder):
    """Inpainting: repaint where ``mask_image`` is white (1); the 9-channel UNet sees what to keep."""

    def __call__(self, prompt, image, mask_image, image_embeds, negative_image_embeds, negative_prompt=None,
                 height: int = 512, width: int = 512, num_inference_steps: int = 100, guidance_scale: float = 4.0,
                 num_images_per_prompt: int = 1, generator=None, latents=None, output_type: str | None = "pil",
                 callback=None, callback_steps: int = 1, return_dict: bool = True):
        return self.generate(conditioning=dict(prompt=prompt, negative_prompt=negative_prompt, image_embeds=image_embeds,
                                               negative_image_embeds=negative_image_embeds),
                             task=Inpaint(image, mask_image, blend=False), request=Request.of(locals()))
