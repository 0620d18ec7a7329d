"""``VQModel``: the vector-quantised image autoencoder (MoVQ) of Kandinsky 2.1, 2.2 and 3.

``encode(image).latents`` gives the continuous latents; ``decode(latents)``
snaps them to the nearest codebook vectors, then runs the decoder. The
Kandinsky pipelines decode the diffusion output with ``force_not_quantize=True``
(no snapping). With ``norm_type="spatial"`` the decoder's norms are conditioned
on the quantised latents (MoVQ's spatial normalisation).

Config fields, their defaults and the state-dict keys are those of
``diffusers.VQModel``, so its checkpoints load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..checkpoint import ModelMixin, register_to_config
from ..nn.embeddings import lookup_table
from ..nn.layout import follow_input_layout
from ..outputs import BaseOutput
from .autoencoder_parts import (
    NORM_TYPES,
    SPATIAL_NORM_GROUPS,
    Decoder,
    DecoderOutput,
    Encoder,
    LegacyAttentionKeys,
    check_config,
)


@dataclass
class VQEncoderOutput(BaseOutput):
    """What ``VQModel.encode`` returns: ``latents`` of shape (batch, vq_embed_dim, height / f, width / f)."""

    latents: torch.Tensor


class VectorQuantizer(nn.Module):
    """Snaps each latent pixel to its nearest codebook vector (``embedding.weight``, ``n_e`` x ``vq_embed_dim``).

    ``forward`` returns ``(z_q, loss, (None, None, indices))`` as the reference does:
    the straight-through ``z + (z_q - z).detach()``, the commitment loss (the
    reference's "legacy" weighting, beta on the codebook term) and the flat indices.
    """

    def __init__(self, n_e: int, vq_embed_dim: int, beta: float = 0.25, legacy: bool = True):
        super().__init__()
        self.n_e = n_e
        self.vq_embed_dim = vq_embed_dim
        self.beta = beta
        self.legacy = legacy
        self.embedding = lookup_table(n_e, vq_embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_e, 1.0 / n_e)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        z = z.permute(0, 2, 3, 1).contiguous()  # (batch, h, w, dim): one vector per pixel
        flat = z.view(-1, self.vq_embed_dim)
        indices = torch.argmin(torch.cdist(flat, self.embedding.weight), dim=1)
        z_q = self.embedding(indices).view(z.shape)
        codebook_term = torch.mean((z_q - z.detach()) ** 2)
        commit_term = torch.mean((z_q.detach() - z) ** 2)
        if self.legacy:
            loss = commit_term + self.beta * codebook_term
        else:
            loss = self.beta * commit_term + codebook_term
        # straight-through estimator; also what the reference returns numerically
        z_q = z + (z_q - z).detach()
        return z_q.permute(0, 3, 1, 2).contiguous(), loss, (None, None, indices)

    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple[int, ...] | None) -> torch.Tensor:
        """Codebook vectors for ``indices``; given ``shape`` = (batch, h, w, dim), laid out as (batch, dim, h, w)."""
        z_q = self.embedding(indices)
        if shape is not None:
            z_q = z_q.view(shape).permute(0, 3, 1, 2).contiguous()
        return z_q


class VQModel(LegacyAttentionKeys, ModelMixin):
    """Vector-quantised autoencoder (VQ-VAE / MoVQ) with the ``diffusers.VQModel`` interface.

    Parts: ``encoder`` -> ``quant_conv`` -> [``quantize``] -> ``post_quant_conv`` -> ``decoder``.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 3,
        sample_size: int = 32,
        num_vq_embeddings: int = 256,
        norm_num_groups: int = 32,
        vq_embed_dim: int | None = None,
        scaling_factor: float = 0.18215,
        norm_type: str = "group",
        mid_block_add_attention: bool = True,
        lookup_from_codebook: bool = False,
        force_upcast: bool = False,
    ):
        super().__init__()
        vq_embed_dim = vq_embed_dim if vq_embed_dim is not None else latent_channels
        _check_config(down_block_types, up_block_types, block_out_channels, layers_per_block, act_fn,
                      norm_num_groups, norm_type, latent_channels, vq_embed_dim)
        self.encoder = Encoder(in_channels, latent_channels, tuple(down_block_types), tuple(block_out_channels),
                               layers_per_block, norm_num_groups, act_fn, mid_block_add_attention)
        self.quant_conv = nn.Conv2d(latent_channels, vq_embed_dim, kernel_size=1)
        self.quantize = VectorQuantizer(num_vq_embeddings, vq_embed_dim, beta=0.25)
        self.post_quant_conv = nn.Conv2d(vq_embed_dim, latent_channels, kernel_size=1)
        self.decoder = Decoder(latent_channels, out_channels, tuple(up_block_types), tuple(block_out_channels),
                               layers_per_block, norm_num_groups, act_fn, norm_type, mid_block_add_attention)
        self.use_slicing = False
        # the decoder turns channels-last after its first attention: keep the conv weights in the
        # layout of their inputs rather than have oneDNN copy them on every call
        follow_input_layout(self)

    # ------------------------------------------------------------------ public API

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> VQEncoderOutput | tuple[torch.Tensor]:
        """Image batch (batch, in_channels, h, w), values in [-1, 1] -> latents (batch, vq_embed_dim, h/f, w/f)."""
        self._check_images(x)
        if self.use_slicing and x.shape[0] > 1:
            latents = torch.cat([self._encode(part) for part in x.split(1)])
        else:
            latents = self._encode(x)
        if not return_dict:
            return (latents,)
        return VQEncoderOutput(latents=latents)

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False, return_dict: bool = True,
               shape: tuple[int, ...] | None = None) -> DecoderOutput | tuple[torch.Tensor, torch.Tensor]:
        """Latents -> image batch.

        ``force_not_quantize=False`` first snaps ``h`` to the codebook. With
        ``force_not_quantize=True`` the latents are used as they are, unless the
        config sets ``lookup_from_codebook``: then ``h`` holds codebook indices
        and ``shape`` = (batch, height, width, vq_embed_dim) says how to lay them out.
        """
        by_index = force_not_quantize and self.config.lookup_from_codebook
        if by_index:
            self._check_indices(h, shape)
        else:
            self._check_latents(h)
        if self.use_slicing and h.shape[0] > 1 and not by_index:
            samples, losses = zip(*(self._decode(part, force_not_quantize, None) for part in h.split(1)))
            sample = torch.cat(samples)
            # per-image zeros when not quantising; else the batch mean, as one unsliced call gives
            commit_loss = torch.cat(losses) if force_not_quantize else torch.stack(losses).mean()
        else:
            sample, commit_loss = self._decode(h, force_not_quantize, shape)
        if not return_dict:
            return sample, commit_loss
        return DecoderOutput(sample=sample, commit_loss=commit_loss)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor, ...]:
        """Encode, quantise and decode ``sample``: a reconstruction and its commitment loss."""
        decoded = self.decode(self.encode(sample).latents)
        if not return_dict:
            return decoded.sample, decoded.commit_loss
        return decoded

    def enable_slicing(self) -> None:
        """Encode and decode one image at a time: less peak memory for large batches, same numbers."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(self) -> None:
        raise NotImplementedError("Tiling doesn't seem to be implemented for VQModel.")

    def disable_tiling(self) -> None:
        pass

    # ------------------------------------------------------------------ internals

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def _decode(self, h: torch.Tensor, force_not_quantize: bool,
                shape: tuple[int, ...] | None) -> tuple[torch.Tensor, torch.Tensor]:
        if not force_not_quantize:
            quant, commit_loss, _ = self.quantize(h)
        else:
            if self.config.lookup_from_codebook:
                quant = self.quantize.get_codebook_entry(h, shape)
            else:
                quant = h
            commit_loss = torch.zeros(h.shape[0], device=h.device, dtype=h.dtype)
        zq = quant if self.config.norm_type == "spatial" else None
        return self.decoder(self.post_quant_conv(quant), zq), commit_loss

    @property
    def _downsampling_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def _check_images(self, x: torch.Tensor) -> None:
        expected = self.config.in_channels
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"x must be a torch.Tensor of shape (batch, {expected}, height, width), got {type(x).__name__}"
            )
        if x.ndim != 4 or x.shape[1] != expected:
            raise ValueError(
                f"x must have shape (batch, {expected}, height, width) (in_channels={expected}), "
                f"got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point image tensor with values in [-1, 1], got dtype {x.dtype}")
        factor = self._downsampling_factor
        if min(x.shape[-2:]) < factor:
            raise ValueError(
                f"x is {x.shape[-2]}x{x.shape[-1]} pixels, but this VQModel downsamples {factor}x: "
                f"height and width must be at least {factor} (multiples of {factor} round-trip exactly)"
            )

    def _check_latents(self, h: torch.Tensor) -> None:
        expected = self.quant_conv.out_channels
        if not isinstance(h, torch.Tensor):
            raise TypeError(
                f"h must be a torch.Tensor of latents (batch, {expected}, height, width), got {type(h).__name__}"
            )
        if h.ndim != 4 or h.shape[1] != expected:
            raise ValueError(
                f"h must be latents of shape (batch, {expected}, height, width) (vq_embed_dim={expected}), "
                f"got shape {tuple(h.shape)}"
            )
        if not h.is_floating_point():
            raise TypeError(f"h must be floating-point latents, got dtype {h.dtype}")

    def _check_indices(self, h: torch.Tensor, shape: tuple[int, ...] | None) -> None:
        if not isinstance(h, torch.Tensor) or h.is_floating_point() or h.is_complex():
            got = h.dtype if isinstance(h, torch.Tensor) else type(h).__name__
            raise TypeError(
                f"with lookup_from_codebook and force_not_quantize, h must be integer codebook indices, got {got}"
            )
        dim = self.quantize.vq_embed_dim
        if shape is None or len(shape) != 4 or shape[3] != dim or shape[0] * shape[1] * shape[2] != h.numel():
            raise ValueError(
                f"with lookup_from_codebook and force_not_quantize, shape must be (batch, height, width, {dim}) "
                f"covering the {h.numel()} indices in h, got shape={shape}"
            )


def _check_config(down_block_types, up_block_types, block_out_channels, layers_per_block, act_fn,
                  norm_num_groups, norm_type, latent_channels, vq_embed_dim) -> None:
    """Reject configs the reference would fail on late (or silently misbuild), naming the field."""
    if norm_type not in NORM_TYPES:
        raise ValueError(f"norm_type must be one of {list(NORM_TYPES)}, got {norm_type!r}")
    if norm_type == "spatial" and vq_embed_dim != latent_channels:
        # the decoder's spatial norms read the quantised latents with latent_channels inputs
        raise ValueError(
            f"norm_type='spatial' needs vq_embed_dim == latent_channels (the spatial norms are conditioned "
            f"on the quantised latents), got vq_embed_dim={vq_embed_dim}, latent_channels={latent_channels}"
        )
    check_config(down_block_types, up_block_types, block_out_channels, layers_per_block, act_fn, norm_num_groups,
                 extra_groups=(SPATIAL_NORM_GROUPS,) if norm_type == "spatial" else ())
