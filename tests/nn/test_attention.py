"""Attention parity with the reference: added-KV (Kandinsky), self/cross, group and spatial norms."""

import pytest
import torch

from sfumato.nn import (
    Attention,
    AttnAddedKVProcessor,
    AttnAddedKVProcessor2_0,
    AttnProcessor,
    AttnProcessor2_0,
    attn_processors,
    set_attn_processor,
)

reference = pytest.importorskip("diffusers.models.attention_processor")


def _pair(**kwargs):
    torch.manual_seed(0)
    theirs = reference.Attention(**kwargs).eval()
    if "added_kv_proj_dim" in kwargs:
        # the reference's blocks pass this processor; its Attention alone would default to the plain one
        theirs.set_processor(reference.AttnAddedKVProcessor2_0())
    ours = Attention(**kwargs).eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def _max_diff(ours, theirs, *args, **kwargs):
    with torch.no_grad():
        expected = theirs(*args, **kwargs)
        got = ours(*args, **kwargs)
    assert got.shape == expected.shape
    return (got - expected).abs().max().item()


ADDED_KV = dict(query_dim=32, cross_attention_dim=32, heads=4, dim_head=8, added_kv_proj_dim=24,
                norm_num_groups=8, bias=True, upcast_softmax=True)


@pytest.mark.parametrize(
    "options",
    [{}, {"only_cross_attention": True}, {"cross_attention_norm": "group_norm", "cross_attention_norm_num_groups": 4},
     {"cross_attention_norm": "layer_norm"}],
    ids=["self_and_cross", "only_cross", "group_norm_cross", "layer_norm_cross"],
)
def test_added_kv_attention_matches_reference(options):
    kwargs = dict(ADDED_KV, **options)
    if options.get("cross_attention_norm") == "layer_norm":
        kwargs["added_kv_proj_dim"] = 32  # the reference sizes this LayerNorm by cross_attention_dim
    ours, theirs = _pair(**kwargs)
    sample = torch.randn(2, 32, 6, 10)
    tokens = torch.randn(2, 7, kwargs["added_kv_proj_dim"])
    assert _max_diff(ours, theirs, sample, encoder_hidden_states=tokens) <= 1e-5
    # the classic processors compute the same numbers
    theirs.set_processor(reference.AttnAddedKVProcessor())
    ours.set_processor(AttnAddedKVProcessor())
    assert _max_diff(ours, theirs, sample, encoder_hidden_states=tokens) <= 1e-5


def test_added_kv_attention_with_mask_matches_reference():
    ours, theirs = _pair(**ADDED_KV)
    sample, tokens = torch.randn(2, 32, 4, 4), torch.randn(2, 5, 24)
    mask = torch.zeros(2, 1, 5)
    mask[1, 0, 3:] = -10000.0
    assert _max_diff(ours, theirs, sample, encoder_hidden_states=tokens, attention_mask=mask) <= 1e-5


def test_added_kv_attention_without_condition_attends_to_itself():
    kwargs = dict(ADDED_KV, added_kv_proj_dim=32)
    ours, theirs = _pair(**kwargs)
    assert _max_diff(ours, theirs, torch.randn(1, 32, 4, 6)) <= 1e-5


@pytest.mark.parametrize("processor", ["sdpa", "classic"])
def test_feature_map_self_attention_matches_reference(processor):
    # the autoencoder mid-block form: group norm, residual, output rescale
    kwargs = dict(query_dim=32, heads=2, dim_head=16, norm_num_groups=8, eps=1e-6, bias=True,
                  residual_connection=True, upcast_softmax=True, rescale_output_factor=2.0)
    ours, theirs = _pair(**kwargs)
    if processor == "classic":
        ours.set_processor(AttnProcessor())
        theirs.set_processor(reference.AttnProcessor())
    assert _max_diff(ours, theirs, torch.randn(2, 32, 5, 7)) <= 1e-5


def test_spatial_norm_attention_matches_reference():
    kwargs = dict(query_dim=32, heads=1, dim_head=32, spatial_norm_dim=4, bias=True, residual_connection=True,
                  upcast_softmax=True, _from_deprecated_attn_block=True)
    ours, theirs = _pair(**kwargs)
    zq = torch.randn(2, 4, 3, 3)
    assert _max_diff(ours, theirs, torch.randn(2, 32, 6, 6), temb=zq) <= 1e-5


def test_token_cross_attention_matches_reference():
    ours, theirs = _pair(query_dim=32, cross_attention_dim=20, heads=4, dim_head=8)
    tokens, context = torch.randn(2, 9, 32), torch.randn(2, 5, 20)
    mask = torch.zeros(2, 1, 5)
    mask[0, 0, -2:] = -10000.0
    assert _max_diff(ours, theirs, tokens, encoder_hidden_states=context) <= 1e-5
    assert _max_diff(ours, theirs, tokens, encoder_hidden_states=context, attention_mask=mask) <= 1e-5


def test_out_dim_attention_matches_reference():
    ours, theirs = _pair(query_dim=16, cross_attention_dim=16, dim_head=8, out_dim=32, out_bias=False)
    assert _max_diff(ours, theirs, torch.randn(2, 1, 16), encoder_hidden_states=torch.randn(2, 6, 16)) <= 1e-5


def test_processors_are_listed_and_swappable():
    model = torch.nn.ModuleDict({"a": Attention(**ADDED_KV), "b": Attention(query_dim=8, heads=2, dim_head=4)})
    processors = attn_processors(model)
    assert list(processors) == ["a.processor", "b.processor"]
    assert isinstance(processors["a.processor"], AttnAddedKVProcessor2_0)
    assert isinstance(processors["b.processor"], AttnProcessor2_0)
    set_attn_processor(model, {"a.processor": AttnAddedKVProcessor(), "b.processor": AttnProcessor()})
    assert isinstance(model["a"].processor, AttnAddedKVProcessor)
    with pytest.raises(ValueError, match="one entry per attention layer"):
        set_attn_processor(model, {"a.processor": AttnProcessor()})
    with pytest.raises(TypeError, match="processor must be callable"):
        model["b"].set_processor("sdpa")


def test_only_cross_attention_needs_added_projections():
    with pytest.raises(ValueError, match="added_kv_proj_dim"):
        Attention(query_dim=8, only_cross_attention=True)
