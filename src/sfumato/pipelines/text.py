"""Prompts -> token ids for a text encoder, with the truncation the encoder's limit forces said plainly."""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch

logger = logging.getLogger("sfumato")

# how much of the dropped text a truncation warning shows
_SHOWN_CHARACTERS = 80


def tokenize(tokenizer: Any, prompts: list[str], max_length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, padded to ``max_length``; longer prompts are cut with a warning."""
    tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                       return_attention_mask=True, add_special_tokens=True, return_tensors="pt")
    full = tokenizer(prompts, padding="longest", return_tensors="pt")
    for index in range(len(prompts)):
        kept = int(tokens.attention_mask[index].sum())
        total = int(full.attention_mask[index].sum())
        if total > kept:
            dropped = tokenizer.decode(full.input_ids[index, kept - 1: total - 1], skip_special_tokens=True).strip()
            if not dropped:
                shown = "(only words this tokenizer does not know)"
            else:
                shown = repr(dropped if len(dropped) <= _SHOWN_CHARACTERS else dropped[:_SHOWN_CHARACTERS] + "...")
            which = "the prompt" if len(prompts) == 1 else f"prompt {index}"
            logger.warning("%s is %d tokens long and this text encoder reads %d; the last %d tokens were "
                           "dropped: %s", which, total, max_length, total - kept, shown)
    return tokens.input_ids.to(device), tokens.attention_mask.to(device)


def encode_with_negatives(encode: Callable[[list[str]], Sequence[torch.Tensor]], prompts: list[str],
                          negative_prompts: list[str], guided: bool,
                          num_images_per_prompt: int) -> tuple[torch.Tensor, ...]:
    """``encode(texts)``'s tensors for every image: the negative prompts' rows first when ``guided``.

    Each half is repeated per image on its own, so the unconditional and the
    conditional halves of a guided batch stay apart.
    """
    outputs = tuple(encode(prompts))
    if guided:
        outputs = tuple(torch.cat([negative, positive]) for negative, positive in zip(encode(negative_prompts), outputs))
    return tuple(x.repeat_interleave(num_images_per_prompt, dim=0) for x in outputs)


def clip_hidden_states(text_encoder: Any, input_ids: torch.Tensor, clip_skip: int | None = None,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """A CLIP text encoder's token states: the last layer's, or with ``clip_skip`` that many layers earlier.

    Earlier layers still go through the final layer norm, as the last one does
    (``clip_skip=1`` is the penultimate layer, as Stable Diffusion UIs count).
    """
    if clip_skip is None:
        return text_encoder(input_ids, attention_mask=attention_mask)[0]
    hidden = text_encoder(input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
    # transformers 5 keeps the layers on the model itself, earlier versions under .text_model
    final_layer_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
    return final_layer_norm(hidden[-(clip_skip + 1)])
