"""The SD x4 upscaler's and the x2 latent upscaler's UNets: parity with diffusers (the oracle), full-size layouts."""

from __future__ import annotations

import re

import pytest
import torch

import diffusers
from sfumato.models.unet_2d_condition import UNet2DConditionModel

TOLERANCE = 1e-5

# stabilityai/stable-diffusion-x4-upscaler, unet/config.json (values from the original x4-upscaling.yaml:
# model_channels 256, channel_mult [1, 2, 2, 4], attention at levels 2-4, disable_self_attentions
# [True, True, True, False], num_heads 8, num_classes 1000, context_dim 1024, use_linear_in_transformer)
X4_UPSCALER = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [256, 512, 512, 1024],
    "center_input_sample": False, "cross_attention_dim": 1024,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "in_channels": 7, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_class_embeds": 1000, "only_cross_attention": [True, True, True, False], "out_channels": 4,
    "sample_size": 128,
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
# stabilityai/sd-x2-latent-upscaler, unet/config.json (converted from k-diffusion's
# laion_text_cond_latent_upscaler_2: input 4 + unet_cond 4 channels, 4 + variance out, widths
# [384, 384, 768, 768], depth 4, mapping_cond_dim 896 = 128 noise-level features + 768 pooled CLIP text)
X2_LATENT_UPSCALER = {
    "act_fn": "gelu", "attention_head_dim": 64, "block_out_channels": [384, 384, 768, 768],
    "center_input_sample": False, "class_embed_type": None, "conv_in_kernel": 1, "conv_out_kernel": 1,
    "cross_attention_dim": 768,
    "down_block_types": ["KDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "in_channels": 8, "layers_per_block": 4, "mid_block_scale_factor": 1, "mid_block_type": None, "norm_eps": 1e-05,
    "norm_num_groups": None, "num_class_embeds": None, "only_cross_attention": False, "out_channels": 5,
    "resnet_time_scale_shift": "scale_shift", "sample_size": None, "time_cond_proj_dim": 896,
    "time_embedding_type": "fourier", "timestep_post_act": "gelu",
    "up_block_types": ["KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KUpBlock2D"],
    "upcast_attention": False, "use_linear_projection": False,
}

TINY_X4 = dict(X4_UPSCALER, block_out_channels=[32, 32, 64], cross_attention_dim=24, norm_num_groups=8,
               only_cross_attention=[True, True, False], sample_size=16,
               down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
               up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"])
# the reference's pipeline tests build this one; the second narrows differently and has one layer per stage
TINY_X2 = dict(X2_LATENT_UPSCALER, block_out_channels=[32, 32, 64, 64], attention_head_dim=8, layers_per_block=2,
               cross_attention_dim=32, time_cond_proj_dim=160)
TINY_CONFIGS = {
    "x4": TINY_X4,
    "x4_one_layer_all_cross_only": dict(TINY_X4, layers_per_block=1, only_cross_attention=True, attention_head_dim=4,
                                        upcast_attention=True),
    "x2": TINY_X2,
    "x2_one_layer_wide_heads": dict(TINY_X2, layers_per_block=1, attention_head_dim=16, flip_sin_to_cos=False,
                                    block_out_channels=[64, 64, 128, 128], time_cond_proj_dim=96),
}


def make_pair(config: dict, seed: int = 0):
    """A diffusers UNet with every weight random (none zero) and ours with the same weights."""
    torch.manual_seed(seed)
    reference = diffusers.UNet2DConditionModel(**config)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.1)
    reference.eval()
    ours = UNet2DConditionModel(**config).eval()
    ours.load_weights(reference.state_dict(), source="the diffusers model")
    return reference, ours


def make_inputs(config: dict, batch: int = 2, size: tuple[int, int] = (16, 24), seed: int = 1) -> dict:
    """What the upscale pipelines hand their UNet: noise level as class label (x4) or as timestep_cond (x2)."""
    generator = torch.Generator().manual_seed(seed)
    inputs = {
        "sample": torch.randn(batch, config["in_channels"], *size, generator=generator),
        "encoder_hidden_states": torch.randn(batch, 7, config["cross_attention_dim"], generator=generator),
    }
    if config.get("time_embedding_type") == "fourier":
        inputs["timestep"] = torch.tensor(0.25 * 1.7).log()  # log(sigma) / 4, 0-d, as the x2 pipeline passes it
        inputs["timestep_cond"] = torch.randn(batch, config["time_cond_proj_dim"], generator=generator)
    else:
        inputs["timestep"] = torch.tensor(412)
        inputs["class_labels"] = torch.tensor([20, 350, 0, 999][:batch])  # the x4 pipeline's noise_level
    return inputs


def max_diff(reference, ours, inputs: dict) -> float:
    with torch.no_grad():
        expected = reference(**inputs).sample
        got = ours(**inputs).sample
    assert got.shape == expected.shape
    return (got - expected).abs().max().item()


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_forward_matches_reference(name):
    config = TINY_CONFIGS[name]
    reference, ours = make_pair(config)
    assert max_diff(reference, ours, make_inputs(config)) <= TOLERANCE


def test_x4_odd_sizes_batch_one_and_text_mask_match_reference():
    reference, ours = make_pair(TINY_X4)
    inputs = make_inputs(TINY_X4, batch=1, size=(13, 10))  # the upsamplers follow the skip sizes
    assert max_diff(reference, ours, inputs) <= TOLERANCE
    inputs = make_inputs(TINY_X4)
    mask = torch.ones(2, 7)
    mask[0, 5:] = 0
    inputs["encoder_attention_mask"] = mask
    assert max_diff(reference, ours, inputs) <= TOLERANCE


def test_x2_timestep_forms_and_text_mask_match_reference():
    reference, ours = make_pair(TINY_X2)
    inputs = make_inputs(TINY_X2, size=(16, 32))
    inputs["timestep"] = torch.tensor([-0.3, 0.6])
    mask = torch.ones(2, 7)
    mask[1, 3:] = 0
    inputs["encoder_attention_mask"] = mask
    assert max_diff(reference, ours, inputs) <= TOLERANCE


def test_x2_gradients_flow_like_reference():
    reference, ours = make_pair(TINY_X2)
    inputs = make_inputs(TINY_X2, size=(16, 16))
    reference(**inputs).sample.square().mean().backward()
    ours(**inputs).sample.square().mean().backward()
    theirs = dict(reference.named_parameters())
    for name, parameter in ours.named_parameters():
        if theirs[name].grad is None:  # the Fourier features are frozen, as in the reference
            assert parameter.grad is None, name
            continue
        assert (parameter.grad - theirs[name].grad).abs().max().item() <= 1e-5, name


def test_checkpoints_round_trip_both_ways(tmp_path):
    for name in ("x4", "x2"):
        config = TINY_CONFIGS[name]
        reference, _ = make_pair(config)
        inputs = make_inputs(config, size=(16, 16))
        reference.save_pretrained(tmp_path / name / "theirs")
        ours = UNet2DConditionModel.from_pretrained(tmp_path / name / "theirs")
        assert max_diff(reference, ours, inputs) <= TOLERANCE
        ours.save_pretrained(tmp_path / name / "ours")
        reloaded = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / name / "ours").eval()
        assert max_diff(reloaded, ours, inputs) <= TOLERANCE


@pytest.mark.parametrize("config", [X4_UPSCALER, X2_LATENT_UPSCALER], ids=["x4_upscaler", "x2_latent_upscaler"])
def test_full_size_layout_matches_reference(config):
    with torch.device("meta"):
        reference = diffusers.UNet2DConditionModel(**config)
        ours = UNet2DConditionModel(**config)
    expected = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    got = {key: tuple(value.shape) for key, value in ours.state_dict().items()}
    assert got == expected
    assert list(got) == list(expected)  # same order, so shards split alike


def test_full_size_parameter_counts():
    """Guards the written-out configs: 473.4M (x4) and 372.6M (x2) parameters."""
    with torch.device("meta"):
        counts = [UNet2DConditionModel(**config).num_parameters() for config in (X4_UPSCALER, X2_LATENT_UPSCALER)]
    assert counts == [473_398_020, 372_560_645]


# -- bad input --------------------------------------------------------------------------------------------------


def test_x2_sizes_must_be_multiples_of_the_upsampling():
    _, ours = make_pair(TINY_X2)
    for size in [(12, 16), (16, 8)]:
        inputs = make_inputs(TINY_X2, size=size)
        pattern = rf"multiples of 8 and at least 16 .*KCrossAttnUpBlock2D.*got {re.escape(str(size))}"
        with pytest.raises(ValueError, match=pattern):
            ours(**inputs)


def test_x4_needs_the_noise_level():
    _, ours = make_pair(TINY_X4)
    inputs = make_inputs(TINY_X4)
    del inputs["class_labels"]
    with pytest.raises(ValueError, match="class_labels must be given"):
        ours(**inputs)
