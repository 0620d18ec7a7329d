"""Tiny SDXL checkpoints (base, refiner, inpainting), built with the reference library and saved in its layout.

Every weight is random (none left at zero or one), so wiring mistakes show.
A base and a refiner of one config share their VAE and second text encoder,
as the released pair does, so the base's latents are the refiner's.

Configs vary the UNet (levels, heads, transformer depth), the text encoders
(widths, projection, token length; the second tokenizer pads with "!", as
SDXL's does) and the VAE (scale, ``scaling_factor``, ``latents_mean`` /
``latents_std``, ``force_upcast``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ... import tiny
from ..stable_diffusion.builders import randomize

CONFIGS = {
    "small": dict(unet_blocks=(32, 64), layers_per_block=1, heads=(2, 4), transformer_layers=(1, 2), widths=(16, 24),
                  projection=20, time_dim=8, tokens=77, vae_blocks=(16, 32, 32), sample_size=8, force_zeros=True,
                  vae_extra=dict(scaling_factor=0.13025)),
    "wide": dict(unet_blocks=(32, 32, 64), layers_per_block=2, heads=(4, 4, 8), transformer_layers=1, widths=(24, 16),
                 projection=12, time_dim=4, tokens=20, vae_blocks=(16, 32), sample_size=12, force_zeros=False,
                 vae_extra=dict(latents_mean=[0.1, -0.2, 0.05, 0.3], latents_std=[0.9, 1.2, 0.8, 1.1],
                                force_upcast=False)),
}

# what SDXL base 1.0's scheduler/scheduler_config.json holds
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "interpolation_type": "linear", "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False,
}


def tokenizers(folder: Path, tokens: int):
    """The two tokenizers over one vocabulary; the second pads with "!" (id 0 here), as SDXL's second does."""
    from transformers import CLIPTokenizer

    first = tiny.clip_tokenizer(folder, max_length=tokens)
    second = CLIPTokenizer(str(Path(folder) / "vocab.json"), str(Path(folder) / "merges.txt"),
                           model_max_length=tokens, pad_token="!")
    return first, second


def text_encoder(vocab_size: int, width: int, tokens: int, projection: int | None, seed: int):
    """A CLIP text encoder (with a projection: the second, pooled one), every weight random."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=width * 2,
                            projection_dim=projection or width, num_hidden_layers=3, num_attention_heads=2,
                            max_position_embeddings=tokens, bos_token_id=vocab_size - 2,
                            eos_token_id=vocab_size - 1, pad_token_id=1, hidden_act="gelu")
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    # large weights: prompts that differ by a word give clearly different pictures
    randomize(model, seed, scale=1.0)
    return model.eval()


def unet(config: dict, *, in_channels: int = 4, refiner: bool = False, seed: int = 0):
    from diffusers import UNet2DConditionModel

    levels = len(config["unet_blocks"])
    first, second = config["widths"]
    context = second if refiner else first + second
    time_ids = 5 if refiner else 6
    torch.manual_seed(seed)
    model = UNet2DConditionModel(
        sample_size=config["sample_size"], in_channels=in_channels, out_channels=4,
        block_out_channels=config["unet_blocks"], layers_per_block=config["layers_per_block"],
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        cross_attention_dim=context, attention_head_dim=config["heads"], use_linear_projection=True,
        transformer_layers_per_block=config["transformer_layers"], addition_embed_type="text_time",
        addition_time_embed_dim=config["time_dim"],
        projection_class_embeddings_input_dim=time_ids * config["time_dim"] + config["projection"],
        norm_num_groups=8,
    )
    randomize(model, seed)
    return model.eval()


def vae(config: dict, seed: int = 1):
    from diffusers import AutoencoderKL

    blocks = list(config["vae_blocks"])
    torch.manual_seed(seed)
    model = AutoencoderKL(
        block_out_channels=blocks, in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * len(blocks), up_block_types=["UpDecoderBlock2D"] * len(blocks),
        norm_num_groups=8, layers_per_block=1, sample_size=32, **config["vae_extra"],
    )
    randomize(model, seed, scale=0.1)
    return model.eval()


def euler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config({k: v for k, v in SDXL_SCHEDULER.items() if not k.startswith("_")})


def save(folder: Path, config_name: str, kind: str = "base") -> Path:
    """Save a reference SDXL folder of ``kind``: "base" (text-to-image), "refiner" (image-to-image, second
    text encoder only, aesthetic score) or "inpaint" (9-channel UNet, base-like)."""
    import diffusers

    folder = Path(folder)
    config = CONFIGS[config_name]
    first_tokenizer, second_tokenizer = tokenizers(folder.parent / f"{folder.name}-tokenizer", config["tokens"])
    vocab = len(first_tokenizer)
    # the same seeds in every kind: base, refiner and inpainting folders of a config share these
    shared = dict(vae=vae(config), tokenizer_2=second_tokenizer,
                  text_encoder_2=text_encoder(vocab, config["widths"][1], config["tokens"], config["projection"], 3),
                  scheduler=euler())
    if kind == "refiner":
        pipe = diffusers.StableDiffusionXLImg2ImgPipeline(
            text_encoder=None, tokenizer=None, unet=unet(config, refiner=True, seed=5), requires_aesthetics_score=True,
            force_zeros_for_empty_prompt=False, **shared)
    else:
        cls = diffusers.StableDiffusionXLInpaintPipeline if kind == "inpaint" else diffusers.StableDiffusionXLPipeline
        pipe = cls(text_encoder=text_encoder(vocab, config["widths"][0], config["tokens"], None, 2),
                   tokenizer=first_tokenizer, unet=unet(config, in_channels=9 if kind == "inpaint" else 4),
                   force_zeros_for_empty_prompt=config["force_zeros"], **shared)
    pipe.save_pretrained(folder)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SDXL_SCHEDULER, indent=2))
    return folder
