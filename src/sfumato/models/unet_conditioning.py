"""What a conditional UNet and its ControlNet share: the time vector and the down half of the U.

``UNetConditioningMixin`` builds, under the reference's weight names, the parts that
``UNet2DConditionModel`` and ``ControlNetModel`` have in common, and runs them:

* ``time_proj`` (sinusoidal ``Timesteps`` or ``GaussianFourierProjection``) and
  ``time_embedding`` (MLP): the time vector;
* ``class_embedding`` and ``add_embedding`` (chosen by ``class_embed_type`` /
  ``num_class_embeds`` and ``addition_embed_type``): vectors added to it;
* ``encoder_hid_proj`` (chosen by ``encoder_hid_dim_type``): the cross-attention tokens;
* ``down_blocks``: the down stages, built by name (``unet_2d_blocks``).

Parts are attributes of the model itself (not of a sub-module) because checkpoints name
them at the top level (``time_embedding.linear_1.weight``, ``down_blocks.0...``). The
mixin reads the model's ``config`` for the choices it made at construction.

Also here: the attention-processor methods both models expose.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..nn import attention as attention_layers
from ..nn.embeddings import (
    GaussianFourierProjection,
    ImageHintTimeEmbedding,
    ImageProjection,
    ImageTimeEmbedding,
    TextImageProjection,
    TextImageTimeEmbedding,
    TimestepEmbedding,
    Timesteps,
    lookup_table,
)
from .unet_2d_blocks import get_down_block

logger = logging.getLogger(__name__)


def per_block(value: Any, count: int, name: str) -> list:
    """A setting given once or once per down block -> a list with one entry per down block."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{name} must have one entry per down block ({count}), got {len(value)}: {value}")
        return list(value)
    return [value] * count


def check_shape(name: str, tensor: Any, expected: tuple) -> None:
    """``tensor`` must have ``len(expected)`` dims; int entries of ``expected`` must match exactly."""
    ok = isinstance(tensor, torch.Tensor) and tensor.ndim == len(expected) and all(
        not isinstance(want, int) or size == want for size, want in zip(tensor.shape, expected))
    if not ok:
        got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        shown = "(" + ", ".join(str(want) for want in expected) + ")"
        raise ValueError(f"{name} must have shape {shown}, got {got}")


def mask_to_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(batch, tokens) keep=1 / discard=0 -> additive bias (batch, 1, tokens), as the reference does."""
    if mask is None:
        return None
    return ((1 - mask.to(dtype)) * -10000.0).unsqueeze(1)


class UNetConditioningMixin:
    """Time / class / addition embeddings, condition tokens and down stages of a conditional UNet."""

    # -- construction -----------------------------------------------------------

    def _build_time_proj(self, kind: str, block_out_channels, flip_sin_to_cos: bool, freq_shift: float,
                         time_embedding_dim: int | None) -> tuple[int, int]:
        """Set ``time_proj``; return (time vector width, ``time_proj`` output width)."""
        if kind == "fourier":
            time_embed_dim = time_embedding_dim or block_out_channels[0] * 2
            if time_embed_dim % 2:
                raise ValueError(f"the fourier time embedding width must be even, got {time_embed_dim}")
            self.time_proj = GaussianFourierProjection(time_embed_dim // 2, set_W_to_weight=False, log=False,
                                                       flip_sin_to_cos=flip_sin_to_cos)
            return time_embed_dim, time_embed_dim
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        return time_embedding_dim or block_out_channels[0] * 4, block_out_channels[0]

    def _build_encoder_hid_proj(self, kind: str | None, encoder_hid_dim: int | None, cross_attention_dim) -> None:
        if kind is None and encoder_hid_dim is not None:
            kind = "text_proj"  # the reference's default when only the width is given
            self.register_to_config(encoder_hid_dim_type=kind)
        if kind is not None and encoder_hid_dim is None:
            raise ValueError(f"encoder_hid_dim must be set when encoder_hid_dim_type is {kind!r}")
        self.encoder_hid_proj = None
        if kind == "text_proj":
            self.encoder_hid_proj = nn.Linear(encoder_hid_dim, cross_attention_dim)
        elif kind == "text_image_proj":
            self.encoder_hid_proj = TextImageProjection(text_embed_dim=encoder_hid_dim,
                                                        image_embed_dim=cross_attention_dim,
                                                        cross_attention_dim=cross_attention_dim)
        elif kind == "image_proj":
            self.encoder_hid_proj = ImageProjection(image_embed_dim=encoder_hid_dim,
                                                    cross_attention_dim=cross_attention_dim)

    @staticmethod
    def _build_class_embedding(kind, num_class_embeds, act_fn, projection_dim, time_embed_dim,
                               timestep_input_dim) -> nn.Module | None:
        if kind is None:
            return lookup_table(num_class_embeds, time_embed_dim) if num_class_embeds is not None else None
        if kind == "timestep":
            return TimestepEmbedding(timestep_input_dim, time_embed_dim, act_fn=act_fn)
        if kind == "identity":
            return nn.Identity()
        if projection_dim is None:
            raise ValueError(f"class_embed_type={kind!r} needs projection_class_embeddings_input_dim")
        if kind == "projection":
            return TimestepEmbedding(projection_dim, time_embed_dim)
        return nn.Linear(projection_dim, time_embed_dim)  # "simple_projection"

    def _build_add_embedding(self, kind, addition_time_embed_dim, flip_sin_to_cos, freq_shift, cross_attention_dim,
                             encoder_hid_dim, projection_dim, time_embed_dim) -> None:
        if kind == "text_image":
            # Kandinsky 2.1 feeds both the pooled text and the image embedding at cross_attention_dim
            self.add_embedding = TextImageTimeEmbedding(text_embed_dim=cross_attention_dim,
                                                        image_embed_dim=cross_attention_dim,
                                                        time_embed_dim=time_embed_dim)
        elif kind == "text_time":
            self.add_time_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)
            self.add_embedding = TimestepEmbedding(projection_dim, time_embed_dim)
        elif kind == "image":
            self.add_embedding = ImageTimeEmbedding(image_embed_dim=encoder_hid_dim, time_embed_dim=time_embed_dim)
        elif kind == "image_hint":
            self.add_embedding = ImageHintTimeEmbedding(image_embed_dim=encoder_hid_dim,
                                                        time_embed_dim=time_embed_dim)

    @staticmethod
    def _build_down_blocks(down_block_types, block_out_channels, *, layers_per_block: list,
                           transformer_layers_per_block: list, cross_attention_dim: list, num_attention_heads: list,
                           attention_head_dim: list, only_cross_attention: list, downsample_padding: int,
                           **shared: Any) -> nn.ModuleList:
        """One down stage per entry of ``block_out_channels``; per-stage settings come as lists."""
        stages = nn.ModuleList()
        count = len(down_block_types)
        output_channel = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            stages.append(get_down_block(
                block_type, num_layers=layers_per_block[i],
                transformer_layers_per_block=transformer_layers_per_block[i], in_channels=input_channel,
                out_channels=output_channel, add_downsample=i < count - 1,
                cross_attention_dim=cross_attention_dim[i], num_attention_heads=num_attention_heads[i],
                downsample_padding=downsample_padding, only_cross_attention=only_cross_attention[i],
                attention_head_dim=attention_head_dim[i] if attention_head_dim[i] is not None else output_channel,
                **shared,
            ))
        return stages

    # -- forward ------------------------------------------------------------------

    def _required_conditions(self) -> list[str]:
        """The ``added_cond_kwargs`` keys this config reads."""
        kind, addition = self.config.encoder_hid_dim_type, self.config.addition_embed_type
        required = []
        if kind in ("image_proj", "text_image_proj") or addition in ("image", "image_hint", "text_image"):
            required.append("image_embeds")
        if addition == "image_hint":
            required.append("hint")
        if addition == "text_time":
            required += ["text_embeds", "time_ids"]
        return required

    def _check_required_conditions(self, added_cond_kwargs: dict) -> list[str]:
        required = self._required_conditions()
        missing = [key for key in required if added_cond_kwargs.get(key) is None]
        if missing:
            raise ValueError(
                f"added_cond_kwargs must contain {required} for this {type(self).__name__} (encoder_hid_dim_type="
                f"{self.config.encoder_hid_dim_type!r}, addition_embed_type={self.config.addition_embed_type!r}); "
                f"missing {missing}"
            )
        return required

    def _time_features(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """Sinusoidal (or Fourier) features of ``timestep``, one row per batch item, in the sample's dtype."""
        if not torch.is_tensor(timestep):
            if not isinstance(timestep, (int, float)):
                raise TypeError(f"timestep must be a number or a tensor, got {type(timestep).__name__}")
            dtype = torch.float64 if isinstance(timestep, float) else torch.int64
            if sample.device.type == "mps":
                dtype = torch.float32 if dtype == torch.float64 else torch.int32
            timestep = torch.tensor([timestep], dtype=dtype, device=sample.device)
        elif timestep.ndim == 0:
            timestep = timestep[None].to(sample.device)
        if timestep.ndim != 1 or timestep.shape[0] not in (1, sample.shape[0]):
            raise ValueError(
                f"timestep must be a number, a 0-d tensor or a 1-d tensor of length 1 or {sample.shape[0]} "
                f"(the batch), got shape {tuple(timestep.shape)}"
            )
        return self.time_proj(timestep.expand(sample.shape[0])).to(dtype=sample.dtype)

    def _class_embedding(self, sample: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor | None:
        if self.class_embedding is None:
            return None
        if class_labels is None:
            raise ValueError(f"class_labels must be given: this {type(self).__name__} has a class embedding")
        if self.config.class_embed_type == "timestep":
            class_labels = self.time_proj(class_labels).to(dtype=sample.dtype)
        return self.class_embedding(class_labels).to(dtype=sample.dtype)

    def _addition_embedding(self, emb, encoder_hidden_states, added):
        """The vector added to the time embedding, and the hint features (Kandinsky ControlNet) or None."""
        kind = self.config.addition_embed_type
        if kind == "image":
            return self.add_embedding(added["image_embeds"]), None
        if kind == "image_hint":
            return self.add_embedding(added["image_embeds"], added["hint"])
        if kind == "text_image":
            text_embeds = added.get("text_embeds", encoder_hidden_states)
            return self.add_embedding(text_embeds, added["image_embeds"]), None
        if kind == "text_time":
            text_embeds = added["text_embeds"]
            time_embeds = self.add_time_proj(added["time_ids"].flatten()).reshape(text_embeds.shape[0], -1)
            return self.add_embedding(torch.cat([text_embeds, time_embeds], dim=-1).to(emb.dtype)), None
        return None, None

    def _time_vector(self, sample: torch.Tensor, timestep, timestep_cond, class_labels, encoder_hidden_states,
                     added_cond_kwargs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The vector every resnet is conditioned on, and the hint features (Kandinsky ControlNet) or None."""
        emb = self.time_embedding(self._time_features(sample, timestep), timestep_cond)
        class_emb = self._class_embedding(sample, class_labels)
        if class_emb is not None:
            concat = self.config.get("class_embeddings_concat", False)
            emb = torch.cat([emb, class_emb], dim=-1) if concat else emb + class_emb
        aug_emb, hint = self._addition_embedding(emb, encoder_hidden_states, added_cond_kwargs)
        if aug_emb is not None:
            emb = emb + aug_emb
        if getattr(self, "time_embed_act", None) is not None:
            emb = self.time_embed_act(emb)
        return emb, hint

    def _condition_tokens(self, encoder_hidden_states, added):
        """The tokens cross-attention attends to, per ``encoder_hid_dim_type``."""
        kind = self.config.encoder_hid_dim_type
        if kind == "text_proj":
            return self.encoder_hid_proj(encoder_hidden_states)
        if kind == "text_image_proj":
            return self.encoder_hid_proj(encoder_hidden_states, added["image_embeds"])
        if kind == "image_proj":
            return self.encoder_hid_proj(added["image_embeds"])
        return encoder_hidden_states

    def _down(self, sample: torch.Tensor, emb: torch.Tensor,
              attention: dict[str, Any]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Run ``sample`` (the ``conv_in`` output) down the stages: (lowest features, every skip state)."""
        skips: tuple[torch.Tensor, ...] = (sample,)
        for down_block in self.down_blocks:
            sample, block_skips = down_block(sample, emb, **attention)
            skips += block_skips
        return sample, skips

    # -- attention processors ---------------------------------------------------------

    @property
    def attn_processors(self) -> dict[str, Any]:
        """Every attention layer's processor, keyed by ``"<module path>.processor"``."""
        return attention_layers.attn_processors(self)

    def set_attn_processor(self, processor) -> None:
        """Set one processor for every attention layer, or a dict keyed like ``attn_processors``."""
        attention_layers.set_attn_processor(self, processor)

    def set_default_attn_processor(self) -> None:
        """Use the reference's default (explicit matmul + softmax) processors."""
        attention_layers.set_default_attn_processor(self)

    def enable_xformers_memory_efficient_attention(self, attention_op: Any = None) -> None:
        """Accepted for compatibility: PyTorch SDPA (the default) already uses memory-efficient kernels."""
        logger.info("xformers is not used: attention runs through torch scaled_dot_product_attention")
        for module in self.modules():
            if isinstance(module, attention_layers.Attention):
                module.set_use_memory_efficient_attention_xformers(True, attention_op)

    def disable_xformers_memory_efficient_attention(self) -> None:
        for module in self.modules():
            if isinstance(module, attention_layers.Attention):
                module.set_use_memory_efficient_attention_xformers(False)

    def set_attention_slice(self, slice_size: str | int | list[int] | None = "auto") -> None:
        """Accepted for compatibility; SDPA bounds attention memory without slicing, so nothing changes."""
        if slice_size is not None and not isinstance(slice_size, (str, int, list)):
            raise TypeError(f"slice_size must be 'auto', 'max', an int or a list of ints, got {slice_size!r}")
