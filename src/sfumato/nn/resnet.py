"""The residual conv block of every UNet and autoencoder here.

``ResnetBlock2D``: norm -> act -> [2x up/down] -> conv -> norm (+ condition) -> act ->
dropout -> conv, plus a (1x1-conv) shortcut, divided by ``output_scale_factor``.
How the condition ``temb`` enters is chosen by ``time_embedding_norm``:

* ``"default"``: a time vector is projected and added before the second norm;
* ``"scale_shift"``: the projection gives a scale and shift applied after the second
  norm, ``h * (1 + scale) + shift`` (Kandinsky UNets);
* ``"spatial"``: both norms are ``SpatialNorm`` and ``temb`` is the quantised latent
  ``zq`` (MoVQ decoder); ``temb_channels`` is then the ``zq`` channel count;
* ``"ada_group"``: both norms are ``AdaGroupNorm`` driven by a vector.

``up=True`` / ``down=True`` resample both the main path and the shortcut in the middle
of the block (nearest 2x / 2x2 average pool), as the Kandinsky ``Resnet*sampleBlock2D``
stages do. ``ResnetBlockCondNorm2D`` is the same block under the reference's name for the
conditional-norm variants.
"""

from __future__ import annotations

import torch
from torch import nn

from .activations import get_activation
from .norms import AdaGroupNorm, SpatialNorm
from .sampling import Downsample2D, Upsample2D

_VECTOR_MODES = ("default", "scale_shift")  # temb is a vector projected by time_emb_proj
_CONDITIONAL_NORM_MODES = ("spatial", "ada_group")  # temb drives the norms themselves


class ResnetBlock2D(nn.Module):
    """Residual block conditioned on ``temb``; see the module docstring for ``time_embedding_norm``."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int | None = None,
        conv_shortcut: bool = False,
        dropout: float = 0.0,
        temb_channels: int | None = 512,
        groups: int = 32,
        groups_out: int | None = None,
        pre_norm: bool = True,
        eps: float = 1e-6,
        non_linearity: str = "swish",
        skip_time_act: bool = False,
        time_embedding_norm: str = "default",
        kernel: str | None = None,
        output_scale_factor: float = 1.0,
        use_in_shortcut: bool | None = None,
        up: bool = False,
        down: bool = False,
        conv_shortcut_bias: bool = True,
        conv_2d_out_channels: int | None = None,
    ):
        super().__init__()
        if time_embedding_norm not in _VECTOR_MODES + _CONDITIONAL_NORM_MODES:
            raise ValueError(
                f"time_embedding_norm must be one of {_VECTOR_MODES + _CONDITIONAL_NORM_MODES}, "
                f"got {time_embedding_norm!r}"
            )
        if kernel is not None:
            raise NotImplementedError(f"ResnetBlock2D kernel={kernel!r} (FIR / sde_vp resampling) is not supported")
        out_channels = in_channels if out_channels is None else out_channels
        conv_2d_out_channels = conv_2d_out_channels or out_channels
        groups_out = groups if groups_out is None else groups_out
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.use_conv_shortcut = conv_shortcut
        self.up = up
        self.down = down
        self.output_scale_factor = output_scale_factor
        self.time_embedding_norm = time_embedding_norm
        self.skip_time_act = skip_time_act
        self.pre_norm = True
        self.conditional_norm = time_embedding_norm in _CONDITIONAL_NORM_MODES

        self.norm1 = self._make_norm(in_channels, groups, eps, temb_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = None
        if not self.conditional_norm and temb_channels is not None:
            width = 2 * out_channels if time_embedding_norm == "scale_shift" else out_channels
            self.time_emb_proj = nn.Linear(temb_channels, width)
        self.norm2 = self._make_norm(out_channels, groups_out, eps, temb_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, conv_2d_out_channels, kernel_size=3, padding=1)
        self.nonlinearity = get_activation(non_linearity)

        self.upsample = Upsample2D(in_channels, use_conv=False) if up else None
        self.downsample = Downsample2D(in_channels, use_conv=False, padding=1, name="op") if down and not up else None

        self.use_in_shortcut = in_channels != conv_2d_out_channels if use_in_shortcut is None else use_in_shortcut
        self.conv_shortcut = None
        if self.use_in_shortcut:
            self.conv_shortcut = nn.Conv2d(in_channels, conv_2d_out_channels, kernel_size=1, bias=conv_shortcut_bias)

    def _make_norm(self, channels: int, groups: int, eps: float, temb_channels: int | None) -> nn.Module:
        if self.time_embedding_norm == "spatial":
            return SpatialNorm(channels, temb_channels)
        if self.time_embedding_norm == "ada_group":
            return AdaGroupNorm(temb_channels, channels, groups, eps=eps)
        return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=eps, affine=True)

    def _norm(self, norm: nn.Module, hidden_states: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        return norm(hidden_states, temb) if self.conditional_norm else norm(hidden_states)

    def _add_time(self, hidden_states: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        """Second norm with the time vector folded in, per ``time_embedding_norm``."""
        if self.conditional_norm:
            return self.norm2(hidden_states, temb)
        if self.time_emb_proj is not None and temb is not None:
            if not self.skip_time_act:
                temb = self.nonlinearity(temb)
            temb = self.time_emb_proj(temb)[:, :, None, None]
        elif self.time_embedding_norm == "scale_shift":
            raise ValueError("temb must be given when time_embedding_norm is 'scale_shift'")
        else:
            temb = None
        if self.time_embedding_norm == "scale_shift":
            scale, shift = temb.chunk(2, dim=1)
            # shift + h * (1 + scale) in one pass over the feature map (instead of two)
            return torch.addcmul(shift, self.norm2(hidden_states), 1 + scale)
        if temb is not None:
            hidden_states = hidden_states + temb
        return self.norm2(hidden_states)

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = self.nonlinearity(self._norm(self.norm1, input_tensor, temb))
        if self.upsample is not None:
            input_tensor = self.upsample(input_tensor)
            hidden_states = self.upsample(hidden_states)
        elif self.downsample is not None:
            input_tensor = self.downsample(input_tensor)
            hidden_states = self.downsample(hidden_states)
        hidden_states = self.conv1(hidden_states)
        hidden_states = self.nonlinearity(self._add_time(hidden_states, temb))
        hidden_states = self.conv2(self.dropout(hidden_states))
        if self.conv_shortcut is not None:
            input_tensor = self.conv_shortcut(input_tensor)
        # conv2's output is a fresh tensor: adding in place saves allocating another feature map
        output = hidden_states.add_(input_tensor)
        # dividing by 1.0 would change nothing but cost a pass over the tensor
        if self.output_scale_factor != 1.0:
            output = output / self.output_scale_factor
        return output


class ResnetBlockCondNorm2D(ResnetBlock2D):
    """``ResnetBlock2D`` whose norms carry the condition (``"ada_group"``, the default here, or ``"spatial"``)."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int | None = None,
        conv_shortcut: bool = False,
        dropout: float = 0.0,
        temb_channels: int = 512,
        groups: int = 32,
        groups_out: int | None = None,
        eps: float = 1e-6,
        non_linearity: str = "swish",
        time_embedding_norm: str = "ada_group",
        output_scale_factor: float = 1.0,
        use_in_shortcut: bool | None = None,
        up: bool = False,
        down: bool = False,
        conv_shortcut_bias: bool = True,
        conv_2d_out_channels: int | None = None,
    ):
        if time_embedding_norm not in _CONDITIONAL_NORM_MODES:
            raise ValueError(
                f"ResnetBlockCondNorm2D needs time_embedding_norm in {_CONDITIONAL_NORM_MODES}, "
                f"got {time_embedding_norm!r}; use ResnetBlock2D for {_VECTOR_MODES}"
            )
        super().__init__(
            in_channels=in_channels, out_channels=out_channels, conv_shortcut=conv_shortcut, dropout=dropout,
            temb_channels=temb_channels, groups=groups, groups_out=groups_out, eps=eps,
            non_linearity=non_linearity, time_embedding_norm=time_embedding_norm,
            output_scale_factor=output_scale_factor, use_in_shortcut=use_in_shortcut, up=up, down=down,
            conv_shortcut_bias=conv_shortcut_bias, conv_2d_out_channels=conv_2d_out_channels,
        )
