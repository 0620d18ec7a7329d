"""AutoencoderKL: parity with diffusers (the oracle), tiling and slicing, checkpoints, full-size layouts, bad input."""

from __future__ import annotations

import json

import pytest
import torch

import diffusers
from sfumato.checkpoint import CheckpointError
from sfumato.models.autoencoder_kl import AutoencoderKL, AutoencoderKLOutput, DecoderOutput
from sfumato.models.unet_2d_condition import UNet2DConditionModel

TOLERANCE = 1e-5

# the Stable Diffusion 1.5 VAE's config.json, verbatim
SD15_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 512, "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D",
                                           "UpDecoderBlock2D"],
}
SD15_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

CONFIGS = {
    "sd-like": dict(SD15_VAE, block_out_channels=[8, 16, 16], norm_num_groups=4, layers_per_block=1,
                    down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                    sample_size=32),
    "attention-blocks": dict(block_out_channels=[8, 16],
                             down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
                             up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"], norm_num_groups=4,
                             layers_per_block=2, latent_channels=3, act_fn="mish", sample_size=16),
    "no-quant-convs": dict(block_out_channels=[8, 8], down_block_types=["DownEncoderBlock2D"] * 2,
                           up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=2, latent_channels=6,
                           use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False,
                           in_channels=2, out_channels=5),
}


def make_pair(config: dict, seed: int = 0):
    """A diffusers AutoencoderKL with every weight random, and ours loaded (strictly) with the same weights."""
    torch.manual_seed(seed)
    reference = diffusers.AutoencoderKL(**config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    ours = AutoencoderKL(**config).eval()
    ours.load_weights(reference.state_dict(), source="the diffusers model")
    return reference, ours


def pictures(config: dict, batch: int = 2, height: int = 24, width: int = 40, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, config.get("in_channels", 3), height, width, generator=generator) * 2 - 1


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", list(CONFIGS))
def test_encode_decode_forward_match_reference(name):
    config = CONFIGS[name]
    reference, ours = make_pair(config)
    x = pictures(config)
    with torch.no_grad():
        expected, got = reference.encode(x).latent_dist, ours.encode(x).latent_dist
        for field in ("mean", "logvar", "std", "var"):
            assert max_diff(getattr(got, field), getattr(expected, field)) <= TOLERANCE, field
        draw = got.sample(torch.Generator().manual_seed(3))
        assert max_diff(draw, expected.sample(torch.Generator().manual_seed(3))) <= TOLERANCE
        assert max_diff(got.kl(), expected.kl()) <= 1e-3 * expected.kl().abs().max()
        assert max_diff(got.nll(draw), expected.nll(draw)) <= 1e-3 * expected.nll(draw).abs().max()
        assert torch.equal(got.mode(), got.mean)
        decoded = ours.decode(draw)
        assert isinstance(decoded, DecoderOutput)
        assert max_diff(decoded.sample, reference.decode(draw).sample) <= TOLERANCE
        assert decoded.sample.abs().max() > 0.1  # not two near-zero tensors
        for sample_posterior in (False, True):
            got_forward = ours(x, sample_posterior=sample_posterior, generator=torch.Generator().manual_seed(5))
            expected_forward = reference(x, sample_posterior=sample_posterior,
                                         generator=torch.Generator().manual_seed(5))
            assert max_diff(got_forward.sample, expected_forward.sample) <= TOLERANCE


def test_output_forms():
    _, ours = make_pair(CONFIGS["sd-like"])
    x = pictures(CONFIGS["sd-like"], batch=1)
    with torch.no_grad():
        encoded = ours.encode(x)
        assert isinstance(encoded, AutoencoderKLOutput)
        (posterior,) = ours.encode(x, return_dict=False)
        assert torch.equal(posterior.mean, encoded.latent_dist.mean)
        (decoded,) = ours.decode(posterior.mean, return_dict=False)
        assert torch.equal(decoded, ours.decode(posterior.mean).sample)
        (forward,) = ours(x, return_dict=False)
        assert torch.equal(forward, decoded)
    assert ours.config.scaling_factor == pytest.approx(0.18215)
    assert encoded.latent_dist.mean.shape == (1, 4, 6, 10)


@pytest.mark.parametrize("height,width", [(72, 56), (40, 100), (33, 47)])
def test_tiling_matches_reference(height, width):
    """Tiles of sample_size pixels, a quarter overlapping, cross-faded in reading order."""
    config = CONFIGS["sd-like"]
    reference, ours = make_pair(config, seed=2)
    reference.enable_tiling()
    ours.enable_tiling()
    x = pictures(config, batch=2, height=height, width=width)
    with torch.no_grad():
        expected, got = reference.encode(x).latent_dist, ours.encode(x).latent_dist
        assert max_diff(got.mean, expected.mean) <= TOLERANCE
        latents = expected.mean
        assert max_diff(ours.decode(latents).sample, reference.decode(latents).sample) <= TOLERANCE
        assert max_diff(ours.tiled_decode(latents).sample, reference.tiled_decode(latents).sample) <= TOLERANCE
        ours.disable_tiling()
        untiled = ours.decode(latents).sample
    assert untiled.shape == ours.tiled_decode(latents).sample.shape
    assert max_diff(untiled, ours.tiled_decode(latents).sample) > 1e-4  # tiling did change something


def test_slicing_gives_the_same_numbers():
    config = CONFIGS["attention-blocks"]
    reference, ours = make_pair(config, seed=4)
    x = pictures(config, batch=3)
    with torch.no_grad():
        whole = ours.encode(x).latent_dist.mean
        whole_decoded = ours.decode(whole).sample
        ours.enable_slicing()
        reference.enable_slicing()
        sliced = ours.encode(x).latent_dist.mean
        assert max_diff(sliced, whole) <= TOLERANCE
        assert max_diff(ours.decode(whole).sample, whole_decoded) <= TOLERANCE
        assert max_diff(ours.decode(whole).sample, reference.decode(whole).sample) <= TOLERANCE
        ours.enable_tiling()
        reference.enable_tiling()
        big = pictures(config, batch=2, height=40, width=24)
        assert max_diff(ours.encode(big).latent_dist.mean, reference.encode(big).latent_dist.mean) <= TOLERANCE


def test_gradients_flow():
    _, ours = make_pair(CONFIGS["sd-like"])
    ours.train()
    x = pictures(CONFIGS["sd-like"], batch=1, height=16, width=16).requires_grad_(True)
    ours(x, sample_posterior=True, generator=torch.Generator().manual_seed(0)).sample.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in ours.parameters())


# ----------------------------------------------------------------------------- checkpoints and layouts


def test_checkpoints_load_both_ways(tmp_path):
    config = CONFIGS["attention-blocks"]
    reference, _ = make_pair(config)
    reference.save_pretrained(tmp_path / "theirs")
    ours = AutoencoderKL.from_pretrained(tmp_path / "theirs")
    ours.save_pretrained(tmp_path / "ours")
    reloaded = diffusers.AutoencoderKL.from_pretrained(tmp_path / "ours").eval()
    x = pictures(config)
    with torch.no_grad():
        assert max_diff(ours.encode(x).latent_dist.mean, reference.encode(x).latent_dist.mean) <= TOLERANCE
        assert max_diff(reloaded.encode(x).latent_dist.mean, reference.encode(x).latent_dist.mean) <= TOLERANCE
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["_class_name"] == "AutoencoderKL" and saved["scaling_factor"] == pytest.approx(0.18215)


def test_old_attention_key_names_load():
    """Early checkpoints name the mid-block attention query / key / value / proj_attn."""
    reference, ours = make_pair(CONFIGS["sd-like"])
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for key, tensor in reference.state_dict().items():
        for new, old in renames.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        state[key] = tensor
    assert any(".query." in key for key in state)
    fresh = AutoencoderKL(**CONFIGS["sd-like"])
    fresh.load_weights(state)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), ours.state_dict().values()))


@pytest.mark.parametrize("name,ours_class,theirs_class,config", [
    ("sd15_vae", AutoencoderKL, diffusers.AutoencoderKL, SD15_VAE),
    ("sd15_unet", UNet2DConditionModel, diffusers.UNet2DConditionModel, SD15_UNET),
])
def test_full_size_layout_matches_reference(name, ours_class, theirs_class, config):
    with torch.device("meta"):
        reference = theirs_class(**config)
        ours = ours_class(**config)
    expected = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    got = {key: tuple(value.shape) for key, value in ours.state_dict().items()}
    assert got == expected
    assert list(got) == list(expected)  # same order, so shards split alike
    if name == "sd15_vae":
        assert ours.tile_sample_min_size == 512 and ours.tile_latent_min_size == 64


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_are_named():
    _, ours = make_pair(CONFIGS["sd-like"])
    with pytest.raises(ValueError, match=r"x must be pictures of shape \(batch, 3, height, width\)"):
        ours.encode(torch.zeros(1, 4, 16, 16))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        ours.encode([[0.0]])
    with pytest.raises(ValueError, match=r"z must be latents of shape \(batch, 4, height, width\)"):
        ours.decode(torch.zeros(1, 3, 4, 4))
    with pytest.raises(TypeError, match="z must be floating-point"):
        ours.decode(torch.zeros(1, 4, 4, 4, dtype=torch.long))


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match="down_block_types must have one entry per block_out_channels"):
        AutoencoderKL(block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"], norm_num_groups=4,
                      up_block_types=["UpDecoderBlock2D"] * 2)
    with pytest.raises(ValueError, match="divisible by the number of norm groups"):
        AutoencoderKL(block_out_channels=[12], norm_num_groups=8)
    with pytest.raises(ValueError, match="activation"):
        AutoencoderKL(block_out_channels=[8], norm_num_groups=4, act_fn="nope")


def test_weights_of_another_layout_are_refused(tmp_path):
    reference, _ = make_pair(CONFIGS["sd-like"])
    reference.save_pretrained(tmp_path / "vae")
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    config["latent_channels"] = 8
    (tmp_path / "vae" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape"):
        AutoencoderKL.from_pretrained(tmp_path / "vae")
