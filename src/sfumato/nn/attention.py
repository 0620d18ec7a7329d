"""Multi-head attention with swappable processors, computed by PyTorch SDPA by default.

``Attention`` owns the layers and their checkpoint names (``to_q``, ``to_k``, ``to_v``,
``to_out.0``, ``add_k_proj``, ``add_v_proj``, ``group_norm``, ``spatial_norm``,
``norm_cross``); a *processor* decides how they are combined, as in the reference:

* ``AttnProcessor2_0``: self- or cross-attention (transformer blocks, autoencoder
  mid-blocks with ``group_norm`` / ``spatial_norm`` and a residual connection);
* ``AttnAddedKVProcessor2_0``: the Kandinsky / unCLIP "simple cross-attention" of a
  feature map: a group-normed image query attends to the condition tokens projected by
  ``add_k_proj`` / ``add_v_proj`` followed by the image's own keys (unless
  ``only_cross_attention``), and the result is added back to the input;
* ``AttnProcessor`` / ``AttnAddedKVProcessor``: the same two computed with explicit
  matmul + softmax (honours ``upcast_softmax``), the reference's "classic" path.

A processor is any callable ``processor(attn, hidden_states, encoder_hidden_states=None,
attention_mask=None, **kwargs)``, so users can plug in their own. ``attn_processors`` and
``set_attn_processor`` work on any model that contains ``Attention`` layers.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .norms import SpatialNorm

logger = logging.getLogger(__name__)

AttentionProcessor = Callable[..., torch.Tensor]


# ---------------------------------------------------------------------------
# the attention core shared by all processors


def _split_heads(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, tokens, heads * dim) -> (batch, heads, tokens, dim), a view."""
    batch, tokens, width = tensor.shape
    return tensor.view(batch, tokens, heads, width // heads).transpose(1, 2)


def _merge_heads(tensor: torch.Tensor) -> torch.Tensor:
    """(batch, heads, tokens, dim) -> (batch, tokens, heads * dim)."""
    batch, heads, tokens, dim = tensor.shape
    return tensor.transpose(1, 2).reshape(batch, tokens, heads * dim)


def _as_bias(mask: torch.Tensor | None) -> torch.Tensor | None:
    """An additive mask of shape (batch, keys) or (batch, queries, keys) -> broadcastable over heads."""
    if mask is None:
        return None
    if mask.ndim == 2:
        return mask[:, None, None, :]
    if mask.ndim == 3:
        return mask[:, None]
    return mask


# the most bytes that one block of queries' bf16 scores may take in ``products_attention``: longer sequences (a
# MoVQ's 16384 pixels at 1024 px would need 512 MB at once) are computed a block of queries at a time
PRODUCTS_BLOCK_BYTES = 64 << 20


def products_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v over bf16 (batch, heads, tokens, dim) tensors as two bf16 matrix products and a
    softmax, a block of queries at a time: the fast CPU mode's attention where the CPU has AVX-512 BF16 but no AMX.

    There SDPA's fused CPU kernel has no bf16 fast path (it runs as fast in bf16 as in fp32), while oneDNN's bf16
    products run at 3-4x the fp32 rate. On a 2-core Zen 5, per call: a full-size Kandinsky 2.2 UNet's 32x32
    self-attention (2 x 12 heads, 1024 queries, 1034 keys of 64) 43 -> 21-26 ms, its 16x16 one 5.2 -> 2.6 ms,
    the MoVQ's 64x64 one (4096 queries and keys of 512) 193 -> 54 ms. The price is rounding: the scores are
    rounded to bf16 before the softmax (which sums in fp32), where SDPA keeps them in fp32; on Gaussian inputs the
    error against float64 is about twice SDPA's bf16 error. The keys are centred first (each query's scores
    shifted by one constant, which softmax ignores), so a component that every key shares adds nothing to the
    scores' size, nor to their rounding.
    """
    queries, keys = query.shape[-2], key.shape[-2]
    per_query = query[..., 0, 0].numel() * keys * query.element_size()
    block = max(1, PRODUCTS_BLOCK_BYTES // per_query)
    key = key.float()  # centred (see above)
    key = (key - key.mean(dim=-2, keepdim=True)).to(query.dtype)
    query, key = query * scale, key.transpose(-1, -2)
    if block >= queries:
        return torch.matmul(torch.matmul(query, key).softmax(dim=-1), value)
    out = query.new_empty(*query.shape[:-1], value.shape[-1])
    for start in range(0, queries, block):
        rows = query[..., start:start + block, :]
        out[..., start:start + block, :] = torch.matmul(torch.matmul(rows, key).softmax(dim=-1), value)
    return out


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None = None,
         scale: float | None = None, products: bool = False) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` (``scale`` None: 1/sqrt(dim)); with ``products`` (a layer's
    ``products_attention``, set by the fast CPU mode), an unmasked bf16 CPU call runs as :func:`products_attention`."""
    if products and mask is None and query.dtype == torch.bfloat16 and query.device.type == "cpu":
        return products_attention(query, key, value, query.shape[-1] ** -0.5 if scale is None else scale)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, scale=scale)


def scaled_dot_product(attn: "Attention", query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       mask: torch.Tensor | None, use_sdpa: bool = True) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v over (batch, heads, tokens, dim) tensors."""
    if use_sdpa:
        # SDPA's own default scale is 1/sqrt(dim); passing None keeps it bit-identical to the reference
        return sdpa(query, key, value, mask, None if attn.scale_qk else attn.scale, attn.products_attention)
    dtype = query.dtype
    if attn.upcast_attention:
        query, key = query.float(), key.float()
    scores = torch.matmul(query, key.transpose(-1, -2)) * attn.scale
    if mask is not None:
        scores = scores + mask
    if attn.upcast_softmax:
        scores = scores.float()
    probs = scores.softmax(dim=-1).to(dtype)
    return torch.matmul(probs, value)


# ---------------------------------------------------------------------------
# processors


class AttnProcessor2_0:
    """Self- or cross-attention of token sequences or feature maps, via ``F.scaled_dot_product_attention``."""

    use_sdpa = True

    def __call__(self, attn: "Attention", hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 temb: torch.Tensor | None = None) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        feature_map_shape = hidden_states.shape if hidden_states.ndim == 4 else None
        if feature_map_shape is not None:
            batch, channels = feature_map_shape[:2]
            if attn.group_norm is not None:
                # normalising the (B, C, H, W) map equals normalising its (B, C, H*W) view
                hidden_states = attn.group_norm(hidden_states)
            # contiguous once, instead of one copy per projection
            hidden_states = hidden_states.view(batch, channels, -1).transpose(1, 2).contiguous()
        elif attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        if encoder_hidden_states is None:
            context = hidden_states
        else:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross is not None \
                else encoder_hidden_states
        query = _split_heads(attn.to_q(hidden_states), attn.heads)
        key = _split_heads(attn.to_k(context), attn.heads)
        value = _split_heads(attn.to_v(context), attn.heads)
        hidden_states = scaled_dot_product(attn, query, key, value, _as_bias(attention_mask), self.use_sdpa)
        hidden_states = attn.to_out[1](attn.to_out[0](_merge_heads(hidden_states).to(query.dtype)))

        if feature_map_shape is not None:
            hidden_states = hidden_states.transpose(1, 2).view(feature_map_shape[0], -1, *feature_map_shape[2:])
        if attn.residual_connection:
            hidden_states = residual + hidden_states  # residual first: the sum takes its contiguous layout
        elif feature_map_shape is not None:
            hidden_states = hidden_states.contiguous()
        if attn.rescale_output_factor != 1.0:
            hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states


class AttnProcessor(AttnProcessor2_0):
    """``AttnProcessor2_0`` computed with explicit matmul + softmax (reference "classic" processor)."""

    use_sdpa = False


class AttnAddedKVProcessor2_0:
    """Kandinsky "simple cross-attention" of a feature map (see the module docstring), via SDPA."""

    use_sdpa = True

    def __call__(self, attn: "Attention", hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        residual = hidden_states
        batch, channels = hidden_states.shape[:2]
        pixels = hidden_states.view(batch, channels, -1).transpose(1, 2)
        # without a condition the image attends to itself through the added projections
        context = pixels if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross is not None:
            context = attn.norm_encoder_hidden_states(context)
        # made contiguous once here, rather than copied by each of the three projections below
        normed = attn.group_norm(hidden_states).view(batch, channels, -1).transpose(1, 2).contiguous()

        query = _split_heads(attn.to_q(normed), attn.heads)
        key = _split_heads(attn.add_k_proj(context), attn.heads)
        value = _split_heads(attn.add_v_proj(context), attn.heads)
        if not attn.only_cross_attention:
            # condition tokens first, then the image's own tokens
            key = torch.cat([key, _split_heads(attn.to_k(normed), attn.heads)], dim=2)
            value = torch.cat([value, _split_heads(attn.to_v(normed), attn.heads)], dim=2)
        mask = attention_mask
        if mask is not None and not attn.only_cross_attention and mask.shape[-1] != pixels.shape[1]:
            # a mask over the condition tokens leaves the image's own tokens visible
            mask = F.pad(mask, (0, pixels.shape[1]), value=0.0)
        hidden_states = scaled_dot_product(attn, query, key, value, _as_bias(mask), self.use_sdpa)
        hidden_states = attn.to_out[1](attn.to_out[0](_merge_heads(hidden_states)))
        # The (B, C, H, W) *view* of the (B, H*W, C) tokens is channels-last; as the first operand
        # it makes the sum channels-last, as in the reference, and the convolutions after it run
        # on oneDNN's channels-last kernels (faster than NCHW on every CPU measured). The view is
        # taken by permuting so that its strides are the canonical channels-last ones even for a
        # batch of one (a transpose-and-reshape view there would not be recognised as such).
        batch, channels = residual.shape[:2]
        return hidden_states.view(batch, *residual.shape[2:], channels).movedim(-1, 1) + residual


class AttnAddedKVProcessor(AttnAddedKVProcessor2_0):
    """``AttnAddedKVProcessor2_0`` computed with explicit matmul + softmax (honours ``upcast_softmax``)."""

    use_sdpa = False


# the reference's xformers processors; xformers is a CUDA library, SDPA already gives its
# memory-efficient kernels, so these names map onto the SDPA processors
XFormersAttnProcessor = AttnProcessor2_0
XFormersAttnAddedKVProcessor = AttnAddedKVProcessor2_0

ADDED_KV_ATTENTION_PROCESSORS = (AttnAddedKVProcessor, AttnAddedKVProcessor2_0)
CROSS_ATTENTION_PROCESSORS = (AttnProcessor, AttnProcessor2_0)


# ---------------------------------------------------------------------------
# the layer


class Attention(nn.Module):
    """Multi-head attention layer; constructor keywords and weight names follow the reference.

    ``heads`` x ``dim_head`` is the inner width (or ``out_dim`` if given, with
    ``out_dim // dim_head`` heads). ``added_kv_proj_dim`` adds ``add_k_proj`` / ``add_v_proj``
    for condition tokens (and selects ``AttnAddedKVProcessor2_0``); ``norm_num_groups``
    adds a group norm of the query input, ``spatial_norm_dim`` a ``SpatialNorm`` driven by
    ``temb``, ``cross_attention_norm`` a norm of the condition tokens.
    """

    # set on a layer by the fast CPU mode (sfumato.fast): its unmasked bf16 CPU calls through the SDPA processors
    # run as ``products_attention``
    products_attention: bool = False

    def __init__(
        self,
        query_dim: int,
        cross_attention_dim: int | None = None,
        heads: int = 8,
        kv_heads: int | None = None,
        dim_head: int = 64,
        dropout: float = 0.0,
        bias: bool = False,
        upcast_attention: bool = False,
        upcast_softmax: bool = False,
        cross_attention_norm: str | None = None,
        cross_attention_norm_num_groups: int = 32,
        qk_norm: str | None = None,
        added_kv_proj_dim: int | None = None,
        added_proj_bias: bool | None = True,
        norm_num_groups: int | None = None,
        spatial_norm_dim: int | None = None,
        out_bias: bool = True,
        scale_qk: bool = True,
        only_cross_attention: bool = False,
        eps: float = 1e-5,
        rescale_output_factor: float = 1.0,
        residual_connection: bool = False,
        _from_deprecated_attn_block: bool = False,
        processor: AttentionProcessor | None = None,
        out_dim: int | None = None,
    ):
        super().__init__()
        if qk_norm is not None:
            raise NotImplementedError(f"Attention qk_norm={qk_norm!r} is not supported; only None")
        if kv_heads is not None and kv_heads != heads:
            raise NotImplementedError(f"Attention kv_heads={kv_heads} (grouped-query attention) is not supported")
        if only_cross_attention and added_kv_proj_dim is None:
            raise ValueError("only_cross_attention=True needs added_kv_proj_dim: without it nothing is attended to")
        self.inner_dim = out_dim if out_dim is not None else dim_head * heads
        self.query_dim = query_dim
        self.use_bias = bias
        self.is_cross_attention = cross_attention_dim is not None
        self.cross_attention_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.upcast_attention = upcast_attention
        self.upcast_softmax = upcast_softmax
        self.rescale_output_factor = rescale_output_factor
        self.residual_connection = residual_connection
        self.dropout = dropout
        self.out_dim = out_dim if out_dim is not None else query_dim
        self.scale_qk = scale_qk
        self.scale = dim_head**-0.5 if scale_qk else 1.0
        self.heads = out_dim // dim_head if out_dim is not None else heads
        self.sliceable_head_dim = heads
        self.added_kv_proj_dim = added_kv_proj_dim
        self.only_cross_attention = only_cross_attention
        self._from_deprecated_attn_block = _from_deprecated_attn_block

        self.group_norm = (
            nn.GroupNorm(num_channels=query_dim, num_groups=norm_num_groups, eps=eps, affine=True)
            if norm_num_groups is not None else None
        )
        self.spatial_norm = SpatialNorm(query_dim, spatial_norm_dim) if spatial_norm_dim is not None else None
        self.norm_q = self.norm_k = None
        self.norm_cross = self._make_cross_norm(cross_attention_norm, cross_attention_norm_num_groups)

        self.to_q = nn.Linear(query_dim, self.inner_dim, bias=bias)
        if only_cross_attention:
            self.to_k = self.to_v = None
        else:
            self.to_k = nn.Linear(self.cross_attention_dim, self.inner_dim, bias=bias)
            self.to_v = nn.Linear(self.cross_attention_dim, self.inner_dim, bias=bias)
        if added_kv_proj_dim is not None:
            self.add_k_proj = nn.Linear(added_kv_proj_dim, self.inner_dim, bias=added_proj_bias)
            self.add_v_proj = nn.Linear(added_kv_proj_dim, self.inner_dim, bias=added_proj_bias)
        else:
            self.add_k_proj = self.add_v_proj = None
        self.to_out = nn.ModuleList([nn.Linear(self.inner_dim, self.out_dim, bias=out_bias), nn.Dropout(dropout)])

        if processor is None:
            processor = AttnAddedKVProcessor2_0() if added_kv_proj_dim is not None else AttnProcessor2_0()
        self.set_processor(processor)

    def _make_cross_norm(self, kind: str | None, num_groups: int) -> nn.Module | None:
        if kind is None:
            return None
        if kind == "layer_norm":
            return nn.LayerNorm(self.cross_attention_dim)
        if kind == "group_norm":
            # applied to the raw condition tokens, before add_k_proj / to_k
            channels = self.added_kv_proj_dim if self.added_kv_proj_dim is not None else self.cross_attention_dim
            return nn.GroupNorm(num_channels=channels, num_groups=num_groups, eps=1e-5, affine=True)
        raise ValueError(f"cross_attention_norm must be None, 'layer_norm' or 'group_norm', got {kind!r}")

    def norm_encoder_hidden_states(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """Apply ``norm_cross`` over the feature axis of (batch, tokens, features) condition tokens."""
        if isinstance(self.norm_cross, nn.GroupNorm):
            return self.norm_cross(encoder_hidden_states.transpose(1, 2)).transpose(1, 2)
        return self.norm_cross(encoder_hidden_states)

    # processors -------------------------------------------------------------

    def set_processor(self, processor: AttentionProcessor) -> None:
        """Use ``processor`` from now on; a processor that is an ``nn.Module`` becomes a submodule."""
        if not callable(processor):
            raise TypeError(f"processor must be callable like AttnProcessor2_0(), got {type(processor).__name__}")
        if isinstance(getattr(self, "processor", None), nn.Module) and not isinstance(processor, nn.Module):
            del self._modules["processor"]
        self.processor = processor
        # which optional keywords the processor takes, looked up once rather than on every call
        parameters = inspect.signature(processor.__call__).parameters
        self._processor_takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        self._processor_keywords = frozenset(parameters)

    def get_processor(self, return_deprecated_lora: bool = False) -> AttentionProcessor:
        return self.processor

    def set_use_memory_efficient_attention_xformers(self, use_memory_efficient_attention_xformers: bool,
                                                    attention_op: Any = None) -> None:
        """Accepted for compatibility: SDPA already picks a memory-efficient kernel, so the processor stays SDPA."""
        added_kv = self.added_kv_proj_dim is not None
        self.set_processor(AttnAddedKVProcessor2_0() if added_kv else AttnProcessor2_0())

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, **cross_attention_kwargs: Any) -> torch.Tensor:
        if cross_attention_kwargs and not self._processor_takes_any:
            unused = [k for k in cross_attention_kwargs if k not in self._processor_keywords]
            if unused:
                logger.warning("cross_attention_kwargs %s are not used by %s and are ignored",
                               unused, type(self.processor).__name__)
            cross_attention_kwargs = {k: v for k, v in cross_attention_kwargs.items()
                                      if k in self._processor_keywords}
        return self.processor(self, hidden_states, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask, **cross_attention_kwargs)


# ---------------------------------------------------------------------------
# model-level helpers (UNets, ControlNets and transformers expose these as methods)


def attn_processors(model: nn.Module) -> dict[str, AttentionProcessor]:
    """Every attention processor in ``model``, keyed ``"<module path>.processor"`` in module order."""
    return {f"{name}.processor": module.processor for name, module in model.named_modules()
            if hasattr(module, "set_processor") and hasattr(module, "processor")}


def set_attn_processor(model: nn.Module, processor: AttentionProcessor | dict[str, AttentionProcessor]) -> None:
    """Set one processor for all attention layers of ``model``, or one per layer from a dict like ``attn_processors``."""
    layers = {f"{name}.processor": module for name, module in model.named_modules()
              if hasattr(module, "set_processor") and hasattr(module, "processor")}
    if isinstance(processor, dict):
        missing = sorted(set(layers) - set(processor))
        extra = sorted(set(processor) - set(layers))
        if missing or extra:
            raise ValueError(
                f"processor dict must have one entry per attention layer ({len(layers)}), got {len(processor)}; "
                f"missing {missing[:3]}, unknown {extra[:3]}"
            )
        for key, layer in layers.items():
            layer.set_processor(processor[key])
        return
    for layer in layers.values():
        layer.set_processor(processor)


def set_default_attn_processor(model: nn.Module) -> None:
    """Use the reference's "default" processors: the explicit matmul + softmax ones.

    ``AttnAddedKVProcessor`` for added-key/value layers, ``AttnProcessor`` for the others.
    They are slower than the SDPA processors a model starts with; tests use them because
    they honour ``upcast_softmax``.
    """
    for module in model.modules():
        if isinstance(module, Attention):
            module.set_processor(AttnAddedKVProcessor() if module.added_kv_proj_dim is not None else AttnProcessor())
