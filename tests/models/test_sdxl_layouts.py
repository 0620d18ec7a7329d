"""SDXL's released models, built at full size on the meta device: the same state-dict keys and shapes as the
reference, so the released weights load.

The configs are the ``config.json`` of stabilityai/stable-diffusion-xl-base-1.0 and -refiner-1.0, written from
memory of those files (nothing is downloaded here). Fields the reference fills with its defaults when a file
leaves them out are left out. Values I am least sure of, and what would show if they were wrong:
the refiner's ``attention_head_dim`` [6, 12, 24, 24] and ``transformer_layers_per_block`` 4 (both change only
shapes inside the attention blocks, which this test compares under whatever values are written here), and the
VAE's ``scaling_factor`` 0.13025 (no shape depends on it).
"""

from __future__ import annotations

import pytest
import torch

import diffusers
from sfumato.models.autoencoder_kl import AutoencoderKL
from sfumato.models.unet_2d_condition import UNet2DConditionModel

SDXL_BASE_UNET = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
    "center_input_sample": False, "class_embed_type": None, "class_embeddings_concat": False, "conv_in_kernel": 3,
    "conv_out_kernel": 3, "cross_attention_dim": 2048, "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "downsample_padding": 1,
    "dual_cross_attention": False, "encoder_hid_dim": None, "encoder_hid_dim_type": None, "flip_sin_to_cos": True,
    "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05,
    "norm_num_groups": 32, "num_attention_heads": None, "num_class_embeds": None, "only_cross_attention": False,
    "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False, "resnet_time_scale_shift": "default", "sample_size": 128,
    "time_cond_proj_dim": None, "time_embedding_act_fn": None, "time_embedding_dim": None,
    "time_embedding_type": "positional", "timestep_post_act": None, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": None,
    "use_linear_projection": True,
}
# the refiner: four levels, the second text encoder only (1280 wide), an aesthetic score in place of the
# target size (5 * 256 + 1280 = 2560 added-embedding features)
SDXL_REFINER_UNET = dict(
    SDXL_BASE_UNET, attention_head_dim=[6, 12, 24, 24], block_out_channels=[384, 768, 1536, 1536],
    cross_attention_dim=1280, projection_class_embeddings_input_dim=2560, transformer_layers_per_block=4,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
)
# the inpainting UNet (diffusers/stable-diffusion-xl-1.0-inpainting-0.1): the base with 9 input channels
SDXL_INPAINT_UNET = dict(SDXL_BASE_UNET, in_channels=9)
SDXL_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 1024, "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "force_upcast": True,
}


@pytest.mark.parametrize("ours_class,theirs_class,config", [
    (UNet2DConditionModel, diffusers.UNet2DConditionModel, SDXL_BASE_UNET),
    (UNet2DConditionModel, diffusers.UNet2DConditionModel, SDXL_REFINER_UNET),
    (UNet2DConditionModel, diffusers.UNet2DConditionModel, SDXL_INPAINT_UNET),
    (AutoencoderKL, diffusers.AutoencoderKL, SDXL_VAE),
], ids=["sdxl_base_unet", "sdxl_refiner_unet", "sdxl_inpaint_unet", "sdxl_vae"])
def test_full_size_layout_matches_reference(ours_class, theirs_class, config):
    with torch.device("meta"):
        reference = theirs_class(**config)
        ours = ours_class(**config)
    expected = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    got = {key: tuple(value.shape) for key, value in ours.state_dict().items()}
    assert got == expected
    assert list(got) == list(expected)  # same order, so shards split alike


def test_released_sizes():
    """The numbers the pipelines rely on: 2048-wide text context, 6 (base) or 5 (refiner) micro-conditioning
    values of 256 features next to 1280 pooled ones."""
    assert SDXL_BASE_UNET["projection_class_embeddings_input_dim"] == 6 * 256 + 1280
    assert SDXL_REFINER_UNET["projection_class_embeddings_input_dim"] == 5 * 256 + 1280
    assert SDXL_BASE_UNET["cross_attention_dim"] == 768 + 1280
