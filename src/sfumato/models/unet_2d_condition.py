"""``UNet2DConditionModel``: the conditional denoising UNet of Kandinsky 2.x and Stable Diffusion.

One public class with the reference's config fields, assembled from parts the config
chooses, in reading order:

1. *time*: ``time_proj`` (sinusoidal ``Timesteps`` or ``GaussianFourierProjection``) and
   ``time_embedding`` (MLP); optionally ``class_embedding`` and ``add_embedding`` whose
   outputs are added to the time vector. ``addition_embed_type`` picks the latter:
   ``"image"`` (Kandinsky 2.2), ``"image_hint"`` (2.2 ControlNet: also turns ``hint`` into
   four channels concatenated to the input), ``"text_image"`` (2.1), ``"text_time"`` (SDXL).
2. *condition tokens*: ``encoder_hid_proj`` maps the condition to cross-attention tokens:
   ``"image_proj"`` (2.2: from ``image_embeds`` alone), ``"text_image_proj"`` (2.1),
   ``"text_proj"`` (a linear map of ``encoder_hidden_states``); none for Stable Diffusion.
3. *the U*: ``conv_in``, ``down_blocks``, ``mid_block``, ``up_blocks`` (stages chosen by
   name, see ``unet_2d_blocks``), ``conv_norm_out`` / ``conv_act`` / ``conv_out``.

``forward(sample, timestep, encoder_hidden_states, added_cond_kwargs=...)`` returns a
``UNet2DConditionOutput`` (``.sample``) or a 1-tuple. Kandinsky 2.2 checkpoints have
``out_channels=8``: the predicted noise and the learned variance, split by the scheduler.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..checkpoint.config import register_to_config
from ..checkpoint.modeling import ModelMixin
from ..nn import attention as attention_layers
from ..nn.activations import get_activation
from ..nn.embeddings import (
    GaussianFourierProjection,
    ImageHintTimeEmbedding,
    ImageProjection,
    ImageTimeEmbedding,
    TextImageProjection,
    TextImageTimeEmbedding,
    TimestepEmbedding,
    Timesteps,
)
from ..outputs import BaseOutput
from .unet_2d_blocks import get_down_block, get_mid_block, get_up_block

logger = logging.getLogger(__name__)

_ENCODER_HID_TYPES = (None, "text_proj", "text_image_proj", "image_proj")
_ADDITION_TYPES = (None, "text_image", "text_time", "image", "image_hint")
_CLASS_EMBED_TYPES = (None, "timestep", "identity", "projection", "simple_projection")


@dataclass
class UNet2DConditionOutput(BaseOutput):
    """``sample``: the prediction, shaped ``(batch, out_channels, height, width)``."""

    sample: torch.Tensor = None


def _per_block(value: Any, count: int, name: str) -> list:
    """A setting given once or once per down block -> a list with one entry per down block."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{name} must have one entry per down block ({count}), got {len(value)}: {value}")
        return list(value)
    return [value] * count


def _check_shape(name: str, tensor: Any, expected: tuple) -> None:
    """``tensor`` must have ``len(expected)`` dims; int entries of ``expected`` must match exactly."""
    ok = isinstance(tensor, torch.Tensor) and tensor.ndim == len(expected) and all(
        not isinstance(want, int) or size == want for size, want in zip(tensor.shape, expected))
    if not ok:
        got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        shown = "(" + ", ".join(str(want) for want in expected) + ")"
        raise ValueError(f"{name} must have shape {shown}, got {got}")


class UNet2DConditionModel(ModelMixin):
    """Conditional 2D UNet; config fields and weight names are those of the reference."""

    _supports_gradient_checkpointing = False
    _no_split_modules = ["BasicTransformerBlock", "ResnetBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D",
        ),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        only_cross_attention: bool | tuple[bool, ...] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int | tuple[int, ...] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        dropout: float = 0.0,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | tuple[int, ...] = 1280,
        transformer_layers_per_block: int | tuple[int, ...] | tuple[tuple[int, ...], ...] = 1,
        reverse_transformer_layers_per_block: tuple[tuple[int, ...], ...] | None = None,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        resnet_skip_time_act: bool = False,
        resnet_out_scale_factor: float = 1.0,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        time_embedding_act_fn: str | None = None,
        timestep_post_act: str | None = None,
        time_cond_proj_dim: int | None = None,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
        projection_class_embeddings_input_dim: int | None = None,
        attention_type: str = "default",
        class_embeddings_concat: bool = False,
        mid_block_only_cross_attention: bool | None = None,
        cross_attention_norm: str | None = None,
        addition_embed_type_num_heads: int = 64,
    ):
        super().__init__()
        self.sample_size = sample_size
        self._check_settings(locals())
        count = len(down_block_types)
        # Released configs call the head count "attention_head_dim" (a historical misnaming the
        # reference keeps for compatibility): cross-attention stages read it as a head count,
        # simple-cross-attention stages as a head width.
        num_attention_heads = attention_head_dim

        # 1. time and the vectors added to it
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=conv_in_kernel,
                                 padding=(conv_in_kernel - 1) // 2)
        time_embed_dim, timestep_input_dim = self._build_time_proj(
            time_embedding_type, block_out_channels, flip_sin_to_cos, freq_shift, time_embedding_dim
        )
        self.time_embedding = TimestepEmbedding(timestep_input_dim, time_embed_dim, act_fn=act_fn,
                                                post_act_fn=timestep_post_act, cond_proj_dim=time_cond_proj_dim)
        self._build_encoder_hid_proj(encoder_hid_dim_type, encoder_hid_dim, cross_attention_dim)
        self.class_embedding = self._build_class_embedding(
            class_embed_type, num_class_embeds, act_fn, projection_class_embeddings_input_dim,
            time_embed_dim, timestep_input_dim,
        )
        self._build_add_embedding(addition_embed_type, addition_time_embed_dim, flip_sin_to_cos, freq_shift,
                                  cross_attention_dim, encoder_hid_dim, projection_class_embeddings_input_dim,
                                  time_embed_dim)
        self.time_embed_act = get_activation(time_embedding_act_fn) if time_embedding_act_fn is not None else None

        # 2. the U, one stage per entry of block_out_channels
        if isinstance(only_cross_attention, bool):
            if mid_block_only_cross_attention is None:
                mid_block_only_cross_attention = only_cross_attention
        if mid_block_only_cross_attention is None:
            mid_block_only_cross_attention = False
        only_cross_attention = _per_block(only_cross_attention, count, "only_cross_attention")
        num_attention_heads = _per_block(num_attention_heads, count, "attention_head_dim")
        attention_head_dim = _per_block(attention_head_dim, count, "attention_head_dim")
        cross_attention_dim = _per_block(cross_attention_dim, count, "cross_attention_dim")
        layers_per_block = _per_block(layers_per_block, count, "layers_per_block")
        transformer_layers_per_block = _per_block(transformer_layers_per_block, count, "transformer_layers_per_block")
        blocks_time_embed_dim = time_embed_dim * 2 if class_embeddings_concat else time_embed_dim
        shared = dict(
            temb_channels=blocks_time_embed_dim, resnet_eps=norm_eps, resnet_act_fn=act_fn,
            resnet_groups=norm_num_groups, dual_cross_attention=dual_cross_attention,
            use_linear_projection=use_linear_projection, upcast_attention=upcast_attention,
            resnet_time_scale_shift=resnet_time_scale_shift, attention_type=attention_type,
            cross_attention_norm=cross_attention_norm, dropout=dropout,
        )
        stage_only = dict(resnet_skip_time_act=resnet_skip_time_act, resnet_out_scale_factor=resnet_out_scale_factor)

        # both lists exist before the mid stage so that parameters are ordered as in the reference
        # (down, up, mid), which keeps state dicts and shard splits identical
        self.down_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        output_channel = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            self.down_blocks.append(get_down_block(
                block_type, num_layers=layers_per_block[i],
                transformer_layers_per_block=transformer_layers_per_block[i], in_channels=input_channel,
                out_channels=output_channel, add_downsample=i < count - 1,
                cross_attention_dim=cross_attention_dim[i], num_attention_heads=num_attention_heads[i],
                downsample_padding=downsample_padding, only_cross_attention=only_cross_attention[i],
                attention_head_dim=attention_head_dim[i] if attention_head_dim[i] is not None else output_channel,
                **shared, **stage_only,
            ))

        self.mid_block = get_mid_block(
            mid_block_type, in_channels=block_out_channels[-1], output_scale_factor=mid_block_scale_factor,
            transformer_layers_per_block=transformer_layers_per_block[-1],
            num_attention_heads=num_attention_heads[-1], cross_attention_dim=cross_attention_dim[-1],
            mid_block_only_cross_attention=mid_block_only_cross_attention,
            attention_head_dim=attention_head_dim[-1], resnet_skip_time_act=resnet_skip_time_act, **shared,
        )

        self.num_upsamplers = count - 1
        reversed_channels = list(reversed(block_out_channels))
        reversed_transformer_layers = (list(reversed(transformer_layers_per_block))
                                       if reverse_transformer_layers_per_block is None
                                       else list(reverse_transformer_layers_per_block))
        output_channel = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            j = count - 1 - i  # the down stage this up stage mirrors
            prev_output_channel, output_channel = output_channel, reversed_channels[i]
            self.up_blocks.append(get_up_block(
                block_type, num_layers=layers_per_block[j] + 1,
                transformer_layers_per_block=reversed_transformer_layers[i],
                in_channels=reversed_channels[min(i + 1, count - 1)], out_channels=output_channel,
                prev_output_channel=prev_output_channel, add_upsample=i < count - 1, resolution_idx=i,
                cross_attention_dim=cross_attention_dim[j], num_attention_heads=num_attention_heads[j],
                only_cross_attention=only_cross_attention[j],
                # not mirrored: the reference indexes the per-block head width of up stage i by i
                attention_head_dim=attention_head_dim[i] if attention_head_dim[i] is not None else output_channel,
                **shared, **stage_only,
            ))

        # 3. output
        if norm_num_groups is not None:
            self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[0], num_groups=norm_num_groups,
                                              eps=norm_eps)
            self.conv_act = get_activation(act_fn)
        else:
            self.conv_norm_out = self.conv_act = None
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=conv_out_kernel,
                                  padding=(conv_out_kernel - 1) // 2)

    # -- construction helpers ------------------------------------------------

    @staticmethod
    def _check_settings(settings: dict[str, Any]) -> None:
        """Reject configs this implementation cannot honour, naming the field."""
        down, up = settings["down_block_types"], settings["up_block_types"]
        if len(down) != len(up):
            raise ValueError(f"down_block_types ({len(down)}) and up_block_types ({len(up)}) must have the same length")
        if len(settings["block_out_channels"]) != len(down):
            raise ValueError(
                f"block_out_channels must have one entry per down block ({len(down)}), "
                f"got {list(settings['block_out_channels'])}"
            )
        if settings["num_attention_heads"] is not None:
            raise ValueError(
                "num_attention_heads cannot be set for UNet2DConditionModel (as in the reference); "
                "released configs give the head count as attention_head_dim"
            )
        if settings["attention_type"] != "default":
            raise NotImplementedError(f"attention_type={settings['attention_type']!r} (GLIGEN) is not supported")
        if settings["encoder_hid_dim_type"] not in _ENCODER_HID_TYPES:
            raise ValueError(f"encoder_hid_dim_type must be one of {_ENCODER_HID_TYPES}, "
                             f"got {settings['encoder_hid_dim_type']!r}")
        if settings["addition_embed_type"] == "text":
            raise NotImplementedError("addition_embed_type='text' (TextTimeEmbedding, DeepFloyd IF) is not supported")
        if settings["addition_embed_type"] not in _ADDITION_TYPES:
            raise ValueError(f"addition_embed_type must be one of {_ADDITION_TYPES}, "
                             f"got {settings['addition_embed_type']!r}")
        if settings["class_embed_type"] not in _CLASS_EMBED_TYPES:
            raise ValueError(f"class_embed_type must be one of {_CLASS_EMBED_TYPES}, "
                             f"got {settings['class_embed_type']!r}")
        if settings["time_embedding_type"] not in ("positional", "fourier"):
            raise ValueError(f"time_embedding_type must be 'positional' or 'fourier', "
                             f"got {settings['time_embedding_type']!r}")
        transformer_layers = settings["transformer_layers_per_block"]
        if (isinstance(transformer_layers, (list, tuple)) and settings["reverse_transformer_layers_per_block"] is None
                and any(isinstance(n, (list, tuple)) for n in transformer_layers)):
            raise ValueError("reverse_transformer_layers_per_block is required when transformer_layers_per_block "
                             "lists per-layer counts (asymmetric UNet)")

    def _build_time_proj(self, kind: str, block_out_channels, flip_sin_to_cos: bool, freq_shift: float,
                         time_embedding_dim: int | None) -> tuple[int, int]:
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
            return nn.Embedding(num_class_embeds, time_embed_dim) if num_class_embeds is not None else None
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

    # -- attention processors ------------------------------------------------

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

    # -- forward ---------------------------------------------------------------

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        down_intrablock_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DConditionOutput | tuple[torch.Tensor]:
        """Predict from a noisy ``sample`` (batch, channels, height, width) at ``timestep``.

        ``added_cond_kwargs`` carries ``image_embeds`` (Kandinsky), ``hint`` (Kandinsky
        ControlNet), ``text_embeds`` / ``time_ids`` (SDXL). ``timestep`` may be a number or a
        0-d / 1-d tensor; one value is used for the whole batch. ``attention_mask`` /
        ``encoder_attention_mask`` are 1 = keep, 0 = discard.
        """
        added_cond_kwargs = added_cond_kwargs or {}
        self._check_inputs(sample, encoder_hidden_states, added_cond_kwargs)
        if down_intrablock_additional_residuals is not None or (
            down_block_additional_residuals is not None and mid_block_additional_residual is None
        ):
            raise NotImplementedError("T2I-Adapter residuals (down_intrablock_additional_residuals) are not supported")

        # the upsamplers must hit the skip sizes exactly when the sample is not a multiple of 2**n
        upsample_to_skip = any(size % 2**self.num_upsamplers for size in sample.shape[-2:])
        attention_mask = self._mask_to_bias(attention_mask, sample.dtype)
        encoder_attention_mask = self._mask_to_bias(encoder_attention_mask, sample.dtype)
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        # 1. time vector and condition tokens
        emb = self.time_embedding(self._time_features(sample, timestep), timestep_cond)
        class_emb = self._class_embedding(sample, class_labels)
        if class_emb is not None:
            emb = torch.cat([emb, class_emb], dim=-1) if self.config.class_embeddings_concat else emb + class_emb
        aug_emb, hint = self._addition_embedding(emb, encoder_hidden_states, added_cond_kwargs)
        if hint is not None:
            sample = torch.cat([sample, hint], dim=1)
        if aug_emb is not None:
            emb = emb + aug_emb
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        encoder_hidden_states = self._condition_tokens(encoder_hidden_states, added_cond_kwargs)
        attention = dict(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
                         cross_attention_kwargs=cross_attention_kwargs, encoder_attention_mask=encoder_attention_mask)

        # 2. down
        sample = self.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for down_block in self.down_blocks:
            sample, block_skips = down_block(sample, emb, **attention)
            skips += block_skips
        if down_block_additional_residuals is not None:
            # ControlNet: its features are added to every skip and to the mid output
            if len(down_block_additional_residuals) != len(skips):
                raise ValueError(f"down_block_additional_residuals must have {len(skips)} tensors, "
                                 f"got {len(down_block_additional_residuals)}")
            skips = tuple(skip + extra for skip, extra in zip(skips, down_block_additional_residuals))

        # 3. mid
        if self.mid_block is not None:
            sample = self.mid_block(sample, emb, **attention)
        if mid_block_additional_residual is not None:
            sample = sample + mid_block_additional_residual

        # 4. up
        for i, up_block in enumerate(self.up_blocks):
            count = len(up_block.resnets)
            block_skips, skips = skips[-count:], skips[:-count]
            upsample_size = skips[-1].shape[2:] if upsample_to_skip and i < len(self.up_blocks) - 1 else None
            sample = up_block(sample, block_skips, emb, upsample_size=upsample_size, **attention)

        # 5. out
        if self.conv_norm_out is not None:
            sample = self.conv_act(self.conv_norm_out(sample))
        sample = self.conv_out(sample)
        if not return_dict:
            return (sample,)
        return UNet2DConditionOutput(sample=sample)

    # -- forward helpers -------------------------------------------------------

    def _check_inputs(self, sample, encoder_hidden_states, added_cond_kwargs) -> None:
        """Fail before any compute, naming the argument that is off and what it needs."""
        self._check_sample(sample)
        required = self._required_conditions()
        missing = [key for key in required if added_cond_kwargs.get(key) is None]
        if missing:
            raise ValueError(
                f"added_cond_kwargs must contain {required} for this UNet (encoder_hid_dim_type="
                f"{self.config.encoder_hid_dim_type!r}, addition_embed_type={self.config.addition_embed_type!r}); "
                f"missing {missing}"
            )
        batch = sample.shape[0]
        if "image_embeds" in required:
            _check_shape("added_cond_kwargs['image_embeds']", added_cond_kwargs["image_embeds"],
                         (batch, self._image_embed_width()))
        if "hint" in required:
            self._check_hint(added_cond_kwargs["hint"], sample)
        if self.config.encoder_hid_dim_type != "image_proj":
            # image_proj (Kandinsky 2.2) makes its tokens from image_embeds; the others read these
            width = self.config.encoder_hid_dim if self.config.encoder_hid_dim_type else self.config.cross_attention_dim
            _check_shape("encoder_hidden_states", encoder_hidden_states,
                         (batch, "tokens", width if isinstance(width, int) else "features"))

    def _check_sample(self, sample) -> None:
        if not isinstance(sample, torch.Tensor) or sample.ndim != 4:
            got = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__
            raise ValueError(f"sample must be a 4-D tensor (batch, channels, height, width), got {got}")
        hint_channels = 4 if self.config.addition_embed_type == "image_hint" else 0
        if sample.shape[1] + hint_channels != self.config.in_channels:
            raise ValueError(
                f"sample has {sample.shape[1]} channels, but this UNet takes {self.config.in_channels - hint_channels}"
                + (" (plus 4 from the hint)" if hint_channels else "")
                + f": got shape {tuple(sample.shape)}"
            )

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

    def _image_embed_width(self) -> int | str:
        # Kandinsky 2.2 embeds are encoder_hid_dim wide; 2.1 feeds them at cross_attention_dim
        if self.config.encoder_hid_dim_type == "image_proj" or self.config.addition_embed_type in ("image", "image_hint"):
            return self.config.encoder_hid_dim
        width = self.config.cross_attention_dim
        return width if isinstance(width, int) else "embed_dim"

    @staticmethod
    def _check_hint(hint, sample: torch.Tensor) -> None:
        """The hint must be an image 8x the latent size: the hint encoder halves it three times."""
        batch, latent = sample.shape[0], tuple(sample.shape[-2:])
        expected = (batch, ImageHintTimeEmbedding.hint_channels, 8 * latent[0], 8 * latent[1])
        ok = isinstance(hint, torch.Tensor) and hint.ndim == 4 and tuple(hint.shape[:2]) == expected[:2] \
            and tuple(-(-size // 8) for size in hint.shape[-2:]) == latent
        if not ok:
            got = tuple(hint.shape) if isinstance(hint, torch.Tensor) else type(hint).__name__
            raise ValueError(f"added_cond_kwargs['hint'] must have shape {expected} (an image 8x the latent "
                             f"size), got {got}")

    @staticmethod
    def _mask_to_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        """(batch, tokens) keep=1 / discard=0 -> additive bias (batch, 1, tokens), as the reference does."""
        if mask is None:
            return None
        return ((1 - mask.to(dtype)) * -10000.0).unsqueeze(1)

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
            raise ValueError("class_labels must be given: this UNet has a class embedding")
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
