"""VQModel (MoVQ): parity with diffusers (the oracle), checkpoint round trips, full-size layout, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import diffusers
from sfumato.checkpoint import CheckpointError
from sfumato.models.vq_model import DecoderOutput, VQEncoderOutput, VQModel

TOLERANCE = 1e-5

# The Kandinsky 2.2 / 3 MoVQ, as in its config.json.
KANDINSKY_MOVQ = {
    "act_fn": "silu", "block_out_channels": [128, 256, 256, 512],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "norm_type": "spatial",
    "num_vq_embeddings": 16384, "out_channels": 3, "sample_size": 32, "scaling_factor": 0.18215,
    "up_block_types": ["AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
    "vq_embed_dim": 4,
}

# Tiny configs. SpatialNorm always uses 32 groups, so spatial models need widths divisible by 32.
MOVQ_LIKE = {
    "block_out_channels": [32, 64], "down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
    "up_block_types": ["AttnUpDecoderBlock2D", "UpDecoderBlock2D"], "layers_per_block": 1, "latent_channels": 4,
    "norm_type": "spatial", "norm_num_groups": 8, "num_vq_embeddings": 32, "vq_embed_dim": 4,
}
MOVQ_THREE_LEVELS = {  # spatial norms up to 4x the latent size
    "block_out_channels": [32, 32, 64],
    "down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D", "AttnDownEncoderBlock2D"],
    "up_block_types": ["AttnUpDecoderBlock2D", "AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
    "layers_per_block": 1, "latent_channels": 5, "norm_type": "spatial", "norm_num_groups": 16,
    "num_vq_embeddings": 24, "in_channels": 2, "out_channels": 5,
}
GROUP_NORM = {  # vq_embed_dim differs from latent_channels
    "block_out_channels": [8, 16], "down_block_types": ["AttnDownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "AttnUpDecoderBlock2D"], "layers_per_block": 2, "latent_channels": 3,
    "vq_embed_dim": 5, "norm_num_groups": 4, "num_vq_embeddings": 16, "act_fn": "mish",
}
NO_MID_ATTENTION = {
    "block_out_channels": [16], "norm_num_groups": 4, "num_vq_embeddings": 8, "mid_block_add_attention": False,
    "latent_channels": 2,
}
CONFIGS = {"movq": MOVQ_LIKE, "movq-3-levels": MOVQ_THREE_LEVELS, "group-norm": GROUP_NORM,
           "no-mid-attention": NO_MID_ATTENTION}


def randomize(model: nn.Module, seed: int) -> None:
    """Give every norm and bias non-trivial values and the codebook unit-scale vectors.

    Freshly built norms are the identity (weight 1, bias 0) and the codebook is
    nearly zero; that would hide mistakes in how norms and quantisation are applied.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.GroupNorm):
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=generator))
            elif isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
            elif isinstance(module, nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator))


def make_pair(config: dict, seed: int = 0):
    """A diffusers VQModel with random weights, and ours loaded (strictly) with the same state dict."""
    torch.manual_seed(seed)
    reference = diffusers.VQModel(**config)
    randomize(reference, seed)
    reference.eval()
    ours = VQModel(**config)
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours.eval()
    return reference, ours


def images(config: dict, batch: int = 2, height: int = 32, width: int = 48, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, config.get("in_channels", 3), height, width, generator=generator) * 2 - 1


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", list(CONFIGS))
def test_encode_decode_forward_match_reference(name):
    config = CONFIGS[name]
    reference, ours = make_pair(config)
    x = images(config)
    with torch.no_grad():
        expected_latents = reference.encode(x).latents
        latents = ours.encode(x).latents
        assert max_diff(latents, expected_latents) <= TOLERANCE
        # Kandinsky decodes the diffusion output as is; a round trip quantises it first
        for force_not_quantize in (True, False):
            expected = reference.decode(expected_latents, force_not_quantize=force_not_quantize)
            got = ours.decode(expected_latents, force_not_quantize=force_not_quantize)
            assert max_diff(got.sample, expected.sample) <= TOLERANCE, force_not_quantize
            assert max_diff(got.commit_loss, expected.commit_loss) <= TOLERANCE
        expected = reference(x)
        got = ours(x)
    assert isinstance(got, DecoderOutput)
    assert got.sample.shape == (2, config.get("out_channels", 3), 32, 48)
    assert max_diff(got.sample, expected.sample) <= TOLERANCE
    assert got.sample.abs().max() > 0.1  # the comparison is not between two near-zero tensors
    assert max_diff(got.commit_loss, expected.commit_loss) <= TOLERANCE


def test_odd_sizes_match_reference():
    """Sizes that are not multiples of the downsampling factor: the encoder floors, as the reference does."""
    reference, ours = make_pair(MOVQ_THREE_LEVELS, seed=3)
    x = images(MOVQ_THREE_LEVELS, batch=1, height=21, width=30)
    with torch.no_grad():
        expected, got = reference.encode(x).latents, ours.encode(x).latents
        assert got.shape == (1, 5, 5, 7)
        assert max_diff(got, expected) <= TOLERANCE
        assert max_diff(ours.decode(got).sample, reference.decode(got).sample) <= TOLERANCE


def test_kandinsky_pipeline_calls():
    """The exact calls the Kandinsky pipelines make, and the tuple forms."""
    reference, ours = make_pair(MOVQ_LIKE)
    x = images(MOVQ_LIKE)
    with torch.no_grad():
        latents = ours.encode(x)["latents"]
        assert torch.equal(latents, ours.encode(x).latents)
        assert torch.equal(ours.encode(x, return_dict=False)[0], latents)
        sample = ours.decode(latents, force_not_quantize=True)["sample"]
        assert max_diff(sample, reference.decode(latents, force_not_quantize=True)["sample"]) <= TOLERANCE
        sample_tuple, commit_loss = ours.decode(latents, force_not_quantize=True, return_dict=False)
        assert torch.equal(sample_tuple, sample)
        assert torch.equal(commit_loss, torch.zeros(2))
        forward_sample, forward_loss = ours(x, return_dict=False)
        assert torch.equal(forward_sample, ours(x).sample)
    assert isinstance(ours.encode(x), VQEncoderOutput)
    assert 2 ** (len(ours.config.block_out_channels) - 1) == 2  # movq_scale_factor as the pipelines compute it
    assert ours.config.latent_channels == 4 and ours.config.scaling_factor == pytest.approx(0.18215)


def test_lookup_from_codebook_matches_reference():
    config = dict(MOVQ_LIKE, lookup_from_codebook=True)
    reference, ours = make_pair(config)
    generator = torch.Generator().manual_seed(2)
    indices = torch.randint(0, config["num_vq_embeddings"], (2 * 4 * 6,), generator=generator)
    shape = (2, 4, 6, config["vq_embed_dim"])
    with torch.no_grad():
        expected = reference.decode(indices, force_not_quantize=True, shape=shape)
        got = ours.decode(indices, force_not_quantize=True, shape=shape)
    assert got.sample.shape == (2, 3, 8, 12)
    assert max_diff(got.sample, expected.sample) <= TOLERANCE
    assert torch.equal(got.commit_loss, expected.commit_loss)


def test_quantizer_matches_reference():
    reference, ours = make_pair(MOVQ_LIKE)
    latents = torch.randn(2, 4, 5, 7, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected_zq, expected_loss, (_, _, expected_indices) = reference.quantize(latents)
        zq, loss, (_, _, indices) = ours.quantize(latents)
    assert torch.equal(indices, expected_indices)
    assert max_diff(zq, expected_zq) <= TOLERANCE and max_diff(loss, expected_loss) <= TOLERANCE
    entries = ours.quantize.get_codebook_entry(indices, (2, 5, 7, 4))
    assert max_diff(entries, reference.quantize.get_codebook_entry(indices, (2, 5, 7, 4))) <= TOLERANCE


def test_gradients_match_reference():
    """Training mode with autograd: the in-place shortcuts must stand aside and gradients must agree."""
    reference, ours = make_pair(MOVQ_LIKE)
    reference.train()
    ours.train()
    x = images(MOVQ_LIKE, batch=1, height=16, width=16)
    x_ref = x.clone().requires_grad_(True)
    x_ours = x.clone().requires_grad_(True)
    expected = reference(x_ref)
    got = ours(x_ours)
    (expected.sample.square().mean() + expected.commit_loss).backward()
    (got.sample.square().mean() + got.commit_loss).backward()
    assert max_diff(got.sample.detach(), expected.sample.detach()) <= TOLERANCE
    assert max_diff(x_ours.grad, x_ref.grad) <= TOLERANCE
    ref_grads = dict(reference.named_parameters())
    for name, parameter in ours.named_parameters():
        assert max_diff(parameter.grad, ref_grads[name].grad) <= TOLERANCE, name


def test_slicing_gives_the_same_numbers():
    _, ours = make_pair(MOVQ_LIKE)
    x = images(MOVQ_LIKE, batch=3)
    with torch.no_grad():
        latents = ours.encode(x).latents
        whole = ours.decode(latents)
        whole_unquantized = ours.decode(latents, force_not_quantize=True)
        ours.enable_slicing()
        assert max_diff(ours.encode(x).latents, latents) <= TOLERANCE
        sliced = ours.decode(latents)
        sliced_unquantized = ours.decode(latents, force_not_quantize=True)
        ours.disable_slicing()
    assert max_diff(sliced.sample, whole.sample) <= TOLERANCE
    assert max_diff(sliced.commit_loss, whole.commit_loss) <= TOLERANCE
    assert max_diff(sliced_unquantized.sample, whole_unquantized.sample) <= TOLERANCE
    assert torch.equal(sliced_unquantized.commit_loss, whole_unquantized.commit_loss)
    with pytest.raises(NotImplementedError):
        ours.enable_tiling()


@pytest.mark.parametrize("config", [MOVQ_LIKE, GROUP_NORM, {}], ids=["movq", "group-norm", "defaults"])
def test_config_matches_reference(config):
    with torch.device("meta"):
        reference = diffusers.VQModel(**config)
        ours = VQModel(**config)
    expected = {k: v for k, v in reference.config.items() if not k.startswith("_")}
    got = json.loads(ours.to_json_string())
    assert {k: v for k, v in got.items() if not k.startswith("_")} == json.loads(json.dumps(expected))
    assert got["_class_name"] == "VQModel"


def test_full_size_kandinsky_movq_layout_on_meta():
    """The real MoVQ: same state-dict keys and shapes as the reference, built without memory."""
    with torch.device("meta"):
        reference = diffusers.VQModel(**KANDINSKY_MOVQ)
        ours = VQModel(**KANDINSKY_MOVQ)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == expected
    assert list(got) == list(expected)  # same order too, so saved files list keys alike
    assert ours.quantize.embedding.weight.shape == (16384, 4)


# ----------------------------------------------------------------------------- checkpoints


def test_reference_checkpoint_loads_in_sfumato_and_back(tmp_path):
    reference, _ = make_pair(MOVQ_LIKE, seed=5)
    reference.save_pretrained(tmp_path / "reference")
    ours = VQModel.from_pretrained(tmp_path / "reference")
    assert not any(t.is_meta for t in ours.state_dict().values())
    x = images(MOVQ_LIKE)
    with torch.no_grad():
        assert max_diff(ours(x).sample, reference(x).sample) <= TOLERANCE
        ours.save_pretrained(tmp_path / "ours")
        back = diffusers.VQModel.from_pretrained(tmp_path / "ours").eval()
        assert max_diff(back(x).sample, reference(x).sample) <= TOLERANCE
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["_class_name"] == "VQModel" and saved["norm_type"] == "spatial"


def test_reference_fp16_variant_loads_with_torch_dtype(tmp_path):
    reference, _ = make_pair(MOVQ_LIKE, seed=6)
    reference.to(torch.float16).save_pretrained(tmp_path / "movq", variant="fp16")
    ours = VQModel.from_pretrained(tmp_path / "movq", variant="fp16", torch_dtype=torch.float16)
    assert ours.dtype == torch.float16
    reference_state = reference.state_dict()
    for key, tensor in ours.state_dict().items():
        assert tensor.dtype == torch.float16 and torch.equal(tensor, reference_state[key]), key
    with pytest.raises(CheckpointError, match="variant"):
        VQModel.from_pretrained(tmp_path / "movq")  # only fp16 weights there
    latents = torch.randn(1, 4, 4, 4).half()
    with torch.no_grad():
        got = ours.decode(latents, force_not_quantize=True).sample
        expected = reference.decode(latents, force_not_quantize=True).sample
    assert got.dtype == torch.float16
    assert (got.float() - expected.float()).abs().max() <= 2e-2  # half precision, different rounding order


def test_legacy_attention_key_names_load(tmp_path):
    """Early checkpoints call the attention projections query/key/value/proj_attn; both libraries rename them."""
    from safetensors.torch import save_file

    reference, _ = make_pair(MOVQ_LIKE, seed=7)
    reference.save_pretrained(tmp_path / "movq")
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    legacy = {}
    for key, tensor in reference.state_dict().items():
        for new, old in renames.items():
            if "attentions" in key and new in key:
                key = key.replace(new, old)
        legacy[key] = tensor.contiguous()
    assert any(".proj_attn." in key for key in legacy)
    save_file(legacy, str(tmp_path / "movq" / "diffusion_pytorch_model.safetensors"))
    ours = VQModel.from_pretrained(tmp_path / "movq")
    x = images(MOVQ_LIKE)
    with torch.no_grad():
        assert max_diff(ours(x).sample, reference(x).sample) <= TOLERANCE


# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def tiny_movq():
    return VQModel(**MOVQ_LIKE).eval()


def test_encode_rejects_bad_images(tiny_movq):
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 3, height, width\).*got shape \(2, 4, 32, 32\)"):
        tiny_movq.encode(torch.zeros(2, 4, 32, 32))
    with pytest.raises(ValueError, match=r"x must have shape.*got shape \(3, 32, 32\)"):
        tiny_movq.encode(torch.zeros(3, 32, 32))
    with pytest.raises(TypeError, match="x must be a torch.Tensor.*got list"):
        tiny_movq.encode([[0.0]])
    with pytest.raises(TypeError, match="x must be a floating-point.*torch.uint8"):
        tiny_movq.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="x is 1x32 pixels.*at least 2"):
        tiny_movq.encode(torch.zeros(1, 3, 1, 32))


def test_decode_rejects_bad_latents(tiny_movq):
    with pytest.raises(ValueError,
                       match=r"h must be latents of shape \(batch, 4, height, width\).*got shape \(1, 3, 8, 8\)"):
        tiny_movq.decode(torch.zeros(1, 3, 8, 8), force_not_quantize=True)
    with pytest.raises(ValueError, match="h must be latents.*got shape"):
        tiny_movq.decode(torch.zeros(4, 8, 8))
    with pytest.raises(TypeError, match="h must be floating-point latents"):
        tiny_movq.decode(torch.zeros(1, 4, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="h must be a torch.Tensor"):
        tiny_movq.decode(None)


def test_decode_by_index_needs_a_matching_shape():
    model = VQModel(**dict(MOVQ_LIKE, lookup_from_codebook=True)).eval()
    indices = torch.zeros(2 * 3 * 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"shape must be \(batch, height, width, 4\).*18 indices.*got shape=None"):
        model.decode(indices, force_not_quantize=True)
    with pytest.raises(ValueError, match="shape must be.*got shape=\\(2, 3, 4, 4\\)"):
        model.decode(indices, force_not_quantize=True, shape=(2, 3, 4, 4))
    with pytest.raises(TypeError, match="integer codebook indices"):
        model.decode(torch.zeros(1, 4, 3, 3), force_not_quantize=True, shape=(1, 3, 3, 4))


@pytest.mark.parametrize("overrides, message", [
    ({"norm_type": "layer"}, r"norm_type must be one of \['group', 'spatial'\], got 'layer'"),
    ({"down_block_types": ["DownEncoderBlock2D"]}, "down_block_types must have one entry per block_out_channels entry"),
    ({"up_block_types": ["UpDecoderBlock2D", "CrossAttnUpBlock2D"]},
     r"up_block_types may only contain.*CrossAttnUpBlock2D"),
    ({"block_out_channels": [32, 48]}, "divisible by the number of norm groups \\(32, fixed by SpatialNorm\\), got 48"),
    ({"norm_num_groups": 3}, "divisible by the number of norm groups \\(3\\), got 32"),
    ({"act_fn": "tanh"}, "activation 'tanh' is not supported"),
    ({"layers_per_block": 0}, "layers_per_block must be a positive int, got 0"),
    ({"vq_embed_dim": 6},
     "norm_type='spatial' needs vq_embed_dim == latent_channels.*got vq_embed_dim=6, latent_channels=4"),
])
def test_bad_config_is_rejected_before_building(overrides, message):
    with pytest.raises(ValueError, match=message):
        VQModel(**dict(MOVQ_LIKE, **overrides))
