"""Kandinsky 3: prompt -> pictures in one stage, through a T5 encoder, its own UNet and the MoVQ.

``Kandinsky3Family`` is the family. It conditions the UNet on the hidden states
of a T5 encoder (Flan-UL2's, 4096 wide, in the released model) and their
attention mask; it has no prior and no image embeddings. The two public
pipelines differ only in their task.

Three things it does as the reference does, because its numbers depend on them:

* guidance counts from the conditional prediction: ``(s + 1) * cond - s * uncond``;
* the prompt's hidden states are cut to the longest prompt plus one padding
  token (zeroed), and the negative prompt's to the same length;
* with no negative prompt, the unconditional half is all zeros with an all-zero
  mask (no text encoder run), which is not the same as ``negative_prompt=""``.

Where the reference is wrong, it does the right thing: every image's mask
belongs to its own prompt (the reference tiles the masks while it repeats the
embeddings per image, so with several prompts and images per prompt they
mismatch), one negative prompt serves every prompt, one picture serves every
prompt in image-to-image, and ``height`` / ``width`` are the output's size
(the reference assumes an 8x MoVQ and rounds sizes up to multiples of 64).

Memory: the T5 encoder is 17.4 GB in bf16. ``sequential_loading=True`` (or
``enable_sequential_loading()``) keeps the models on disk until each runs, one
at a time (``sequential.py``); ``quantize_text_encoder("int8")`` halves the
encoder (``quantize.py``). ``benchmarks/kandinsky3_memory.py`` measures both.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch

from .. import checks, offload
from ..generation import Request, per_image
from ..movq import MoVQLatents
from ..tasks import ImageToImage, TextToImage
from ..text import tokenize
from .quantize import quantize_linears
from .sequential import SequentialLoader, adopt, release, weight_sources

# the reference tokenizes prompts for T5 at this fixed length
TEXT_LENGTH = 128
DEFAULT_SIZE = 1024


class Kandinsky3Family(MoVQLatents):
    """Shared body of the Kandinsky 3 pipelines: tokenizer, T5 text encoder, UNet, scheduler and MoVQ."""

    model_cpu_offload_seq = "text_encoder->unet->movq"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "negative_attention_mask",
                               "attention_mask"]
    # encode_prompt cuts the hidden states to the prompts' length unless told (the reference's defaults)
    cuts_context_by_default = False

    def __init__(self, tokenizer, text_encoder, unet, scheduler, movq):
        super().__init__()
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=scheduler,
                              movq=movq)

    def default_size(self, height: int | None, width: int | None) -> tuple[int | None, int | None]:
        return height or DEFAULT_SIZE, width or DEFAULT_SIZE

    def guidance_weight(self, guidance_scale: float) -> float:
        return guidance_scale + 1.0

    # ------------------------------------------------------------------ conditioning

    def check_conditioning(self, conditioning: dict[str, Any], request: Request) -> int:
        text = _TextInputs.checked(conditioning, width=self.unet.config.encoder_hid_dim)
        if text.needs_encoder:
            self._check_text_encoder()
        conditioning["text"] = text
        return text.batch

    def condition(self, conditioning: dict[str, Any], request: Request, guided: bool) -> dict[str, torch.Tensor]:
        embeds, negative, mask, negative_mask = self._text_conditioning(
            conditioning["text"], guided=guided, num_images_per_prompt=request.num_images_per_prompt,
            cut_context=True)
        # the names the reference's callbacks see: prompt_embeds / attention_mask hold both halves when guided
        return {"prompt_embeds": torch.cat([negative, embeds]) if guided else embeds,
                "attention_mask": torch.cat([negative_mask, mask]).bool() if guided else mask,
                "negative_prompt_embeds": negative, "negative_attention_mask": negative_mask}

    def predict(self, model_input: torch.Tensor, t: torch.Tensor, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.unet(model_input, t, encoder_hidden_states=tensors["prompt_embeds"],
                         encoder_attention_mask=tensors["attention_mask"], return_dict=False)[0]

    @torch.no_grad()
    def encode_prompt(self, prompt, do_classifier_free_guidance: bool = True, num_images_per_prompt: int = 1,
                      device=None, negative_prompt=None, prompt_embeds: torch.Tensor | None = None,
                      negative_prompt_embeds: torch.Tensor | None = None, _cut_context: bool | None = None,
                      attention_mask: torch.Tensor | None = None,
                      negative_attention_mask: torch.Tensor | None = None):
        """(prompt_embeds, negative_prompt_embeds, attention_mask, negative_attention_mask), one row per image.

        The negative pair is None without guidance. Pass the results back as
        ``prompt_embeds=`` ... to generate without running the text encoder again
        (e.g. after releasing it to save memory).
        """
        text = _TextInputs.checked(dict(prompt=prompt, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
                                        attention_mask=attention_mask, negative_prompt_embeds=negative_prompt_embeds,
                                        negative_attention_mask=negative_attention_mask),
                                   width=self.unet.config.encoder_hid_dim if self.unet is not None else None)
        if text.needs_encoder:
            self._check_text_encoder()
        checks.positive_int("num_images_per_prompt", num_images_per_prompt)
        cut = self.cuts_context_by_default if _cut_context is None else _cut_context
        embeds, negative, mask, negative_mask = self._text_conditioning(
            text, guided=do_classifier_free_guidance, num_images_per_prompt=num_images_per_prompt, cut_context=cut)
        if device is not None:
            embeds, mask = embeds.to(device), mask.to(device)
            if negative is not None:
                negative, negative_mask = negative.to(device), negative_mask.to(device)
        return embeds, negative, mask, negative_mask

    def _text_conditioning(self, text: "_TextInputs", *, guided: bool, num_images_per_prompt: int,
                           cut_context: bool) -> tuple[torch.Tensor, ...]:
        """Prompt and (when guided) unconditional hidden states and masks, repeated per image."""
        if text.prompt_embeds is not None:
            embeds, mask = text.prompt_embeds, text.attention_mask
        else:
            embeds, mask = self._encode_texts(text.prompts, cut_context=cut_context)
        negative = negative_mask = None
        if guided:
            if text.negative_prompt_embeds is not None:
                negative, negative_mask = text.negative_prompt_embeds, text.negative_attention_mask
            elif text.negative_prompts is None:
                # no negative prompt: nothing to attend to (not the same as the empty prompt "")
                negative, negative_mask = torch.zeros_like(embeds), torch.zeros_like(mask)
            else:
                negative, negative_mask = self._encode_texts(text.negative_prompts, cut_context=False)
                # both halves of a guided batch share one length: the prompts'
                negative, negative_mask = negative[:, :embeds.shape[1]], negative_mask[:, :embeds.shape[1]]
        device, dtype = self._execution_device, self.model_dtype
        out = []
        for tensor, is_mask in ((embeds, False), (negative, False), (mask, True), (negative_mask, True)):
            if tensor is not None:
                tensor = per_image(tensor.to(device=device, dtype=None if is_mask else dtype), num_images_per_prompt)
            out.append(tensor)
        return tuple(out)

    def _encode_texts(self, texts: list[str], cut_context: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 hidden states of ``texts`` (zero where the mask is 0) and the mask.

        ``cut_context`` drops the padding beyond the longest text but one token.
        """
        ids, mask = tokenize(self.tokenizer, texts, TEXT_LENGTH, self._execution_device)
        embeds = self.text_encoder(ids, attention_mask=mask)[0]
        if cut_context:
            length = int(mask.sum(dim=-1).max()) + 1
            embeds, mask = embeds[:, :length], mask[:, :length]
        return embeds * mask.unsqueeze(-1).to(embeds.dtype), mask

    # ------------------------------------------------------------------ memory

    # the models sequential loading keeps on disk until they run
    _large_components = ("text_encoder", "unet", "movq")

    @classmethod
    def _from_index(cls, folder, index, torch_dtype, variant, use_safetensors, overrides):
        """``from_pretrained``, which also takes ``sequential_loading=True`` (see ``enable_sequential_loading``)."""
        sequential = overrides.pop("sequential_loading", False)
        if not isinstance(sequential, bool):
            raise ValueError(f"sequential_loading must be True or False, got {sequential!r}")
        names = [name for name in cls._large_components if name not in overrides]
        sources = weight_sources(folder, index, names, torch_dtype, variant, use_safetensors)
        if sequential:  # skeletons instead of weights: nothing large is read now
            overrides = {**overrides, **{name: source.skeleton() for name, source in sources.items()}}
        pipe = super()._from_index(folder, index, torch_dtype, variant, use_safetensors, overrides)
        pipe._weight_sources = {name: (source, getattr(pipe, name)) for name, source in sources.items()}
        if sequential:
            pipe._start_sequential_loading(torch.device("cpu"))
        return pipe

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        new = super().from_pipe(pipeline, **kwargs)
        # the models are the same objects: so are where their weights are and who loads them
        for name in ("_weight_sources", "_sequential_loader"):
            if name in pipeline.__dict__:
                object.__setattr__(new, name, pipeline.__dict__[name])
        return new

    def enable_sequential_loading(self, device: str | torch.device = "cpu") -> None:
        """Hold at most one of the text encoder, UNet and MoVQ in memory: each is read from its folder just
        before it runs, and the one before it is dropped (encode the prompt, drop the encoder, denoise, drop
        the UNet, decode).

        Their weights are released now. To never load them all at once, pass ``sequential_loading=True`` to
        ``from_pretrained`` instead. Models given as objects rather than loaded from the folder stay as they
        are. ``device`` is where the models run (an accelerator: read from disk straight to it).
        """
        if self.__dict__.get("_sequential_loader") is not None:
            return
        offload.disable(self)
        for name, (_, module) in self.__dict__.get("_weight_sources", {}).items():
            if getattr(self, name) is module:
                release(module)
        self._start_sequential_loading(torch.device(device))

    def quantize_text_encoder(self, kind: str = "int8") -> None:
        """Store the text encoder's linear layers in int8, one scale per output channel (weight-only: the
        activations stay in the encoder's dtype). Flan-UL2's encoder goes from 17.4 GB (bf16) to 8.7 GB.

        An encoder loaded from the pipeline's folder is read again and quantized tensor by tensor as it is
        read, so the float encoder is never in memory beside the int8 one; with sequential loading that
        happens each time it runs.
        """
        if kind != "int8":
            raise ValueError(f"quantize_text_encoder supports kind='int8', got {kind!r}")
        if self.text_encoder is None:
            raise ValueError("this pipeline has no text_encoder to quantize")
        source, module = self.__dict__.get("_weight_sources", {}).get("text_encoder", (None, None))
        if source is None or module is not self.text_encoder:
            quantize_linears(self.text_encoder)  # given as an object: quantized where it is
            return
        loader = self.__dict__.get("_sequential_loader")
        if loader is not None and loader.resident == "text_encoder":
            loader.release()
        release(self.text_encoder)
        quantize_linears(self.text_encoder)  # the skeleton takes the int8 layout
        source = dataclasses.replace(source, int8=True)
        self._weight_sources["text_encoder"] = (source, self.text_encoder)
        if loader is not None and "text_encoder" in loader.sources:
            loader.sources["text_encoder"] = source
        else:
            adopt(self.text_encoder, source.load())

    def disable_sequential_loading(self) -> None:
        """Load every model for good and stop reading them on demand."""
        loader = self.__dict__.get("_sequential_loader")
        if loader is not None:
            loader.remove(load_all=True)
            object.__setattr__(self, "_sequential_loader", None)

    def _start_sequential_loading(self, device: torch.device) -> None:
        managed = {name: source for name, (source, module) in self.__dict__.get("_weight_sources", {}).items()
                   if getattr(self, name) is module}
        if not managed:
            raise ValueError("sequential loading reads each model from the pipeline's folder, but no model of this "
                             "pipeline was loaded from one; load it with from_pretrained")
        modules = {name: getattr(self, name) for name in managed}
        object.__setattr__(self, "_sequential_loader", SequentialLoader(modules, managed, device))

    @property
    def _execution_device(self) -> torch.device:
        loader = self.__dict__.get("_sequential_loader")
        return loader.device if loader is not None else super()._execution_device

    @property
    def device(self) -> torch.device:
        loader = self.__dict__.get("_sequential_loader")
        return loader.device if loader is not None else super().device

    def maybe_free_model_hooks(self) -> None:
        super().maybe_free_model_hooks()
        loader = self.__dict__.get("_sequential_loader")
        if loader is not None:
            loader.release()

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: str | torch.device | None = None) -> None:
        if self.__dict__.get("_sequential_loader") is not None:
            raise ValueError("sequential loading is on, and it already places each model as it runs; call "
                             "disable_sequential_loading() first, or enable_sequential_loading(device=...) to load "
                             "onto an accelerator")
        super().enable_model_cpu_offload(gpu_id=gpu_id, device=device)

    def to(self, *args: Any, **kwargs: Any):
        if self.__dict__.get("_sequential_loader") is not None:
            raise ValueError("with sequential loading the models are read as they run, on the device given to "
                             "enable_sequential_loading(device=...); call disable_sequential_loading() before to()")
        return super().to(*args, **kwargs)

    def save_pretrained(self, *args: Any, **kwargs: Any) -> None:
        if self.__dict__.get("_sequential_loader") is not None:
            raise ValueError("with sequential loading the weights are not in memory to save; the folder they are "
                             "read from is a saved copy already (or call disable_sequential_loading() first)")
        super().save_pretrained(*args, **kwargs)

    def _check_text_encoder(self) -> None:
        if self.text_encoder is None or self.tokenizer is None:
            missing = [n for n in ("text_encoder", "tokenizer") if getattr(self, n) is None]
            raise ValueError(f"this pipeline has no {' or '.join(missing)}, so it cannot encode prompts; pass "
                             f"prompt_embeds with attention_mask (from encode_prompt) instead of prompt")


class _TextInputs:
    """A call's text inputs, checked: prompts or precomputed hidden states, and their negatives."""

    def __init__(self, prompts, negative_prompts, prompt_embeds, attention_mask, negative_prompt_embeds,
                 negative_attention_mask):
        self.prompts, self.negative_prompts = prompts, negative_prompts
        self.prompt_embeds, self.attention_mask = prompt_embeds, attention_mask
        self.negative_prompt_embeds, self.negative_attention_mask = negative_prompt_embeds, negative_attention_mask

    @property
    def batch(self) -> int:
        return len(self.prompts) if self.prompts is not None else self.prompt_embeds.shape[0]

    @property
    def needs_encoder(self) -> bool:
        return self.prompts is not None or self.negative_prompts is not None

    @classmethod
    def checked(cls, values: Mapping[str, Any], width: int | None) -> "_TextInputs":
        prompt, prompt_embeds = values.get("prompt"), values.get("prompt_embeds")
        negative_prompt, negative_embeds = values.get("negative_prompt"), values.get("negative_prompt_embeds")
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("pass prompt or prompt_embeds, not both")
        if prompt is None and prompt_embeds is None:
            raise ValueError("prompt is required (a string or a non-empty list of strings), or prompt_embeds "
                             "with attention_mask")
        if negative_prompt is not None and negative_embeds is not None:
            raise ValueError("pass negative_prompt or negative_prompt_embeds, not both")

        prompts = embeds = mask = None
        if prompt is not None:
            prompts = checks.prompts("prompt", prompt)
            if values.get("attention_mask") is not None:
                raise ValueError("attention_mask goes with prompt_embeds; with a prompt the tokenizer makes it")
        else:
            embeds, mask = _embeds_and_mask("prompt_embeds", prompt_embeds, "attention_mask",
                                            values.get("attention_mask"), width)
        batch = len(prompts) if prompts is not None else embeds.shape[0]

        negative = negative_mask = None
        if negative_embeds is not None:
            if embeds is None:
                raise ValueError("negative_prompt_embeds goes with prompt_embeds (both halves of a guided batch "
                                 "must have the same length); with a prompt, pass negative_prompt instead")
            negative, negative_mask = _embeds_and_mask("negative_prompt_embeds", negative_embeds,
                                                       "negative_attention_mask",
                                                       values.get("negative_attention_mask"), width)
            if negative.shape != embeds.shape:
                raise ValueError(f"negative_prompt_embeds has shape {tuple(negative.shape)}, but prompt_embeds has "
                                 f"{tuple(embeds.shape)}; they must be the same")
        elif values.get("negative_attention_mask") is not None:
            raise ValueError("negative_attention_mask goes with negative_prompt_embeds")
        negatives = None if negative_prompt is None else checks.negative_prompts(negative_prompt, batch)
        return cls(prompts, negatives, embeds, mask, negative, negative_mask)


def _embeds_and_mask(name: str, embeds: Any, mask_name: str, mask: Any, width: int | None):
    if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3:
        got = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
        raise ValueError(f"{name} must be a tensor of shape (batch, tokens, {width or 'width'}), got {got}")
    if width is not None and embeds.shape[-1] != width:
        raise ValueError(f"{name} has width {embeds.shape[-1]}, but this UNet reads text hidden states of width "
                         f"{width} (its encoder_hid_dim)")
    checks.finite(name, embeds)
    if mask is None:
        raise ValueError(f"{name} needs {mask_name}: a (batch, tokens) tensor with 1 for each token to read and 0 "
                         f"for padding (encode_prompt returns both)")
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(embeds.shape[:2]):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{mask_name} must have shape {tuple(embeds.shape[:2])} (batch, tokens of {name}), got {got}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{mask_name} must hold only 0 (padding) and 1 (token to read)")
    return embeds, mask


class Kandinsky3Pipeline(Kandinsky3Family):
    """Text-to-image with Kandinsky 3."""

    def __call__(self, prompt=None, num_inference_steps: int = 25, guidance_scale: float = 3.0,
                 negative_prompt=None, num_images_per_prompt: int | None = 1, height: int | None = 1024,
                 width: int | None = 1024, generator=None, prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 negative_attention_mask: torch.Tensor | None = None, output_type: str | None = "pil",
                 return_dict: bool = True, latents=None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], **kwargs):
        return self.generate(conditioning=_text(locals()), task=TextToImage(), request=Request.of(locals()))


class Kandinsky3Img2ImgPipeline(Kandinsky3Family):
    """Image-to-image: the picture (at its own size) is noised to ``strength`` and denoised towards the prompt."""

    model_cpu_offload_seq = "text_encoder->movq->unet->movq"
    pt_output_in_unit_range = True
    cuts_context_by_default = True

    def __call__(self, prompt=None, image=None, strength: float = 0.3, num_inference_steps: int = 25,
                 guidance_scale: float = 3.0, negative_prompt=None, num_images_per_prompt: int | None = 1,
                 generator=None, prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 negative_attention_mask: torch.Tensor | None = None, output_type: str | None = "pil",
                 return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ["latents"], **kwargs):
        return self.generate(conditioning=_text(locals()), task=ImageToImage(image, strength),
                             request=Request.of(locals()))


_TEXT_KEYWORDS = ("prompt", "negative_prompt", "prompt_embeds", "attention_mask", "negative_prompt_embeds",
                  "negative_attention_mask")


def _text(call_locals: Mapping[str, Any]) -> dict[str, Any]:
    """The text keywords of a ``__call__``: the family's conditioning."""
    return {name: call_locals[name] for name in _TEXT_KEYWORDS}
