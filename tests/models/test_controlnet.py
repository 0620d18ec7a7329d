"""ControlNetModel: parity with diffusers (the oracle), from_unet, round trips, full-size layout, bad input."""

from __future__ import annotations

import pytest
import torch

import diffusers
from sfumato.models.controlnet import ControlNetModel, ControlNetOutput
from sfumato.models.unet_2d_condition import UNet2DConditionModel

from .test_unet_2d_condition import TINY_CONFIGS as UNET_CONFIGS

TOLERANCE = 1e-5

# lllyasviel/control_v11f1p_sd15_depth, config.json
SD15_CONTROLNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "class_embed_type": None,
    "conditioning_embedding_out_channels": [16, 32, 96, 256], "controlnet_conditioning_channel_order": "rgb",
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "global_pool_conditions": False,
    "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_class_embeds": None, "only_cross_attention": False, "projection_class_embeddings_input_dim": None,
    "resnet_time_scale_shift": "default", "upcast_attention": False, "use_linear_projection": False,
}

TINY = dict(SD15_CONTROLNET, block_out_channels=[32, 64, 64], attention_head_dim=[2, 4, 4], cross_attention_dim=24,
            norm_num_groups=8, down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"])
TINY_CONFIGS = {
    "sd15": TINY,  # with the released control-embedding widths: the picture is 8x the latent size
    "bgr_one_channel_mid2d_linear": dict(
        TINY, controlnet_conditioning_channel_order="bgr", conditioning_channels=1, mid_block_type="UNetMidBlock2D",
        use_linear_projection=True, conditioning_embedding_out_channels=[8, 16], layers_per_block=1,
    ),
    "class_labels_scale_shift_cross_only": dict(
        TINY, num_class_embeds=10, resnet_time_scale_shift="scale_shift", only_cross_attention=[True, False, False],
        conditioning_embedding_out_channels=[4, 8, 16], upcast_attention=True, mid_block_scale_factor=1.5,
    ),
    "sdxl_like": dict(
        TINY, block_out_channels=[32, 64], attention_head_dim=[2, 4], use_linear_projection=True,
        transformer_layers_per_block=[1, 2], addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=16 + 6 * 8, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        conditioning_embedding_out_channels=[8, 8, 16, 16],
    ),
    "global_pool_explicit_heads": dict(
        TINY, global_pool_conditions=True, num_attention_heads=[4, 2, 2], class_embed_type="timestep",
        conditioning_embedding_out_channels=[8, 8, 16, 16],
    ),
}


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Every weight random, none zero: zero-initialised convs would hide wiring mistakes."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.1)
    return model.eval()


def make_pair(config: dict, seed: int = 0):
    torch.manual_seed(seed)
    reference = randomize(diffusers.ControlNetModel(**config))
    ours = ControlNetModel(**config).eval()
    ours.load_weights(reference.state_dict(), source="the diffusers model")
    return reference, ours


def make_inputs(config: dict, batch: int = 2, size: tuple[int, int] = (8, 12), seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    factor = 2 ** (len(config["conditioning_embedding_out_channels"]) - 1)
    inputs = {
        "sample": torch.randn(batch, config["in_channels"], *size, generator=generator),
        "timestep": 37,
        "encoder_hidden_states": torch.randn(batch, 7, config["cross_attention_dim"], generator=generator),
        "controlnet_cond": torch.rand(batch, config.get("conditioning_channels", 3), factor * size[0],
                                      factor * size[1], generator=generator),
    }
    if config.get("num_class_embeds"):
        inputs["class_labels"] = torch.arange(batch)
    if config.get("class_embed_type") == "timestep":
        inputs["class_labels"] = torch.tensor([3, 500, 20, 7][:batch])
    if config.get("addition_embed_type") == "text_time":
        inputs["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, 16, generator=generator),
                                       "time_ids": torch.tensor([[64.0, 96, 0, 0, 64, 96]] * batch)}
    return inputs


def max_diff(reference, ours, inputs: dict) -> float:
    with torch.no_grad():
        expected = reference(**inputs)
        got = ours(**inputs)
    assert isinstance(got, ControlNetOutput)
    assert len(got.down_block_res_samples) == len(expected.down_block_res_samples)
    pairs = list(zip(got.down_block_res_samples, expected.down_block_res_samples))
    pairs.append((got.mid_block_res_sample, expected.mid_block_res_sample))
    for mine, theirs in pairs:
        assert mine.shape == theirs.shape
    return max((mine - theirs).abs().max().item() for mine, theirs in pairs)


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_forward_matches_reference(name):
    config = TINY_CONFIGS[name]
    reference, ours = make_pair(config)
    inputs = make_inputs(config)
    assert max_diff(reference, ours, inputs) <= TOLERANCE
    assert max_diff(reference, ours, dict(inputs, conditioning_scale=0.6, guess_mode=True)) <= TOLERANCE


def test_odd_sizes_scale_and_broadcast_picture_match_reference():
    reference, ours = make_pair(TINY)
    inputs = make_inputs(TINY, size=(9, 13))  # odd latent: the picture is 72 x 104
    inputs["conditioning_scale"] = 0.35
    assert max_diff(reference, ours, inputs) <= TOLERANCE
    inputs["controlnet_cond"] = inputs["controlnet_cond"][:1]  # one picture for the whole batch
    inputs["timestep"] = torch.tensor([5, 900])
    assert max_diff(reference, ours, inputs) <= TOLERANCE


def test_attention_mask_hides_text_tokens():
    """The mask is over the text tokens (the reference applies it to self-attention and fails): masked
    tokens count as absent."""
    _, ours = make_pair(TINY)
    inputs = make_inputs(TINY, batch=1)
    mask = torch.ones(1, 7)
    mask[0, 4:] = 0
    with torch.no_grad():
        masked = ours(**inputs, attention_mask=mask)
        shortened = ours(**dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"][:, :4]))
        full = ours(**inputs)
    pairs = list(zip(masked.down_block_res_samples, shortened.down_block_res_samples))
    assert max((a - b).abs().max().item() for a, b in pairs) <= TOLERANCE
    assert (masked.mid_block_res_sample - shortened.mid_block_res_sample).abs().max().item() <= TOLERANCE
    assert (masked.mid_block_res_sample - full.mid_block_res_sample).abs().max().item() > 1e-3


def test_controlnet_then_unet_matches_reference():
    """One guided step as the ControlNet pipelines take it: residuals from the ControlNet into the UNet."""
    unet_config = UNET_CONFIGS["stable_diffusion"]  # block widths (32, 64, 64), cross_attention_dim 24, like TINY
    torch.manual_seed(0)
    reference_unet = randomize(diffusers.UNet2DConditionModel(**unet_config))
    ours_unet = UNet2DConditionModel(**unet_config).eval()
    ours_unet.load_weights(reference_unet.state_dict())
    reference_controlnet = randomize(diffusers.ControlNetModel.from_unet(reference_unet))
    ours_controlnet = ControlNetModel.from_unet(ours_unet).eval()
    ours_controlnet.load_weights(reference_controlnet.state_dict())

    inputs = make_inputs(dict(SD15_CONTROLNET, cross_attention_dim=24), size=(8, 12))
    with torch.no_grad():
        predictions = []
        for unet, controlnet in ((reference_unet, reference_controlnet), (ours_unet, ours_controlnet)):
            down, mid = controlnet(**inputs, conditioning_scale=0.8, return_dict=False)
            predictions.append(unet(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"],
                                    down_block_additional_residuals=down, mid_block_additional_residual=mid).sample)
    assert (predictions[0] - predictions[1]).abs().max().item() <= TOLERANCE


def test_from_unet_matches_reference():
    unet_config = dict(UNET_CONFIGS["stable_diffusion"], num_class_embeds=10)
    torch.manual_seed(0)
    reference_unet = randomize(diffusers.UNet2DConditionModel(**unet_config))
    ours_unet = UNet2DConditionModel(**unet_config).eval()
    ours_unet.load_weights(reference_unet.state_dict())
    reference = diffusers.ControlNetModel.from_unet(reference_unet, conditioning_embedding_out_channels=(4, 8),
                                                    conditioning_channels=1)
    ours = ControlNetModel.from_unet(ours_unet, conditioning_embedding_out_channels=(4, 8), conditioning_channels=1)

    public = lambda config: {k: v for k, v in dict(config).items() if not k.startswith("_")}  # noqa: E731
    assert public(ours.config) == public(reference.config)
    expected, got = reference.state_dict(), ours.state_dict()
    assert list(got) == list(expected)
    copied = ("conv_in.", "time_embedding.", "class_embedding.", "down_blocks.", "mid_block.")
    for key, value in got.items():
        if key.startswith(copied):  # the UNet's weights, exactly
            assert torch.equal(value, expected[key]), key
        elif key.startswith(("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.conv_out")):
            assert not value.any(), key  # zero-initialised, as in the reference
    # so a fresh ControlNet adds nothing
    inputs = make_inputs(dict(SD15_CONTROLNET, cross_attention_dim=24, conditioning_channels=1,
                              conditioning_embedding_out_channels=(4, 8)), size=(4, 6))
    inputs["class_labels"] = torch.tensor([1, 2])
    with torch.no_grad():
        output = ours(**inputs)
    assert all(not residual.any() for residual in output.down_block_res_samples)
    assert not output.mid_block_res_sample.any()

    untied = ControlNetModel.from_unet(ours_unet, load_weights_from_unet=False)
    assert not torch.equal(untied.conv_in.weight, ours_unet.conv_in.weight)


def test_output_forms():
    _, ours = make_pair(TINY)
    inputs = make_inputs(TINY, batch=1)
    with torch.no_grad():
        output = ours(**inputs)
        down, mid = ours(**inputs, return_dict=False)
    assert isinstance(output.down_block_res_samples, tuple)
    # conv_in's, then per stage each layer's and the downsampler's: one per UNet skip
    assert [tuple(residual.shape) for residual in down] == (
        [(1, 32, 8, 12)] * 3 + [(1, 32, 4, 6)] + [(1, 64, 4, 6)] * 2 + [(1, 64, 2, 3)] * 3
    )
    assert all(torch.equal(a, b) for a, b in zip(down, output.down_block_res_samples))
    assert torch.equal(mid, output.mid_block_res_sample) and tuple(mid.shape) == (1, 64, 2, 3)


def test_attention_processors_match_reference():
    reference, ours = make_pair(TINY)
    assert list(ours.attn_processors) == list(reference.attn_processors)
    inputs = make_inputs(TINY)
    reference.set_default_attn_processor()
    ours.set_default_attn_processor()
    assert max_diff(reference, ours, inputs) <= TOLERANCE


def test_checkpoints_round_trip_both_ways(tmp_path):
    config = TINY_CONFIGS["class_labels_scale_shift_cross_only"]
    reference, _ = make_pair(config)
    inputs = make_inputs(config)
    reference.save_pretrained(tmp_path / "theirs")
    ours = ControlNetModel.from_pretrained(tmp_path / "theirs")
    assert max_diff(reference, ours, inputs) <= TOLERANCE
    ours.save_pretrained(tmp_path / "ours")
    reloaded = diffusers.ControlNetModel.from_pretrained(tmp_path / "ours").eval()
    assert max_diff(reloaded, ours, inputs) <= TOLERANCE


def test_full_size_layout_matches_reference():
    with torch.device("meta"):
        reference = diffusers.ControlNetModel(**SD15_CONTROLNET)
        ours = ControlNetModel(**SD15_CONTROLNET)
    expected = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    got = {key: tuple(value.shape) for key, value in ours.state_dict().items()}
    assert got == expected
    assert list(got) == list(expected)  # same order, so shards split alike
    assert ours.num_parameters() == 361_279_120


# -- bad input --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return make_pair(TINY)[1]


def test_wrong_control_image_is_named(tiny):
    inputs = make_inputs(TINY)
    inputs["controlnet_cond"] = torch.rand(2, 3, 32, 48)  # 4x, not 8x, the latent size
    with pytest.raises(ValueError, match=r"controlnet_cond must have shape \(2, 3, 64, 96\) \(a picture 8x the "
                                         r"latent size, batch 2 or 1\), got \(2, 3, 32, 48\)"):
        tiny(**inputs)
    inputs["controlnet_cond"] = torch.rand(2, 1, 64, 96)
    with pytest.raises(ValueError, match=r"got \(2, 1, 64, 96\)"):
        tiny(**inputs)
    inputs["controlnet_cond"] = torch.rand(3, 3, 64, 96)
    with pytest.raises(ValueError, match=r"got \(3, 3, 64, 96\)"):
        tiny(**inputs)
    inputs["controlnet_cond"] = None
    with pytest.raises(ValueError, match="got NoneType"):
        tiny(**inputs)


def test_wrong_sample_and_text_are_named(tiny):
    inputs = make_inputs(TINY)
    inputs["sample"] = torch.randn(2, 3, 8, 12)
    with pytest.raises(ValueError, match=r"sample must be a 4-D tensor \(batch, 4, height, width\), "
                                         r"got \(2, 3, 8, 12\)"):
        tiny(**inputs)
    inputs = make_inputs(TINY)
    inputs["encoder_hidden_states"] = torch.randn(2, 7, 32)
    with pytest.raises(ValueError, match=r"encoder_hidden_states must have shape \(2, tokens, 24\), got \(2, 7, 32\)"):
        tiny(**inputs)


def test_missing_conditions_are_named():
    config = TINY_CONFIGS["sdxl_like"]
    _, ours = make_pair(config)
    inputs = make_inputs(config)
    del inputs["added_cond_kwargs"]["time_ids"]
    with pytest.raises(ValueError, match=r"added_cond_kwargs must contain \['text_embeds', 'time_ids'\].*missing "
                                         r"\['time_ids'\]"):
        ours(**inputs)
    config = TINY_CONFIGS["class_labels_scale_shift_cross_only"]
    _, ours = make_pair(config)
    inputs = make_inputs(config)
    del inputs["class_labels"]
    with pytest.raises(ValueError, match="class_labels must be given"):
        ours(**inputs)


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match="controlnet_conditioning_channel_order must be one of"):
        ControlNetModel(**dict(TINY, controlnet_conditioning_channel_order="rbg"))
    with pytest.raises(ValueError, match="mid_block_type must be one of"):
        ControlNetModel(**dict(TINY, mid_block_type=None))
    with pytest.raises(ValueError, match="block_out_channels must have one entry per down block"):
        ControlNetModel(**dict(TINY, block_out_channels=[32, 64]))
    with pytest.raises(NotImplementedError, match="encoder_hid_dim"):
        ControlNetModel(**dict(TINY, encoder_hid_dim=16))
    with pytest.raises(NotImplementedError, match="addition_embed_type='text'"):
        ControlNetModel(**dict(TINY, addition_embed_type="text"))
    with pytest.raises(ValueError, match="conditioning_embedding_out_channels must list"):
        ControlNetModel(**dict(TINY, conditioning_embedding_out_channels=None))
