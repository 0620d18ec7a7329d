"""Timestep and Kandinsky conditioning embeddings: parity with the reference."""

import pytest
import torch

from sfumato import nn as blocks

reference = pytest.importorskip("diffusers.models.embeddings")


@pytest.mark.parametrize("dim,flip,shift", [(32, True, 0), (33, False, 1), (16, True, 1)])
def test_timestep_embedding_matches_reference(dim, flip, shift):
    timesteps = torch.tensor([0, 1, 250.5, 999])
    expected = reference.get_timestep_embedding(timesteps, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    got = blocks.Timesteps(dim, flip, shift)(timesteps)
    assert torch.equal(got, expected)


def test_timestep_embedding_needs_1d():
    with pytest.raises(ValueError, match="1-D"):
        blocks.timestep_embedding(torch.tensor(3.0), 8)


@pytest.mark.parametrize(
    "name,args,inputs",
    [
        ("TimestepEmbedding", (16, 32), [(3, 16)]),
        ("ImageProjection", (12, 8, 4), [(2, 12)]),
        ("TextImageProjection", (10, 12, 8, 3), [(2, 5, 10), (2, 12)]),
        ("ImageTimeEmbedding", (12, 20), [(2, 12)]),
        ("TextImageTimeEmbedding", (10, 12, 20), [(2, 10), (2, 12)]),
        ("ImageHintTimeEmbedding", (12, 20), [(2, 12), (2, 3, 32, 24)]),
        ("GaussianFourierProjection", (8, 1.0, False, False, True), [(3,)]),
    ],
)
def test_embedding_modules_match_reference(name, args, inputs):
    torch.manual_seed(0)
    theirs = getattr(reference, name)(*args)
    ours = getattr(blocks, name)(*args)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    tensors = [torch.rand(shape) + 0.1 for shape in inputs]
    with torch.no_grad():
        expected, got = theirs(*tensors), ours(*tensors)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-5
