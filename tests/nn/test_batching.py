"""nn.batching: which rows make each picture, so the int8 layers quantize per picture and a picture made in a
batch gets the numbers it gets alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sfumato.nn import batching, int8_conv, int8_linear
from sfumato.nn.batching import per_picture, picture_count, stacked_copies


def test_rows_of_one_picture_are_found_by_the_stacked_layout():
    assert picture_count(6) == 1  # outside: the whole batch is one
    with stacked_copies(2, 6):
        assert picture_count(6) == 3
        assert picture_count(12) == 1  # another first dimension (flattened tokens): left whole
        with stacked_copies(1, 3):
            assert picture_count(3) == 3
        assert picture_count(6) == 3
    assert picture_count(6) == 1


@pytest.mark.parametrize("copies, batch", [(0, 2), (2, 3), (1, 0), (1.0, 2)])
def test_bad_layouts_are_refused(copies, batch):
    with pytest.raises(ValueError, match="copies|batch"):
        with stacked_copies(copies, batch):
            pass


@pytest.mark.parametrize("channels_last", [False, True])
def test_each_picture_runs_on_its_own_rows_and_comes_back_in_place(channels_last):
    x = torch.arange(6 * 3 * 2 * 2, dtype=torch.float32).reshape(6, 3, 2, 2)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    seen = []

    def run(part):
        seen.append((part[:, 0, 0, 0].tolist(), part.is_contiguous(memory_format=torch.channels_last)
                     if channels_last else part.is_contiguous()))
        return part * 2 + part.mean()  # depends on the rows it is given, as a quantizing layer does

    with stacked_copies(2, 6):
        out = per_picture(x, run)
    rows = [[0.0, 36.0], [12.0, 48.0], [24.0, 60.0]]  # picture i: row i of each block
    assert seen == [(r, True) for r in rows]
    for i in range(3):
        pair = x[[i, i + 3]]
        torch.testing.assert_close(out[[i, i + 3]], pair * 2 + pair.mean(), rtol=0, atol=0)
    assert out.is_contiguous(memory_format=torch.channels_last) if channels_last else out.is_contiguous()
    assert torch.equal(per_picture(x, lambda part: part + 1), x + 1)  # outside: one call


def _pictures_alone_and_in_a_batch(layer, make_input, monkeypatch):
    generator = torch.Generator().manual_seed(0)
    # three pictures whose ranges differ a lot: quantized over the whole batch, the small ones would lose detail
    pictures = [make_input(generator) * scale for scale in (0.1, 1.0, 8.0)]
    with torch.no_grad():
        alone = []
        for picture in pictures:
            with stacked_copies(2, 2):
                alone.append(layer(torch.cat([picture, picture + 0.5])))
        batch = torch.cat([p for p in pictures] + [p + 0.5 for p in pictures])
        with stacked_copies(2, 6):
            together = layer(batch)
        monkeypatch.setattr(batching, "picture_count", lambda rows: 1)
        whole = layer(batch)
    return alone, together, whole


@pytest.mark.skipif(not int8_conv.available(), reason="no oneDNN int8 convolution in this build")
@pytest.mark.parametrize("size", [6, 40], ids=["gemm-way", "convolution-way"])
def test_int8_convolution_gives_a_picture_in_a_batch_its_numbers_alone(size, monkeypatch):
    monkeypatch.setattr(int8_conv, "MIN_MULTIPLICATIONS", 0)
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 48, 3, padding=1)
    int8_conv.use_int8_convolutions(conv)

    def make(generator):
        return torch.randn(1, 32, size, size, generator=generator).contiguous(memory_format=torch.channels_last)

    alone, together, whole = _pictures_alone_and_in_a_batch(conv, make, monkeypatch)
    for i, single in enumerate(alone):
        assert torch.equal(together[[i, i + 3]], single)
    # the whole batch quantized at once: the smallest picture's step is the largest one's
    assert not torch.allclose(whole[[0, 3]], alone[0], rtol=0.01, atol=0.01 * alone[0].abs().max().item())


@pytest.mark.skipif(not int8_linear.available(), reason="no oneDNN int8 linear layer in this build")
def test_int8_linear_gives_a_picture_in_a_batch_its_numbers_alone(monkeypatch):
    monkeypatch.setattr(int8_linear, "MIN_MULTIPLICATIONS", 0)
    torch.manual_seed(0)
    linear = nn.Linear(64, 40)
    int8_linear.use_int8_linears(linear)
    alone, together, whole = _pictures_alone_and_in_a_batch(
        linear, lambda generator: torch.randn(1, 7, 64, generator=generator), monkeypatch)
    for i, single in enumerate(alone):
        assert torch.equal(together[[i, i + 3]], single)
    assert not torch.allclose(whole[[0, 3]], alone[0], rtol=0.01, atol=0.01 * alone[0].abs().max().item())
