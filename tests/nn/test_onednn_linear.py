"""fp32 linear layers through oneDNN (sfumato.nn.onednn_linear): against float64, the fall-backs, weights that
change, switching and undoing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sfumato.nn import onednn_linear
from sfumato.nn.onednn_linear import OnednnLinear

pytestmark = pytest.mark.skipif(not onednn_linear.available(), reason="no oneDNN linear layer in this build")


def exact(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 96), (2, 33, 96), (3, 2, 5, 96)])
def test_close_to_float64_like_a_plain_fp32_product(bias, shape, monkeypatch):
    monkeypatch.setattr(onednn_linear, "MIN_MULTIPLICATIONS", 0)
    torch.manual_seed(0)
    layer = nn.Linear(96, 80, bias=bias).eval()
    x = torch.randn(*shape)
    plain = layer(x).detach()
    assert onednn_linear.use_onednn_linears(layer) == 1 and type(layer) is OnednnLinear
    calls = []
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise",
                        lambda *args, real=torch.ops.mkldnn._linear_pointwise: calls.append(1) or real(*args))
    with torch.inference_mode():
        got = layer(x)
    assert calls == [1]  # really oneDNN's product
    assert got.dtype == torch.float32 and got.shape == plain.shape
    scale = exact(layer, x).abs().max().item()
    assert (got.double() - exact(layer, x)).abs().max().item() < 1e-5 * scale  # fp32 rounding, nothing coarser
    assert (got - plain).abs().max().item() < 1e-5 * scale


def test_falls_back_where_packing_does_not_apply(monkeypatch):
    torch.manual_seed(0)
    layer = nn.Linear(64, 64).eval()
    onednn_linear.use_onednn_linears(layer)
    calls = []
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise",
                        lambda *args, real=torch.ops.mkldnn._linear_pointwise: calls.append(1) or real(*args))
    x = torch.randn(4, 64)
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))  # 16k multiplications: too small
        assert torch.equal(layer(x[0]), F.linear(x[0], layer.weight, layer.bias))  # one vector
        monkeypatch.setattr(onednn_linear, "MIN_MULTIPLICATIONS", 0)
        layer.to(torch.bfloat16)  # another dtype: the plain layer
        half = x.to(torch.bfloat16)
        assert torch.equal(layer(half), F.linear(half, layer.weight, layer.bias))
        assert calls == []
        layer.to(torch.float32)
        layer(x)
        assert calls == [1]
    out = layer(x.requires_grad_(True))  # training: the plain layer, with its gradient
    assert calls == [1] and out.requires_grad
    out.sum().backward()
    assert layer.weight.grad is not None


def test_weights_changed_in_place_or_replaced_are_used(monkeypatch):
    monkeypatch.setattr(onednn_linear, "MIN_MULTIPLICATIONS", 0)
    torch.manual_seed(0)
    layer = nn.Linear(32, 16).eval()
    onednn_linear.use_onednn_linears(layer)
    x = torch.randn(5, 32)
    other = nn.Linear(32, 16)
    with torch.no_grad():
        layer(x)
        layer.load_state_dict(other.state_dict())  # copied in place
        assert torch.allclose(layer(x), other(x), atol=1e-5)
        layer.weight.mul_(2)  # changed in place
        assert torch.allclose(layer(x), F.linear(x, 2 * other.weight, other.bias), atol=1e-5)
        layer.weight.data = torch.zeros(16, 32)  # replaced
        assert torch.allclose(layer(x), other.bias.expand(5, 16), atol=1e-6)


def test_switches_only_fp32_layers_and_undoes_without_touching_the_state_dict():
    model = nn.Sequential(nn.Linear(8, 64), nn.Linear(64, 48).to(torch.bfloat16), nn.GELU(), nn.Linear(48, 3))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    assert onednn_linear.use_onednn_linears(model) == 2
    assert [type(m).__name__ for m in model] == ["OnednnLinear", "Linear", "GELU", "OnednnLinear"]
    assert all(torch.equal(model.state_dict()[key], value) for key, value in before.items())
    onednn_linear.stop_onednn_linears(model)
    assert all(type(m) in (nn.Linear, nn.GELU) for m in model)
