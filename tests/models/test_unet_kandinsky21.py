"""UNet2DConditionModel with Kandinsky 2.1's conditioning (text + image tokens, text + image time embedding).

Text-to-image takes 4 latent channels, inpainting 9 (latents, masked-image latents, mask).
The 2.1 text-to-image tiny parity, its attention mask and the full-size text-to-image
layout are in test_unet_2d_condition.py; this file adds inpainting and more shapes.
"""

from __future__ import annotations

import pytest
import torch

import diffusers
from sfumato.models.unet_2d_condition import UNet2DConditionModel

from .test_unet_2d_condition import KANDINSKY_21_DECODER, TINY_KANDINSKY, TOLERANCE, make_inputs, make_pair, max_diff

KANDINSKY_21_INPAINT = dict(KANDINSKY_21_DECODER, in_channels=9)

TINY_21 = dict(TINY_KANDINSKY, addition_embed_type="text_image", encoder_hid_dim_type="text_image_proj",
               encoder_hid_dim=20, cross_attention_dim=24)
TINY_CONFIGS = {
    "inpaint": dict(TINY_21, in_channels=9),
    # two levels, one layer, wide heads, text width above the cross-attention width
    "inpaint_two_levels": dict(
        TINY_21, in_channels=9, block_out_channels=[32, 64], layers_per_block=1, attention_head_dim=16,
        encoder_hid_dim=40, cross_attention_dim=16,
        down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
        up_block_types=["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
    ),
    "text2img_per_block_heads": dict(TINY_21, attention_head_dim=[8, 16, 32], layers_per_block=[1, 2, 1]),
}


def text_image_inputs(config: dict, batch: int = 2, tokens: int = 5, size=(8, 12), seed: int = 1) -> dict:
    """What the 2.1 pipelines pass: text hidden states, pooled text embeds and image embeds."""
    inputs = make_inputs(config, batch=batch, size=size, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    inputs["encoder_hidden_states"] = torch.randn(batch, tokens, config["encoder_hid_dim"], generator=generator)
    return inputs


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_forward_matches_reference(name):
    config = TINY_CONFIGS[name]
    reference, ours = make_pair(config)
    inputs = text_image_inputs(config)
    assert inputs["sample"].shape[1] == config["in_channels"]
    assert set(inputs["added_cond_kwargs"]) == {"text_embeds", "image_embeds"}
    assert max_diff(reference, ours, inputs) <= TOLERANCE


def test_every_condition_changes_the_output():
    """Each input reaches the network (a wiring check that the parity test alone would not make)."""
    config = TINY_CONFIGS["inpaint"]
    _, ours = make_pair(config)
    inputs = text_image_inputs(config, batch=1, size=(8, 8))
    with torch.no_grad():
        base = ours(**inputs).sample
        for key in ("text_embeds", "image_embeds"):
            changed = dict(inputs, added_cond_kwargs=dict(inputs["added_cond_kwargs"]))
            changed["added_cond_kwargs"][key] = changed["added_cond_kwargs"][key] + 1
            assert (ours(**changed).sample - base).abs().max() > 1e-3, key
        changed = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"] + 1)
        assert (ours(**changed).sample - base).abs().max() > 1e-3
        sample = inputs["sample"].clone()
        sample[:, 8] += 1  # the mask channel
        assert (ours(**dict(inputs, sample=sample)).sample - base).abs().max() > 1e-3


def test_inpaint_checkpoint_round_trip(tmp_path):
    config = TINY_CONFIGS["inpaint"]
    reference, _ = make_pair(config, seed=4)
    inputs = text_image_inputs(config, size=(8, 8))
    reference.save_pretrained(tmp_path / "theirs")
    ours = UNet2DConditionModel.from_pretrained(tmp_path / "theirs")
    assert max_diff(reference, ours, inputs) <= TOLERANCE
    ours.save_pretrained(tmp_path / "ours")
    reloaded = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "ours").eval()
    assert max_diff(reloaded, ours, inputs) <= TOLERANCE


def test_full_size_inpaint_layout_matches_reference():
    with torch.device("meta"):
        reference = diffusers.UNet2DConditionModel(**KANDINSKY_21_INPAINT)
        ours = UNet2DConditionModel(**KANDINSKY_21_INPAINT)
    expected = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    got = {key: tuple(value.shape) for key, value in ours.state_dict().items()}
    assert got == expected
    assert list(got) == list(expected)
    assert got["conv_in.weight"] == (384, 9, 3, 3)
    assert got["encoder_hid_proj.text_proj.weight"] == (768, 1024)
    assert got["encoder_hid_proj.image_embeds.weight"] == (10 * 768, 768)
    assert got["add_embedding.text_proj.weight"] == (1536, 768)
