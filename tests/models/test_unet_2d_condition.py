"""UNet2DConditionModel: parity with diffusers (the oracle), checkpoint round trips, full-size layouts, bad input."""

from __future__ import annotations

import pytest
import torch

import diffusers
from sfumato.models.attention_processor import AttnAddedKVProcessor, AttnAddedKVProcessor2_0, AttnProcessor2_0
from sfumato.models.unet_2d_condition import UNet2DConditionModel, UNet2DConditionOutput

TOLERANCE = 1e-5

# the released configs (config.json of the unet folders), verbatim
KANDINSKY_22_DECODER = {
    "act_fn": "silu", "addition_embed_type": "image", "addition_embed_type_num_heads": 64, "attention_head_dim": 64,
    "block_out_channels": [384, 768, 1152, 1536], "center_input_sample": False, "class_embed_type": None,
    "class_embeddings_concat": False, "conv_in_kernel": 3, "conv_out_kernel": 3, "cross_attention_dim": 768,
    "cross_attention_norm": None,
    "down_block_types": ["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D",
                         "SimpleCrossAttnDownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "encoder_hid_dim": 1280,
    "encoder_hid_dim_type": "image_proj", "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 3, "mid_block_only_cross_attention": None, "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_class_embeds": None, "only_cross_attention": False, "out_channels": 8,
    "projection_class_embeddings_input_dim": None, "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "scale_shift", "sample_size": 64, "time_cond_proj_dim": None,
    "time_embedding_act_fn": None, "time_embedding_dim": None, "time_embedding_type": "positional",
    "timestep_post_act": None,
    "up_block_types": ["SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
                       "ResnetUpsampleBlock2D"],
    "upcast_attention": False, "use_linear_projection": False,
}
# the depth ControlNet decoder: the hint's 4 feature channels are concatenated to the 4 latent channels
KANDINSKY_22_CONTROLNET = dict(KANDINSKY_22_DECODER, addition_embed_type="image_hint", in_channels=8)
# Kandinsky 2.1: multilingual-CLIP text tokens (1024 wide) plus image tokens
KANDINSKY_21_DECODER = dict(KANDINSKY_22_DECODER, addition_embed_type="text_image",
                            encoder_hid_dim_type="text_image_proj", encoder_hid_dim=1024)
STABLE_DIFFUSION_15 = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

# tiny configs, each exercising some config switches
TINY_KANDINSKY = dict(
    KANDINSKY_22_DECODER, block_out_channels=[32, 64, 96], attention_head_dim=8, layers_per_block=2,
    cross_attention_dim=24, encoder_hid_dim=20, norm_num_groups=8, sample_size=8,
    down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"],
    up_block_types=["SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
)
TINY_CONFIGS = {
    "kandinsky22": TINY_KANDINSKY,
    "kandinsky22_out4_per_block_heads": dict(
        TINY_KANDINSKY, out_channels=4, attention_head_dim=[8, 16, 32], layers_per_block=[1, 2, 1],
        resnet_skip_time_act=True, resnet_out_scale_factor=2.0, mid_block_scale_factor=1.5,
    ),
    "kandinsky22_cross_only_group_norm": dict(
        TINY_KANDINSKY, block_out_channels=[16, 32], attention_head_dim=16, only_cross_attention=True,
        cross_attention_norm="group_norm", cross_attention_dim=32, resnet_time_scale_shift="default",
        norm_num_groups=4,
        down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
        up_block_types=["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
    ),
    "kandinsky22_controlnet": dict(
        TINY_KANDINSKY, addition_embed_type="image_hint", in_channels=8, out_channels=8, block_out_channels=[32, 64],
        attention_head_dim=16, layers_per_block=1,
        down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
        up_block_types=["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
    ),
    "kandinsky21": dict(
        TINY_KANDINSKY, addition_embed_type="text_image", encoder_hid_dim_type="text_image_proj",
        encoder_hid_dim=20, cross_attention_dim=24,
    ),
    "stable_diffusion": dict(
        STABLE_DIFFUSION_15, block_out_channels=[32, 64, 64], attention_head_dim=[2, 4, 4], cross_attention_dim=24,
        norm_num_groups=8, sample_size=8,
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    ),
    "sdxl_like": dict(
        STABLE_DIFFUSION_15, block_out_channels=[32, 64], attention_head_dim=[2, 4], cross_attention_dim=24,
        norm_num_groups=8, use_linear_projection=True, transformer_layers_per_block=[1, 2],
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
    ),
    "upscaler_like": dict(
        STABLE_DIFFUSION_15, in_channels=7, block_out_channels=[32, 64], attention_head_dim=8, cross_attention_dim=24,
        norm_num_groups=8, num_class_embeds=10, mid_block_type="UNetMidBlock2D",
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
    ),
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


def make_inputs(config: dict, batch: int = 2, size: tuple[int, int] = (8, 12), seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    hint = config.get("addition_embed_type") == "image_hint"
    channels = config["in_channels"] - (4 if hint else 0)
    inputs = {"sample": torch.randn(batch, channels, *size, generator=generator), "timestep": 37,
              "encoder_hidden_states": None, "added_cond_kwargs": {}}
    kind = config.get("encoder_hid_dim_type")
    if kind in ("image_proj", "text_image_proj"):
        inputs["added_cond_kwargs"]["image_embeds"] = torch.randn(
            batch, config["encoder_hid_dim"] if kind == "image_proj" else config["cross_attention_dim"],
            generator=generator)
    if kind == "text_image_proj":
        inputs["encoder_hidden_states"] = torch.randn(batch, 5, config["encoder_hid_dim"], generator=generator)
        inputs["added_cond_kwargs"]["text_embeds"] = torch.randn(batch, config["cross_attention_dim"],
                                                                 generator=generator)
    if kind is None:
        inputs["encoder_hidden_states"] = torch.randn(batch, 7, config["cross_attention_dim"], generator=generator)
    if hint:
        inputs["added_cond_kwargs"]["hint"] = torch.rand(batch, 3, 8 * size[0], 8 * size[1], generator=generator)
    if config.get("addition_embed_type") == "text_time":
        inputs["added_cond_kwargs"]["text_embeds"] = torch.randn(batch, 16, generator=generator)
        inputs["added_cond_kwargs"]["time_ids"] = torch.tensor([[64.0, 96, 0, 0, 64, 96]] * batch)
    if config.get("num_class_embeds"):
        inputs["class_labels"] = torch.arange(batch)
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


@pytest.mark.parametrize(
    "timestep",
    [7, 412.5, torch.tensor(999), torch.tensor([3.0]), torch.tensor([5, 900])],
    ids=["int", "float", "0d", "1d_one", "1d_batch"],
)
def test_timestep_forms_match_reference(timestep):
    reference, ours = make_pair(TINY_KANDINSKY)
    inputs = dict(make_inputs(TINY_KANDINSKY, size=(8, 8)), timestep=timestep)
    assert max_diff(reference, ours, inputs) <= TOLERANCE


def test_stable_diffusion_masks_odd_sizes_and_controlnet_residuals_match_reference():
    config = TINY_CONFIGS["stable_diffusion"]
    reference, ours = make_pair(config)
    inputs = make_inputs(config, size=(9, 13))  # not a multiple of 4: upsamplers follow the skip sizes
    mask = torch.ones(2, 7)
    mask[1, 4:] = 0
    inputs["encoder_attention_mask"] = mask
    assert max_diff(reference, ours, inputs) <= TOLERANCE

    generator = torch.Generator().manual_seed(3)
    shapes = [(2, 32, 9, 13)] * 3 + [(2, 32, 5, 7), (2, 64, 5, 7), (2, 64, 5, 7), (2, 64, 3, 4)] + [(2, 64, 3, 4)] * 2
    inputs["down_block_additional_residuals"] = tuple(torch.randn(s, generator=generator) for s in shapes)
    inputs["mid_block_additional_residual"] = torch.randn(2, 64, 3, 4, generator=generator)
    assert max_diff(reference, ours, inputs) <= TOLERANCE


def test_kandinsky_attention_mask_matches_reference():
    config = TINY_CONFIGS["kandinsky21"]
    reference, ours = make_pair(config)
    inputs = make_inputs(config, size=(8, 8))
    mask = torch.ones(2, 15)  # 10 image tokens + 5 text tokens
    mask[0, 12:] = 0
    inputs["attention_mask"] = mask
    assert max_diff(reference, ours, inputs) <= TOLERANCE


def test_output_forms():
    _, ours = make_pair(TINY_KANDINSKY)
    inputs = make_inputs(TINY_KANDINSKY, batch=1, size=(8, 8))
    with torch.no_grad():
        output = ours(**inputs)
        as_tuple = ours(**inputs, return_dict=False)
    assert isinstance(output, UNet2DConditionOutput)
    assert output.sample.shape == (1, 8, 8, 8)  # learned variance: noise and variance channels
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    assert torch.equal(as_tuple[0], output.sample) and torch.equal(output[0], output.sample)


def test_attention_processors_match_reference():
    reference, ours = make_pair(TINY_KANDINSKY)
    assert list(ours.attn_processors) == list(reference.attn_processors)
    assert all(isinstance(p, AttnAddedKVProcessor2_0) for p in ours.attn_processors.values())
    inputs = make_inputs(TINY_KANDINSKY, size=(8, 8))
    reference.set_default_attn_processor()
    ours.set_default_attn_processor()
    assert all(isinstance(p, AttnAddedKVProcessor) for p in ours.attn_processors.values())
    assert max_diff(reference, ours, inputs) <= TOLERANCE
    ours.set_attn_processor(AttnAddedKVProcessor2_0())  # the guide's explicit SDPA switch
    ours.enable_xformers_memory_efficient_attention()
    assert max_diff(reference, ours, inputs) <= TOLERANCE

    sd_reference, sd_ours = make_pair(TINY_CONFIGS["stable_diffusion"])
    assert list(sd_ours.attn_processors) == list(sd_reference.attn_processors)
    sd_ours.set_attn_processor({name: AttnProcessor2_0() for name in sd_ours.attn_processors})


def test_diffusers_checkpoint_loads_and_ours_loads_in_diffusers(tmp_path):
    config = TINY_CONFIGS["kandinsky22_controlnet"]
    reference, _ = make_pair(config)
    inputs = make_inputs(config, size=(8, 8))
    reference.save_pretrained(tmp_path / "theirs")
    ours = UNet2DConditionModel.from_pretrained(tmp_path / "theirs")
    assert max_diff(reference, ours, inputs) <= TOLERANCE
    assert ours.config.addition_embed_type == "image_hint"

    ours.save_pretrained(tmp_path / "ours")
    reloaded = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "ours").eval()
    assert max_diff(reloaded, ours, inputs) <= TOLERANCE
    public = lambda config: {k: v for k, v in dict(config).items() if not k.startswith("_")}  # noqa: E731
    assert public(reloaded.config) == public(reference.config)


@pytest.mark.parametrize(
    "config", [KANDINSKY_22_DECODER, KANDINSKY_22_CONTROLNET, STABLE_DIFFUSION_15, KANDINSKY_21_DECODER],
    ids=["kandinsky22_decoder", "kandinsky22_controlnet", "stable_diffusion_15", "kandinsky21_decoder"],
)
def test_full_size_layout_matches_reference(config):
    with torch.device("meta"):
        reference = diffusers.UNet2DConditionModel(**config)
        ours = UNet2DConditionModel(**config)
    expected = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    got = {key: tuple(value.shape) for key, value in ours.state_dict().items()}
    assert got == expected
    assert list(got) == list(expected)  # same order, so shards split alike


# -- bad input --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pair():
    return {name: make_pair(TINY_CONFIGS[name])[1] for name in ("kandinsky22", "kandinsky22_controlnet")}


def test_wrong_sample_channels_are_named(tiny_pair):
    inputs = make_inputs(TINY_KANDINSKY, size=(8, 8))
    inputs["sample"] = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"sample has 3 channels, but this UNet takes 4"):
        tiny_pair["kandinsky22"](**inputs)
    inputs["sample"] = torch.randn(3, 8, 8)
    with pytest.raises(ValueError, match="sample must be a 4-D tensor"):
        tiny_pair["kandinsky22"](**inputs)


def test_missing_image_embeds_is_named(tiny_pair):
    inputs = make_inputs(TINY_KANDINSKY, size=(8, 8))
    inputs["added_cond_kwargs"] = {}
    with pytest.raises(ValueError, match=r"added_cond_kwargs must contain \['image_embeds'\].*missing \['image_embeds'\]"):
        tiny_pair["kandinsky22"](**inputs)
    inputs["added_cond_kwargs"] = None
    with pytest.raises(ValueError, match="image_embeds"):
        tiny_pair["kandinsky22"](**inputs)


def test_wrong_image_embeds_shape_is_named(tiny_pair):
    inputs = make_inputs(TINY_KANDINSKY, size=(8, 8))
    inputs["added_cond_kwargs"]["image_embeds"] = torch.randn(2, 19)
    with pytest.raises(ValueError, match=r"image_embeds'\] must have shape \(2, 20\), got \(2, 19\)"):
        tiny_pair["kandinsky22"](**inputs)


def test_bad_hint_is_named(tiny_pair):
    config = TINY_CONFIGS["kandinsky22_controlnet"]
    model = tiny_pair["kandinsky22_controlnet"]
    inputs = make_inputs(config, size=(8, 8))
    inputs["added_cond_kwargs"]["hint"] = torch.rand(2, 1, 64, 64)
    with pytest.raises(ValueError, match=r"hint'\] must have shape \(2, 3, 64, 64\).*got \(2, 1, 64, 64\)"):
        model(**inputs)
    inputs["added_cond_kwargs"]["hint"] = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="an image 8x the latent size"):
        model(**inputs)
    del inputs["added_cond_kwargs"]["hint"]
    with pytest.raises(ValueError, match=r"missing \['hint'\]"):
        model(**inputs)
    inputs = make_inputs(config, size=(8, 8))
    inputs["sample"] = torch.randn(2, 8, 8, 8)  # the hint channels are added by the model, not the caller
    with pytest.raises(ValueError, match=r"takes 4 \(plus 4 from the hint\)"):
        model(**inputs)


def test_bad_timestep_is_named(tiny_pair):
    inputs = make_inputs(TINY_KANDINSKY, size=(8, 8))
    inputs["timestep"] = torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="timestep must be .* length 1 or 2"):
        tiny_pair["kandinsky22"](**inputs)
    inputs["timestep"] = "10"
    with pytest.raises(TypeError, match="timestep must be a number or a tensor"):
        tiny_pair["kandinsky22"](**inputs)


def test_missing_text_condition_is_named():
    _, ours = make_pair(TINY_CONFIGS["stable_diffusion"])
    inputs = make_inputs(TINY_CONFIGS["stable_diffusion"])
    inputs["encoder_hidden_states"] = None
    with pytest.raises(ValueError, match=r"encoder_hidden_states must have shape \(2, tokens, 24\), got NoneType"):
        ours(**inputs)
    inputs["encoder_hidden_states"] = torch.randn(2, 7, 32)
    with pytest.raises(ValueError, match=r"encoder_hidden_states must have shape \(2, tokens, 24\), got \(2, 7, 32\)"):
        ours(**inputs)


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match="block_out_channels must have one entry per down block"):
        UNet2DConditionModel(**dict(TINY_KANDINSKY, block_out_channels=[32, 64]))
    with pytest.raises(ValueError, match="down block type 'FancyBlock2D' is not supported"):
        UNet2DConditionModel(**dict(TINY_KANDINSKY, down_block_types=["FancyBlock2D"] * 3))
    with pytest.raises(ValueError, match="num_attention_heads cannot be set"):
        UNet2DConditionModel(**dict(TINY_KANDINSKY, num_attention_heads=4))
    with pytest.raises(ValueError, match="addition_embed_type must be one of"):
        UNet2DConditionModel(**dict(TINY_KANDINSKY, addition_embed_type="imag"))


def test_gradients_flow_like_reference():
    """In-place shortcuts in the blocks must not break training: same gradients as the reference."""
    reference, ours = make_pair(TINY_CONFIGS["kandinsky22"])
    inputs = make_inputs(TINY_CONFIGS["kandinsky22"], size=(8, 8))
    reference(**inputs).sample.square().mean().backward()
    ours(**inputs).sample.square().mean().backward()
    theirs = dict(reference.named_parameters())
    for name, parameter in ours.named_parameters():
        assert parameter.grad is not None, name
        assert (parameter.grad - theirs[name].grad).abs().max().item() <= 1e-5, name
