"""The autoencoder's fast SpatialNorm against the reference's, on every path it takes."""

from __future__ import annotations

import pytest
import torch

from diffusers.models.attention_processor import SpatialNorm as ReferenceSpatialNorm
from sfumato.models.autoencoder_parts import SpatialNorm

TOLERANCE = 1e-5


def make_pair(channels: int = 64, zq_channels: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    reference = ReferenceSpatialNorm(channels, zq_channels)
    with torch.no_grad():  # a norm that is not the identity, so folding its affine into the scale is tested
        reference.norm_layer.weight.copy_(1 + 0.3 * torch.randn(channels))
        reference.norm_layer.bias.copy_(0.3 * torch.randn(channels))
    ours = SpatialNorm(channels, zq_channels)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


# (feature size, zq size): equal sizes, power-of-two blocks (as in the decoder), a ratio of 3,
# and sizes that are no multiple at all (both fall back to resizing scale and shift)
SIZES = [((6, 10), (6, 10)), ((12, 20), (6, 10)), ((24, 16), (3, 2)), ((12, 18), (4, 6)), ((10, 14), (4, 6)),
         ((8, 8), (16, 16))]


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
@pytest.mark.parametrize("f_size, zq_size", SIZES, ids=[f"{f[0]}x{f[1]}-from-{z[0]}x{z[1]}" for f, z in SIZES])
def test_spatial_norm_matches_reference(f_size, zq_size, channels_last):
    reference, ours = make_pair()
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 64, *f_size, generator=generator) * 3 + 1
    zq = torch.randn(2, 3, *zq_size, generator=generator)
    if channels_last:
        features = features.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = reference(features, zq)
        got = ours(features, zq)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= TOLERANCE


def test_spatial_norm_with_autograd_leaves_its_input_alone_and_matches_gradients():
    reference, ours = make_pair()
    features = torch.randn(1, 64, 8, 12)
    zq = torch.randn(1, 3, 2, 3)
    inputs = [(features.clone().requires_grad_(True), zq.clone().requires_grad_(True)) for _ in range(2)]
    expected = reference(*inputs[0])
    got = ours(*inputs[1])
    assert (got - expected).abs().max() <= TOLERANCE
    (expected * torch.linspace(-1, 1, 12)).sum().backward()
    (got * torch.linspace(-1, 1, 12)).sum().backward()
    for ref_tensor, our_tensor in zip(inputs[0], inputs[1]):
        assert (our_tensor.grad - ref_tensor.grad).abs().max() <= 1e-4
    assert torch.equal(inputs[1][0].detach(), features)  # not overwritten while autograd records
    ref_grads = dict(reference.named_parameters())
    for name, parameter in ours.named_parameters():
        assert (parameter.grad - ref_grads[name].grad).abs().max() <= 1e-4, name


def test_spatial_norm_bfloat16_close_to_reference():
    reference, ours = make_pair()
    reference.to(torch.bfloat16)
    ours.to(torch.bfloat16)
    features = torch.randn(2, 64, 16, 16).to(torch.bfloat16)
    zq = torch.randn(2, 3, 4, 4).to(torch.bfloat16)
    with torch.no_grad():
        expected = reference(features, zq).float()
        got = ours(features, zq).float()
    assert got.dtype == torch.float32 and (got - expected).abs().max() <= 0.05 * expected.abs().max()
