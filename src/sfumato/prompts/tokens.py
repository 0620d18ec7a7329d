"""Weighted prompts -> token ids with one weight per token, in chunks an encoder reads, and the weighting itself."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .syntax import parse_prompt

logger = logging.getLogger("sfumato")


@dataclass
class WeightedTokens:
    """Token ids, weights and attention mask of a batch of prompts: ``(chunks, prompts, length)`` each."""

    input_ids: torch.Tensor
    weights: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def chunks(self) -> int:
        return self.input_ids.shape[0]


def special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a text (CLIP: BOS / EOS; T5: EOS only)."""
    with_special = list(tokenizer("a", add_special_tokens=True).input_ids)
    without = list(tokenizer("a", add_special_tokens=False).input_ids)
    for start in range(len(with_special) - len(without) + 1):
        if with_special[start:start + len(without)] == without:
            return with_special[:start], with_special[start + len(without):]
    raise ValueError(f"cannot tell the special tokens of {type(tokenizer).__name__}: 'a' tokenizes to {without} "
                     f"alone and {with_special} with them")


def token_weights(tokenizer: Any, text: str, name: str) -> tuple[list[int], list[float]]:
    """``text``'s token ids (no special tokens) and the weight of the fragment each token comes from."""
    ids: list[int] = []
    weights: list[float] = []
    for fragment, weight in parse_prompt(text, name):
        fragment_ids = list(tokenizer(fragment, add_special_tokens=False).input_ids)
        ids += fragment_ids
        weights += [weight] * len(fragment_ids)
    return ids, weights


def weighted_tokens(tokenizer: Any, prompts: Sequence[str], *, length: int, name: str, chunked: bool,
                    min_chunks: int = 1) -> WeightedTokens:
    """Prompts -> ids, weights and masks in chunks of ``length`` tokens, padded as the tokenizer pads.

    ``chunked``: a prompt longer than one chunk continues in the next (each chunk
    has its own special tokens), and every prompt gets as many chunks as the
    longest (or ``min_chunks``), the missing ones empty. Otherwise the tokens past
    the first chunk are dropped with a warning, as the plain prompt path does.
    """
    prefix, suffix = special_tokens(tokenizer)
    body = length - len(prefix) - len(suffix)
    if body < 1:
        raise ValueError(f"the tokenizer reads {length} tokens, too few for its special tokens {prefix + suffix}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (suffix or [0])[-1]
    per_prompt = []
    for index, text in enumerate(prompts):
        where = name if len(prompts) == 1 else f"{name}[{index}]"
        ids, weights = token_weights(tokenizer, text, where)
        pieces = [(ids[i:i + body], weights[i:i + body]) for i in range(0, len(ids), body)] or [([], [])]
        if not chunked and len(pieces) > 1:
            logger.warning("%s is %d tokens long and this text encoder reads %d; the last %d tokens were dropped",
                           where if len(prompts) > 1 else f"the {name}", len(ids) + len(prefix) + len(suffix), length,
                           len(ids) - body)
            pieces = pieces[:1]
        per_prompt.append(pieces)
    count = max([min_chunks] + [len(pieces) for pieces in per_prompt])
    ids_out = torch.full((count, len(prompts), length), pad, dtype=torch.long)
    weights_out = torch.ones((count, len(prompts), length), dtype=torch.float32)
    mask_out = torch.zeros((count, len(prompts), length), dtype=torch.long)
    for row, pieces in enumerate(per_prompt):
        pieces = pieces + [([], [])] * (count - len(pieces))
        for chunk, (ids, weights) in enumerate(pieces):
            full = prefix + ids + suffix
            ids_out[chunk, row, :len(full)] = torch.tensor(full, dtype=torch.long)
            weights_out[chunk, row, len(prefix):len(prefix) + len(weights)] = torch.tensor(weights)
            mask_out[chunk, row, :len(full)] = 1
    return WeightedTokens(input_ids=ids_out, weights=weights_out, attention_mask=mask_out)


def apply_weights(embeds: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scale each token's embedding by its weight, then restore each prompt's mean.

    ``embeds`` is ``(prompts, tokens, width)``, ``weights`` ``(prompts, tokens)``.
    Per prompt: ``weighted = embeds * weights``, then ``weighted * mean(embeds) /
    mean(weighted)``, the means over all its tokens and features (over the tokens
    ``mask`` keeps, when given). So a weight changes a token's size relative to the
    others, not the overall size the model was trained on. Prompts whose weights
    are all 1 come back unchanged, bit for bit.
    """
    if weights.shape != embeds.shape[:2]:
        raise ValueError(f"weights has shape {tuple(weights.shape)}, but embeds {tuple(embeds.shape)} needs "
                         f"{tuple(embeds.shape[:2])}")
    weighted = embeds * weights.to(device=embeds.device, dtype=embeds.dtype).unsqueeze(-1)
    keep = (torch.ones_like(weights) if mask is None else mask).to(device=embeds.device, dtype=torch.float32)
    keep = keep.unsqueeze(-1)
    count = keep.sum(dim=(1, 2)) * embeds.shape[-1]
    before = (embeds.float() * keep).sum(dim=(1, 2)) / count
    after = (weighted.float() * keep).sum(dim=(1, 2)) / count
    # a prompt whose weighted mean is 0 (all weights 0) cannot be rescaled; it stays as weighted
    scale = torch.where(after == 0, torch.ones_like(after), before / after.where(after != 0, torch.ones_like(after)))
    restored = weighted * scale.to(embeds.dtype).view(-1, 1, 1)
    unweighted = (weights == 1).all(dim=1).to(embeds.device).view(-1, 1, 1)
    return torch.where(unweighted, embeds, restored)
