"""Tiny Stable Diffusion checkpoints, built with the reference library and saved in its layout.

Every weight is random (none left at zero or one), so wiring mistakes show.
Configs vary the UNet (levels, heads, linear projections), the VAE (scale 2
or 4, latent channels) and the text encoder; kinds are "text2img" (a 4-channel
UNet, also used for image-to-image and legacy inpainting), "inpaint" (9
channels) and "unsafe" (a safety checker that flags every picture).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ... import tiny

CONFIGS = {
    "small": dict(unet_blocks=(32, 64), layers_per_block=1, attention_head_dim=8, linear=False, text_width=32,
                  vae_blocks=(16, 32, 32), latent_channels=4, sample_size=8),
    "wide": dict(unet_blocks=(32, 32, 64), layers_per_block=2, attention_head_dim=(4, 8, 8), linear=True,
                 text_width=24, vae_blocks=(32, 32), latent_channels=4, sample_size=12),
    # a VAE with 8 latent channels: another model's latents do not fit it
    "eight": dict(unet_blocks=(32, 64), layers_per_block=1, attention_head_dim=8, linear=False, text_width=32,
                  vae_blocks=(16, 32), latent_channels=8, sample_size=8),
}

# what Stable Diffusion 1.5's scheduler_config.json holds (PNDM, with DDIM's fields carried along)
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None,
}


def randomize(model: torch.nn.Module, seed: int, scale: float = 0.15) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * scale)


def text_encoder(vocab_size: int, width: int, seed: int = 3):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=width * 2,
                            num_hidden_layers=3, num_attention_heads=2, max_position_embeddings=77,
                            bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    return CLIPTextModel(config).eval()


def unet(config: dict, in_channels: int, seed: int = 0):
    from diffusers import UNet2DConditionModel

    levels = len(config["unet_blocks"])
    latent = config["latent_channels"]
    torch.manual_seed(seed)
    model = UNet2DConditionModel(
        sample_size=config["sample_size"], in_channels=in_channels, out_channels=latent,
        block_out_channels=config["unet_blocks"], layers_per_block=config["layers_per_block"],
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=config["text_width"], attention_head_dim=config["attention_head_dim"],
        use_linear_projection=config["linear"], norm_num_groups=8,
    )
    randomize(model, seed)
    return model.eval()


def vae(config: dict, seed: int = 1):
    from diffusers import AutoencoderKL

    blocks = list(config["vae_blocks"])
    torch.manual_seed(seed)
    model = AutoencoderKL(
        block_out_channels=blocks, in_channels=3, out_channels=3, latent_channels=config["latent_channels"],
        down_block_types=["DownEncoderBlock2D"] * len(blocks), up_block_types=["UpDecoderBlock2D"] * len(blocks),
        norm_num_groups=8, layers_per_block=1, sample_size=32,
    )
    randomize(model, seed, scale=0.1)
    return model.eval()


def safety_checker(flag_everything: bool, seed: int = 4):
    """A tiny checker; its thresholds are 1 (a cosine never exceeds it) or -1 (every picture is flagged)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=64, bos_token_id=62, eos_token_id=63, pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=12,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    randomize(checker, seed, scale=0.3)
    with torch.no_grad():
        threshold = -1.0 if flag_everything else 1.0
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    extractor = CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32}, do_center_crop=True, do_normalize=True,
                                   do_resize=True, resample=3)
    return checker, extractor


def pndm():
    from diffusers import PNDMScheduler

    return PNDMScheduler.from_config({k: v for k, v in SD15_SCHEDULER.items() if not k.startswith("_")})


def save(folder: Path, config_name: str | dict, kind: str = "text2img") -> Path:
    """Save a reference Stable Diffusion pipeline folder of ``kind`` ("text2img", "inpaint", "unsafe", "nochecker");
    ``config_name`` names one of ``CONFIGS`` or is such a dict."""
    import diffusers

    folder = Path(folder)
    config = CONFIGS[config_name] if isinstance(config_name, str) else config_name
    tokenizer = tiny.clip_tokenizer(folder.parent / f"{folder.name}-tokenizer")
    latent = config["latent_channels"]
    in_channels = 2 * latent + 1 if kind == "inpaint" else latent
    checker, extractor = safety_checker(flag_everything=kind == "unsafe")
    if kind == "nochecker":
        checker = extractor = None
    cls = diffusers.StableDiffusionInpaintPipeline if kind == "inpaint" else diffusers.StableDiffusionPipeline
    pipe = cls(vae=vae(config), text_encoder=text_encoder(len(tokenizer), config["text_width"]), tokenizer=tokenizer,
               unet=unet(config, in_channels), scheduler=pndm(), safety_checker=checker, feature_extractor=extractor,
               requires_safety_checker=kind != "nochecker")
    pipe.save_pretrained(folder)
    # the released SD 1.5 scheduler config carries DDIM's fields too; swapped-in schedulers read them
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER, indent=2))
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


def swap_scheduler(ours, theirs, name: str, **overrides) -> None:
    """Both pipelines switch to scheduler class ``name``, built from their current configs."""
    import diffusers

    import sfumato

    ours.scheduler = getattr(sfumato, name).from_config(ours.scheduler.config, **overrides)
    theirs.scheduler = getattr(diffusers, name).from_config(theirs.scheduler.config, **overrides)
