"""The fast mode's 3x3 convolutions (Winograd F(4x4, 3x3), one GEMM) against the direct convolution in float64."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sfumato.nn import fast_conv


def _relative_error(got: torch.Tensor, exact: torch.Tensor) -> float:
    return float((got.double() - exact).abs().max() / exact.abs().max())


@pytest.mark.parametrize("batch, channels, outputs, height, width, bias, channels_last", [
    (1, 8, 8, 8, 8, True, True),
    (2, 5, 7, 9, 13, True, False),   # sizes that are not multiples of the tile: the last tiles overhang
    (3, 16, 4, 4, 4, False, True),   # one tile
    (1, 3, 6, 1, 17, True, True),    # a one-row picture
    (2, 12, 20, 23, 6, False, False),
])
def test_equals_the_direct_convolution_to_fp32_rounding(batch, channels, outputs, height, width, bias, channels_last):
    generator = torch.Generator().manual_seed(batch * 100 + channels)
    x = torch.randn(batch, channels, height, width, generator=generator)
    weight = torch.randn(outputs, channels, 3, 3, generator=generator) / (3 * channels ** 0.5)
    shift = torch.randn(outputs, generator=generator) if bias else None
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    exact = F.conv2d(x.double(), weight.double(), None if shift is None else shift.double(), padding=1)
    got = fast_conv.winograd_conv3x3(x, fast_conv.transform_weight(weight), shift)
    assert got.shape == exact.shape and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert _relative_error(got, exact) < 3e-5
    direct = F.conv2d(x, weight, shift, padding=1)
    assert _relative_error(direct, exact) < 3e-5  # the same order of rounding as the direct convolution
    gemm = fast_conv.gemm_conv3x3(x, weight.contiguous(memory_format=torch.channels_last), shift)
    assert gemm.is_contiguous(memory_format=torch.channels_last)
    assert _relative_error(gemm, exact) < 3e-6
    assert _relative_error(fast_conv.gemm_conv3x3(x, weight, shift), exact) < 3e-6  # NCHW weights too


def test_chunks_of_tile_rows_give_the_whole_picture(monkeypatch):
    x = torch.randn(2, 6, 30, 10)
    weight, shift = torch.randn(5, 6, 3, 3), torch.randn(5)
    whole = fast_conv.winograd_conv3x3(x, fast_conv.transform_weight(weight), shift)
    monkeypatch.setattr(fast_conv, "_CHUNK_BYTES", 1)  # one tile row per chunk
    fast_conv.free_buffers()
    chunked = fast_conv.winograd_conv3x3(x, fast_conv.transform_weight(weight), shift)
    assert _relative_error(chunked, whole.double()) < 1e-5  # the same products, grouped otherwise
    monkeypatch.setattr(fast_conv, "_MAX_BUFFER_BYTES", 1)  # every buffer over the cap: dropped as it goes
    again = fast_conv.winograd_conv3x3(x, fast_conv.transform_weight(weight), shift)
    assert torch.equal(again, chunked)
    assert torch.allclose(whole, F.conv2d(x, weight, shift, padding=1), rtol=1e-4, atol=1e-4)


def test_outputs_are_new_tensors_not_shared_buffers():
    x = torch.randn(1, 4, 8, 8)
    transformed = fast_conv.transform_weight(torch.randn(4, 4, 3, 3))
    first = fast_conv.winograd_conv3x3(x, transformed, None)
    kept = first.clone()
    fast_conv.winograd_conv3x3(torch.randn(1, 4, 8, 8), transformed, None)
    assert torch.equal(first, kept)


def _conv(channels=64, outputs=64, **settings):
    torch.manual_seed(0)
    return nn.Conv2d(channels, outputs, 3, padding=1, **settings).eval()


def test_module_switches_and_undoes_without_touching_the_state_dict(monkeypatch):
    monkeypatch.setattr(fast_conv, "MIN_MULTIPLICATIONS", 0)
    monkeypatch.setattr(fast_conv, "MIN_WINOGRAD_PIXELS", 0)
    network = nn.Sequential(_conv(), nn.SiLU(), _conv())
    others = nn.ModuleList([nn.Conv2d(64, 64, 1), _conv(stride=2), _conv(groups=2), _conv(16, 64),
                            _conv(padding_mode="reflect")])
    model = nn.ModuleList([network, others])
    state = {key: value.clone() for key, value in model.state_dict().items()}
    x = torch.randn(1, 64, 12, 12)
    with torch.no_grad():
        plain = network(x)
        assert fast_conv.use_fast_convolutions(model) == 2  # not the 1x1, strided, grouped, narrow or reflecting ones
        assert [type(m) for m in network] == [fast_conv.FastConv2d, nn.SiLU, fast_conv.FastConv2d]
        assert all(type(m) is nn.Conv2d for m in others)
        assert torch.allclose(network(x), plain, rtol=1e-4, atol=1e-4)
        fast_conv.stop_fast_convolutions(model)
        assert all(type(m) is not fast_conv.FastConv2d for m in model.modules())
        assert torch.equal(network(x), plain)
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())


def test_module_picks_by_size_and_falls_back_where_nothing_pays(monkeypatch):
    conv = _conv()
    fast_conv.use_fast_convolutions(conv)
    x = torch.randn(1, 64, 8, 8)
    paths = []
    for name in ("winograd_conv3x3", "gemm_conv3x3"):
        monkeypatch.setattr(fast_conv, name, lambda *args, real=getattr(fast_conv, name), name=name:
                            paths.append(name) or real(*args))
    with torch.no_grad():  # 2.4 M multiplications: below the threshold, oneDNN's convolution
        assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1)) and paths == []
        monkeypatch.setattr(fast_conv, "MIN_MULTIPLICATIONS", 0)
        assert torch.allclose(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=1e-5, atol=1e-5)
        assert paths == ["gemm_conv3x3"]  # 64 output pixels: one GEMM
        monkeypatch.setattr(fast_conv, "MAX_GEMM_PIXELS", 32)
        assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))  # between the two: oneDNN
        monkeypatch.setattr(fast_conv, "MIN_WINOGRAD_PIXELS", 64)
        assert not torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
        assert paths == ["gemm_conv3x3", "winograd_conv3x3"]
        bf16 = conv.to(torch.bfloat16)  # another dtype: oneDNN's
        assert torch.equal(bf16(x.bfloat16()), F.conv2d(x.bfloat16(), bf16.weight, bf16.bias, padding=1))
    conv = conv.float()
    y = conv(x.requires_grad_())  # training: the direct convolution, with its gradient
    y.sum().backward()
    assert x.grad is not None and paths == ["gemm_conv3x3", "winograd_conv3x3"]


def test_a_changed_weight_is_transformed_again(monkeypatch):
    monkeypatch.setattr(fast_conv, "MIN_MULTIPLICATIONS", 0)
    monkeypatch.setattr(fast_conv, "MIN_WINOGRAD_PIXELS", 0)
    monkeypatch.setattr(fast_conv, "MAX_GEMM_PIXELS", -1)
    conv = _conv()
    fast_conv.use_fast_convolutions(conv)
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        conv(x)
        conv.weight.mul_(2)
        assert torch.allclose(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=1e-4, atol=1e-4)
