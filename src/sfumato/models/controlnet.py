"""``ControlNetModel``: the Stable Diffusion ControlNet (e.g. ``lllyasviel/control_v11f1p_sd15_depth``).

A ControlNet is a trainable copy of the UNet's encoder half that looks at a control image
(depth map, edges, pose ...) and returns one residual per UNet skip connection plus one
for the mid stage; the UNet adds them (``down_block_additional_residuals``,
``mid_block_additional_residual``). In reading order:

1. *time*: the same ``time_proj`` / ``time_embedding`` / ``class_embedding`` /
   ``add_embedding`` as the UNet (``UNetConditioningMixin``);
2. *control image*: ``controlnet_cond_embedding`` turns the picture (8x the latent size)
   into features added to ``conv_in(sample)``;
3. *the down half*: ``down_blocks`` and ``mid_block``, the UNet's stages built from the
   same settings;
4. *residuals*: a 1x1 conv per skip (``controlnet_down_blocks``) and for the mid output
   (``controlnet_mid_block``), scaled by ``conditioning_scale``; with ``guess_mode`` the
   scale rises from 0.1 at the first skip to 1 at the mid stage.

The residual convs and the control embedding's last conv start at zero, so a ControlNet
made by ``from_unet`` leaves the UNet's prediction unchanged until it is trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint.config import register_to_config
from ..checkpoint.modeling import ModelMixin
from ..nn.embeddings import TimestepEmbedding
from ..outputs import BaseOutput
from .unet_2d_blocks import get_mid_block
from .unet_conditioning import UNetConditioningMixin, check_shape, mask_to_bias, per_block

_MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D")
_CHANNEL_ORDERS = ("rgb", "bgr")


@dataclass
class ControlNetOutput(BaseOutput):
    """``down_block_res_samples``: one residual per UNet skip, highest resolution first;
    ``mid_block_res_sample``: the residual for the UNet's mid-stage output."""

    down_block_res_samples: tuple[torch.Tensor, ...] = None
    mid_block_res_sample: torch.Tensor = None


def _zero(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class ControlNetConditioningEmbedding(nn.Module):
    """Control image -> features of ``conditioning_embedding_channels`` at the latent size.

    ``conv_in``, then per step a conv and a stride-2 conv (``blocks``), SiLU after each,
    then the zero-initialised ``conv_out``. With the default four widths the picture is
    halved three times: it must be 8x the latent size.
    """

    def __init__(self, conditioning_embedding_channels: int, conditioning_channels: int = 3,
                 block_out_channels: tuple[int, ...] = (16, 32, 96, 256)):
        super().__init__()
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for width_in, width_out in zip(block_out_channels[:-1], block_out_channels[1:]):
            self.blocks.append(nn.Conv2d(width_in, width_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(width_in, width_out, kernel_size=3, padding=1, stride=2))
        self.conv_out = _zero(nn.Conv2d(block_out_channels[-1], conditioning_embedding_channels, kernel_size=3,
                                        padding=1))

    @property
    def downscale(self) -> int:
        """How many times smaller the features are than the control image."""
        return 2 ** (len(self.blocks) // 2)

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        embedding = F.silu(self.conv_in(conditioning))
        for block in self.blocks:
            embedding = F.silu(block(embedding))
        return self.conv_out(embedding)


class ControlNetModel(UNetConditioningMixin, ModelMixin):
    """ControlNet for a ``UNet2DConditionModel``; config fields and weight names are those of the reference."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        conditioning_channels: int = 3,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D",
        ),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        only_cross_attention: bool | tuple[bool, ...] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1280,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        projection_class_embeddings_input_dim: int | None = None,
        controlnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
        global_pool_conditions: bool = False,
        addition_embed_type_num_heads: int = 64,
    ):
        super().__init__()
        self._check_settings(locals())
        count = len(down_block_types)
        # the reference's historical misnaming: released configs give the head count as attention_head_dim
        num_attention_heads = num_attention_heads or attention_head_dim
        layers_per_block = per_block(layers_per_block, count, "layers_per_block")
        transformer_layers_per_block = per_block(transformer_layers_per_block, count, "transformer_layers_per_block")
        num_attention_heads = per_block(num_attention_heads, count, "num_attention_heads")
        attention_head_dim = per_block(attention_head_dim, count, "attention_head_dim")
        cross_attention_dim = per_block(cross_attention_dim, count, "cross_attention_dim")
        only_cross_attention = per_block(only_cross_attention, count, "only_cross_attention")

        # 1. time and the vectors added to it: the UNet's, positional, without its optional extras
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        time_embed_dim, timestep_input_dim = self._build_time_proj("positional", block_out_channels,
                                                                   flip_sin_to_cos, freq_shift, None)
        self.time_embedding = TimestepEmbedding(timestep_input_dim, time_embed_dim, act_fn=act_fn)
        self.encoder_hid_proj = None
        # the reference's ControlNet builds a "timestep" class embedding with SiLU whatever act_fn says
        self.class_embedding = self._build_class_embedding(
            class_embed_type, num_class_embeds, "silu", projection_class_embeddings_input_dim, time_embed_dim,
            timestep_input_dim,
        )
        self._build_add_embedding(addition_embed_type, addition_time_embed_dim, flip_sin_to_cos, freq_shift,
                                  cross_attention_dim[0], encoder_hid_dim, projection_class_embeddings_input_dim,
                                  time_embed_dim)

        # 2. the control image
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            conditioning_embedding_channels=block_out_channels[0], conditioning_channels=conditioning_channels,
            block_out_channels=tuple(conditioning_embedding_out_channels),
        )

        # 3. the UNet's down half, and a zero 1x1 conv per skip state (conv_in's, each layer's, each downsampler's)
        shared = dict(temb_channels=time_embed_dim, resnet_eps=norm_eps, resnet_act_fn=act_fn,
                      resnet_groups=norm_num_groups, use_linear_projection=use_linear_projection,
                      upcast_attention=upcast_attention, resnet_time_scale_shift=resnet_time_scale_shift)
        self.down_blocks = self._build_down_blocks(
            down_block_types, block_out_channels, layers_per_block=layers_per_block,
            transformer_layers_per_block=transformer_layers_per_block, cross_attention_dim=cross_attention_dim,
            num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
            only_cross_attention=only_cross_attention, downsample_padding=downsample_padding, **shared,
        )
        skip_widths = [block_out_channels[0]]
        for i, width in enumerate(block_out_channels):
            skip_widths += [width] * (layers_per_block[i] + (1 if i < count - 1 else 0))
        self.controlnet_down_blocks = nn.ModuleList([_zero(nn.Conv2d(width, width, kernel_size=1))
                                                     for width in skip_widths])
        self.controlnet_mid_block = _zero(nn.Conv2d(block_out_channels[-1], block_out_channels[-1], kernel_size=1))
        self.mid_block = get_mid_block(
            mid_block_type, in_channels=block_out_channels[-1], output_scale_factor=mid_block_scale_factor,
            transformer_layers_per_block=transformer_layers_per_block[-1],
            num_attention_heads=num_attention_heads[-1], cross_attention_dim=cross_attention_dim[-1],
            attention_head_dim=attention_head_dim[-1], **shared,
        )

    @staticmethod
    def _check_settings(settings: dict[str, Any]) -> None:
        """Reject configs this implementation cannot honour, naming the field."""
        count = len(settings["down_block_types"])
        if len(settings["block_out_channels"]) != count:
            raise ValueError(f"block_out_channels must have one entry per down block ({count}), "
                             f"got {list(settings['block_out_channels'])}")
        if settings["mid_block_type"] not in _MID_BLOCK_TYPES:
            raise ValueError(f"mid_block_type must be one of {_MID_BLOCK_TYPES}, got {settings['mid_block_type']!r}")
        if settings["controlnet_conditioning_channel_order"] not in _CHANNEL_ORDERS:
            raise ValueError(f"controlnet_conditioning_channel_order must be one of {_CHANNEL_ORDERS}, "
                             f"got {settings['controlnet_conditioning_channel_order']!r}")
        widths = settings["conditioning_embedding_out_channels"]
        if not widths:
            raise ValueError(f"conditioning_embedding_out_channels must list the control embedding's widths, "
                             f"got {widths!r}")
        if settings["encoder_hid_dim"] is not None or settings["encoder_hid_dim_type"] is not None:
            raise NotImplementedError("ControlNetModel with encoder_hid_dim / encoder_hid_dim_type is not supported "
                                      "(the reference builds that projection but never applies it)")
        addition = settings["addition_embed_type"]
        if addition not in (None, "text_time"):
            raise NotImplementedError(f"ControlNetModel addition_embed_type={addition!r} is not supported; "
                                      "only None or 'text_time' (SDXL)")
        kind = settings["class_embed_type"]
        if kind not in (None, "timestep", "identity", "projection"):
            raise NotImplementedError(f"ControlNetModel class_embed_type={kind!r} is not supported; "
                                      "use None, 'timestep', 'identity' or 'projection'")

    @classmethod
    def from_unet(cls, unet, controlnet_conditioning_channel_order: str = "rgb",
                  conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
                  load_weights_from_unet: bool = True, conditioning_channels: int = 3) -> "ControlNetModel":
        """A ControlNet with ``unet``'s settings, starting from its encoder weights (the usual way to train one)."""
        config = unet.config
        fields = ("in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "only_cross_attention",
                  "block_out_channels", "layers_per_block", "downsample_padding", "mid_block_scale_factor",
                  "act_fn", "norm_num_groups", "norm_eps", "cross_attention_dim", "transformer_layers_per_block",
                  "encoder_hid_dim", "encoder_hid_dim_type", "addition_embed_type", "addition_time_embed_dim",
                  "attention_head_dim", "num_attention_heads", "use_linear_projection", "class_embed_type",
                  "num_class_embeds", "upcast_attention", "resnet_time_scale_shift",
                  "projection_class_embeddings_input_dim", "mid_block_type")
        controlnet = cls(
            **{name: config[name] for name in fields if name in config},
            controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
            conditioning_channels=conditioning_channels,
        )
        if load_weights_from_unet:
            for name in ("conv_in", "time_proj", "time_embedding", "class_embedding", "add_embedding",
                         "down_blocks", "mid_block"):
                part = getattr(controlnet, name, None)
                if part is not None:
                    part.load_state_dict(getattr(unet, name).state_dict())
        return controlnet

    # -- forward ---------------------------------------------------------------------

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guess_mode: bool = False,
        return_dict: bool = True,
    ) -> ControlNetOutput | tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Residuals for a UNet denoising ``sample`` at ``timestep`` under the control image ``controlnet_cond``.

        ``controlnet_cond`` is (batch or 1, conditioning_channels, 8 * height, 8 * width) for a
        latent ``sample`` of height x width, values as the pipeline prepares them (0..1).
        ``attention_mask`` (batch, tokens) masks the text tokens: 1 = keep, 0 = discard.
        """
        added_cond_kwargs = added_cond_kwargs or {}
        self._check_inputs(sample, encoder_hidden_states, controlnet_cond, added_cond_kwargs)
        if self.config.controlnet_conditioning_channel_order == "bgr":
            controlnet_cond = torch.flip(controlnet_cond, dims=[1])
        attention_mask = mask_to_bias(attention_mask, sample.dtype)

        # 1. time vector
        emb, _ = self._time_vector(sample, timestep, timestep_cond, class_labels, encoder_hidden_states,
                                   added_cond_kwargs)
        # the mask is over the text tokens, so it goes to cross-attention (the reference hands it to
        # self-attention, where a (batch, tokens) mask cannot apply and the call fails)
        attention = dict(encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=attention_mask,
                         cross_attention_kwargs=cross_attention_kwargs)

        # 2. the control image joins the input; 3. the down half
        sample = self.conv_in(sample) + self.controlnet_cond_embedding(controlnet_cond)
        sample, skips = self._down(sample, emb, attention)
        sample = self.mid_block(sample, emb, **attention)

        # 4. residuals
        down_residuals = [block(skip) for block, skip in zip(self.controlnet_down_blocks, skips)]
        mid_residual = self.controlnet_mid_block(sample)
        if guess_mode and not self.config.global_pool_conditions:
            # no prompt to lean on: trust the coarse features more than the fine ones
            scales = torch.logspace(-1, 0, len(down_residuals) + 1, device=sample.device) * conditioning_scale
            down_residuals = [residual * scale for residual, scale in zip(down_residuals, scales)]
            mid_residual = mid_residual * scales[-1]
        else:
            down_residuals = [residual * conditioning_scale for residual in down_residuals]
            mid_residual = mid_residual * conditioning_scale
        if self.config.global_pool_conditions:
            down_residuals = [residual.mean(dim=(2, 3), keepdim=True) for residual in down_residuals]
            mid_residual = mid_residual.mean(dim=(2, 3), keepdim=True)

        if not return_dict:
            return (tuple(down_residuals), mid_residual)
        return ControlNetOutput(down_block_res_samples=tuple(down_residuals), mid_block_res_sample=mid_residual)

    def _check_inputs(self, sample, encoder_hidden_states, controlnet_cond, added_cond_kwargs) -> None:
        """Fail before any compute, naming the argument that is off and what it needs."""
        config = self.config
        if not isinstance(sample, torch.Tensor) or sample.ndim != 4 or sample.shape[1] != config.in_channels:
            got = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__
            raise ValueError(f"sample must be a 4-D tensor (batch, {config.in_channels}, height, width), got {got}")
        batch, latent = sample.shape[0], tuple(sample.shape[-2:])
        width = config.cross_attention_dim
        check_shape("encoder_hidden_states", encoder_hidden_states,
                    (batch, "tokens", width if isinstance(width, int) else width[0]))
        factor = self.controlnet_cond_embedding.downscale
        expected = (batch, config.conditioning_channels, factor * latent[0], factor * latent[1])
        ok = isinstance(controlnet_cond, torch.Tensor) and controlnet_cond.ndim == 4 \
            and controlnet_cond.shape[0] in (1, batch) and controlnet_cond.shape[1] == expected[1] \
            and tuple(-(-size // factor) for size in controlnet_cond.shape[-2:]) == latent
        if not ok:
            got = tuple(controlnet_cond.shape) if isinstance(controlnet_cond, torch.Tensor) \
                else type(controlnet_cond).__name__
            raise ValueError(f"controlnet_cond must have shape {expected} (a picture {factor}x the latent size, "
                             f"batch {batch} or 1), got {got}")
        self._check_required_conditions(added_cond_kwargs)


class MultiControlNetModel(ModelMixin):
    """Several ControlNets steering one UNet (e.g. depth and edges): each reads its own control image at its own
    scale, and their residuals add up, in order, as the reference sums them.

    Saved as the reference saves it: the first ControlNet in FOLDER, the others in FOLDER_1, FOLDER_2, ...
    beside it (a pipeline's ``controlnet``, ``controlnet_1``, ...); ``from_pretrained(FOLDER)`` reads them back.
    """

    def __init__(self, controlnets: list[ControlNetModel] | tuple[ControlNetModel, ...]):
        super().__init__()
        nets = list(controlnets)
        if not nets or not all(isinstance(net, ControlNetModel) for net in nets):
            raise TypeError(f"MultiControlNetModel takes a non-empty list of ControlNetModel, got "
                            f"{[type(net).__name__ for net in nets]}")
        self.nets = nn.ModuleList(nets)
        self.register_to_config()  # no settings of its own: each ControlNet has its config

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int, encoder_hidden_states: torch.Tensor,
                controlnet_cond: list[torch.Tensor], conditioning_scale: list[float], class_labels=None,
                timestep_cond=None, attention_mask=None, added_cond_kwargs=None, cross_attention_kwargs=None,
                guess_mode: bool = False, return_dict: bool = True) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The summed residuals (down, mid) of every ControlNet, each with its control image and scale."""
        if len(controlnet_cond) != len(self.nets) or len(conditioning_scale) != len(self.nets):
            raise ValueError(f"MultiControlNetModel has {len(self.nets)} ControlNets; pass one control image and "
                             f"one scale for each, got {len(controlnet_cond)} and {len(conditioning_scale)}")
        return sum_residuals(net(sample=sample, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                                 controlnet_cond=image, conditioning_scale=scale, class_labels=class_labels,
                                 timestep_cond=timestep_cond, attention_mask=attention_mask,
                                 added_cond_kwargs=added_cond_kwargs, cross_attention_kwargs=cross_attention_kwargs,
                                 guess_mode=guess_mode, return_dict=False)
                             for image, scale, net in zip(controlnet_cond, conditioning_scale, self.nets))

    # ------------------------------------------------------------------ the reference's folders

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs: Any) -> "MultiControlNetModel":
        """The ControlNets in FOLDER, FOLDER_1, FOLDER_2, ... (local folders, as in the reference)."""
        from pathlib import Path

        from ..checkpoint.errors import CheckpointError

        first = Path(pretrained_model_name_or_path).expanduser()
        folders = [first]
        while (first.parent / f"{first.name}_{len(folders)}").is_dir():
            folders.append(first.parent / f"{first.name}_{len(folders)}")
        if not first.is_dir():
            raise CheckpointError(f"MultiControlNetModel: no ControlNet folder {str(first)!r}")
        return cls([ControlNetModel.from_pretrained(folder, **kwargs) for folder in folders])

    def save_pretrained(self, save_directory, **kwargs: Any) -> None:
        for index, net in enumerate(self.nets):
            net.save_pretrained(f"{save_directory}{'' if index == 0 else f'_{index}'}", **kwargs)

    def write_pretrained(self, folder, safe_serialization: bool = True, variant: str | None = None,
                         max_shard_size: int | str = "10GB") -> None:
        """Into a pipeline's staging folder: ``folder`` and its siblings ``folder_1``, ..."""
        from pathlib import Path

        folder = Path(folder)
        for index, net in enumerate(self.nets):
            target = folder if index == 0 else folder.parent / f"{folder.name}_{index}"
            target.mkdir(parents=True, exist_ok=True)
            net.write_pretrained(target, safe_serialization, variant, max_shard_size)


def sum_residuals(outputs) -> tuple[list[torch.Tensor], torch.Tensor]:
    """ControlNets' (down, mid) residuals added up in order (the first one's, plus the second's, ...)."""
    down = mid = None
    for down_i, mid_i in outputs:
        if down is None:
            down, mid = list(down_i), mid_i
        else:
            down = [total + residual for total, residual in zip(down, down_i)]
            mid = mid + mid_i
    return down, mid
