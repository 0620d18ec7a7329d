"""Upsample2D / Downsample2D / SpatialNorm: parity and checkpoint names."""

import pytest
import torch

from sfumato.nn import Downsample2D, SpatialNorm, Upsample2D

upsampling = pytest.importorskip("diffusers.models.upsampling")
downsampling = pytest.importorskip("diffusers.models.downsampling")
attention_processor = pytest.importorskip("diffusers.models.attention_processor")


def _check(ours, theirs, *inputs, **kwargs):
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    with torch.no_grad():
        expected, got = theirs(*inputs, **kwargs), ours(*inputs, **kwargs)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kwargs", [dict(use_conv=True), dict(use_conv=False), dict(use_conv_transpose=True),
                                    dict(use_conv=True, out_channels=6, name="Conv2d_0")])
def test_upsample_matches_reference(kwargs):
    torch.manual_seed(0)
    _check(Upsample2D(4, **kwargs), upsampling.Upsample2D(4, **kwargs), torch.randn(2, 4, 3, 5))


def test_upsample_to_explicit_size_matches_reference():
    torch.manual_seed(0)
    _check(Upsample2D(4, use_conv=True), upsampling.Upsample2D(4, use_conv=True), torch.randn(1, 4, 3, 5),
           output_size=(7, 9))


@pytest.mark.parametrize("kwargs", [dict(use_conv=True, padding=1, name="op"), dict(use_conv=True, padding=0, name="op"),
                                    dict(use_conv=False, name="op"), dict(use_conv=True, padding=1)])
def test_downsample_matches_reference(kwargs):
    torch.manual_seed(0)
    _check(Downsample2D(4, **kwargs), downsampling.Downsample2D(4, **kwargs), torch.randn(2, 4, 7, 10))


def test_spatial_norm_matches_reference():
    torch.manual_seed(0)
    _check(SpatialNorm(32, 3), attention_processor.SpatialNorm(32, 3), torch.randn(2, 32, 8, 6),
           torch.randn(2, 3, 2, 3))


def test_wrong_channel_count_is_named():
    with pytest.raises(ValueError, match="expects 4 channels"):
        Downsample2D(4, use_conv=True)(torch.randn(1, 3, 8, 8))
