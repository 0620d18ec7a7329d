"""2x spatial resampling layers of UNets and autoencoders.

``Upsample2D``: nearest-neighbour 2x (or to an explicit ``output_size``), optionally
followed by a 3x3 conv, or a transposed conv instead. ``Downsample2D``: a stride-2 conv,
or 2x2 average pooling when ``use_conv=False``. With ``padding=0`` the conv input is
padded on the right and bottom only, as the autoencoder checkpoints expect.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _check_channels(layer: nn.Module, hidden_states: torch.Tensor) -> None:
    if hidden_states.shape[1] != layer.channels:
        raise ValueError(
            f"{type(layer).__name__} expects {layer.channels} channels, got a tensor of shape {tuple(hidden_states.shape)}"
        )


class Upsample2D(nn.Module):
    """Double the height and width; the conv (if any) is stored as ``conv`` (or ``Conv2d_0`` for ``name != "conv"``)."""

    def __init__(
        self,
        channels: int,
        use_conv: bool = False,
        use_conv_transpose: bool = False,
        out_channels: int | None = None,
        name: str = "conv",
        kernel_size: int | None = None,
        padding: int = 1,
        norm_type: str | None = None,
        eps: float | None = None,
        elementwise_affine: bool | None = None,
        bias: bool = True,
        interpolate: bool = True,
    ):
        super().__init__()
        if norm_type is not None:
            raise NotImplementedError(f"Upsample2D norm_type={norm_type!r} is not supported; only None")
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.use_conv_transpose = use_conv_transpose
        self.name = name
        self.interpolate = interpolate
        self.norm = None
        conv = None
        if use_conv_transpose:
            conv = nn.ConvTranspose2d(channels, self.out_channels, kernel_size=kernel_size or 4, stride=2,
                                      padding=padding, bias=bias)
        elif use_conv:
            conv = nn.Conv2d(channels, self.out_channels, kernel_size=kernel_size or 3, padding=padding, bias=bias)
        if name == "conv":
            self.conv = conv
        else:
            self.Conv2d_0 = conv

    def forward(self, hidden_states: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        _check_channels(self, hidden_states)
        conv = self.conv if self.name == "conv" else self.Conv2d_0
        if self.use_conv_transpose:
            return conv(hidden_states)
        if self.interpolate:
            if output_size is None:
                hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
            else:
                hidden_states = F.interpolate(hidden_states, size=output_size, mode="nearest")
        if self.use_conv:
            hidden_states = conv(hidden_states)
        return hidden_states


class Downsample2D(nn.Module):
    """Halve the height and width with a stride-2 conv (``use_conv``) or 2x2 average pooling.

    The layer is stored as ``conv``; with the default ``name="conv"`` the reference also
    registers it as ``Conv2d_0``, so both key sets appear in its checkpoints and here.
    UNets and autoencoders pass ``name="op"``.
    """

    def __init__(
        self,
        channels: int,
        use_conv: bool = False,
        out_channels: int | None = None,
        padding: int = 1,
        name: str = "conv",
        kernel_size: int = 3,
        norm_type: str | None = None,
        eps: float | None = None,
        elementwise_affine: bool | None = None,
        bias: bool = True,
    ):
        super().__init__()
        if norm_type is not None:
            raise NotImplementedError(f"Downsample2D norm_type={norm_type!r} is not supported; only None")
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.padding = padding
        self.name = name
        self.norm = None
        if use_conv:
            conv: nn.Module = nn.Conv2d(channels, self.out_channels, kernel_size=kernel_size, stride=2,
                                        padding=padding, bias=bias)
        else:
            if self.out_channels != channels:
                raise ValueError(
                    f"Downsample2D without a conv keeps the channel count: out_channels={out_channels} "
                    f"must equal channels={channels}"
                )
            conv = nn.AvgPool2d(kernel_size=2, stride=2)
        if name == "conv":
            self.Conv2d_0 = conv  # same module under the legacy name, as in the reference checkpoints
        self.conv = conv

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        _check_channels(self, hidden_states)
        if self.use_conv and self.padding == 0:
            hidden_states = F.pad(hidden_states, (0, 1, 0, 1), mode="constant", value=0)
        return self.conv(hidden_states)
