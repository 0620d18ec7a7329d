"""Int8 convolutions (sfumato.nn.int8_conv): the quantization, the convolution against float64, the fall-backs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sfumato.nn import int8_conv
from sfumato.nn.int8_conv import Int8Conv2d, quantize_input, quantize_weight

pytestmark = pytest.mark.skipif(not int8_conv.available(), reason="no oneDNN int8 convolution in this build")


def layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shift", [0.0, 2.0, -3.0])
def test_input_rounds_to_the_nearest_step_and_keeps_zero_exact(channels_last, dtype, shift):
    x = torch.randn(2, 5, 7, 3, generator=torch.Generator().manual_seed(1)) + shift
    x[:, :, 0] = 0.0  # zero padding's value
    x = layout(x, channels_last).to(dtype)
    quantized, scale, zero_point = quantize_input(x)
    assert quantized.dtype == torch.uint8 and quantized.shape == x.shape
    if channels_last:
        assert quantized.is_contiguous(memory_format=torch.channels_last)
    else:
        assert quantized.is_contiguous()
    values = x.double()
    low, high = min(values.min().item(), 0.0), max(values.max().item(), 0.0)
    assert scale == pytest.approx((high - low) / 255)
    restored = (quantized.double() - zero_point) * scale
    assert (restored - values).abs().max().item() <= scale / 2 * (1 + 1e-5)
    # the range always holds 0, and 0 is exactly representable: zero padding adds no error
    assert torch.all(quantized[:, :, 0] == zero_point)
    zeros = torch.zeros_like(x)
    quantized, scale, zero_point = quantize_input(zeros)
    assert torch.all(quantized == zero_point)


def test_all_positive_and_all_negative_inputs_span_zero():
    _, _, zero_point = quantize_input(torch.rand(1, 3, 4, 4) + 1.0)
    assert zero_point == 0
    _, _, zero_point = quantize_input(-torch.rand(1, 3, 4, 4) - 1.0)
    assert zero_point == 255


def test_a_range_stretched_by_outliers_is_refused():
    x = torch.randn(1, 64, 32, 32, generator=torch.Generator().manual_seed(0))
    assert quantize_input(x, max_error=0.04) is not None  # Gaussian: ~1% rounding error
    x[0, 0, 0, 0] = 200.0  # one value sets a step of ~1.2 standard deviations
    assert quantize_input(x, max_error=0.04) is None
    assert quantize_input(x) is not None  # without a bound it quantizes anyway


def test_weights_are_symmetric_per_output_channel():
    weight = torch.randn(6, 4, 3, 3) * torch.arange(1, 7).view(6, 1, 1, 1)
    quantized, scale = quantize_weight(weight)
    assert quantized.dtype == torch.int8 and scale.shape == (6,)
    assert quantized.abs().amax(dim=(1, 2, 3)).tolist() == [127] * 6
    assert torch.allclose(quantized.float() * scale.view(6, 1, 1, 1), weight, atol=float(scale.max()) / 2 + 1e-6)


def make_conv(inputs, outputs, kernel, stride=1, padding=None, bias=True, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(inputs, outputs, kernel, stride=stride, padding=kernel // 2 if padding is None else padding,
                     bias=bias).eval()
    return conv


@pytest.mark.parametrize("kernel,stride,bias", [(3, 1, True), (1, 1, True), (3, 2, False), (3, 1, False)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("way", ["conv", "gemm"])
def test_convolution_is_close_to_float64(kernel, stride, bias, channels_last, dtype, way, monkeypatch):
    monkeypatch.setattr(int8_conv, "MIN_MULTIPLICATIONS", 0)
    monkeypatch.setattr(int8_conv, "MAX_GEMM_ROWS", 10**9 if way == "gemm" else 0)
    conv = make_conv(48, 40, kernel, stride=stride, bias=bias)
    x = layout(torch.randn(2, 48, 13, 11, generator=torch.Generator().manual_seed(2)), channels_last)
    exact = F.conv2d(x.double(), conv.weight.double(), None if conv.bias is None else conv.bias.double(),
                     stride=stride, padding=kernel // 2)
    conv = conv.to(dtype)
    assert int8_conv.use_int8_convolutions(conv) == 1 and type(conv) is Int8Conv2d
    with torch.inference_mode():
        got = conv(x.to(dtype))
    assert got.dtype == dtype and got.shape == exact.shape
    error = ((got.double() - exact).norm() / exact.norm()).item()
    assert 1e-4 < error < 0.02  # really int8 (not the float convolution), and close: ~1% on Gaussian inputs


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, (1, 1)), (1, 1, (0, 0)), (3, 2, (1, 1)), (4, 2, (1, 1)),
                                                   (3, 1, (0, 2)), (5, 3, (2, 1)), (1, 2, (0, 0))])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_small_maps_run_one_gemm_with_the_convolutions_numbers(kernel, stride, padding, channels_last, dtype,
                                                                monkeypatch):
    """Up to MAX_GEMM_ROWS output pixels the convolution is im2col + oneDNN's int8 linear layer: the same
    quantized numbers as the int8 convolution, summed in another order in int32, so the same result up to the
    output's rounding."""
    monkeypatch.setattr(int8_conv, "MIN_MULTIPLICATIONS", 0)
    conv = make_conv(40, 36, kernel, stride=stride, padding=padding).to(dtype)
    int8_conv.use_int8_convolutions(conv)
    x = layout(torch.randn(2, 40, 9, 10, generator=torch.Generator().manual_seed(3)), channels_last).to(dtype)
    calls = []
    monkeypatch.setattr(torch.ops.onednn, "qlinear_pointwise",
                        lambda *args, real=torch.ops.onednn.qlinear_pointwise: calls.append(1) or real(*args))
    with torch.inference_mode():
        gemm = conv(x)
        assert calls == [1]
        monkeypatch.setattr(int8_conv, "MAX_GEMM_ROWS", 0)
        direct = conv(x)
        assert calls == [1]
    exact = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), stride=stride, padding=padding)
    assert gemm.shape == direct.shape == exact.shape and gemm.dtype == dtype
    size = direct.double().abs().max().item()
    assert (gemm.double() - direct.double()).abs().max().item() <= (1e-5 if dtype == torch.float32 else 8e-3) * size
    assert ((gemm.double() - exact).norm() / exact.norm()).item() < 0.02


def test_unfold_gives_every_window_padded_with_the_zero_point():
    x = torch.randint(0, 255, (2, 5, 4, 3), dtype=torch.uint8)
    rows = int8_conv.unfold(x, 7, (3, 2), (2, 1), (1, 0))
    padded = F.pad(x.float(), (0, 0, 1, 1), value=7.0)  # height padded by 1 on each side, width by 0
    windows = padded.unfold(2, 3, 2).unfold(3, 2, 1)  # (B, C, H_out, W_out, 3, 2)
    expected = windows.permute(0, 2, 3, 4, 5, 1).reshape(-1, 3 * 2 * 5)
    assert rows.dtype == torch.uint8 and torch.equal(rows.float(), expected)


def test_falls_back_to_the_exact_convolution_where_int8_would_not_pay_or_not_hold(monkeypatch):
    conv = make_conv(32, 32, 3)
    x = torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        expected = F.conv2d(x, conv.weight, conv.bias, padding=1)
    int8_conv.use_int8_convolutions(conv)
    with torch.no_grad():
        assert torch.equal(conv(x), expected)  # too small: 590k multiplications
    monkeypatch.setattr(int8_conv, "MIN_MULTIPLICATIONS", 0)
    with torch.no_grad():
        assert not torch.equal(conv(x), expected)
        outlier = x.clone()
        outlier[0, 0, 0, 0] = 500.0
        assert torch.equal(conv(outlier), F.conv2d(outlier, conv.weight, conv.bias, padding=1))
    # training: gradients flow through the plain convolution
    x.requires_grad_(True)
    out = conv(x)
    out.sum().backward()
    assert torch.equal(out.detach(), expected) and x.grad is not None


def test_only_plain_convolutions_with_enough_channels_qualify():
    assert int8_conv.qualifies(make_conv(32, 64, 3))
    assert not int8_conv.qualifies(make_conv(4, 64, 3))  # a model's first convolution
    assert not int8_conv.qualifies(make_conv(64, 8, 3))  # and its last
    assert not int8_conv.qualifies(nn.Conv2d(64, 64, 3, groups=2))
    assert not int8_conv.qualifies(nn.Conv2d(64, 64, 3, padding=1, padding_mode="reflect"))
    assert not int8_conv.qualifies(nn.Conv2d(64, 64, 3, padding="same"))
    assert not int8_conv.qualifies(nn.Linear(64, 64))


def test_switches_and_undoes_without_touching_the_state_dict():
    model = nn.Sequential(make_conv(4, 32, 3), nn.SiLU(), make_conv(32, 48, 3), make_conv(48, 48, 1), make_conv(48, 3, 3))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    assert int8_conv.use_int8_convolutions(model) == 2
    assert [type(m).__name__ for m in model] == ["Conv2d", "SiLU", "Int8Conv2d", "Int8Conv2d", "Conv2d"]
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[key], value) for key, value in before.items())
    int8_conv.stop_int8_convolutions(model)
    assert all(type(m) in (nn.Conv2d, nn.SiLU) for m in model)
    assert all(not {"_int8", "_packed", "_source"} & m.__dict__.keys() for m in model)


@pytest.mark.parametrize("rows", [0, 10**9])  # the convolution way, the GEMM way
def test_both_ways_quantize_the_weights_seen_at_prepare_not_a_later_cast(rows, monkeypatch):
    monkeypatch.setattr(int8_conv, "MIN_MULTIPLICATIONS", 0)
    monkeypatch.setattr(int8_conv, "MAX_GEMM_ROWS", rows)
    conv = make_conv(40, 36, 3)
    fp32_scale = quantize_weight(conv.weight)[1]
    int8_conv.use_int8_convolutions(conv)
    conv.to(torch.bfloat16)  # as the fast mode does after preparing
    with torch.inference_mode():
        conv(torch.randn(1, 40, 6, 6, dtype=torch.bfloat16))
    assert torch.equal(conv._packed["gemm" if rows else "conv"][1], fp32_scale)
    assert not torch.equal(quantize_weight(conv.weight)[1], fp32_scale)  # the bf16 weights would quantize otherwise
