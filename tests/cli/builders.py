"""Tiny random-weight checkpoints for the command line's tests.

``build(root)`` writes ``root/{prior,decoder,inpaint,controlnet}/`` in the
built-in model's layout, made with sfumato's own classes: one Kandinsky 2.2
prior and three decoders (text-to-image, inpainting with a 9-channel UNet,
ControlNet with an ``image_hint`` UNet), each decoder with a README naming
``../prior`` and a ``sfumato_defaults.json`` of two steps at 64x64, so every
command runs in a fraction of a second on a CPU. Like the built-in model (and
the released Kandinsky decoders), the UNets predict their variance (8 output
channels) and the decoders' DDPM scheduler says ``variance_type: learned_range``.

``build_kandinsky21(root)`` writes ``root/{prior,decoder,inpaint}/``: tiny
Kandinsky 2.1 checkpoints in the reference's layout (built by the 2.1 pipeline
tests' builders), the decoders' READMEs naming ``../prior``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import tiny

DIM = 32
DEFAULTS = dict(num_inference_steps=2, guidance_scale=4.0, prior_num_inference_steps=2, prior_guidance_scale=4.0,
                height=64, width=64)


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values everywhere: zero-initialised layers would make every seed give the same picture."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.15)
    return model.eval()


def _prior(folder: Path) -> None:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from sfumato import KandinskyV22PriorPipeline, PriorTransformer, UnCLIPScheduler

    tokenizer = tiny.clip_tokenizer(folder.parent / "_tokenizer")
    text_encoder = tiny.clip_text_model(len(tokenizer), hidden=DIM, projection=DIM, seed=0)
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=DIM, image_size=32, projection_dim=DIM, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=2 * DIM, patch_size=8)).eval()
    processor = CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32}, do_center_crop=True, do_normalize=True,
                                   do_resize=True, resample=3)
    prior = _randomize(PriorTransformer(num_attention_heads=2, attention_head_dim=16, embedding_dim=DIM,
                                        num_layers=1), seed=1)
    with torch.no_grad():
        prior.clip_std.abs_().add_(0.5)
    scheduler = UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample", num_train_timesteps=1000,
                                clip_sample=True, clip_sample_range=10.0)
    KandinskyV22PriorPipeline(prior=prior, image_encoder=image_encoder, text_encoder=text_encoder,
                              tokenizer=tokenizer, scheduler=scheduler, image_processor=processor).save_pretrained(folder)


def _unet(kind: str, seed: int):
    from sfumato import UNet2DConditionModel

    return _randomize(UNet2DConditionModel(
        in_channels={"decoder": 4, "inpaint": 9, "controlnet": 8}[kind], out_channels=8,
        addition_embed_type="image_hint" if kind == "controlnet" else "image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(32, 64), layers_per_block=1,
        encoder_hid_dim=DIM, encoder_hid_dim_type="image_proj", cross_attention_dim=2 * DIM, attention_head_dim=8,
        resnet_time_scale_shift="scale_shift", class_embed_type=None, norm_num_groups=8), seed)


def _movq():
    from sfumato import VQModel

    # four levels: an 8x MoVQ like the real one, so ControlNet hints have the picture's size
    return _randomize(VQModel(
        block_out_channels=(32, 32, 32, 32), down_block_types=["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"],
        up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3, in_channels=3, out_channels=3,
        latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial", num_vq_embeddings=12,
        vq_embed_dim=4), seed=5)


def build(root: Path) -> Path:
    import sfumato

    root = Path(root)
    _prior(root / "prior")
    scheduler = sfumato.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085,
                                      beta_end=0.012, clip_sample=False, steps_offset=1, prediction_type="epsilon",
                                      variance_type="learned_range")
    classes = {"decoder": sfumato.KandinskyV22Pipeline, "inpaint": sfumato.KandinskyV22InpaintPipeline,
               "controlnet": sfumato.KandinskyV22ControlnetPipeline}
    for seed, (name, cls) in enumerate(classes.items(), start=3):
        cls(unet=_unet(name, seed), scheduler=scheduler, movq=_movq()).save_pretrained(root / name)
        (root / name / "README.md").write_text("---\nprior:\n- ../prior\n---\n\nA tiny test model.\n")
        (root / name / "sfumato_defaults.json").write_text(json.dumps(DEFAULTS))
    return root


# Kandinsky 2.1: a 2x MoVQ, so 32x32 pictures (16x16 latents) keep every command fast
DEFAULTS_21 = dict(num_inference_steps=2, guidance_scale=4.0, prior_num_inference_steps=2, prior_guidance_scale=4.0,
                   height=32, width=32)


def build_kandinsky21(root: Path) -> Path:
    from ..pipelines.kandinsky2_1 import builders as v21

    root = Path(root)
    v21.save_prior(root / "prior", v21.PRIOR_CONFIGS["small"])
    for kind, name in (("text2img", "decoder"), ("inpaint", "inpaint")):
        v21.save_decoder(root / name, v21.DECODER_CONFIGS["small"], kind)
        (root / name / "README.md").write_text("---\nprior:\n- ../prior\n---\n\nA tiny 2.1 test model.\n")
        (root / name / "sfumato_defaults.json").write_text(json.dumps(DEFAULTS_21))
    return root
