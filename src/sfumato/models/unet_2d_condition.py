"""``UNet2DConditionModel``: the conditional denoising UNet of Kandinsky 2.x, Stable Diffusion and its upscalers.

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

Parts 1, 2 and the down stages are built and run by ``UNetConditioningMixin``, which
``ControlNetModel`` shares. The SD x4 upscaler is this UNet with ``in_channels=7`` (latents
plus the low-resolution picture) and a class embedding of the noise level
(``num_class_embeds=1000``, ``class_labels=noise_level``); the x2 latent upscaler uses the
k-diffusion stages (``unet_k_blocks``) with a Fourier time embedding, its
``timestep_cond`` projected into it (``time_cond_proj_dim``) and no mid stage.

``forward(sample, timestep, encoder_hidden_states, added_cond_kwargs=...)`` returns a
``UNet2DConditionOutput`` (``.sample``) or a 1-tuple. Kandinsky 2.2 checkpoints have
``out_channels=8``: the predicted noise and the learned variance, split by the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..checkpoint.config import register_to_config
from ..checkpoint.modeling import ModelMixin
from ..nn.activations import get_activation
from ..nn.embeddings import ImageHintTimeEmbedding, TimestepEmbedding
from ..nn.layout import follow_input_layout
from ..outputs import BaseOutput
from .unet_2d_blocks import get_mid_block, get_up_block
from .unet_conditioning import UNetConditioningMixin, check_shape, mask_to_bias, per_block

_ENCODER_HID_TYPES = (None, "text_proj", "text_image_proj", "image_proj")
_ADDITION_TYPES = (None, "text_image", "text_time", "image", "image_hint")
_CLASS_EMBED_TYPES = (None, "timestep", "identity", "projection", "simple_projection")


@dataclass
class UNet2DConditionOutput(BaseOutput):
    """``sample``: the prediction, shaped ``(batch, out_channels, height, width)``."""

    sample: torch.Tensor = None


class UNet2DConditionModel(UNetConditioningMixin, ModelMixin):
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
        only_cross_attention = per_block(only_cross_attention, count, "only_cross_attention")
        num_attention_heads = per_block(num_attention_heads, count, "attention_head_dim")
        attention_head_dim = per_block(attention_head_dim, count, "attention_head_dim")
        cross_attention_dim = per_block(cross_attention_dim, count, "cross_attention_dim")
        layers_per_block = per_block(layers_per_block, count, "layers_per_block")
        transformer_layers_per_block = per_block(transformer_layers_per_block, count, "transformer_layers_per_block")
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
        self.down_blocks = self._build_down_blocks(
            down_block_types, block_out_channels, layers_per_block=layers_per_block,
            transformer_layers_per_block=transformer_layers_per_block, cross_attention_dim=cross_attention_dim,
            num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
            only_cross_attention=only_cross_attention, downsample_padding=downsample_padding, **shared, **stage_only,
        )
        self.up_blocks = nn.ModuleList()

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
        # most convs see channels-last activations (after the first attention, as in the reference):
        # keep their weights in that layout rather than have oneDNN copy them on every call
        follow_input_layout(self)

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
        attention_mask = mask_to_bias(attention_mask, sample.dtype)
        encoder_attention_mask = mask_to_bias(encoder_attention_mask, sample.dtype)
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        # 1. time vector and condition tokens
        emb, hint = self._time_vector(sample, timestep, timestep_cond, class_labels, encoder_hidden_states,
                                      added_cond_kwargs)
        if hint is not None:
            sample = torch.cat([sample, hint], dim=1)
        encoder_hidden_states = self._condition_tokens(encoder_hidden_states, added_cond_kwargs)
        attention = dict(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
                         cross_attention_kwargs=cross_attention_kwargs, encoder_attention_mask=encoder_attention_mask)

        # 2. down
        sample, skips = self._down(self.conv_in(sample), emb, attention)
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
        required = self._check_required_conditions(added_cond_kwargs)
        batch = sample.shape[0]
        if "image_embeds" in required:
            check_shape("added_cond_kwargs['image_embeds']", added_cond_kwargs["image_embeds"],
                        (batch, self._image_embed_width()))
        if "hint" in required:
            self._check_hint(added_cond_kwargs["hint"], sample)
        if self.config.encoder_hid_dim_type != "image_proj":
            # image_proj (Kandinsky 2.2) makes its tokens from image_embeds; the others read these
            width = self.config.encoder_hid_dim if self.config.encoder_hid_dim_type else self.config.cross_attention_dim
            check_shape("encoder_hidden_states", encoder_hidden_states,
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
        if not all(getattr(stage, "follows_skip_sizes", True) for stage in self.up_blocks):
            # k-diffusion stages: their upsamplers always double, and their blur pads by reflection
            factor = 2**self.num_upsamplers
            if any(size % factor or size < 2 * factor for size in sample.shape[-2:]):
                raise ValueError(f"sample height and width must be multiples of {factor} and at least {2 * factor} "
                                 f"for this UNet (its {self.config.up_block_types[0]} up stages always double the "
                                 f"size), got {tuple(sample.shape[-2:])}")

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
