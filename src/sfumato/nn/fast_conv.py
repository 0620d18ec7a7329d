"""The fast CPU mode's 3x3 convolutions where bf16 is not a lever: Winograd on large maps, one GEMM on small ones.

On a CPU without native bf16 (AVX2 only), oneDNN's fp32 convolutions run
at 80-95% of the FMA peak on large feature maps, so the way to make them
faster is to do fewer multiplications; on the smallest maps (a UNet's 8x8
level) they fall to about half of it, and a plain matrix product does better.

Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", 2016) computes each 4x4 block of a 3x3
convolution's output from the 6x6 block of input around it as

    Y = A^T [ (G g G^T) * (B^T d B) ] A        (* element-wise, over 6x6)

which needs 36 products per (input channel, output channel) pair where the
direct convolution needs 144. Summed over input channels, the 36 element-wise
products are 36 matrix products (tiles x C_in) @ (C_in x C_out), which run at
GEMM speed; the transforms B, A and G are small matrix products. Its rounding
is that of a plain fp32 convolution (max error 5e-6 to 1e-5 of the largest
output against float64; the direct convolution's 2e-6 to 6e-6), so it is for
the fast mode, not the parity mode. The weights are transformed at every call
(kept, they would be four times the size of the weights).

On small maps the convolution is one matrix product of the unfolded input
(pixels x 9 C_in) with the weights (9 C_in x C_out), read in place from the
channels-last weights ("im2col"); it rounds as fp32 GEMMs do (~5e-7).

Measured per convolution on a 2-core AMD EPYC (Zen 3, AVX2) against
channels-last oneDNN, batch 2: Winograd 1.8x at 384 channels on 64x64, 2.3x
at 768 on 32x32, 2.0x at 256 on 128x128 (batch 1), 1.15x at 128 on 256x256;
GEMM 1.5-1.8x at 1536 channels on 8x8, 2.0x at 3072 -> 1536 on 8x8, 1.4x at
1536 on 12x12.
``benchmarks/fast_cpu.py`` times whole models. The transforms read and write
memory several times, so Winograd works in chunks of tile rows with buffers
kept between calls (freshly allocated buffers of this size cost as much in
page faults as the transforms themselves).
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from .swap import restore_layers, swap_layers

TILE = 4  # outputs per tile side: F(4x4, 3x3)
_SPAN = TILE + 2  # inputs per tile side

# the transforms of F(4x4, 3x3) with interpolation points 0, 1, -1, 2, -2 and infinity
_B_T = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
        (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_A_T = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))

# below this many multiplications (direct convolution) oneDNN's convolution is kept: the others' set-up costs
# more than they save (Winograd: 1.0x at 2 x 64 x 96 x 30 x 22 x 9 = 73 M, 0.3x at 4 M)
MIN_MULTIPLICATIONS = 100_000_000
# the weights are transformed at every call (36 values per channel pair, written once): below this many output
# pixels (batch x height x width) that costs more than the saved multiplications (1536 channels at 16x16,
# batch 2: 1.1x; at 8x8: slower than the direct convolution)
MIN_WINOGRAD_PIXELS = 1024
# up to this many output pixels one GEMM beats oneDNN (batch 2: 1.5-2x at 8x8, 1.4x at 12x12 = 288 pixels;
# 0.7-1.2x at 16x16 = 512)
MAX_GEMM_PIXELS = 320
# the most this thread keeps in buffers between calls (one set per input shape)
_MAX_BUFFER_BYTES = 2 * 2**30
# bytes of one transformed chunk (tiles x 36 x channels, fp32) the work is split into
_CHUNK_BYTES = 24 * 2**20


def transform_weight(weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``(C_out, C_in, 3, 3)`` -> ``(C_out, 36, C_in)``: G g G^T for every channel pair, as one batched product.

    ``vec(G g G^T) = (G x G) vec(g)``: with the weights laid out ``(C_out, 9, C_in)`` (a view of channels-last
    weights, which the fast mode has) that is ``(G x G) @ g`` for every output channel. It is made again at
    every call rather than kept: kept, it would be four times the size of the weights it stands for (14 GB
    more for a full-size Kandinsky 2.2 UNet), and making it costs a few percent of the convolution.
    """
    outputs, channels = weight.shape[:2]
    into_weights = _BUFFERS.transforms(weight)[0]
    if out is None:
        out = weight.new_empty(outputs, _SPAN * _SPAN, channels)
    torch.matmul(into_weights, weight.detach().permute(0, 2, 3, 1).reshape(outputs, 9, channels), out=out)
    return out


class _Buffers(threading.local):
    """Per-thread buffers by shape (the padded input, the gathered tiles, the three products, the transformed
    weights) and the transform matrices."""

    def __init__(self) -> None:
        self.by_shape: dict[tuple, torch.Tensor] = {}
        self._transforms: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def transforms(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """G x G (36 x 9, 3x3 weights -> transformed), B^T x B^T (36 x 36, 6x6 tile -> transformed) and
        A^T x A^T (16 x 36, transformed -> 4x4 outputs), in ``like``'s dtype and device."""
        key = (like.dtype, like.device)
        if key not in self._transforms:
            self._transforms[key] = tuple(
                torch.kron(m, m).to(dtype=like.dtype, device=like.device)
                for m in (torch.tensor(rows, dtype=torch.float64) for rows in (_G, _B_T, _A_T)))
        return self._transforms[key]

    def get(self, shape: tuple[int, ...], like: torch.Tensor, name: str, zeros: bool = False) -> torch.Tensor:
        key = (name, shape, like.dtype, like.device)
        if key not in self.by_shape:
            size = like.element_size() * torch.Size(shape).numel()
            if size + sum(b.element_size() * b.numel() for b in self.by_shape.values()) > _MAX_BUFFER_BYTES:
                self.by_shape.clear()  # many picture sizes: start again rather than keep every size's buffers
            self.by_shape[key] = like.new_zeros(shape) if zeros else like.new_empty(shape)
        return self.by_shape[key]


_BUFFERS = _Buffers()


def _padded(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``x`` channels-last in a kept zero buffer of ``height`` x ``width`` pixels, one pixel in from the top left.

    The borders stay zero between calls: only the inside is ever written.
    """
    batch, channels, rows, cols = x.shape
    padded = _BUFFERS.get((batch, height, width, channels), x, "padded", zeros=True)
    padded[:, 1:rows + 1, 1:cols + 1].copy_(x.permute(0, 2, 3, 1))
    return padded


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d(x, w, bias, padding=1)`` for a 3x3 ``w`` given as ``transform_weight(w)``; channels-last output."""
    batch, channels, height, width = x.shape
    outputs = weight.shape[0]
    per_product = weight.permute(1, 2, 0)  # (36, C_in, C_out), strided: the matrix products read it as it is
    rows, cols = -(-height // TILE), -(-width // TILE)
    per_row = batch * cols * _SPAN * _SPAN * max(channels, outputs) * x.element_size()
    chunk = max(1, min(rows, _CHUNK_BYTES // per_row))
    _, into_tiles, out_of_tiles = _BUFFERS.transforms(x)

    padded = _padded(x, rows * TILE + 2, cols * TILE + 2)
    # (batch, H + 2, W + 2, C) seen as overlapping 6x6 tiles every 4 pixels: (batch, rows, cols, C, 6, 6)
    all_tiles = padded.unfold(1, _SPAN, TILE).unfold(2, _SPAN, TILE)
    out = x.new_empty(batch, height, width, outputs)
    for first in range(0, rows, chunk):
        count = min(chunk, rows - first)
        tiles = batch * count * cols
        gathered = _BUFFERS.get((_SPAN, _SPAN, batch, count, cols, channels), x, "tiles")
        gathered.copy_(all_tiles[:, first:first + count].permute(4, 5, 0, 1, 2, 3))
        inputs = _BUFFERS.get((_SPAN * _SPAN, tiles * channels), x, "inputs")
        torch.matmul(into_tiles, gathered.view(_SPAN * _SPAN, -1), out=inputs)
        products = _BUFFERS.get((_SPAN * _SPAN, tiles, outputs), x, "products")
        torch.bmm(inputs.view(_SPAN * _SPAN, tiles, channels), per_product, out=products)
        results = _BUFFERS.get((TILE * TILE, tiles * outputs), x, "results")
        torch.matmul(out_of_tiles, products.view(_SPAN * _SPAN, -1), out=results)
        # (4, 4, batch, count, cols, C_out) -> output rows first * 4 ... in one pass, bias added on the way
        blocks = results.view(TILE, TILE, batch, count, cols, outputs).permute(2, 3, 0, 4, 1, 5)
        top, bottom = first * TILE, min(height, (first + count) * TILE)
        if bottom - top == count * TILE and width == cols * TILE:
            target = out[:, top:bottom].view(batch, count, TILE, cols, TILE, outputs)
        else:  # the last tiles overhang the picture: cut them
            target = out[:, top:bottom]
            blocks = blocks.reshape(batch, count * TILE, cols * TILE, outputs)[:, :bottom - top, :width]
        if bias is None:
            target.copy_(blocks)
        else:
            torch.add(blocks, bias, out=target)
    return out.permute(0, 3, 1, 2)


def gemm_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` as one matrix product over the unfolded input; channels-last output."""
    batch, channels, height, width = x.shape
    outputs = weight.shape[0]
    padded = _padded(x, height + 2, width + 2)
    # every pixel's 3x3 neighbourhood, rows (pixel) x columns (ky, kx, channel), as the channels-last weights are
    columns = _BUFFERS.get((batch * height * width, 9 * channels), x, "columns")
    neighbourhoods = padded.unfold(1, 3, 1).unfold(2, 3, 1)  # (batch, H, W, C, 3, 3)
    columns.view(batch, height, width, 3, 3, channels).copy_(neighbourhoods.permute(0, 1, 2, 4, 5, 3))
    matrix = weight.permute(0, 2, 3, 1).reshape(outputs, 9 * channels)  # a view of channels-last weights
    out = x.new_empty(batch * height * width, outputs)
    if bias is None:
        torch.mm(columns, matrix.t(), out=out)
    else:
        torch.addmm(bias, columns, matrix.t(), out=out)
    return out.view(batch, height, width, outputs).permute(0, 3, 1, 2)


def qualifies(conv: nn.Module) -> bool:
    """A 3x3, stride-1, padding-1 convolution over at least 32 channels each way: the shape these pay on."""
    return (type(conv) in (nn.Conv2d, FastConv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and min(conv.in_channels, conv.out_channels) >= 32)


class FastConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters, same state dict) whose fp32 inference on a CPU picks by size:
    Winograd on large maps, one GEMM on small ones, oneDNN's convolution in between and for small work.

    Training, another dtype or another device run the plain convolution.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (x.dim() != 4 or x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32
                or torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
            return super().forward(x)
        batch, channels, height, width = x.shape
        pixels = batch * height * width
        if pixels * channels * self.out_channels * 9 < MIN_MULTIPLICATIONS:
            return super().forward(x)
        if pixels <= MAX_GEMM_PIXELS:
            return gemm_conv3x3(x, weight, self.bias)
        if pixels >= MIN_WINOGRAD_PIXELS:
            transformed = _BUFFERS.get((self.out_channels, _SPAN * _SPAN, channels), x, "weight")
            return winograd_conv3x3(x, transform_weight(weight, out=transformed), self.bias)
        return super().forward(x)


def use_fast_convolutions(model: nn.Module) -> int:
    """Turn every qualifying ``nn.Conv2d`` of ``model`` into a :class:`FastConv2d`; returns how many."""
    return swap_layers(model, nn.Conv2d, FastConv2d, qualifies)


def stop_fast_convolutions(model: nn.Module) -> None:
    """Undo :func:`use_fast_convolutions`: plain convolutions again."""
    restore_layers(model, FastConv2d, nn.Conv2d)


def free_buffers() -> None:
    """Drop this thread's buffers (they are kept between calls, one set per input shape)."""
    _BUFFERS.by_shape.clear()


__all__ = ["FastConv2d", "TILE", "free_buffers", "gemm_conv3x3", "qualifies", "stop_fast_convolutions",
           "transform_weight", "use_fast_convolutions", "winograd_conv3x3"]
