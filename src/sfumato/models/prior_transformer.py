"""The unCLIP image prior: a causal transformer that turns a CLIP text embedding into a CLIP image embedding.

Kandinsky 2.1 and 2.2 run this network inside their prior pipelines. At each
denoising step it reads one short token sequence and predicts the clean image
embedding from the last token:

    [ text tokens (num_embeddings) | text embedding | timestep | noisy image embedding | prd ]
      \\_ encoder_hidden_states _/   proj_embedding   sinusoid   hidden_states           learned

The module names, config fields and state-dict keys are those of diffusers'
``PriorTransformer`` so its checkpoints load unchanged; so are the numbers,
including the reference's quirks (see ``PriorTransformer.attention_bias``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint.config import register_to_config
from ..checkpoint.modeling import ModelMixin

# The reference masks with a large finite negative number rather than -inf, so
# a fully masked row still averages over its values instead of producing NaN.
MASKED = -10000.0

ACTIVATIONS = {"silu": nn.SiLU, "swish": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU, "relu": nn.ReLU}


@dataclass
class PriorTransformerOutput:
    """What ``PriorTransformer.forward`` returns; also indexable like a tuple (``out[0]``) or a dict."""

    predicted_image_embedding: torch.Tensor

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))

    def __getitem__(self, key):
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]


# ---------------------------------------------------------------------------
# Timestep embedding
# ---------------------------------------------------------------------------


def sinusoidal_timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``(batch,)`` timesteps -> ``(batch, dim)`` float32 features laid out as ``[cos | sin]``.

    Frequencies run from 1 down to ``1 / max_period`` over ``dim // 2`` steps
    (``flip_sin_to_cos=True, freq_shift=0`` in diffusers' terms); an odd
    ``dim`` gets a zero in the last column. The arithmetic is done in the same
    order as the reference so the features agree bit for bit.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    frequencies = torch.exp(exponent / half)
    angles = timesteps[:, None].float() * frequencies[None, :]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2 == 1:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class TimestepEmbedding(nn.Module):
    """A two-layer MLP over the sinusoidal features (keys ``linear_1``, ``linear_2``)."""

    def __init__(self, in_channels: int, hidden_dim: int, out_dim: int, act_fn: str = "silu"):
        super().__init__()
        name = act_fn.lower() if isinstance(act_fn, str) else act_fn
        if name not in ACTIVATIONS:
            raise ValueError(f"time_embed_act_fn must be one of {sorted(ACTIVATIONS)}, got {act_fn!r}")
        self.linear_1 = nn.Linear(in_channels, hidden_dim)
        self.act = ACTIVATIONS[name]()
        self.linear_2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


# ---------------------------------------------------------------------------
# Transformer block: pre-norm self-attention, then a pre-norm GELU MLP
# ---------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` with an additive mask."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        inner_dim = heads * head_dim
        self.to_q = nn.Linear(dim, inner_dim)
        self.to_k = nn.Linear(dim, inner_dim)
        self.to_v = nn.Linear(dim, inner_dim)
        # A list with the dropout at index 1 keeps the reference key ``to_out.0``.
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, dim), nn.Dropout(dropout)])

    def forward(self, hidden_states: torch.Tensor, attention_bias: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, _ = hidden_states.shape

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, -1).transpose(1, 2)

        query = split_heads(self.to_q(hidden_states))
        key = split_heads(self.to_k(hidden_states))
        value = split_heads(self.to_v(hidden_states))
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_bias)
        attended = attended.transpose(1, 2).reshape(batch, length, -1).to(query.dtype)
        return self.to_out[1](self.to_out[0](attended))


class GELUProjection(nn.Module):
    """Linear layer followed by exact (erf) GELU; the first half of the feed-forward."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(hidden_states))


class FeedForward(nn.Module):
    """``dim -> 4 * dim -> dim`` MLP; stored as ``net.0`` / ``net.2`` like the reference."""

    def __init__(self, dim: int, dropout: float = 0.0, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GELUProjection(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim)])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            hidden_states = layer(hidden_states)
        return hidden_states


class TransformerBlock(nn.Module):
    """One pre-norm layer. The reference calls its second norm ``norm3`` (its unused ``norm2`` is cross-attention)."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = SelfAttention(dim, heads, head_dim, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout)

    def forward(self, hidden_states: torch.Tensor, attention_bias: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = hidden_states + self.attn1(self.norm1(hidden_states), attention_bias)
        return hidden_states + self.ff(self.norm3(hidden_states))


# ---------------------------------------------------------------------------
# The prior
# ---------------------------------------------------------------------------


def _optional_layer_norm(kind: str | None, dim: int, argument: str) -> nn.LayerNorm | None:
    if kind is None:
        return None
    if kind == "layer":
        return nn.LayerNorm(dim)
    raise ValueError(f"{argument} must be 'layer' or None, got {kind!r}")


class PriorTransformer(ModelMixin):
    """Predicts a (normalised) CLIP image embedding from a noisy one, a timestep and the text conditioning.

    Config fields and defaults are diffusers' (Kandinsky 2.1 uses the defaults
    with ``dropout=0.0``; Kandinsky 2.2 sets ``embedding_dim=1280``).
    ``inner_dim = num_attention_heads * attention_head_dim`` is the width of
    the transformer; ``embedding_dim`` is the width of CLIP embeddings and text
    tokens. ``post_process_latents`` maps the prediction back to CLIP's scale.
    """

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 32,
        attention_head_dim: int = 64,
        num_layers: int = 20,
        embedding_dim: int = 768,
        num_embeddings: int = 77,
        additional_embeddings: int = 4,
        dropout: float = 0.0,
        time_embed_act_fn: str = "silu",
        norm_in_type: str | None = None,
        embedding_proj_norm_type: str | None = None,
        encoder_hid_proj_type: str | None = "linear",
        added_emb_type: str | None = "prd",
        time_embed_dim: int | None = None,
        embedding_proj_dim: int | None = None,
        clip_embed_dim: int | None = None,
    ):
        super().__init__()
        self.num_attention_heads = num_attention_heads
        self.attention_head_dim = attention_head_dim
        self.additional_embeddings = additional_embeddings
        inner_dim = num_attention_heads * attention_head_dim
        self.inner_dim = inner_dim
        self.embedding_proj_dim = embedding_proj_dim or embedding_dim
        clip_embed_dim = clip_embed_dim or embedding_dim

        # Conditioning tokens, each projected to the transformer width.
        self.time_embedding = TimestepEmbedding(inner_dim, time_embed_dim or inner_dim, inner_dim, time_embed_act_fn)
        self.proj_in = nn.Linear(embedding_dim, inner_dim)
        self.embedding_proj_norm = _optional_layer_norm(
            embedding_proj_norm_type, self.embedding_proj_dim, "embedding_proj_norm_type"
        )
        self.embedding_proj = nn.Linear(self.embedding_proj_dim, inner_dim)
        if encoder_hid_proj_type is None:
            self.encoder_hidden_states_proj = None
        elif encoder_hid_proj_type == "linear":
            self.encoder_hidden_states_proj = nn.Linear(embedding_dim, inner_dim)
        else:
            raise ValueError(f"encoder_hid_proj_type must be 'linear' or None, got {encoder_hid_proj_type!r}")

        self.positional_embedding = nn.Parameter(torch.zeros(1, num_embeddings + additional_embeddings, inner_dim))
        if added_emb_type == "prd":
            # The learned query token whose output is the prediction (unCLIP's "prd" token).
            self.prd_embedding = nn.Parameter(torch.zeros(1, 1, inner_dim))
        elif added_emb_type is None:
            self.prd_embedding = None
        else:
            raise ValueError(f"added_emb_type must be 'prd' or None, got {added_emb_type!r}")

        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(inner_dim, num_attention_heads, attention_head_dim, dropout) for _ in range(num_layers)]
        )
        self.norm_in = _optional_layer_norm(norm_in_type, inner_dim, "norm_in_type")
        self.norm_out = nn.LayerNorm(inner_dim)
        self.proj_to_clip_embeddings = nn.Linear(inner_dim, clip_embed_dim)

        # Not in checkpoints: rebuilt by init_non_persistent_buffers after loading.
        self.register_buffer("causal_attention_mask", self._causal_mask(), persistent=False)

        # CLIP image-embedding statistics; the prior works in the normalised space.
        self.clip_mean = nn.Parameter(torch.zeros(1, clip_embed_dim))
        self.clip_std = nn.Parameter(torch.zeros(1, clip_embed_dim))

    def _causal_mask(self, device: torch.device | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``(1, L, L)`` additive mask: token i may not attend to tokens after i."""
        length = self.positional_embedding.shape[1]
        device = torch.empty(0, device=device).device  # the default device when none is given
        if device.type == "meta":
            # a model built without its weights (from_pretrained) gets the mask once they are loaded; triu on
            # meta tensors goes through PyTorch's Python decompositions, whose import costs seconds
            return torch.empty((1, length, length), device=device, dtype=dtype)
        return torch.full((length, length), MASKED, device=device, dtype=dtype).triu_(1)[None]

    def init_non_persistent_buffers(self) -> None:
        """Recompute the causal mask on the device and in the dtype of the loaded weights."""
        loaded = self.positional_embedding
        self.causal_attention_mask = self._causal_mask(loaded.device, loaded.dtype)

    # -- forward -----------------------------------------------------------

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float | int,
        proj_embedding: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> PriorTransformerOutput | tuple[torch.Tensor]:
        """Predict the image embedding.

        Args:
            hidden_states: ``(batch, embedding_dim)`` noisy image embedding.
            timestep: the denoising step; a number, a 0-d tensor, or one value per batch item.
            proj_embedding: ``(batch, embedding_proj_dim)`` pooled text embedding.
            encoder_hidden_states: ``(batch, num_embeddings, embedding_dim)`` text tokens;
                required when the model has ``encoder_hidden_states_proj``.
            attention_mask: ``(batch, num_embeddings)`` with 1/True for real text tokens and 0/False
                for padding. Only when it is given are the padding and causal masks applied
                (the reference attends to everything when it is omitted, and so do we).
            return_dict: return a ``PriorTransformerOutput`` rather than a 1-tuple.
        """
        self._check_inputs(hidden_states, proj_embedding, encoder_hidden_states)
        batch = hidden_states.shape[0]

        time_tokens = self.time_embedding(self._timestep_features(timestep, batch, hidden_states.device))

        if self.embedding_proj_norm is not None:
            proj_embedding = self.embedding_proj_norm(proj_embedding)
        proj_tokens = self.embedding_proj(proj_embedding)
        if self.encoder_hidden_states_proj is not None:
            encoder_hidden_states = self.encoder_hidden_states_proj(encoder_hidden_states)
        image_tokens = self.proj_in(hidden_states)

        # A 2-D input is one token; a 3-D one is already a sequence of tokens.
        if proj_tokens.ndim == 2:
            proj_tokens = proj_tokens[:, None, :]
        if image_tokens.ndim == 2:
            image_tokens = image_tokens[:, None, :]

        condition = [proj_tokens, time_tokens[:, None, :]]
        if encoder_hidden_states is not None:
            condition.insert(0, encoder_hidden_states)
        num_condition_tokens = sum(t.shape[1] for t in condition)
        tokens = condition + [image_tokens]
        if self.prd_embedding is not None:
            tokens.append(self.prd_embedding.to(image_tokens.dtype).expand(batch, -1, -1))
        sequence = torch.cat(tokens, dim=1)

        sequence = sequence + self._positions_for(sequence.shape[1], num_condition_tokens, sequence.dtype)
        attention_bias = self.attention_bias(attention_mask, sequence)

        if self.norm_in is not None:
            sequence = self.norm_in(sequence)
        for block in self.transformer_blocks:
            sequence = block(sequence, attention_bias)
        sequence = self.norm_out(sequence)

        # With a prd token the prediction is read from it; otherwise from the image tokens.
        if self.prd_embedding is not None:
            sequence = sequence[:, -1]
        else:
            sequence = sequence[:, num_condition_tokens:]
        predicted = self.proj_to_clip_embeddings(sequence)

        if not return_dict:
            return (predicted,)
        return PriorTransformerOutput(predicted_image_embedding=predicted)

    def _timestep_features(self, timestep, batch: int, device: torch.device) -> torch.Tensor:
        """One sinusoidal feature row per batch item, in the model's dtype."""
        if isinstance(timestep, bool) or not isinstance(timestep, (int, float, torch.Tensor)):
            raise TypeError(f"timestep must be a number or a tensor, got {type(timestep).__name__}")
        if not torch.is_tensor(timestep):
            # The reference stores plain numbers as integers (a float step is truncated).
            timestep = torch.tensor([timestep], dtype=torch.long)
        timesteps = timestep.to(device).reshape(-1)
        if timesteps.numel() == 1:
            timesteps = timesteps.expand(batch)
        elif timesteps.numel() != batch:
            raise ValueError(
                f"timestep must hold 1 value or one per batch item ({batch}), got shape {tuple(timestep.shape)}"
            )
        return sinusoidal_timestep_embedding(timesteps, self.inner_dim).to(self.dtype)

    def _positions_for(self, length: int, num_condition_tokens: int, dtype: torch.dtype) -> torch.Tensor:
        """The positional embedding, zero-padded when the sequence is longer than the table.

        Checkpoints whose table covers only the image tokens (``additional_embeddings=0``)
        get zeros for the conditioning tokens in front and the prd token at the end.
        """
        positions = self.positional_embedding.to(dtype)
        if positions.shape[1] < length:
            tail = 1 if self.prd_embedding is not None else 0
            positions = F.pad(positions, (0, 0, num_condition_tokens, tail))
        if positions.shape[1] != length:
            raise ValueError(
                f"the input makes a sequence of {length} tokens, which does not fit the positional embedding: "
                f"it covers {self.positional_embedding.shape[1]} (num_embeddings + additional_embeddings); "
                f"encoder_hidden_states (or, for a model without text tokens, hidden_states) must have "
                f"num_embeddings = {self.positional_embedding.shape[1] - self.additional_embeddings} tokens"
            )
        return positions

    def attention_bias(self, attention_mask: torch.Tensor | None, sequence: torch.Tensor) -> torch.Tensor | None:
        """``(batch, 1, L, L)`` additive bias from a text padding mask, or None.

        Padded text tokens get ``-10000``; the ``additional_embeddings`` tokens after
        the text are never padding; the causal mask is added on top, so a padded
        key later in the sequence gets ``-20000``, exactly as in the reference.
        The heads share the mask, so it broadcasts over them rather than repeating.
        """
        if attention_mask is None:
            return None
        batch, length = sequence.shape[:2]
        expected = (batch, length - self.additional_embeddings)
        if attention_mask.ndim != 2 or tuple(attention_mask.shape) != expected:
            raise ValueError(
                f"attention_mask must have shape (batch, text tokens) = {expected} for this input, "
                f"got {tuple(attention_mask.shape)}"
            )
        padding = (1 - attention_mask.to(sequence.dtype)) * MASKED
        padding = F.pad(padding, (0, self.additional_embeddings), value=0.0)
        causal = self.causal_attention_mask.to(sequence.device)
        if causal.shape[-1] != length:
            raise ValueError(
                f"attention_mask needs a sequence of num_embeddings + additional_embeddings = {causal.shape[-1]} "
                f"tokens, but the input makes {length}"
            )
        return (padding[:, None, :] + causal).to(sequence.dtype)[:, None]

    def _check_inputs(self, hidden_states, proj_embedding, encoder_hidden_states) -> None:
        """Fail early, naming the argument, instead of deep inside a matmul."""
        embedding_dim = self.proj_in.in_features
        for name, value in (("hidden_states", hidden_states), ("proj_embedding", proj_embedding)):
            if not torch.is_tensor(value):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if hidden_states.ndim not in (2, 3) or hidden_states.shape[-1] != embedding_dim:
            raise ValueError(
                f"hidden_states must have shape (batch, {embedding_dim}), got {tuple(hidden_states.shape)}"
            )
        batch = hidden_states.shape[0]
        if proj_embedding.ndim not in (2, 3) or proj_embedding.shape[-1] != self.embedding_proj_dim:
            raise ValueError(
                f"proj_embedding must have shape (batch, {self.embedding_proj_dim}), got {tuple(proj_embedding.shape)}"
            )
        if proj_embedding.shape[0] != batch:
            raise ValueError(
                f"proj_embedding has batch size {proj_embedding.shape[0]} but hidden_states has {batch}; they must match"
            )
        if encoder_hidden_states is None:
            if self.encoder_hidden_states_proj is not None:
                raise ValueError(
                    "encoder_hidden_states is required: this model projects text tokens "
                    "(encoder_hid_proj_type='linear'), got None"
                )
            return
        if not torch.is_tensor(encoder_hidden_states):
            raise TypeError(f"encoder_hidden_states must be a torch.Tensor, got {type(encoder_hidden_states).__name__}")
        token_dim = embedding_dim if self.encoder_hidden_states_proj is not None else self.inner_dim
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[-1] != token_dim:
            raise ValueError(
                f"encoder_hidden_states must have shape (batch, tokens, {token_dim}), "
                f"got {tuple(encoder_hidden_states.shape)}"
            )
        if encoder_hidden_states.shape[0] != batch:
            raise ValueError(
                f"encoder_hidden_states has batch size {encoder_hidden_states.shape[0]} but hidden_states has "
                f"{batch}; they must match"
            )

    # -- after sampling ----------------------------------------------------

    def post_process_latents(self, prior_latents: torch.Tensor) -> torch.Tensor:
        """Map a normalised prediction back to CLIP image-embedding space: ``x * clip_std + clip_mean``."""
        device = prior_latents.device
        return prior_latents * self.clip_std.to(device) + self.clip_mean.to(device)
