"""The fast CPU mode's int8 convolutions, for CPUs with fast int8 dot products (VNNI).

With AVX-512 VNNI one instruction does 64 int8 multiply-adds where AVX-512
BF16 does 32 bf16 ones, and oneDNN's int8 convolutions run at that rate: on a
2-core AMD EPYC (Zen 4) its bf16 convolutions reach 460 GFLOP/s, its int8
ones 870-880 (1.9x), on every UNet and MoVQ shape measured.

An :class:`Int8Conv2d` is an ``nn.Conv2d`` (same parameters, same state
dict) that keeps, next to its weights, an int8 copy packed for oneDNN: one
scale per output channel, symmetric (``w ~ scale_o * q``, ``|q| <= 127``).
At every call its input is quantized to uint8 with one scale and zero point
per picture (:mod:`sfumato.nn.batching`; the whole tensor when called outside
a pipeline), taken from those rows' own minimum and maximum
(dynamic quantization: nothing is calibrated, so nothing depends on the
pictures a calibration saw), and the convolution accumulates the int8
products in int32 and returns the input's dtype (bf16 or fp32) with the bias
added. Rounding: ~1% of the output's size per convolution on Gaussian inputs,
about four times bf16's; ``benchmarks/int8_quality.py`` measures what that does
to pictures.

Quantizing costs a few passes over the input (~0.3 ms per million values), so
small convolutions, and those with few channels (a model's first and last),
stay as they are.

On small feature maps oneDNN's int8 convolution falls far below its rate on
large ones (Zen 4, batch 2: 1536 channels at 8x8 235-400 GOP/s, at 16x16
265-550, against 650-870 from 32x32 up). There the convolution runs as one int8
matrix product instead: the quantized input unfolded ("im2col": every output
pixel's k x k x C_in window as one row, padded with the zero point, which
stands for 0) times the weights laid out (C_out, k x k x C_in), through oneDNN's
int8 linear layer. The same quantized numbers, summed in another order in int32:
the same result up to the output's rounding. Measured per call: 1536 channels at
8x8 2.0x, 3072 -> 1536 at 8x8 3.1x (1x1: 3.3x), 1536 at 12x12 1.9x, at 16x16
1.2-1.5x, a stride-2 1536 -> 1536 from 16x16 2.9x; from ~2000 output pixels on
it gains nothing or loses (0.44x at 128x128), so it runs up to ``MAX_GEMM_ROWS``.
"""

from __future__ import annotations

import torch
from torch import nn

from .batching import per_picture
from .layout import memory_format_of
from .swap import qualifying_layers, restore_layers, swap_layers

# fewer multiply-adds than this: the quantization passes cost more than the int8 products save
MIN_MULTIPLICATIONS = 50_000_000
# fewer channels than this on either side (a model's first and last convolutions): not quantized
MIN_CHANNELS = 32
# the most rounding error (RMS, relative to the input's RMS) a convolution's quantized input may have;
# above it (a range stretched by outliers) that call runs the plain convolution. The built-in model's
# convolutions see 0.7-3.2%; random full-size weights reach 20% on the MoVQ's largest maps
MAX_INPUT_ERROR = 0.04
# up to this many output pixels (batch x height x width) a convolution runs as im2col + one int8 GEMM
MAX_GEMM_ROWS = 1024
_UINT8_MAX = 255
_INT8_MAX = 127


def available() -> bool:
    """True when this PyTorch build has oneDNN's int8 convolution."""
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qconv2d_pointwise")
    except (AttributeError, RuntimeError):
        return False


def qualifies(conv: nn.Module) -> bool:
    """A plain convolution (groups 1, zero padding) with at least ``MIN_CHANNELS`` channels each way."""
    return (type(conv) in (nn.Conv2d, Int8Conv2d) and conv.groups == 1 and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple) and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS)


def weight_scale(weight: torch.Tensor) -> torch.Tensor:
    """The fp32 scale per output channel (the first dimension) that :func:`quantize_weight` gives ``weight``."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=tuple(range(1, weight.dim()))).clamp(min=torch.finfo(torch.float32).tiny)
    return scale / _INT8_MAX


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A convolution's or linear layer's float weights -> (int8 weights, fp32 scale per output channel, the
    first dimension), symmetric."""
    scale = weight_scale(weight)
    weight = weight.detach().float()
    per_row = scale.view(-1, *[1] * (weight.dim() - 1))
    quantized = torch.round(weight / per_row).clamp(-_INT8_MAX, _INT8_MAX).to(torch.int8)
    return quantized, scale


def quantize_input(x: torch.Tensor, max_error: float | None = None) -> tuple[torch.Tensor, float, int] | None:
    """``x`` (float; 4-d channels-last, or contiguous) -> (uint8 in the same layout, scale, zero point).

    Scale and zero point span the tensor's own range, which always holds 0 (zero padding stays exact);
    values round to nearest. With ``max_error``, returns None instead when the rounding would cost more
    than that relative to the input's RMS (one step over sqrt(12): a range set by a few outliers makes
    the step coarse for everything else). Every pass runs over the memory as it lies, as one flat
    vector: the same element-wise operations over a channels-last tensor's logical order run 5-30x slower.
    """
    channels_last = memory_format_of(x) == torch.channels_last
    flat = (x.permute(0, 2, 3, 1) if channels_last else x.contiguous()).reshape(-1)
    low, high = torch.aminmax(flat)
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = (high - low) / _UINT8_MAX
    if not 0 < scale < float("inf"):  # all zeros (or not finite: the convolution's output will say so)
        scale = 1.0
    if max_error is not None:
        rms = float(torch.linalg.vector_norm(flat)) / flat.numel() ** 0.5  # accumulated in fp32
        if not scale / 12 ** 0.5 <= max_error * rms:
            return None
    zero_point = min(_UINT8_MAX, max(0, round(-low / scale)))
    # round(x / s) + z as + 0.5 and truncation (the values are >= 0 by then); in fp32, a copy of ours
    values = flat.float() if flat.dtype != torch.float32 else flat.clone()
    values.mul_(1.0 / scale).add_(zero_point + 0.5).clamp_(0, _UINT8_MAX + 0.49)
    quantized = values.to(torch.uint8)
    if channels_last:
        batch, channels, height, width = x.shape
        return quantized.view(batch, height, width, channels).permute(0, 3, 1, 2), scale, zero_point
    return quantized.view(x.shape), scale, zero_point


class Int8Conv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose CPU inference quantizes its input to uint8 and runs oneDNN's int8 convolution
    with weights quantized per output channel; training, other devices and small work run the plain one.

    :meth:`prepare` makes the packed int8 weights (``use_int8_convolutions`` calls it); the fp32 or bf16
    weights stay, so the state dict and :func:`stop_int8_convolutions` are unchanged.
    """

    _int8: tuple | None = None  # (weight zero point per output channel, fp32 bias)
    _packed: dict | None = None  # per way of running ("conv", "gemm"): (weights packed for oneDNN, scale per channel)
    # the weights as they were at prepare(), which both ways quantize; or their int8 values and scales, given
    _source: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None

    def prepare(self, quantized: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Get ready to run in int8, from the weights as they are now or from ``quantized``: what
        :func:`quantize_weight` makes of them (the fast mode reads them from its kept copy)."""
        # the weights as they are now (in the fast mode: fp32, before its cast to bf16; the same tensor the fast
        # mode keeps to undo that cast, so no copy): quantized from bf16 instead, the worst of 270 built-in
        # pictures fell from 33.2 to 29.2 dB
        self._source = self.weight.detach() if quantized is None else quantized
        bias = None if self.bias is None else self.bias.detach().float()
        self._int8 = (torch.zeros(self.out_channels, dtype=torch.int64), bias)
        self._packed = {}

    def _packed_weights(self, way: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The weights packed for ``way``, made when that way first runs, and their scale per output channel.

        Both ways quantize the weights :meth:`prepare` saw, so a picture does not depend on which way a layer ran
        first. No int8 copy is kept in memory besides the packed one for each way in use (a full-size UNet's int8
        weights are 1.25 GB; kept, a plain copy pushed the whole picture's memory from 4.7 to 5.7 GiB); given ones
        are the fast mode's memory-mapped file."""
        if way not in self._packed:
            quantized, scale = self._source if isinstance(self._source, tuple) else quantize_weight(self._source)
            if way == "gemm":  # rows (C_out, kh x kw x C_in), the order of an unfolded channels-last window
                rows = quantized.permute(0, 2, 3, 1).reshape(self.out_channels, -1)
                packed = torch.ops.onednn.qlinear_prepack(rows, None)
            else:
                packed = torch.ops.onednn.qconv_prepack(quantized, scale, 1.0, 0, list(self.stride),
                                                        list(self.padding), list(self.dilation), self.groups, None)
            self._packed[way] = (packed, scale)
        return self._packed[way]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self._int8 is None or x.dim() != 4 or x.device.type != "cpu"
                or x.dtype not in (torch.float32, torch.bfloat16)
                or torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)):
            return super().forward(x)
        return per_picture(x, self._forward_picture)

    def _forward_picture(self, x: torch.Tensor) -> torch.Tensor:
        """One picture's rows (or a whole batch outside ``nn.batching.stacked_copies``): every choice, and the
        quantization, depend on these rows alone."""
        batch, _, height, width = x.shape
        kh, kw = self.kernel_size
        multiplications = batch * height * width * self.in_channels * self.out_channels * kh * kw
        if multiplications < MIN_MULTIPLICATIONS * self.stride[0] * self.stride[1]:
            return super().forward(x)
        quantized = quantize_input(x, MAX_INPUT_ERROR)
        if quantized is None:  # a few outliers set the range: too coarse for the rest
            return super().forward(x)
        quantized, scale, zero_point = quantized
        weight_zero, bias = self._int8
        out_height, out_width = output_size((height, width), self.kernel_size, self.stride, self.padding)
        if batch * out_height * out_width <= MAX_GEMM_ROWS and self.dilation == (1, 1):
            rows = unfold(quantized, zero_point, self.kernel_size, self.stride, self.padding)
            packed, weight_scale = self._packed_weights("gemm")
            out = torch.ops.onednn.qlinear_pointwise(rows, scale, zero_point, packed, weight_scale, weight_zero, bias,
                                                     1.0, 0, x.dtype, "none", [], "")
            return out.view(batch, out_height, out_width, self.out_channels).permute(0, 3, 1, 2)
        packed, weight_scale = self._packed_weights("conv")
        return torch.ops.onednn.qconv2d_pointwise(
            quantized, scale, zero_point, packed, weight_scale, weight_zero, bias, list(self.stride),
            list(self.padding), list(self.dilation), self.groups, 1.0, 0, x.dtype, "none", [], "")


def output_size(size: tuple[int, int], kernel_size: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> tuple[int, int]:
    """A convolution's output height and width (dilation 1)."""
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(size, kernel_size, stride, padding))


def unfold(x: torch.Tensor, pad_value: int, kernel_size: tuple[int, int], stride: tuple[int, int],
           padding: tuple[int, int]) -> torch.Tensor:
    """``x`` (B, C, H, W) -> (B x H_out x W_out, kh x kw x C): every output pixel's window as one row, channels
    innermost, the border filled with ``pad_value``; a view where no copy is needed (1x1, stride 1, channels-last)."""
    batch, channels, height, width = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    pixels = x.permute(0, 2, 3, 1)
    if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):
        return pixels.reshape(-1, channels)
    padded = x.new_full((batch, height + 2 * ph, width + 2 * pw, channels), pad_value)
    padded[:, ph:ph + height, pw:pw + width] = pixels
    out_height, out_width = output_size((height, width), kernel_size, stride, padding)
    b, row, column, channel = padded.stride()
    windows = padded.as_strided((batch, out_height, out_width, kh, kw, channels),
                                (b, row * sh, column * sw, row, column, channel))
    return windows.reshape(-1, kh * kw * channels)


def to_convert(model: nn.Module) -> list[str]:
    """The names of the convolutions :func:`use_int8_convolutions` would turn into :class:`Int8Conv2d`."""
    return qualifying_layers(model, nn.Conv2d, qualifies) if available() else []


def use_int8_convolutions(model: nn.Module, quantized: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
                          ) -> int:
    """Turn every qualifying ``nn.Conv2d`` of ``model`` into a prepared :class:`Int8Conv2d` (from
    ``quantized[name]``, :func:`quantize_weight`'s result, where given); returns how many."""
    return swap_layers(model, nn.Conv2d, Int8Conv2d, qualifies, quantized) if available() else 0


def stop_int8_convolutions(model: nn.Module) -> None:
    """Undo :func:`use_int8_convolutions`: plain convolutions again, the packed weights dropped."""
    restore_layers(model, Int8Conv2d, nn.Conv2d, drop=("_int8", "_packed", "_source"))


__all__ = ["Int8Conv2d", "available", "qualifies", "quantize_input", "quantize_weight", "stop_int8_convolutions",
           "to_convert", "unfold", "use_int8_convolutions", "weight_scale"]
