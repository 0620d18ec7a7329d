"""Tiny Kandinsky 2.2 checkpoints, built with the reference library and saved in its layout.

Each builder takes a small config dict so tests can vary widths, heads,
layers and sizes; weights are random but seeded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ... import tiny

DECODER_CONFIGS = {
    "small": dict(block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=4, embed_dim=32,
                  movq_blocks=(32, 64), movq_groups=8),
    "wide": dict(block_out_channels=(32, 32, 64), layers_per_block=2, attention_head_dim=8, embed_dim=24,
                 movq_blocks=(32, 32, 64), movq_groups=8),
    # an 8x MoVQ, so ControlNet hints (downsampled 8x by the UNet) have the picture's size
    "deep": dict(block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=8, embed_dim=32,
                 movq_blocks=(32, 32, 32, 32), movq_groups=8),
}


def _randomize_zero_init(model: torch.nn.Module, seed: int) -> None:
    """Zero-initialised layers would hide wiring mistakes: give every tensor random values.

    (The reference's SpatialNorm uses 32 groups whatever the config says, so MoVQ widths are multiples of 32.)
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.15)


def unet(config: dict, kind: str = "text2img", seed: int = 0):
    from diffusers import UNet2DConditionModel

    blocks = config["block_out_channels"]
    levels = len(blocks)
    in_channels = {"text2img": 4, "inpaint": 9, "controlnet": 8}[kind]
    torch.manual_seed(seed)
    model = UNet2DConditionModel(
        in_channels=in_channels, out_channels=8,
        addition_embed_type="image_hint" if kind == "controlnet" else "image",
        down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("SimpleCrossAttnUpBlock2D",) * (levels - 1) + ("ResnetUpsampleBlock2D",),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=blocks,
        layers_per_block=config["layers_per_block"], encoder_hid_dim=config["embed_dim"],
        encoder_hid_dim_type="image_proj", cross_attention_dim=config["embed_dim"] * 2,
        attention_head_dim=config["attention_head_dim"], resnet_time_scale_shift="scale_shift",
        class_embed_type=None, norm_num_groups=8,
    )
    _randomize_zero_init(model, seed)
    return model.eval()


def movq(config: dict, seed: int = 1):
    from diffusers import VQModel

    blocks = config["movq_blocks"]
    torch.manual_seed(seed)
    model = VQModel(
        block_out_channels=list(blocks), down_block_types=["DownEncoderBlock2D"] * (len(blocks) - 1) + ["AttnDownEncoderBlock2D"],
        in_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=config["movq_groups"],
        norm_type="spatial", num_vq_embeddings=12, out_channels=3,
        up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * (len(blocks) - 1), vq_embed_dim=4,
    )
    _randomize_zero_init(model, seed)
    return model.eval()


def ddpm():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                         clip_sample=False, steps_offset=1, prediction_type="epsilon",
                         thresholding=False)


def save_decoder(folder: Path, config: dict, kind: str = "text2img") -> Path:
    """Save a reference decoder pipeline (text2img / inpaint / controlnet UNet)."""
    import diffusers

    cls = {"text2img": diffusers.KandinskyV22Pipeline, "inpaint": diffusers.KandinskyV22InpaintPipeline,
           "controlnet": diffusers.KandinskyV22ControlnetPipeline}[kind]
    pipe = cls(unet=unet(config, kind), scheduler=ddpm(), movq=movq(config))
    pipe.save_pretrained(folder)
    return folder


PRIOR_CONFIGS = {
    "small": dict(embed_dim=32, heads=2, head_dim=12, layers=1, image_size=32),
    "wide": dict(embed_dim=24, heads=3, head_dim=8, layers=2, image_size=32),
}


def save_prior(folder: Path, config: dict, seed: int = 2) -> Path:
    import diffusers
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = Path(folder)
    tokenizer = tiny.clip_tokenizer(folder.parent / f"{folder.name}-tokenizer")
    dim = config["embed_dim"]
    text_encoder = tiny.clip_text_model(len(tokenizer), hidden=dim, projection=dim, seed=seed)
    torch.manual_seed(seed)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=dim, image_size=config["image_size"], projection_dim=dim, num_hidden_layers=2,
        num_attention_heads=2, num_channels=3, intermediate_size=dim * 2, patch_size=8)).eval()
    size = config["image_size"]
    processor = CLIPImageProcessor(crop_size=size, size={"shortest_edge": size}, do_center_crop=True,
                                   do_normalize=True, do_resize=True, resample=3)
    torch.manual_seed(seed)
    prior = diffusers.PriorTransformer(num_attention_heads=config["heads"], attention_head_dim=config["head_dim"],
                                       embedding_dim=dim, num_layers=config["layers"])
    # the reference initialises clip_mean/std to 0/1; random values exercise post_process_latents
    _randomize_zero_init(prior, seed)
    with torch.no_grad():
        prior.clip_std.abs_().add_(0.5)
    scheduler = diffusers.UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                          num_train_timesteps=1000, clip_sample=True, clip_sample_range=10.0)
    pipe = diffusers.KandinskyV22PriorPipeline(prior=prior.eval(), image_encoder=image_encoder,
                                               text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                                               image_processor=processor)
    pipe.save_pretrained(folder)
    return folder


def load_both(folder: Path, class_name: str, **kwargs):
    """The same folder loaded by the reference and by sfumato, as class ``class_name``."""
    import diffusers

    import sfumato

    ours = getattr(sfumato, class_name).from_pretrained(folder, **kwargs)
    theirs = getattr(diffusers, class_name).from_pretrained(folder, **kwargs)
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    return ours, theirs
