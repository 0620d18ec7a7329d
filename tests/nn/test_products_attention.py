"""The fast CPU mode's bf16 attention as matrix products (sfumato.nn.attention.products_attention) and its dispatch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sfumato.nn import attention
from sfumato.nn.attention import products_attention, sdpa


def qkv(batch, heads, queries, keys, dim, seed=0, spread=1.0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, queries, dim, generator=generator) * spread,
            torch.randn(batch, heads, keys, dim, generator=generator) * spread,
            torch.randn(batch, heads, keys, dim, generator=generator))


@pytest.mark.parametrize("shape", [(2, 3, 40, 50, 16), (1, 1, 64, 64, 96), (2, 2, 7, 5, 8)])
@pytest.mark.parametrize("spread", [1.0, 2.5])
def test_products_attention_is_attention_to_bf16_rounding(shape, spread):
    query, key, value = qkv(*shape, spread=spread)
    exact = F.scaled_dot_product_attention(query.double(), key.double(), value.double())
    q, k, v = query.bfloat16(), key.bfloat16(), value.bfloat16()
    got = products_attention(q, k, v, shape[-1] ** -0.5)
    assert got.dtype == torch.bfloat16 and got.shape == exact.shape
    fused_error = (F.scaled_dot_product_attention(q, k, v).double() - exact).abs().max().item()
    error = (got.double() - exact).abs().max().item()
    # the scores are rounded to bf16 before the softmax: a few times SDPA's bf16 error, far below the values' size
    assert error <= 4 * fused_error + 1e-3
    assert error < 0.05 * exact.abs().max().item()


def test_a_long_sequence_runs_a_block_of_queries_at_a_time(monkeypatch):
    query, key, value = (t.bfloat16() for t in qkv(2, 3, 100, 60, 16, seed=1))
    whole = products_attention(query, key, value, 0.25)
    calls = []
    matmul = torch.matmul
    monkeypatch.setattr(torch, "matmul", lambda a, b: calls.append(a.shape) or matmul(a, b))
    # room for 16 queries' scores (2 x 3 heads x 60 keys, 2 bytes each)
    monkeypatch.setattr(attention, "PRODUCTS_BLOCK_BYTES", 16 * 2 * 3 * 60 * 2)
    blocked = products_attention(query, key, value, 0.25)
    assert [shape[2] for shape in calls[::2]] == [16] * 6 + [4]
    torch.testing.assert_close(blocked, whole, atol=1e-2, rtol=0)
    assert (blocked.float() - whole.float()).abs().max().item() <= 2 ** -7 * whole.abs().max().item()


def test_sdpa_runs_products_only_for_unmasked_bf16_cpu_calls():
    query, key, value = qkv(1, 2, 12, 9, 8, seed=2)
    mask = torch.zeros(1, 1, 12, 9)
    mask[..., -2:] = float("-inf")
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = query.to(dtype), key.to(dtype), value.to(dtype)
        fused = F.scaled_dot_product_attention(q, k, v)
        assert torch.equal(sdpa(q, k, v), fused)
        masked = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(dtype))
        assert torch.equal(sdpa(q, k, v, mask.to(dtype), products=True), masked)  # masked calls keep SDPA
        expected = products_attention(q, k, v, 8 ** -0.5) if dtype == torch.bfloat16 else fused
        assert torch.equal(sdpa(q, k, v, products=True), expected)
    q, k, v = query.bfloat16(), key.bfloat16(), value.bfloat16()
    assert torch.equal(sdpa(q, k, v, scale=0.5, products=True), products_attention(q, k, v, 0.5))


def test_keys_are_centred_so_a_shared_offset_costs_no_precision():
    """Every key sharing a large component shifts each query's scores by one constant, which softmax ignores; rounded
    to bf16 with it, the scores would lose ~2^-9 of its size."""
    query, key, value = qkv(2, 2, 30, 40, 16, seed=5)
    key = key + 16.0 * torch.randn(1, 1, 1, 16, generator=torch.Generator().manual_seed(4))
    exact = F.scaled_dot_product_attention(query.double(), key.double(), value.double())
    q, k, v = query.bfloat16(), key.bfloat16(), value.bfloat16()
    error = (products_attention(q, k, v, 0.25).double() - exact).abs().max().item()
    fused_error = (F.scaled_dot_product_attention(q, k, v).double() - exact).abs().max().item()
    # as close as SDPA's bf16 (whose keys carry the offset's rounding too); uncentred scores doubled the error here
    assert error <= 1.2 * fused_error + 1e-3
    uncentred = torch.matmul(torch.matmul(q * 0.25, k.transpose(-1, -2)).softmax(dim=-1), v)
    assert (uncentred.double() - exact).abs().max().item() > 1.5 * error
