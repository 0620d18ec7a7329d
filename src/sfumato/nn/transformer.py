"""The spatial transformer of Stable-Diffusion-style UNets.

``Transformer2DModel`` (continuous input): group norm -> ``proj_in`` (1x1 conv, or a
linear layer with ``use_linear_projection``) -> ``BasicTransformerBlock`` x num_layers over
the pixels as tokens -> ``proj_out`` -> plus the input. A ``BasicTransformerBlock`` is
pre-LayerNorm self-attention, cross-attention to the condition tokens, and a
feed-forward (GEGLU by default), each with a residual connection.

Only the plain ``norm_type="layer_norm"`` form used by UNet checkpoints is built here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..outputs import BaseOutput
from .activations import GEGLU, GELU, ApproximateGELU
from .attention import Attention


@dataclass
class Transformer2DModelOutput(BaseOutput):
    """``sample``: the transformed feature map."""

    sample: torch.Tensor = None


class FeedForward(nn.Module):
    """``net.0`` (projection + activation) -> dropout -> ``net.2`` (linear back to ``dim_out``)."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, dropout: float = 0.0,
                 activation_fn: str = "geglu", final_dropout: bool = False, inner_dim: int | None = None,
                 bias: bool = True):
        super().__init__()
        inner_dim = int(dim * mult) if inner_dim is None else inner_dim
        dim_out = dim if dim_out is None else dim_out
        projections = {
            "gelu": lambda: GELU(dim, inner_dim, bias=bias),
            "gelu-approximate": lambda: GELU(dim, inner_dim, approximate="tanh", bias=bias),
            "geglu": lambda: GEGLU(dim, inner_dim, bias=bias),
            "geglu-approximate": lambda: ApproximateGELU(dim, inner_dim, bias=bias),
        }
        if activation_fn not in projections:
            raise ValueError(f"FeedForward activation_fn must be one of {sorted(projections)}, got {activation_fn!r}")
        layers = [projections[activation_fn](), nn.Dropout(dropout), nn.Linear(inner_dim, dim_out, bias=bias)]
        if final_dropout:
            layers.append(nn.Dropout(dropout))
        self.net = nn.ModuleList(layers)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            hidden_states = layer(hidden_states)
        return hidden_states


class BasicTransformerBlock(nn.Module):
    """LayerNorm -> self-attention (``attn1``), LayerNorm -> cross-attention (``attn2``), LayerNorm -> ``ff``."""

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        dropout: float = 0.0,
        cross_attention_dim: int | None = None,
        activation_fn: str = "geglu",
        num_embeds_ada_norm: int | None = None,
        attention_bias: bool = False,
        only_cross_attention: bool = False,
        double_self_attention: bool = False,
        upcast_attention: bool = False,
        norm_elementwise_affine: bool = True,
        norm_type: str = "layer_norm",
        norm_eps: float = 1e-5,
        final_dropout: bool = False,
        attention_type: str = "default",
        positional_embeddings: str | None = None,
        num_positional_embeddings: int | None = None,
        ff_inner_dim: int | None = None,
        ff_bias: bool = True,
        attention_out_bias: bool = True,
    ):
        super().__init__()
        if norm_type != "layer_norm" or num_embeds_ada_norm is not None:
            raise NotImplementedError(f"BasicTransformerBlock norm_type={norm_type!r} is not supported; "
                                      "only 'layer_norm'")
        if attention_type != "default" or positional_embeddings is not None:
            raise NotImplementedError("BasicTransformerBlock supports attention_type='default' without "
                                      "positional embeddings only")
        self.only_cross_attention = only_cross_attention
        self.norm_type = norm_type
        attention = dict(heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout,
                         bias=attention_bias, upcast_attention=upcast_attention, out_bias=attention_out_bias)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=norm_elementwise_affine, eps=norm_eps)
        # with only_cross_attention the first attention already looks at the condition tokens
        self.attn1 = Attention(query_dim=dim, cross_attention_dim=cross_attention_dim if only_cross_attention else None,
                               **attention)
        if cross_attention_dim is not None or double_self_attention:
            self.norm2 = nn.LayerNorm(dim, norm_eps, norm_elementwise_affine)
            self.attn2 = Attention(query_dim=dim,
                                   cross_attention_dim=None if double_self_attention else cross_attention_dim,
                                   **attention)
        else:
            self.norm2 = self.attn2 = None
        self.norm3 = nn.LayerNorm(dim, norm_eps, norm_elementwise_affine)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn=activation_fn, final_dropout=final_dropout,
                              inner_dim=ff_inner_dim, bias=ff_bias)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None, timestep: Any = None,
                cross_attention_kwargs: dict[str, Any] | None = None, class_labels: Any = None,
                added_cond_kwargs: Any = None) -> torch.Tensor:
        extra = cross_attention_kwargs or {}
        hidden_states = hidden_states + self.attn1(
            self.norm1(hidden_states),
            encoder_hidden_states=encoder_hidden_states if self.only_cross_attention else None,
            attention_mask=attention_mask, **extra,
        )
        if self.attn2 is not None:
            hidden_states = hidden_states + self.attn2(
                self.norm2(hidden_states), encoder_hidden_states=encoder_hidden_states,
                attention_mask=encoder_attention_mask, **extra,
            )
        return hidden_states + self.ff(self.norm3(hidden_states))


class Transformer2DModel(nn.Module):
    """Transformer over the pixels of a feature map, added back to it (continuous-input form)."""

    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 88,
        in_channels: int | None = None,
        out_channels: int | None = None,
        num_layers: int = 1,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        cross_attention_dim: int | None = None,
        attention_bias: bool = False,
        sample_size: int | None = None,
        num_vector_embeds: int | None = None,
        patch_size: int | None = None,
        activation_fn: str = "geglu",
        num_embeds_ada_norm: int | None = None,
        use_linear_projection: bool = False,
        only_cross_attention: bool = False,
        double_self_attention: bool = False,
        upcast_attention: bool = False,
        norm_type: str = "layer_norm",
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
        attention_type: str = "default",
    ):
        super().__init__()
        if in_channels is None or patch_size is not None or num_vector_embeds is not None:
            raise NotImplementedError("Transformer2DModel supports continuous feature-map input (in_channels set, "
                                      "no patch_size / num_vector_embeds) only")
        self.use_linear_projection = use_linear_projection
        self.num_attention_heads = num_attention_heads
        self.attention_head_dim = attention_head_dim
        self.inner_dim = inner_dim = num_attention_heads * attention_head_dim
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.norm = nn.GroupNorm(num_groups=norm_num_groups, num_channels=in_channels, eps=1e-6, affine=True)
        if use_linear_projection:
            self.proj_in = nn.Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(
                inner_dim, num_attention_heads, attention_head_dim, dropout=dropout,
                cross_attention_dim=cross_attention_dim, activation_fn=activation_fn,
                num_embeds_ada_norm=num_embeds_ada_norm, attention_bias=attention_bias,
                only_cross_attention=only_cross_attention, double_self_attention=double_self_attention,
                upcast_attention=upcast_attention, norm_type=norm_type,
                norm_elementwise_affine=norm_elementwise_affine, norm_eps=norm_eps, attention_type=attention_type,
            )
            for _ in range(num_layers)
        ])
        if use_linear_projection:
            self.proj_out = nn.Linear(inner_dim, self.out_channels)
        else:
            self.proj_out = nn.Conv2d(inner_dim, self.out_channels, kernel_size=1)

    @staticmethod
    def _mask_to_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        """A 2-D keep=1/discard=0 mask becomes an additive (batch, 1, tokens) bias; a bias passes through."""
        if mask is None or mask.ndim != 2:
            return mask
        return ((1 - mask.to(dtype)) * -10000.0).unsqueeze(1)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                timestep: Any = None, added_cond_kwargs: Any = None, class_labels: Any = None,
                cross_attention_kwargs: dict[str, Any] | None = None, attention_mask: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None, return_dict: bool = True):
        attention_mask = self._mask_to_bias(attention_mask, hidden_states.dtype)
        encoder_attention_mask = self._mask_to_bias(encoder_attention_mask, hidden_states.dtype)
        batch, _, height, width = hidden_states.shape
        residual = hidden_states

        tokens = self.norm(hidden_states)
        if not self.use_linear_projection:
            tokens = self.proj_in(tokens)
        tokens = tokens.permute(0, 2, 3, 1).reshape(batch, height * width, tokens.shape[1])
        if self.use_linear_projection:
            tokens = self.proj_in(tokens)

        for block in self.transformer_blocks:
            tokens = block(tokens, attention_mask=attention_mask, encoder_hidden_states=encoder_hidden_states,
                           encoder_attention_mask=encoder_attention_mask,
                           cross_attention_kwargs=cross_attention_kwargs)

        if self.use_linear_projection:
            tokens = self.proj_out(tokens)
        feature_map = tokens.reshape(batch, height, width, tokens.shape[-1]).permute(0, 3, 1, 2).contiguous()
        if not self.use_linear_projection:
            feature_map = self.proj_out(feature_map)
        output = feature_map + residual
        return (output,) if not return_dict else Transformer2DModelOutput(sample=output)
