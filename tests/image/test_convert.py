"""PIL / numpy / torch converters against the reference's (diffusers.utils, VaeImageProcessor statics)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor as Reference
from diffusers.utils import numpy_to_pil as reference_numpy_to_pil
from diffusers.utils import pt_to_pil as reference_pt_to_pil

from sfumato.image.convert import (
    denormalize,
    normalize,
    numpy_to_pil,
    numpy_to_pt,
    pil_to_numpy,
    pt_to_numpy,
    pt_to_pil,
    to_numpy,
    to_pil,
    to_tensor,
)


def _same_pictures(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.mode == b.mode and a.size == b.size
        assert np.array_equal(np.array(a), np.array(b))


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


def test_numpy_to_pil_matches_reference():
    rng = np.random.default_rng(0)
    for shape in [(2, 5, 7, 3), (5, 7, 3), (3, 5, 7, 1), (5, 7, 4)]:
        array = rng.random(shape, dtype=np.float32)
        _same_pictures(numpy_to_pil(array), reference_numpy_to_pil(array))
        _same_pictures(numpy_to_pil(array), Reference.numpy_to_pil(array))
    assert numpy_to_pil(np.ones((1, 1, 1), np.float32))[0].size == (1, 1)  # no squeeze surprise


def test_pil_to_numpy_and_back_match_reference():
    rng = np.random.default_rng(1)
    pictures = [PIL.Image.fromarray(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)) for _ in range(2)]
    gray = PIL.Image.fromarray(rng.integers(0, 256, (6, 9), dtype=np.uint8), mode="L")
    for value in (pictures, pictures[0], gray):
        ours, theirs = pil_to_numpy(value), Reference.pil_to_numpy(value)
        assert ours.dtype == theirs.dtype == np.float32 and np.array_equal(ours, theirs)
        assert torch.equal(numpy_to_pt(ours), Reference.numpy_to_pt(theirs))


def test_pt_numpy_roundtrip_and_ranges_match_reference(generator):
    images = torch.rand(2, 3, 5, 7, generator=generator) * 2.4 - 1.2
    assert np.array_equal(pt_to_numpy(images), Reference.pt_to_numpy(images))
    assert torch.equal(normalize(images), Reference.normalize(images))
    assert torch.equal(denormalize(images), Reference.denormalize(images))
    _same_pictures(pt_to_pil(images), reference_pt_to_pil(images))
    assert pt_to_numpy(images.double()).dtype == np.float32


def test_to_pil_numpy_tensor_from_every_form(generator):
    unit = torch.rand(2, 3, 5, 7, generator=generator)
    array = unit.permute(0, 2, 3, 1).numpy()
    expected = reference_numpy_to_pil(array)
    for form in (unit, list(unit), unit[0:1], array, list(array), array[0:1]):
        pictures = to_pil(form)
        _same_pictures(pictures, expected[: len(pictures)])
    _same_pictures(to_pil(unit * 2 - 1, value_range=(-1, 1)), reference_pt_to_pil(unit * 2 - 1))
    _same_pictures(to_pil(expected), expected)
    assert to_pil(expected[0])[0] is expected[0]

    assert np.array_equal(to_numpy(unit), array)
    assert np.array_equal(to_numpy(expected), Reference.pil_to_numpy(expected))
    assert torch.equal(to_tensor(array), unit)
    assert torch.equal(to_tensor(unit[0]), unit[0:1])
    assert torch.allclose(to_tensor(unit * 2 - 1, value_range=(-1, 1)), unit, atol=1e-6)
    assert torch.equal(to_tensor(expected), Reference.numpy_to_pt(Reference.pil_to_numpy(expected)))


def test_converters_bad_input():
    with pytest.raises(TypeError, match="numpy array"):
        numpy_to_pil(torch.zeros(1, 4, 4, 3))
    with pytest.raises(ValueError, match=r"NHWC or HWC, got an array of shape \(4, 4\)"):
        numpy_to_pil(np.zeros((4, 4)))
    with pytest.raises(TypeError, match=r"images\[1\] must be a PIL.Image.Image"):
        pil_to_numpy([PIL.Image.new("RGB", (4, 4)), np.zeros((4, 4, 3))])
    with pytest.raises(ValueError, match="same size"):
        pil_to_numpy([PIL.Image.new("RGB", (4, 4)), PIL.Image.new("RGB", (5, 4))])
    with pytest.raises(ValueError, match=r"NCHW torch.Tensor, got shape \(3, 4, 4\)"):
        pt_to_numpy(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match=r"value_range must be \(0, 1\) or \(-1, 1\), got \(0, 255\)"):
        to_tensor(np.zeros((4, 4, 3), np.float32), value_range=(0, 255))
    with pytest.raises(TypeError, match="floats .* got dtype torch.uint8"):
        to_tensor(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(TypeError, match="got str"):
        to_pil("picture.png")
    with pytest.raises(ValueError, match=r"CHW or NCHW, got shape \(4, 4\)"):
        to_tensor(torch.zeros(4, 4))
