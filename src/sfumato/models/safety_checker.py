"""``StableDiffusionSafetyChecker``: the CLIP-based filter that Stable Diffusion 1.x folders carry.

A CLIP vision tower embeds each generated picture; the picture is flagged when
its cosine similarity to one of 17 concept embeddings exceeds that concept's
threshold (thresholds drop by 0.01 once one of 3 "special care" concepts
matches). Flagged pictures are replaced by black ones.

It is a transformers model (``config.json`` is a ``CLIPConfig``), as in the
reference, so the ``safety_checker`` folders of SD 1.x checkpoints load and save
unchanged: same class name, same weight names.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn
from transformers import CLIPConfig, CLIPVisionModel, PreTrainedModel

logger = logging.getLogger("sfumato")

# thresholds are compared after rounding the margin to this many decimals, as the reference does
_DECIMALS = 3
# how much every concept threshold drops once a special-care concept matched
_SPECIAL_CARE_ADJUSTMENT = 0.01


def _cosine(image_embeds: torch.Tensor, concept_embeds: torch.Tensor) -> np.ndarray:
    similarity = nn.functional.normalize(image_embeds) @ nn.functional.normalize(concept_embeds).t()
    return similarity.cpu().float().numpy()


class StableDiffusionSafetyChecker(PreTrainedModel):
    """Flags (and blackens) pictures close to any of the concept embeddings."""

    config_class = CLIPConfig
    main_input_name = "clip_input"
    _no_split_modules = ["CLIPEncoderLayer"]

    def __init__(self, config: CLIPConfig):
        super().__init__(config)
        self.vision_model = CLIPVisionModel(config.vision_config)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        # the concepts and their thresholds come from the checkpoint
        self.concept_embeds = nn.Parameter(torch.ones(17, config.projection_dim), requires_grad=False)
        self.special_care_embeds = nn.Parameter(torch.ones(3, config.projection_dim), requires_grad=False)
        self.concept_embeds_weights = nn.Parameter(torch.ones(17), requires_grad=False)
        self.special_care_embeds_weights = nn.Parameter(torch.ones(3), requires_grad=False)
        self.post_init()

    def flags(self, clip_input: torch.Tensor) -> list[bool]:
        """Whether each picture (CLIP-preprocessed, ``clip_input``) shows a flagged concept."""
        image_embeds = self.visual_projection(self.vision_model(clip_input)[1])
        special = _cosine(image_embeds, self.special_care_embeds)
        concepts = _cosine(image_embeds, self.concept_embeds)
        special_thresholds = self.special_care_embeds_weights.detach().cpu().float().numpy()
        concept_thresholds = self.concept_embeds_weights.detach().cpu().float().numpy()
        special_care = (np.round(special - special_thresholds, _DECIMALS) > 0).any(axis=1, keepdims=True)
        adjustment = np.where(special_care, np.float32(_SPECIAL_CARE_ADJUSTMENT), np.float32(0))
        margins = np.round(concepts - concept_thresholds + adjustment, _DECIMALS)
        return [bool(flagged) for flagged in (margins > 0).any(axis=1)]

    @torch.no_grad()
    def forward(self, clip_input: torch.Tensor, images):
        """``(images, has_nsfw_concepts)``: flagged pictures (tensor rows or arrays) replaced by zeros."""
        has_nsfw_concepts = self.flags(clip_input)
        for index, flagged in enumerate(has_nsfw_concepts):
            if flagged:
                images[index] = torch.zeros_like(images[index]) if torch.is_tensor(images[index]) \
                    else np.zeros(images[index].shape)
        if any(has_nsfw_concepts):
            logger.warning("Potential NSFW content was detected in one or more images. A black image will be "
                           "returned instead. Try again with a different prompt and/or seed.")
        return images, has_nsfw_concepts
