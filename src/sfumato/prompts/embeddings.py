"""``weighted_embeddings(pipe, prompt)``: a pipeline's text keywords, made from weighted prompts.

One function per family encodes as that family's plain prompt path does (same
tokenizer, same layers, same batches), with three differences: the syntax is
parsed and each token gets its fragment's weight, the weights are applied to
the encoder's output (``apply_weights``), and for the CLIP-style families whose
models read any number of tokens long prompts continue in further chunks.
A prompt without syntax therefore gives the plain path's numbers bit for bit.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..pipelines import checks
from .syntax import parse_prompt
from .tokens import apply_weights, weighted_tokens


def _check_clip_skip(clip_skip: Any, encoders: Sequence[Any]) -> None:
    if clip_skip is None:
        return
    layers = min(encoder.config.num_hidden_layers for encoder in encoders)
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or not 0 <= clip_skip < layers:
        raise ValueError(f"clip_skip must be None or a number of layers to skip, 0 to {layers - 1}, got {clip_skip!r}")


# ---------------------------------------------------------------------------------------------- Stable Diffusion


def _stable_diffusion(pipe, prompts: list[str], negatives: list[str], clip_skip: int | None) -> dict[str, Any]:
    """SD 1.x / 2.x: the CLIP token states of each 77-token chunk, weighted, side by side."""
    from ..pipelines.text import clip_hidden_states

    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    if tokenizer is None or encoder is None:
        raise ValueError("this pipeline has no tokenizer / text_encoder to encode prompts with")
    _check_clip_skip(clip_skip, [encoder])
    length = tokenizer.model_max_length
    positive = weighted_tokens(tokenizer, prompts, length=length, name="prompt", chunked=True)
    negative = weighted_tokens(tokenizer, negatives, length=length, name="negative_prompt", chunked=True,
                               min_chunks=positive.chunks)
    if negative.chunks > positive.chunks:
        positive = weighted_tokens(tokenizer, prompts, length=length, name="prompt", chunked=True,
                                   min_chunks=negative.chunks)
    device = pipe._execution_device
    use_mask = getattr(encoder.config, "use_attention_mask", False)

    def encode(tokens, skip):
        states = []
        for chunk in range(tokens.chunks):
            ids, mask = tokens.input_ids[chunk].to(device), tokens.attention_mask[chunk].to(device)
            hidden = clip_hidden_states(encoder, ids, clip_skip=skip, attention_mask=mask if use_mask else None)
            states.append(apply_weights(hidden, tokens.weights[chunk]))
        return torch.cat(states, dim=1)

    # the plain path reads negative prompts from the last layer whatever clip_skip says; so does this, for its numbers
    return {"prompt_embeds": encode(positive, clip_skip), "negative_prompt_embeds": encode(negative, None)}


# ---------------------------------------------------------------------------------------------- SDXL


def _stable_diffusion_xl(pipe, prompts: list[str], negatives: list[str] | None, clip_skip: int | None,
                         prompts_2: list[str], negatives_2: list[str] | None) -> dict[str, Any]:
    """SDXL: both encoders' penultimate token states per chunk, each weighted, side by side; the pooled output
    of the second encoder from the first chunk, unweighted (as AUTOMATIC1111 and Compel make it).

    As in the plain path, the second encoder reads ``prompts_2`` where there are two encoders, and a
    pipeline with only the second (the refiner) gives it ``prompts``.
    """
    encoders = [(tokenizer, encoder) for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder),
                                                                (pipe.tokenizer_2, pipe.text_encoder_2))
                if encoder is not None and tokenizer is not None]
    if pipe.text_encoder_2 is None or pipe.tokenizer_2 is None:
        raise ValueError("this pipeline has no text_encoder_2 / tokenizer_2, which gives SDXL's pooled text; "
                         "weighted prompts need it")
    _check_clip_skip(clip_skip, [encoder for _, encoder in encoders])
    device = pipe._execution_device

    def tokens_for(texts_per_encoder, name, min_chunks=1):
        return [weighted_tokens(tokenizer, texts, length=tokenizer.model_max_length, name=name, chunked=True,
                                min_chunks=min_chunks) for (tokenizer, _), texts in zip(encoders, texts_per_encoder)]

    # every encoder and both halves of a guided batch get as many chunks as the longest needs
    halves = [("prompt", [prompts, prompts_2])]
    if negatives is not None:
        halves.append(("negative_prompt", [negatives, negatives_2]))
    chunks = max(tokens.chunks for name, texts in halves for tokens in tokens_for(texts, name))
    positive = tokens_for(halves[0][1], "prompt", chunks)
    negative = tokens_for(halves[1][1], "negative_prompt", chunks) if negatives is not None else None

    def encode(all_tokens, skip):
        states, pooled = [], None
        for chunk in range(chunks):
            per_encoder = []
            for (_, encoder), tokens in zip(encoders, all_tokens):
                output = encoder(tokens.input_ids[chunk].to(device), output_hidden_states=True)
                if pooled is None and chunk == 0:
                    pooled = getattr(output, "text_embeds", None)
                hidden = output.hidden_states[-(2 + (skip or 0))]
                per_encoder.append(apply_weights(hidden, tokens.weights[chunk]))
            states.append(torch.cat(per_encoder, dim=-1))
        if pooled is None:
            raise ValueError("text_encoder_2 gives no pooled output (text_embeds); SDXL needs a "
                             "CLIPTextModelWithProjection there")
        return torch.cat(states, dim=1), pooled

    embeds, pooled = encode(positive, clip_skip)
    out = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
    if negative is not None:
        # as the plain path: negative prompts from the penultimate layer whatever clip_skip says
        out["negative_prompt_embeds"], out["negative_pooled_prompt_embeds"] = encode(negative, None)
    return out


# ---------------------------------------------------------------------------------------------- Kandinsky 3


def _kandinsky3(pipe, prompts: list[str], negatives: list[str] | None) -> dict[str, Any]:
    """Kandinsky 3: T5 hidden states (zero past the mask), cut as the pipeline cuts them, weighted over the
    tokens the mask keeps. T5 reads the pipeline's 128 tokens; longer prompts are cut with a warning."""
    from ..pipelines.kandinsky3.pipeline import TEXT_LENGTH

    if pipe.tokenizer is None or pipe.text_encoder is None:
        raise ValueError("this pipeline has no tokenizer / text_encoder to encode prompts with")
    device = pipe._execution_device

    def encode(texts, name, cut_to=None):
        tokens = weighted_tokens(pipe.tokenizer, texts, length=TEXT_LENGTH, name=name, chunked=False)
        ids, mask, weights = tokens.input_ids[0].to(device), tokens.attention_mask[0].to(device), tokens.weights[0]
        embeds = pipe.text_encoder(ids, attention_mask=mask)[0]
        # the plain path: the prompts cut to the longest one plus one padding token, the negatives to the prompts'
        length = cut_to if cut_to is not None else int(mask.sum(dim=-1).max()) + 1
        embeds, mask, weights = embeds[:, :length], mask[:, :length], weights[:, :length]
        embeds = embeds * mask.unsqueeze(-1).to(embeds.dtype)
        return apply_weights(embeds, weights, mask), mask

    embeds, mask = encode(prompts, "prompt")
    out = {"prompt_embeds": embeds, "attention_mask": mask}
    if negatives is not None:
        out["negative_prompt_embeds"], out["negative_attention_mask"] = encode(negatives, "negative_prompt",
                                                                               cut_to=embeds.shape[1])
    return out


# ---------------------------------------------------------------------------------------------- Kandinsky 2.x priors


def _prior(prior, prompts: list[str], negatives: list[str] | None, prefix: str = "") -> dict[str, Any]:
    """The 2.1 / 2.2 prior: CLIP's projected (pooled) embedding, unweighted, its token states, weighted, and the
    mask. The prior reads exactly ``num_embeddings`` (77) tokens, so longer prompts are cut with a warning."""
    tokenizer, encoder = prior.tokenizer, prior.text_encoder
    if tokenizer is None or encoder is None:
        raise ValueError("the prior has no tokenizer / text_encoder to encode prompts with")
    device = prior._execution_device
    # as the plain path: with a negative prompt, prompts and negatives go through the encoder as one batch
    texts = prompts + (negatives or [])
    tokens = weighted_tokens(tokenizer, texts, length=tokenizer.model_max_length, name="prompt", chunked=False)
    output = encoder(tokens.input_ids[0].to(device))
    states = apply_weights(output.last_hidden_state, tokens.weights[0])
    embeds, mask = output.text_embeds, tokens.attention_mask[0].to(device).bool()
    count = len(prompts)
    out = {f"{prefix}prompt_embeds": embeds[:count], f"{prefix}text_encoder_hidden_states": states[:count],
           f"{prefix}text_mask": mask[:count]}
    if negatives is not None:
        out.update({f"{prefix}negative_prompt_embeds": embeds[count:],
                    f"{prefix}negative_text_encoder_hidden_states": states[count:],
                    f"{prefix}negative_text_mask": mask[count:]})
    return out


# ---------------------------------------------------------------------------------------------- Kandinsky 2.1 decoder


def _kandinsky21_decoder(pipe, prompts: list[str], negatives: list[str]) -> dict[str, Any]:
    """The 2.1 decoder's multilingual CLIP: the pooled embedding of the first 77-token chunk, unweighted, and the
    token states of every chunk, weighted, side by side (its UNet reads any number of tokens)."""
    from ..pipelines.kandinsky2_1.decoder import TEXT_LENGTH

    if pipe.tokenizer is None or pipe.text_encoder is None:
        raise ValueError("this pipeline has no tokenizer / text_encoder to encode prompts with")
    device = pipe._execution_device
    positive = weighted_tokens(pipe.tokenizer, prompts, length=TEXT_LENGTH, name="prompt", chunked=True)
    negative = weighted_tokens(pipe.tokenizer, negatives, length=TEXT_LENGTH, name="negative_prompt", chunked=True,
                               min_chunks=positive.chunks)
    if negative.chunks > positive.chunks:
        positive = weighted_tokens(pipe.tokenizer, prompts, length=TEXT_LENGTH, name="prompt", chunked=True,
                                   min_chunks=negative.chunks)

    def encode(tokens):
        pooled, states = None, []
        for chunk in range(tokens.chunks):
            embeds, hidden = pipe.text_encoder(input_ids=tokens.input_ids[chunk].to(device),
                                               attention_mask=tokens.attention_mask[chunk].to(device))
            pooled = embeds if pooled is None else pooled
            states.append(apply_weights(hidden, tokens.weights[chunk]))
        return pooled, torch.cat(states, dim=1)

    out = dict(zip(("prompt_embeds", "text_encoder_hidden_states"), encode(positive)))
    out.update(zip(("negative_prompt_embeds", "negative_text_encoder_hidden_states"), encode(negative)))
    return out


# ---------------------------------------------------------------------------------------------- the helper


@torch.no_grad()
def weighted_embeddings(pipe: Any, prompt: str | list[str], negative_prompt: str | list[str] | None = None, *,
                        clip_skip: int | None = None, prompt_2: str | list[str] | None = None,
                        negative_prompt_2: str | list[str] | None = None) -> dict[str, Any]:
    """The text keywords of ``pipe``'s ``__call__`` for weighted prompts: ``pipe(**weighted_embeddings(pipe, p), ...)``.

    ``prompt`` and ``negative_prompt`` use the weighting syntax of ``sfumato.prompts``
    (``(word:1.3)``, ``(word)``, ``[word]``, escapes). What comes back, by pipeline:

    * Stable Diffusion (text-to-image, image-to-image, inpainting, ControlNet, x4 upscaler):
      ``prompt_embeds``, ``negative_prompt_embeds``. Long prompts continue in further 77-token chunks.
    * SDXL (base, refiner, inpainting): the same plus ``pooled_prompt_embeds`` /
      ``negative_pooled_prompt_embeds``; without ``negative_prompt`` and with ``force_zeros_for_empty_prompt``
      the negative keys are left out (the pipeline uses zeros, as it does for a plain prompt).
    * Kandinsky 3: ``prompt_embeds``, ``attention_mask`` and, with ``negative_prompt``,
      ``negative_prompt_embeds``, ``negative_attention_mask`` (without, the pipeline's unconditional half
      is zeros, as for a plain prompt).
    * Kandinsky 2.1 / 2.2 priors (``KandinskyPriorPipeline``, ``KandinskyV22PriorPipeline``,
      ``KandinskyV22PriorEmb2EmbPipeline``): ``prompt_embeds``, ``text_encoder_hidden_states``, ``text_mask``
      and, with ``negative_prompt``, the ``negative_`` triple (which the prior, as for a negative prompt, turns
      into ``negative_image_embeds``).
    * Kandinsky 2.1 decoders: ``prompt_embeds`` (pooled), ``text_encoder_hidden_states`` and their
      ``negative_`` pair. Kandinsky 2.2 decoders read no text: use their prior.
    * Combined Kandinsky pipelines: the prior's keys prefixed ``prior_`` (the negative prompt steers the
      prior, as ``negative_prompt`` does there); for 2.1 also the decoder's keys for ``prompt``, with the
      empty negative text the combined pipeline gives its decoder.

    ``clip_skip`` (Stable Diffusion and SDXL) is applied as the pipelines apply it; ``prompt_2`` /
    ``negative_prompt_2`` (SDXL) are the second encoder's prompts, as in its pipelines (None or "": the first's). A prompt without
    weighting syntax gives the same numbers as passing it as ``prompt=``, bit for bit. Malformed syntax
    raises ``PromptSyntaxError`` (a ``ValueError``) naming the prompt and the position.
    """
    from ..pipelines.combined import PriorDecoderPipeline
    from ..pipelines.kandinsky2_1.decoder import KandinskyDecoder
    from ..pipelines.kandinsky2_2.decoder import KandinskyV22Decoder
    from ..pipelines.kandinsky3.pipeline import Kandinsky3Family
    from ..pipelines.prior import ImageEmbeddingPrior
    from ..pipelines.stable_diffusion.pipeline import StableDiffusionFamily
    from ..pipelines.stable_diffusion_xl.pipeline import StableDiffusionXLFamily

    prompts = checks.prompts("prompt", prompt)
    negatives = None if negative_prompt is None else checks.negative_prompts(negative_prompt, len(prompts))
    prompts_2 = checks.second_prompts("prompt_2", prompt_2, len(prompts))
    negatives_2 = checks.second_prompts("negative_prompt_2", negative_prompt_2, len(prompts))
    if (prompts_2 or negatives_2) and not isinstance(pipe, StableDiffusionXLFamily):
        raise ValueError(f"prompt_2 / negative_prompt_2 are for SDXL pipelines; {type(pipe).__name__} has one text "
                         f"encoder")
    # every syntax mistake is found before any model runs
    for name, texts in (("prompt", prompts), ("negative_prompt", negatives or []), ("prompt_2", prompts_2 or []),
                        ("negative_prompt_2", negatives_2 or [])):
        for index, text in enumerate(texts):
            parse_prompt(text, name if len(texts) == 1 else f"{name}[{index}]")
    if clip_skip is not None and not isinstance(pipe, StableDiffusionFamily):
        raise ValueError(f"clip_skip is for Stable Diffusion and SDXL pipelines; {type(pipe).__name__} has no "
                         f"clip_skip, got {clip_skip!r}")
    if isinstance(pipe, StableDiffusionXLFamily):
        if negatives is None and not pipe.config.force_zeros_for_empty_prompt:
            negatives = [""] * len(prompts)
        if negatives is None and negatives_2:
            raise ValueError("negative_prompt_2 without negative_prompt: this pipeline's force_zeros_for_empty_prompt "
                             "makes the unconditional half zeros; pass negative_prompt too")
        return _stable_diffusion_xl(pipe, prompts, negatives, clip_skip, prompts_2 or prompts,
                                    None if negatives is None else negatives_2 or negatives)
    if isinstance(pipe, StableDiffusionFamily):
        return _stable_diffusion(pipe, prompts, negatives or [""] * len(prompts), clip_skip)
    if isinstance(pipe, Kandinsky3Family):
        return _kandinsky3(pipe, prompts, negatives)
    if isinstance(pipe, ImageEmbeddingPrior):
        return _prior(pipe, prompts, negatives)
    if isinstance(pipe, KandinskyDecoder):
        return _kandinsky21_decoder(pipe, prompts, negatives or [""] * len(prompts))
    if isinstance(pipe, PriorDecoderPipeline):
        out = _prior(pipe.prior_pipe, prompts, negatives, prefix="prior_")
        if pipe.decoder_takes_prompt:
            # the combined pipeline gives its decoder the empty negative text
            out.update(_kandinsky21_decoder(pipe.decoder_pipe, prompts, [""] * len(prompts)))
        return out
    if isinstance(pipe, KandinskyV22Decoder):
        raise ValueError(f"{type(pipe).__name__} reads image embeddings, not text: weight the prompt of its prior "
                         f"(weighted_embeddings(prior_pipe, prompt)) or use a combined pipeline")
    raise ValueError(f"weighted_embeddings does not know how {type(pipe).__name__} encodes prompts; it supports the "
                     f"Stable Diffusion, SDXL, Kandinsky 2.1, 2.2 (prior and combined) and 3 pipelines")


def prompt_keywords(pipe: Any, prompt: str | list[str] | None, negative_prompt: str | list[str] | None = None, *,
                    weighted: bool = True) -> dict[str, Any]:
    """What a caller with text prompts (the command line, the server) passes to ``pipe``: the plain
    ``prompt`` / ``negative_prompt`` keywords, or ``weighted_embeddings``' where they make a difference.

    The plain keywords come back when ``weighted`` is false, when neither prompt uses the syntax and fits
    the encoder (the same numbers either way; this keeps the plain path's batching, e.g. of a combined
    pipeline's several images per prompt), and for pipelines that take no text embeddings (the latent
    upscaler, the 2.2 decoders). Malformed syntax raises ``PromptSyntaxError`` either way when ``weighted``.
    """
    plain = {"prompt": prompt, "negative_prompt": negative_prompt}
    if not weighted or prompt is None:
        return plain
    from ..pipelines.stable_diffusion.upscale import StableDiffusionLatentUpscalePipeline
    from ..pipelines.kandinsky2_2.decoder import KandinskyV22Decoder
    from .syntax import has_weighting

    if isinstance(pipe, (StableDiffusionLatentUpscalePipeline, KandinskyV22Decoder)):
        return plain
    texts = checks.prompts("prompt", prompt)
    if negative_prompt is not None:
        texts += checks.prompts("negative_prompt", negative_prompt)
    if not any(has_weighting(text) for text in texts) and not _too_long(pipe, texts):
        return plain
    return weighted_embeddings(pipe, prompt, negative_prompt)


def _too_long(pipe: Any, texts: list[str]) -> bool:
    """Whether a text is longer than one chunk of a CLIP-style encoder that the weighted path chunks."""
    from ..pipelines.combined import PriorDecoderPipeline
    from ..pipelines.kandinsky2_1.decoder import TEXT_LENGTH, KandinskyDecoder
    from ..pipelines.stable_diffusion.pipeline import StableDiffusionFamily

    if isinstance(pipe, PriorDecoderPipeline):
        pipe = pipe.decoder_pipe
    if isinstance(pipe, KandinskyDecoder):
        tokenizer, length = pipe.tokenizer, TEXT_LENGTH
    elif isinstance(pipe, StableDiffusionFamily):
        tokenizer = pipe.tokenizer if pipe.tokenizer is not None else getattr(pipe, "tokenizer_2", None)
        length = tokenizer.model_max_length if tokenizer is not None else None
    else:
        return False  # the priors and T5 cut long prompts either way
    if tokenizer is None:
        return False
    return any(len(tokenizer(text, add_special_tokens=True).input_ids) > length for text in texts)
