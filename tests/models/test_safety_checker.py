"""StableDiffusionSafetyChecker: the same flags and blackened pictures as the reference, and its folder layout."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import CLIPConfig

from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker as Reference
from sfumato.models.safety_checker import StableDiffusionSafetyChecker


def tiny_config() -> CLIPConfig:
    return CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=64, bos_token_id=62, eos_token_id=63, pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=12,
    )


def _cosine(embeds: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(embeds) @ nn.functional.normalize(concepts).t()


def make_reference(clip_input: torch.Tensor, seed: int = 0) -> Reference:
    """Random weights; concepts placed on the pictures' own embeddings so that picture 0 is flagged only through
    the special-care adjustment (its threshold is 0.005 above its similarity, the adjustment 0.01), picture 2
    directly, and the others not."""
    torch.manual_seed(seed)
    checker = Reference(tiny_config()).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in checker.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
        embeds = nn.functional.normalize(checker.visual_projection(checker.vision_model(clip_input)[1]))
        checker.special_care_embeds_weights.fill_(2.0)
        checker.concept_embeds_weights.fill_(2.0)
        checker.special_care_embeds[1] = embeds[0]
        checker.special_care_embeds_weights[1] = 0.99
        checker.concept_embeds[3] = embeds[0]
        checker.concept_embeds_weights[3] = 1.005
        checker.concept_embeds[5] = embeds[2]
        checker.concept_embeds_weights[5] = 0.99
    return checker


def test_flags_and_black_pictures_match_reference():
    clip_input = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    reference = make_reference(clip_input)
    ours = StableDiffusionSafetyChecker(tiny_config()).eval()
    ours.load_state_dict(reference.state_dict())
    pictures = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    expected_images, expected_flags = reference(clip_input=clip_input, images=pictures.clone())
    images, flags = ours(clip_input=clip_input, images=pictures.clone())
    assert flags == expected_flags
    assert flags == [True, False, True, False, False, False]
    assert torch.equal(images, expected_images)
    assert torch.equal(images[0], torch.zeros_like(images[0]))
    arrays = [np.asarray(p.permute(1, 2, 0)) for p in pictures]
    expected_arrays, _ = reference(clip_input=clip_input, images=[a.copy() for a in arrays])
    got_arrays, _ = ours(clip_input=clip_input, images=[a.copy() for a in arrays])
    assert all(np.array_equal(a, b) for a, b in zip(got_arrays, expected_arrays))


def test_folder_loads_both_ways(tmp_path):
    clip_input = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    reference = make_reference(clip_input)
    reference.save_pretrained(tmp_path / "theirs")
    ours = StableDiffusionSafetyChecker.from_pretrained(tmp_path / "theirs").eval()
    ours.save_pretrained(tmp_path / "ours")
    again = Reference.from_pretrained(tmp_path / "ours").eval()
    for model in (ours, again):
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
