"""PriorTransformer: parity with diffusers (the oracle), checkpoint round trips, bad input."""

from __future__ import annotations

import json

import pytest
import torch

import diffusers
from sfumato.models.prior_transformer import PriorTransformer, PriorTransformerOutput

TOLERANCE = 1e-5

KANDINSKY_21 = {"attention_head_dim": 64, "embedding_dim": 768, "num_attention_heads": 32, "num_embeddings": 77,
                "num_layers": 20, "additional_embeddings": 4, "dropout": 0.0}
KANDINSKY_22 = {"additional_embeddings": 4, "attention_head_dim": 64, "dropout": 0.0, "embedding_dim": 1280,
                "num_attention_heads": 32, "num_embeddings": 77, "num_layers": 20}

# Tiny configs covering every config switch.
KANDINSKY_LIKE = {"num_attention_heads": 2, "attention_head_dim": 4, "num_layers": 2, "embedding_dim": 12,
                  "num_embeddings": 5, "additional_embeddings": 4, "dropout": 0.0}
WIDER = {"num_attention_heads": 3, "attention_head_dim": 8, "num_layers": 3, "embedding_dim": 16,
         "num_embeddings": 7, "additional_embeddings": 4, "dropout": 0.1, "time_embed_dim": 20,
         "embedding_proj_dim": 10, "clip_embed_dim": 6, "time_embed_act_fn": "gelu"}
# Shap-E style: a token sequence in, no text tokens, no prd token, input norms, short positional table.
SEQUENCE_PRIOR = {"num_attention_heads": 2, "attention_head_dim": 6, "num_layers": 2, "embedding_dim": 8,
                  "num_embeddings": 6, "additional_embeddings": 0, "norm_in_type": "layer",
                  "embedding_proj_norm_type": "layer", "encoder_hid_proj_type": None, "added_emb_type": None,
                  "embedding_proj_dim": 5, "clip_embed_dim": 16, "time_embed_act_fn": "mish"}


def make_pair(config: dict, seed: int = 0):
    """A diffusers prior with random weights (all of them, zero-initialised ones too) and ours with a copy."""
    torch.manual_seed(seed)
    reference = diffusers.PriorTransformer(**config)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.3)
    reference.eval()
    ours = PriorTransformer(**config)
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours.eval()
    return reference, ours


def make_inputs(config: dict, batch: int, seed: int = 1, padded: bool = False):
    generator = torch.Generator().manual_seed(seed)
    embedding_dim = config["embedding_dim"]
    proj_dim = config.get("embedding_proj_dim") or embedding_dim
    tokens = config["num_embeddings"]
    if config.get("added_emb_type", "prd") is None:
        hidden_states = torch.randn(batch, tokens, embedding_dim, generator=generator)
    else:
        hidden_states = torch.randn(batch, embedding_dim, generator=generator)
    inputs = {"hidden_states": hidden_states,
              "proj_embedding": torch.randn(batch, proj_dim, generator=generator)}
    if config.get("encoder_hid_proj_type", "linear") is not None:
        inputs["encoder_hidden_states"] = torch.randn(batch, tokens, embedding_dim, generator=generator)
    if padded:
        lengths = torch.tensor([tokens - 1 - i for i in range(batch)]).clamp(min=1)  # every row padded
        inputs["attention_mask"] = torch.arange(tokens)[None, :] < lengths[:, None]
    return inputs


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


PARITY_CASES = [
    pytest.param(config, batch, padded, id=f"{name}-batch{batch}-{'mask' if padded else 'no-mask'}")
    for name, config in [("kandinsky", KANDINSKY_LIKE), ("wider", WIDER), ("sequence", SEQUENCE_PRIOR)]
    for batch in (1, 3)
    for padded in (False, True)
    if not (padded and config is SEQUENCE_PRIOR)  # a text padding mask needs text tokens
]


@pytest.mark.parametrize("config, batch, padded", PARITY_CASES)
def test_forward_matches_diffusers(config, batch, padded):
    reference, ours = make_pair(config)
    inputs = make_inputs(config, batch, padded=padded)
    timestep = torch.tensor([7, 250, 999][:batch]) if batch > 1 else 421
    with torch.no_grad():
        expected = reference(timestep=timestep, **inputs).predicted_image_embedding
        got = ours(timestep=timestep, **inputs)
    assert isinstance(got, PriorTransformerOutput)
    assert max_diff(got.predicted_image_embedding, expected) <= TOLERANCE
    assert torch.equal(got[0], got.predicted_image_embedding)
    assert torch.equal(got["predicted_image_embedding"], got.to_tuple()[0])
    assert expected.abs().max() > 1e-2  # the comparison is not between two near-zero tensors
    latents = torch.randn_like(expected)
    assert max_diff(ours.post_process_latents(latents), reference.post_process_latents(latents)) <= TOLERANCE


@pytest.mark.parametrize("timestep", [5, 5.0, torch.tensor(5), torch.tensor([5]), torch.tensor([5.0, 5.0])],
                         ids=["int", "float", "0d", "1-elem", "per-item-float"])
def test_timestep_forms_match_diffusers(timestep):
    reference, ours = make_pair(KANDINSKY_LIKE)
    inputs = make_inputs(KANDINSKY_LIKE, batch=2)
    with torch.no_grad():
        expected = reference(timestep=timestep, **inputs, return_dict=False)[0]
        got = ours(timestep=timestep, **inputs, return_dict=False)
    assert isinstance(got, tuple) and len(got) == 1
    assert max_diff(got[0], expected) <= TOLERANCE


def test_padding_mask_changes_the_prediction():
    """Guards the parity test above against a mask that is silently ignored by both sides."""
    _, ours = make_pair(KANDINSKY_LIKE)
    masked = make_inputs(KANDINSKY_LIKE, batch=3, padded=True)
    plain = {k: v for k, v in masked.items() if k != "attention_mask"}
    with torch.no_grad():
        a = ours(timestep=10, **masked).predicted_image_embedding
        b = ours(timestep=10, **plain).predicted_image_embedding
    assert max_diff(a, b) > 1e-3


def test_causal_mask_buffer_matches_reference_and_is_not_saved():
    reference, ours = make_pair(KANDINSKY_LIKE)
    assert torch.equal(ours.causal_attention_mask, reference.causal_attention_mask)
    assert "causal_attention_mask" not in ours.state_dict()


def test_diffusers_checkpoint_loads_in_sfumato(tmp_path):
    reference, _ = make_pair(WIDER)
    reference.save_pretrained(tmp_path)
    ours = PriorTransformer.from_pretrained(tmp_path)
    assert not ours.training
    assert not any(t.is_meta for t in list(ours.parameters()) + list(ours.buffers()))
    assert torch.equal(ours.causal_attention_mask, reference.causal_attention_mask)
    inputs = make_inputs(WIDER, batch=2, padded=True)
    with torch.no_grad():
        expected = reference(timestep=3, **inputs).predicted_image_embedding
        got = ours(timestep=3, **inputs).predicted_image_embedding
    assert max_diff(got, expected) <= TOLERANCE


def test_load_in_bfloat16_runs_close_to_float32(tmp_path):
    reference, ours = make_pair(KANDINSKY_LIKE)
    reference.save_pretrained(tmp_path)
    half = PriorTransformer.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.causal_attention_mask.dtype == torch.bfloat16
    inputs = make_inputs(KANDINSKY_LIKE, batch=2, padded=True)
    with torch.no_grad():
        full = ours(timestep=50, **inputs).predicted_image_embedding
        low = half(timestep=50, **{k: v.bfloat16() if v.is_floating_point() else v for k, v in inputs.items()})
    low = low.predicted_image_embedding
    assert low.dtype == torch.bfloat16
    assert max_diff(low.float(), full) <= 0.1 * full.abs().max().item()


def test_sfumato_checkpoint_loads_in_diffusers(tmp_path):
    _, ours = make_pair(SEQUENCE_PRIOR, seed=4)
    ours.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "PriorTransformer"
    reference = diffusers.PriorTransformer.from_pretrained(tmp_path).eval()
    assert {k: v for k, v in reference.config.items() if not k.startswith("_")} == {
        k: v for k, v in config.items() if not k.startswith("_")
    }
    inputs = make_inputs(SEQUENCE_PRIOR, batch=2)
    with torch.no_grad():
        expected = reference(timestep=900, **inputs).predicted_image_embedding
        got = ours(timestep=900, **inputs).predicted_image_embedding
    assert max_diff(got, expected) <= TOLERANCE


@pytest.mark.parametrize("config", [KANDINSKY_21, KANDINSKY_22], ids=["2.1", "2.2"])
def test_full_size_keys_and_shapes_match_on_meta(config):
    with torch.device("meta"):
        reference = diffusers.PriorTransformer(**config)
        ours = PriorTransformer(**config)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == expected
    assert ours.causal_attention_mask.shape == reference.causal_attention_mask.shape == (1, 81, 81)
    defaults = {k: v for k, v in reference.config.items() if not k.startswith("_")}
    assert dict(ours.config) == defaults


# -- bad input ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return make_pair(KANDINSKY_LIKE)[1]


def test_wrong_proj_embedding_size(tiny):
    inputs = make_inputs(KANDINSKY_LIKE, batch=2)
    inputs["proj_embedding"] = torch.randn(2, 7)
    with pytest.raises(ValueError, match=r"proj_embedding must have shape \(batch, 12\), got \(2, 7\)"):
        tiny(timestep=1, **inputs)


def test_wrong_hidden_states_size(tiny):
    inputs = make_inputs(KANDINSKY_LIKE, batch=2)
    inputs["hidden_states"] = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"hidden_states must have shape \(batch, 12\)"):
        tiny(timestep=1, **inputs)


@pytest.mark.parametrize("argument", ["proj_embedding", "encoder_hidden_states"])
def test_mismatched_batch_sizes(tiny, argument):
    inputs = make_inputs(KANDINSKY_LIKE, batch=2)
    inputs[argument] = torch.cat([inputs[argument], inputs[argument][:1]])
    with pytest.raises(ValueError, match=f"{argument} has batch size 3 but hidden_states has 2"):
        tiny(timestep=1, **inputs)


def test_missing_encoder_hidden_states(tiny):
    inputs = make_inputs(KANDINSKY_LIKE, batch=1)
    del inputs["encoder_hidden_states"]
    with pytest.raises(ValueError, match="encoder_hidden_states is required"):
        tiny(timestep=1, **inputs)


def test_wrong_text_length(tiny):
    inputs = make_inputs(KANDINSKY_LIKE, batch=1)
    inputs["encoder_hidden_states"] = torch.randn(1, 9, 12)
    with pytest.raises(ValueError, match="sequence of 13 tokens.*covers 9.*num_embeddings = 5 tokens"):
        tiny(timestep=1, **inputs)


def test_wrong_attention_mask_shape(tiny):
    inputs = make_inputs(KANDINSKY_LIKE, batch=2, padded=True)
    inputs["attention_mask"] = inputs["attention_mask"][:, :3]
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(batch, text tokens\) = \(2, 5\)"):
        tiny(timestep=1, **inputs)


def test_wrong_timestep_count(tiny):
    inputs = make_inputs(KANDINSKY_LIKE, batch=2)
    with pytest.raises(ValueError, match=r"timestep must hold 1 value or one per batch item \(2\), got shape \(3,\)"):
        tiny(timestep=torch.tensor([1, 2, 3]), **inputs)
    with pytest.raises(TypeError, match="timestep must be a number or a tensor, got str"):
        tiny(timestep="1", **inputs)


@pytest.mark.parametrize("field, value", [("norm_in_type", "group"), ("embedding_proj_norm_type", "rms"),
                                          ("encoder_hid_proj_type", "mlp"), ("added_emb_type", "clip"),
                                          ("time_embed_act_fn", "tanh")])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"{field} must be .*got '{value}'"):
        PriorTransformer(**{**KANDINSKY_LIKE, field: value})
