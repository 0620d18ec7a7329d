"""A model hub cache holding tiny random checkpoints under the hub ids the guides name, and the pictures at the
addresses they load, so that their snippets run offline as written.

``build_cache(root)`` writes a Hugging Face hub cache (``models--ORG--NAME/snapshots/COMMIT`` and ``refs/main``,
as ``huggingface_hub`` keeps downloads) that both libraries read with ``HF_HUB_OFFLINE=1``. The checkpoints come
from the pipeline tests' builders, made by the reference library and saved in its layout; the decoders' model
cards name their priors by hub id, as the released repositories do. Where a guide asks for ``variant="fp16"``
the repository holds fp16 weights under the variant's file names, as the released ones do.

The configurations are the builders' with the autoencoders deepened (16x, 32x for Stable Diffusion), so that
pictures of 768 to 1024 pixels, which the guides ask for, take seconds: the snippets' sizes and step counts are
kept.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import PIL.Image

COMMIT = "0123456789abcdef0123456789abcdef01234567"

# 16x autoencoders: 768 px pictures are 48 x 48 latents
K21_DECODER = dict(block_out_channels=(8, 16), layers_per_block=1, attention_head_dim=8, image_embed_dim=32,
                   text_dim=40, text_heads=4, movq_blocks=(32, 32, 32, 32, 32), movq_groups=8)
K22_DECODER = dict(block_out_channels=(8, 16), layers_per_block=1, attention_head_dim=8, embed_dim=32,
                   movq_blocks=(32, 32, 32, 32, 32), movq_groups=8)
K3 = dict(unet=dict(block_out_channels=(16, 16, 32, 32), layers_per_block=2, groups=4, attention_head_dim=8,
                    time_embedding_dim=16, cross_attention_dim=24),
          text=dict(d_model=16, d_kv=4, d_ff=40, num_layers=2, num_heads=4),
          # 8x, as released: the reference's Kandinsky 3 text-to-image assumes it (its latents are height / 8)
          movq_blocks=(32, 32, 32, 32), movq_groups=8, beta_schedule="linear")
# a 32x VAE: the ControlNet example's 958 x 960 picture is 30 x 30 latents
SD = dict(unet_blocks=(32, 64), layers_per_block=1, attention_head_dim=8, linear=False, text_width=32,
          vae_blocks=(16, 16, 16, 16, 32, 32), latent_channels=4, sample_size=8)

# the addresses the guides load pictures from -> (file name, width, height) of the stand-in picture
PICTURES = {
    "https://raw.githubusercontent.com/CompVis/stable-diffusion/main/assets/stable-samples/img2img/"
    "sketch-mountains-input.jpg": ("sketch-mountains-input.jpg", 768, 512),
    "https://huggingface.co/datasets/hf-internal-testing/diffusers-images/resolve/main/kandinsky/cat.png":
        ("kandinsky-cat.png", 768, 768),
    "https://huggingface.co/datasets/hf-internal-testing/diffusers-images/resolve/main/kandinsky/starry_night.jpeg":
        ("starry_night.jpeg", 256, 256),
    "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/diffusers/cat.png":
        ("cat.png", 512, 512),
    "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/diffusers/img2img-init.png":
        ("img2img-init.png", 768, 512),
    "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/diffusers/img2img-sdxl-init.png":
        ("img2img-sdxl-init.png", 128, 128),
    "https://huggingface.co/lllyasviel/control_v11f1p_sd15_depth/resolve/main/images/control.png":
        ("control.png", 958, 960),
}


def _snapshot(cache: Path, repo_id: str) -> Path:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return repo / "snapshots" / COMMIT


def _publish(cache: Path, repo_id: str, folder: Path, prior: str | None = None) -> None:
    snapshot = _snapshot(cache, repo_id)
    shutil.copytree(folder, snapshot)
    if prior is not None:  # the model card, as the released decoders have it
        (snapshot / "README.md").write_text(f"---\nprior:\n- {prior}\n---\n\nA tiny random stand-in.\n")


def _fp16_variant(folder: Path) -> Path:
    """Turn a saved folder's weight files into fp16 ``.fp16`` variant files, as the released fp16 variants are."""
    from safetensors.torch import load_file, save_file

    for path in list(folder.rglob("*.safetensors")):
        tensors = {name: t.half() if t.is_floating_point() else t for name, t in load_file(path).items()}
        save_file(tensors, path.with_name(f"{path.stem}.fp16.safetensors"), metadata={"format": "pt"})
        path.unlink()
    return folder


def build_cache(root: Path) -> Path:
    """Every repository the guides load, under ``root / "hub"``; returns that cache folder."""
    from ..pipelines.kandinsky2_1 import builders as v21
    from ..pipelines.kandinsky2_2 import builders as v22
    from ..pipelines.kandinsky3 import builders as k3
    from ..pipelines.stable_diffusion import builders as sd

    cache, staging = root / "hub", root / "staging"
    prior = v22.PRIOR_CONFIGS["small"]
    _publish(cache, "kandinsky-community/kandinsky-2-1-prior", v21.save_prior(staging / "k21-prior", prior))
    _publish(cache, "kandinsky-community/kandinsky-2-1", v21.save_decoder(staging / "k21", K21_DECODER),
             prior="kandinsky-community/kandinsky-2-1-prior")
    _publish(cache, "kandinsky-community/kandinsky-2-1-inpaint",
             v21.save_decoder(staging / "k21-inpaint", K21_DECODER, "inpaint"),
             prior="kandinsky-community/kandinsky-2-1-prior")
    _publish(cache, "kandinsky-community/kandinsky-2-2-prior", v22.save_prior(staging / "k22-prior", prior))
    _publish(cache, "kandinsky-community/kandinsky-2-2-decoder", v22.save_decoder(staging / "k22", K22_DECODER),
             prior="kandinsky-community/kandinsky-2-2-prior")
    _publish(cache, "kandinsky-community/kandinsky-3", k3.save_pipeline(staging / "k3", K3, variant="fp16"))
    _publish(cache, "runwayml/stable-diffusion-v1-5", _fp16_variant(sd.save(staging / "sd15", SD)))
    _publish(cache, "nitrosocke/elden-ring-diffusion", sd.save(staging / "elden-ring", SD))
    _publish(cache, "lllyasviel/control_v11f1p_sd15_depth", _fp16_variant(_controlnet(staging / "control")))
    _publish(cache, "stabilityai/stable-diffusion-xl-refiner-1.0", _fp16_variant(_refiner(staging / "refiner")))
    return cache


def _controlnet(folder: Path) -> Path:
    """A depth ControlNet for ``SD``'s UNet; its hint embedding shrinks the picture 32x, as the VAE does."""
    from diffusers import ControlNetModel

    from ..pipelines.stable_diffusion import builders as sd

    model = ControlNetModel.from_unet(sd.unet(SD, SD["latent_channels"]),
                                      conditioning_embedding_out_channels=(8, 8, 16, 16, 32, 32))
    sd.randomize(model, 11)
    model.eval().save_pretrained(folder)
    return folder


def _refiner(folder: Path) -> Path:
    from ..pipelines.stable_diffusion_xl import builders as xl

    return xl.save(folder, "small", "refiner")


def write_pictures(folder: Path) -> dict[str, str]:
    """The stand-in pictures (smooth colour fields with a few shapes), by the address they stand in for."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for number, (url, (name, width, height)) in enumerate(PICTURES.items()):
        y, x = np.mgrid[:height, :width] / max(width, height)
        rng = np.random.default_rng(number)
        phase = rng.uniform(0, 6, 3)
        array = np.stack([np.sin(4 * x + phase[c]) * np.cos(3 * y - phase[c]) for c in range(3)], -1) * 0.5 + 0.5
        cy, cx = rng.uniform(0.3, 0.7, 2)
        array[(x - cx * width / max(width, height)) ** 2 + (y - cy * height / max(width, height)) ** 2 < 0.03] = \
            rng.uniform(0, 1, 3)
        path = folder / name
        PIL.Image.fromarray((array * 255).astype(np.uint8)).save(path, quality=95)
        paths[url] = str(path)
    return paths


__all__ = ["build_cache", "write_pictures", "PICTURES"]
