"""Int8 linear layers (sfumato.nn.int8_linear): against float64, the fall-backs, switching and undoing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sfumato.nn import int8_linear
from sfumato.nn.int8_linear import Int8Linear

pytestmark = pytest.mark.skipif(not int8_linear.available(), reason="no oneDNN int8 linear layer in this build")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 96), (2, 33, 96)])
def test_close_to_float64(dtype, bias, shape, monkeypatch):
    monkeypatch.setattr(int8_linear, "MIN_MULTIPLICATIONS", 0)
    torch.manual_seed(0)
    layer = nn.Linear(96, 80, bias=bias).eval()
    x = torch.randn(*shape)
    exact = F.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())
    assert int8_linear.use_int8_linears(layer) == 1 and type(layer) is Int8Linear
    layer = layer.to(dtype)
    with torch.inference_mode():
        got = layer(x.to(dtype))
    assert got.dtype == dtype and got.shape == exact.shape
    error = ((got.double() - exact).norm() / exact.norm()).item()
    assert 1e-4 < error < 0.02  # really int8, and close: ~1% on Gaussian inputs


def test_falls_back_where_int8_would_not_pay_or_not_hold(monkeypatch):
    torch.manual_seed(0)
    layer = nn.Linear(64, 64).eval()
    x = torch.randn(64, 64)
    expected = F.linear(x, layer.weight, layer.bias)
    int8_linear.use_int8_linears(layer)
    with torch.no_grad():
        assert torch.equal(layer(x), expected)  # 262k multiplications: too small
    monkeypatch.setattr(int8_linear, "MIN_MULTIPLICATIONS", 0)
    with torch.no_grad():
        assert not torch.equal(layer(x), expected)
        outlier = x.clone()
        outlier[0, 0] = 1000.0  # one value sets a step of ~1.1 RMS
        assert torch.equal(layer(outlier), F.linear(outlier, layer.weight, layer.bias))
    out = layer(x.requires_grad_(True))  # training: the plain layer
    assert torch.equal(out.detach(), expected) and out.requires_grad


def test_switches_and_undoes_without_touching_the_state_dict():
    model = nn.Sequential(nn.Linear(8, 64), nn.Linear(64, 48), nn.GELU(), nn.Linear(48, 3))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    assert int8_linear.use_int8_linears(model) == 1
    assert [type(m).__name__ for m in model] == ["Linear", "Int8Linear", "GELU", "Linear"]
    assert all(torch.equal(model.state_dict()[key], value) for key, value in before.items())
    int8_linear.stop_int8_linears(model)
    assert all(type(m) in (nn.Linear, nn.GELU) for m in model) and "_int8" not in model[1].__dict__
