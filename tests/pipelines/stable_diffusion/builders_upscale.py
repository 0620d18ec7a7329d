"""Tiny ControlNet, x2 latent upscaler and x4 upscaler checkpoints, built with the reference library.

Every weight is random (the ControlNet's zero-initialised convs included), so wiring mistakes show.

* ControlNet: ``ControlNetModel.from_unet`` of a ``builders.CONFIGS`` UNet, with a control embedding that
  downsamples as much as that config's VAE (the control image is a picture of the generation's size);
  saved as a ControlNet folder, and as a ``StableDiffusionControlNetImg2ImgPipeline`` folder.
* x2 latent upscaler (``stabilityai/sd-x2-latent-upscaler``'s layout): k-diffusion UNet blocks, the VAE of a
  ``builders.CONFIGS`` Stable Diffusion config (so that model's latents are this one's), Euler with
  ``prediction_type="sample"``.
* x4 upscaler (``stabilityai/stable-diffusion-x4-upscaler``'s layout): a 7-channel UNet with a noise-level
  class embedding, its own 3-level VAE (``scaling_factor=0.08333``), DDIM v-prediction and a DDPM
  ``low_res_scheduler``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ... import tiny
from .builders import CONFIGS, randomize, text_encoder, vae

# ---------------------------------------------------------------------------------------------- ControlNet


def controlnet(config_name: str, seed: int = 11):
    """A random ControlNet for the UNet of ``builders.CONFIGS[config_name]``."""
    from diffusers import ControlNetModel

    from .builders import unet

    config = CONFIGS[config_name]
    levels = len(config["vae_blocks"])  # the control embedding halves the picture once per VAE level
    widths = (8, 16, 32, 32)[:levels]
    model = ControlNetModel.from_unet(unet(config, config["latent_channels"]),
                                      conditioning_embedding_out_channels=widths)
    randomize(model, seed)
    return model.eval()


def save_controlnet(folder: Path, config_name: str, seed: int = 11) -> Path:
    controlnet(config_name, seed).save_pretrained(folder)
    return Path(folder)


# ---------------------------------------------------------------------------------------------- x2


X2_CONFIGS = {
    # the SD "small" VAE (scale 4): the guide's chain hands "small" latents over
    "small": dict(sd="small", blocks=(32, 32, 64, 64), layers=2, heads=8, text_width=32, flip=True),
    "wide": dict(sd="wide", blocks=(64, 64, 128, 128), layers=1, heads=16, text_width=48, flip=False),
    # 8 latent channels: 4-channel latents of another model do not fit it
    "eight": dict(sd="eight", blocks=(32, 32, 64, 64), layers=1, heads=8, text_width=32, flip=True),
}


def x2_unet(config: dict, latent_channels: int, seed: int = 21):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    model = UNet2DConditionModel(
        act_fn="gelu", attention_head_dim=config["heads"], block_out_channels=config["blocks"],
        conv_in_kernel=1, conv_out_kernel=1, cross_attention_dim=config["text_width"],
        down_block_types=["KDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D"],
        flip_sin_to_cos=config["flip"], in_channels=2 * latent_channels, layers_per_block=config["layers"],
        mid_block_type=None, norm_num_groups=None, out_channels=latent_channels + 1,
        resnet_time_scale_shift="scale_shift", time_cond_proj_dim=128 + config["text_width"],
        time_embedding_type="fourier", timestep_post_act="gelu",
        up_block_types=["KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KUpBlock2D"],
    )
    randomize(model, seed, scale=0.1)
    return model.eval()


def save_x2(folder: Path, config_name: str) -> Path:
    import diffusers

    folder = Path(folder)
    config = X2_CONFIGS[config_name]
    sd_config = CONFIGS[config["sd"]]
    tokenizer = tiny.clip_tokenizer(folder.parent / f"{folder.name}-tokenizer")
    scheduler = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                 prediction_type="sample")
    pipe = diffusers.StableDiffusionLatentUpscalePipeline(
        vae=vae(sd_config), text_encoder=text_encoder(len(tokenizer), config["text_width"], seed=23),
        tokenizer=tokenizer, unet=x2_unet(config, sd_config["latent_channels"]), scheduler=scheduler)
    pipe.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------- x4


X4_CONFIGS = {
    "small": dict(blocks=(32, 32, 64), layers=2, heads=8, text_width=24, only_cross=(True, True, False),
                  vae_blocks=(16, 32, 32), upcast=False),
    "wide": dict(blocks=(32, 64, 64), layers=1, heads=4, text_width=32, only_cross=True, vae_blocks=(32, 32, 64),
                 upcast=True),
}
# stabilityai/stable-diffusion-x4-upscaler's scheduler configs
X4_SCHEDULER = {"_class_name": "DDIMScheduler", "beta_end": 0.02, "beta_schedule": "scaled_linear",
                "beta_start": 0.0001, "clip_sample": False, "num_train_timesteps": 1000,
                "prediction_type": "v_prediction", "set_alpha_to_one": False, "skip_prk_steps": True,
                "steps_offset": 1, "trained_betas": None}
X4_LOW_RES_SCHEDULER = {"_class_name": "DDPMScheduler", "beta_end": 0.02, "beta_schedule": "scaled_linear",
                        "beta_start": 0.0001, "clip_sample": True, "num_train_timesteps": 1000,
                        "trained_betas": None, "variance_type": "fixed_small"}


def x4_unet(config: dict, seed: int = 31):
    from diffusers import UNet2DConditionModel

    levels = len(config["blocks"])
    torch.manual_seed(seed)
    model = UNet2DConditionModel(
        act_fn="silu", attention_head_dim=config["heads"], block_out_channels=config["blocks"],
        cross_attention_dim=config["text_width"],
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        in_channels=7, out_channels=4, layers_per_block=config["layers"], norm_num_groups=8, num_class_embeds=1000,
        only_cross_attention=config["only_cross"], sample_size=16, use_linear_projection=True,
        upcast_attention=config["upcast"],
    )
    randomize(model, seed, scale=0.1)
    return model.eval()


def x4_vae(config: dict, seed: int = 32):
    from diffusers import AutoencoderKL

    blocks = list(config["vae_blocks"])
    torch.manual_seed(seed)
    model = AutoencoderKL(
        block_out_channels=blocks, in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * len(blocks), up_block_types=["UpDecoderBlock2D"] * len(blocks),
        norm_num_groups=8, layers_per_block=1, sample_size=32, scaling_factor=0.08333,
    )
    randomize(model, seed, scale=0.1)
    return model.eval()


def save_x4(folder: Path, config_name: str) -> Path:
    import diffusers

    folder = Path(folder)
    config = X4_CONFIGS[config_name]
    tokenizer = tiny.clip_tokenizer(folder.parent / f"{folder.name}-tokenizer")
    strip = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    pipe = diffusers.StableDiffusionUpscalePipeline(
        vae=x4_vae(config), text_encoder=text_encoder(len(tokenizer), config["text_width"], seed=33),
        tokenizer=tokenizer, unet=x4_unet(config),
        low_res_scheduler=diffusers.DDPMScheduler.from_config(strip(X4_LOW_RES_SCHEDULER)),
        scheduler=diffusers.DDIMScheduler.from_config(strip(X4_SCHEDULER)), max_noise_level=350)
    pipe.save_pretrained(folder)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(X4_SCHEDULER, indent=2))
    return folder
