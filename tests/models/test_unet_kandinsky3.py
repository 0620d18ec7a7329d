"""Kandinsky3UNet (and Kandinsky 3's MoVQ): parity with diffusers, checkpoints, full-size layouts, bad input."""

from __future__ import annotations

import json

import pytest
import torch

import diffusers
from sfumato import VQModel
from sfumato.models.attention_processor import AttnProcessor, AttnProcessor2_0
from sfumato.models.unet_kandinsky3 import Kandinsky3UNet, Kandinsky3UNetOutput

TOLERANCE = 1e-5

# kandinsky-community/kandinsky-3 unet/config.json (the reference's defaults are these values)
KANDINSKY_3_UNET = {
    "in_channels": 4, "time_embedding_dim": 1536, "groups": 32, "attention_head_dim": 64, "layers_per_block": 3,
    "block_out_channels": [384, 768, 1536, 3072], "cross_attention_dim": 4096, "encoder_hid_dim": 4096,
}
# kandinsky-community/kandinsky-3 movq: Sber-MoVQGAN 270M (2.2's MoVQ layout, twice as wide)
KANDINSKY_3_MOVQ = {
    "act_fn": "silu", "block_out_channels": [256, 512, 512, 1024],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "norm_type": "spatial",
    "num_vq_embeddings": 16384, "out_channels": 3, "sample_size": 32, "scaling_factor": 0.18215,
    "up_block_types": ["AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
    "vq_embed_dim": 4,
}

TINY_CONFIGS = {
    # the reference's own test config: two levels, one head of 4 in the text pooling
    "reference_test": dict(in_channels=4, time_embedding_dim=4, groups=2, attention_head_dim=4, layers_per_block=3,
                           block_out_channels=[32, 64], cross_attention_dim=4, encoder_hid_dim=32),
    # four levels as released (attention everywhere but the outermost level, both ways)
    "four_levels": dict(in_channels=4, time_embedding_dim=16, groups=4, attention_head_dim=8, layers_per_block=2,
                        block_out_channels=[16, 16, 32, 32], cross_attention_dim=24, encoder_hid_dim=12),
    # three levels, per-level layer counts, more channels in and out
    "three_levels": dict(in_channels=6, time_embedding_dim=24, groups=4, attention_head_dim=8,
                         layers_per_block=[2, 3, 2], block_out_channels=[16, 32, 48], cross_attention_dim=16,
                         encoder_hid_dim=20),
}


def make_pair(config: dict, seed: int = 0):
    """A reference UNet with every weight random (its time-conditioned norms start at zero) and ours with the
    same weights."""
    torch.manual_seed(seed)
    reference = diffusers.Kandinsky3UNet(**config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in reference.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.15)
    ours = Kandinsky3UNet(**config).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def make_inputs(config: dict, batch: int = 2, tokens: int = 7, size=(8, 12), seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, tokens, dtype=torch.long)
    mask[0, tokens // 2:] = 0  # a short prompt
    if batch > 1:
        mask[-1] = 0  # the unconditional half of a guided batch: every token masked
    return dict(
        sample=torch.randn(batch, config["in_channels"], *size, generator=generator),
        timestep=torch.tensor(421),
        encoder_hidden_states=torch.randn(batch, tokens, config["encoder_hid_dim"], generator=generator),
        encoder_attention_mask=mask,
    )


def max_diff(reference, ours, inputs) -> float:
    with torch.no_grad():
        expected = reference(**inputs).sample
        got = ours(**inputs).sample
    assert got.shape == expected.shape
    return float((got - expected).abs().max())


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", ["reference_test", "four_levels"])
def test_forward_matches_reference(name):
    config = TINY_CONFIGS[name]
    reference, ours = make_pair(config)
    inputs = make_inputs(config, size=(8, 16) if name == "reference_test" else (16, 8))
    assert max_diff(reference, ours, inputs) <= TOLERANCE


@pytest.mark.parametrize("timestep", [999, 12.5, torch.tensor([3, 700]), torch.tensor(0.0)])
def test_timestep_forms_match_reference(timestep):
    config = TINY_CONFIGS["reference_test"]
    reference, ours = make_pair(config, seed=2)
    inputs = dict(make_inputs(config), timestep=timestep)
    assert max_diff(reference, ours, inputs) <= TOLERANCE


def test_bool_mask_and_default_processor_match_reference():
    """The pipelines pass a bool mask when guided; the explicit matmul processor gives the same numbers."""
    config = TINY_CONFIGS["four_levels"]
    reference, ours = make_pair(config, seed=3)
    inputs = make_inputs(config, size=(8, 8))
    inputs["encoder_attention_mask"] = inputs["encoder_attention_mask"].bool()
    assert max_diff(reference, ours, inputs) <= TOLERANCE
    ours.set_default_attn_processor()
    assert all(isinstance(p, AttnProcessor) for p in ours.attn_processors.values())
    assert max_diff(reference, ours, inputs) <= TOLERANCE
    ours.set_attn_processor(AttnProcessor2_0())
    assert len(ours.attn_processors) == len(reference.attn_processors)


def test_per_level_layer_counts_build_and_run():
    """Per-level layer counts (the reference only takes one number) build the layout level by level."""
    config = TINY_CONFIGS["three_levels"]
    ours = Kandinsky3UNet(**config).eval()
    assert [len(block.resnets_in) for block in ours.down_blocks] == [2, 3, 2]
    assert [len(block.resnets_in) for block in ours.up_blocks] == [2, 3, 2]
    with torch.no_grad():
        out = ours(**make_inputs(config, size=(8, 12)))
    assert isinstance(out, Kandinsky3UNetOutput) and out.sample.shape == (2, 6, 8, 12)
    assert ours(**make_inputs(config, size=(4, 4)), return_dict=False)[0].shape == (2, 6, 4, 4)
    # with one number per level the layout equals the reference's
    same = dict(config, layers_per_block=2)
    with torch.device("meta"):
        assert list(Kandinsky3UNet(**same).state_dict()) == list(diffusers.Kandinsky3UNet(**same).state_dict())


def test_every_input_reaches_the_output():
    """A wiring check the parity test alone would not make: text, mask and time all change the prediction."""
    config = TINY_CONFIGS["four_levels"]
    _, ours = make_pair(config, seed=4)
    inputs = make_inputs(config, batch=1, size=(8, 8))
    with torch.no_grad():
        base = ours(**inputs).sample
        text = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"] + 1)
        assert (ours(**text).sample - base).abs().max() > 1e-3
        mask = dict(inputs, encoder_attention_mask=torch.ones_like(inputs["encoder_attention_mask"]))
        assert (ours(**mask).sample - base).abs().max() > 1e-3
        assert (ours(**dict(inputs, timestep=torch.tensor(10))).sample - base).abs().max() > 1e-3


# ----------------------------------------------------------------------------- configs and full-size layouts


@pytest.mark.parametrize("name", ["reference_test", "four_levels"])
def test_config_matches_reference(name):
    config = TINY_CONFIGS[name]
    with torch.device("meta"):
        reference = diffusers.Kandinsky3UNet(**config)
        ours = Kandinsky3UNet(**config)
    expected = {k: v for k, v in reference.config.items() if not k.startswith("_")}
    got = json.loads(ours.to_json_string())
    assert {k: v for k, v in got.items() if not k.startswith("_")} == json.loads(json.dumps(expected))
    assert got["_class_name"] == "Kandinsky3UNet"


def test_defaults_are_the_released_config():
    with torch.device("meta"):
        reference = diffusers.Kandinsky3UNet()
        ours = Kandinsky3UNet()
    ours_config = json.loads(json.dumps({k: ours.config[k] for k in KANDINSKY_3_UNET}))
    assert ours_config == json.loads(json.dumps({k: reference.config[k] for k in KANDINSKY_3_UNET})) == KANDINSKY_3_UNET


def test_full_size_unet_layout_on_meta():
    """The released UNet (3.06 B parameters): same state-dict keys, order and shapes, built without memory."""
    with torch.device("meta"):
        reference = diffusers.Kandinsky3UNet(**KANDINSKY_3_UNET)
        ours = Kandinsky3UNet(**KANDINSKY_3_UNET)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == expected
    assert list(got) == list(expected)
    assert ours.num_parameters() == sum(p.numel() for p in reference.parameters())
    assert 3.0e9 < ours.num_parameters() < 3.1e9


def test_full_size_movq_layout_on_meta():
    """Kandinsky 3's MoVQ (270 M parameters) loads into our VQModel: same keys, order and shapes."""
    with torch.device("meta"):
        reference = diffusers.VQModel(**KANDINSKY_3_MOVQ)
        ours = VQModel(**KANDINSKY_3_MOVQ)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == expected
    assert list(got) == list(expected)
    assert 2.6e8 < sum(p.numel() for p in ours.parameters()) < 2.8e8


# ----------------------------------------------------------------------------- checkpoints


def test_reference_checkpoint_loads_in_sfumato_and_back(tmp_path):
    config = TINY_CONFIGS["reference_test"]
    reference, _ = make_pair(config, seed=5)
    reference.save_pretrained(tmp_path / "reference")
    ours = Kandinsky3UNet.from_pretrained(tmp_path / "reference")
    inputs = make_inputs(config)
    assert max_diff(reference, ours, inputs) <= TOLERANCE
    ours.save_pretrained(tmp_path / "ours")
    again = diffusers.Kandinsky3UNet.from_pretrained(tmp_path / "ours").eval()
    assert max_diff(again, ours, inputs) <= TOLERANCE


def test_fp16_variant_loads_as_fp32(tmp_path):
    config = TINY_CONFIGS["four_levels"]
    reference, _ = make_pair(config, seed=6)
    reference.to(torch.float16).save_pretrained(tmp_path / "unet", variant="fp16")
    ours = Kandinsky3UNet.from_pretrained(tmp_path / "unet", variant="fp16", torch_dtype=torch.float32)
    assert ours.dtype == torch.float32
    assert max_diff(reference.float(), ours, make_inputs(config, size=(8, 8))) <= TOLERANCE


# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def tiny():
    return make_pair(TINY_CONFIGS["reference_test"])[1]


@pytest.mark.parametrize("change,message", [
    (dict(sample=torch.zeros(2, 3, 8, 8)), "sample must have shape"),
    (dict(sample=torch.zeros(2, 4, 8, 7)), "multiples of 2"),
    (dict(encoder_hidden_states=None), "encoder_hidden_states is required"),
    (dict(encoder_hidden_states=torch.zeros(2, 7, 31)), r"encoder_hidden_states must have shape \(2, tokens, 32\)"),
    (dict(encoder_hidden_states=torch.zeros(1, 7, 32)), "encoder_hidden_states must have shape"),
    (dict(encoder_attention_mask=torch.ones(2, 6)), r"encoder_attention_mask must have shape \(2, 7\)"),
    (dict(timestep=torch.tensor([1, 2, 3])), "timestep must be"),
    (dict(timestep="10"), "timestep must be a number"),
])
def test_bad_inputs_name_the_argument(tiny, change, message):
    inputs = dict(make_inputs(TINY_CONFIGS["reference_test"], size=(8, 8)), **change)
    with pytest.raises((ValueError, TypeError), match=message):
        tiny(**inputs)


@pytest.mark.parametrize("change,message", [
    (dict(block_out_channels=[32, 64, 64, 64, 64]), "1 to 4 levels"),
    (dict(layers_per_block=1), "at least 2"),
    (dict(layers_per_block=[2, 3, 2]), "one per level"),
    (dict(groups=3), "multiple of groups=3"),
    (dict(attention_head_dim=8), "time_embedding_dim"),
])
def test_bad_config_is_rejected_before_building(change, message):
    with pytest.raises(ValueError, match=message):
        Kandinsky3UNet(**dict(TINY_CONFIGS["reference_test"], **change))
