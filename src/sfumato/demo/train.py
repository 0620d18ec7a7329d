"""Train the built-in demo model: every part of a tiny Kandinsky 2.2, on the procedural shapes.

Usage::

    python -m sfumato.demo.train --out DIR                 # everything (under an hour on 2 CPU cores)
    python -m sfumato.demo.train --out DIR --resume        # continue after an interruption
    python -m sfumato.demo.train --out DIR --stage decoder --steps 200
    python -m sfumato.demo.train --out DIR --calibrate     # then choose the prior guidance (sfumato.demo.evaluate)

Stages, in order (each uses the results of the ones it names):

``movq``          the MoVQ autoencoder: 64 x 64 pictures <-> 4 x 8 x 8 latents (reconstruction loss);
                  afterwards its latents are standardised and its codebook fitted to them
``clip``          CLIP text and image encoders, contrastively, on captions and pictures
``prior``         (clip) the unCLIP prior: caption -> CLIP image embedding, by diffusion
``decoder``       (movq, clip) the text-to-image UNet: image embedding -> latents, by diffusion
``inpaint_movq``  the inpainting folder's MoVQ, the same way: 4 x 16 x 16 latents (4x, no attention)
``inpaint``       (inpaint_movq, clip, decoder) the inpainting UNet on those latents: also sees the kept
                  part of a picture and the mask; starts from the decoder's weights
``controlnet``    (movq, clip, decoder) the ControlNet UNet: also sees the shape's silhouette (a hint)

``DIR`` receives the pipeline folders ``prior``, ``decoder``, ``inpaint`` and
``controlnet`` in the Kandinsky 2.2 layout (fp16 weights), which load with
sfumato's and diffusers' pipelines; each decoder folder's README names
``../prior``, so ``AutoPipelineForText2Image.from_pretrained(DIR / "decoder")``
gives the whole text-to-image pipeline. ``DIR/training`` keeps what resuming
needs: the training pictures, each stage's latest state (saved every minute
and at the end) and ``log.json`` with the time each stage took.

Everything is seeded: the same ``--seed`` and settings give the same model.
Only the training split of :mod:`sfumato.demo.data` is used.

The shipped model (``sfumato/demo/model``) is the four folders of
``python -m sfumato.demo.train --out DIR --threads 2 --calibrate``, copied
there. On a quiet 2-core AMD EPYC (Zen 3, AVX2 only, one of the slower hosts
these figures come from) everything took 52.3 minutes, calibration included:
drawing the pictures 0.2, movq 7.3, clip 4.9, prior 3.2, decoder 14.8,
inpaint_movq 8.6, inpaint 10.0, controlnet 1.9, exports and calibration 1.4
(clip and prior were timed in an earlier full run of the same settings on
the same machine, 55.6 minutes in all with heavier MoVQ and lighter inpaint
settings, and resumed from there). The batch sizes are what keeps that under
an hour: the decoder at 128 per step for 4000 steps, as before, would take
about 46 minutes there (0.69 s a step). Held-out scores of the shipped model
(``sfumato.demo.evaluate``): 99.6% of 270 prompts right on every criterion
(98.9% and 100% on the next two seed ranges), kept region of inpainting
3.32/255 over 200. On a busy machine ``--threads 1`` is the faster choice:
these models are small, and a second thread that waits for a busy core costs
more than it gives.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..schedulers import schedules
from . import DEFAULTS_FILE, architecture
from .data import all_captions, make_sample, split_seeds

STAGES: tuple[str, ...] = ("movq", "clip", "prior", "decoder", "inpaint_movq", "inpaint", "controlnet")
#: What each stage needs finished first.
NEEDS: dict[str, tuple[str, ...]] = {
    "movq": (),
    "clip": (),
    "prior": ("clip",),
    "decoder": ("movq", "clip"),
    "inpaint_movq": (),
    "inpaint": ("inpaint_movq", "clip", "decoder"),
    "controlnet": ("movq", "clip", "decoder"),
}
#: The exported pipeline folder each stage writes (None: it only feeds later stages).
EXPORTS: dict[str, str | None] = {
    "movq": None, "clip": None, "prior": "prior", "decoder": "decoder", "inpaint_movq": None, "inpaint": "inpaint",
    "controlnet": "controlnet",
}
#: Each stage's number in its training steps' seeds (fixed, so a stage added later changes no other stage's draws).
STAGE_NUMBERS: dict[str, int] = {
    "movq": 0, "clip": 1, "prior": 2, "decoder": 3, "inpaint": 4, "controlnet": 5, "inpaint_movq": 6,
}
#: The stage whose MoVQ each diffusion stage's latents come from (and its folder ships).
MOVQ_OF: dict[str, str] = {"decoder": "movq", "controlnet": "movq", "inpaint": "inpaint_movq"}


@dataclass(frozen=True)
class StageSettings:
    """How long and how hard one stage trains."""

    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int = 100
    #: Exponential moving average of the weights, exported instead of the raw
    #: weights (diffusion models sample much better from it); 0 turns it off.
    ema_decay: float = 0.0


#: Defaults sized so that all stages together take under an hour on two CPU cores (figures above).
SETTINGS: dict[str, StageSettings] = {
    "movq": StageSettings(steps=1200, batch_size=12, learning_rate=2e-3, warmup_steps=50),
    "inpaint_movq": StageSettings(steps=1200, batch_size=16, learning_rate=2e-3, warmup_steps=50),
    "clip": StageSettings(steps=1200, batch_size=128, learning_rate=1e-3),
    "prior": StageSettings(steps=1200, batch_size=128, learning_rate=5e-4, ema_decay=0.995),
    "decoder": StageSettings(steps=2800, batch_size=64, learning_rate=1e-3, ema_decay=0.999),
    "inpaint": StageSettings(steps=1500, batch_size=24, learning_rate=1e-3, warmup_steps=100, ema_decay=0.995),
    "controlnet": StageSettings(steps=600, batch_size=16, learning_rate=1e-3, warmup_steps=50, ema_decay=0.995),
}
#: The MoVQ trains mostly on 32 x 32 crops (a quarter of the cost: it is
#: convolutional, and the crops are cut on the 8-pixel latent grid), and on
#: whole pictures for this last fraction of its steps, so that its norms and
#: attention settle on the full 64 x 64 pictures the pipelines give it.
MOVQ_WHOLE_PICTURE_FRACTION = 0.12
MOVQ_CROP = 32
#: The MoVQ's decoder learns to decode latents with up to this much noise
#: added (as a fraction of their spread), so the slightly-off latents a small
#: UNet samples still decode to clean, straight-edged shapes.
MOVQ_LATENT_NOISE = 0.3
#: Latent pixels the codebook's k-means sees (1024 per code; all 3 M of the
#: 4x MoVQ's took a minute, for a codebook the pipelines never use).
CODEBOOK_SAMPLE = 2**18
#: Training pictures drawn once (the first sample seeds of the training split).
POOL_SIZE = 12_000
#: Fraction of training examples whose condition is replaced by the "nothing"
#: condition (the empty prompt for the prior, the zero picture's embedding for
#: the decoders), so the model also learns the unconditional prediction that
#: classifier-free guidance pushes away from.
GUIDANCE_DROPOUT = 0.1
#: Seconds between saved states while a stage runs.
SAVE_EVERY_SECONDS = 60.0
#: Default step counts and guidance of the shipped folders (``sfumato_defaults.json``).
#: The decoder runs unguided (``guidance_scale=1``): guiding this small UNet
#: exaggerates its shapes (squares with hollow sides, bumpy circles), and the
#: prior's guidance already makes the embedding follow the prompt. Guidance
#: still works when asked for; the UNet learned the unconditional prediction.
#: The prior is guided only lightly (2): this small prior already samples
#: embeddings of the right caption unguided (top-1 retrieval among the 90
#: captions' CLIP centroids 100%), and stronger guidance pushes them off the
#: pictures' embeddings (retrieval 99.7% at 4, 45% at 8), which the decoder
#: draws as small or faded shapes, white ones on light backgrounds first
#: (issue 16: "a white triangle on a green background" came out right 25/30
#: times at 4, 30/30 at 2 and 1; ``benchmarks/demo_fading.py`` measures it).
GENERATION_DEFAULTS = {
    "num_inference_steps": 25,
    "guidance_scale": 1.0,
    "prior_num_inference_steps": 25,
    "prior_guidance_scale": 2.0,
    "height": architecture.IMAGE_SIZE,
    "width": architecture.IMAGE_SIZE,
}


# --------------------------------------------------------------------------- the training pictures


@dataclass
class Pool:
    """The training pictures, drawn once from the data set and kept as tensors."""

    images: torch.Tensor  # uint8, N x 64 x 64 x 3
    masks: torch.Tensor  # bool, N x 64 x 64: the shape's silhouette
    caption_ids: torch.Tensor  # int64, N: index into all_captions()

    def __len__(self) -> int:
        return self.images.shape[0]

    def pictures(self, rows: torch.Tensor) -> torch.Tensor:
        """Pictures ``rows`` as float N x 3 x 64 x 64 in [-1, 1], the MoVQ's input range."""
        return self.images[rows].permute(0, 3, 1, 2).float() / 127.5 - 1.0

    def hints(self, rows: torch.Tensor) -> torch.Tensor:
        """Silhouettes ``rows`` as ControlNet hints: float N x 3 x 64 x 64 in [0, 1], white shape on black."""
        return self.masks[rows].float()[:, None].expand(-1, 3, -1, -1).contiguous()


def load_pool(folder: Path, size: int, quiet: bool = False) -> Pool:
    """The first ``size`` training-split samples, drawn once and cached in ``folder``."""
    path = folder / f"pool-{size}.npz"
    if path.is_file():
        data = np.load(path)
        images, masks, caption_ids = data["images"], np.unpackbits(data["masks"], axis=-1).astype(bool), data["caption_ids"]
    else:
        from tqdm.auto import tqdm

        index = {caption: i for i, caption in enumerate(all_captions())}
        images = np.empty((size, architecture.IMAGE_SIZE, architecture.IMAGE_SIZE, 3), np.uint8)
        masks = np.empty((size, architecture.IMAGE_SIZE, architecture.IMAGE_SIZE), bool)
        caption_ids = np.empty(size, np.int64)
        seeds = split_seeds("train", size)
        for row, seed in enumerate(tqdm(seeds, desc="drawing training pictures", leave=False, disable=quiet)):
            sample = make_sample(seed, size=architecture.IMAGE_SIZE)
            images[row], masks[row], caption_ids[row] = sample.pixels, sample.mask, index[sample.caption]
        _atomic_write(path, lambda handle: np.savez(handle, images=images, masks=np.packbits(masks, axis=-1),
                                                    caption_ids=caption_ids))
    return Pool(torch.from_numpy(images), torch.from_numpy(masks), torch.from_numpy(caption_ids))


def clip_pixels(pictures: torch.Tensor) -> torch.Tensor:
    """MoVQ-range pictures (N x 3 x 64 x 64 in [-1, 1]) -> what the ``CLIPImageProcessor`` gives for them.

    At 64 x 64 the processor's resize and crop leave a picture as it is, so
    only its rescale and normalisation remain (a test checks the two agree).
    """
    mean = torch.tensor(architecture.CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(architecture.CLIP_STD).view(1, 3, 1, 1)
    unit = (pictures + 1.0) / 2.0
    # the processor sees uint8 pixels: round as it would
    unit = torch.round(unit * 255.0) / 255.0
    return (unit - mean) / std


# --------------------------------------------------------------------------- the workspace


class Workspace:
    """The ``--out`` folder: exported pipelines at the top, training state in ``training/``."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.training = self.out / "training"
        self.training.mkdir(parents=True, exist_ok=True)

    def state_path(self, stage: str) -> Path:
        return self.training / f"{stage}.pt"

    def load_state(self, stage: str) -> dict[str, Any] | None:
        path = self.state_path(stage)
        if not path.is_file():
            return None
        return torch.load(path, map_location="cpu", weights_only=False)

    def save_state(self, stage: str, state: dict[str, Any]) -> None:
        _atomic_write(self.state_path(stage), lambda handle: torch.save(state, handle))

    def finished(self, stage: str) -> dict[str, Any]:
        """The final state of a finished stage, or a ValueError saying to train it first."""
        state = self.load_state(stage)
        if state is None or not state.get("done"):
            raise ValueError(
                f"stage {stage!r} has not finished in {str(self.out)!r}; run it first "
                f"(python -m sfumato.demo.train --out {self.out} --stage {stage})"
            )
        return state

    def log(self, stage: str, entry: dict[str, Any]) -> None:
        path = self.training / "log.json"
        log = json.loads(path.read_text()) if path.is_file() else {}
        log[stage] = entry
        _atomic_write(path, lambda handle: handle.write(json.dumps(log, indent=2).encode()))


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` through a temporary file, so an interruption never leaves half a file."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        write(handle)
    os.replace(partial, path)


# --------------------------------------------------------------------------- the shared loop


@dataclass
class Context:
    """What every stage needs: where to work, the pictures, the seed and how to report."""

    workspace: Workspace
    pool: Pool
    seed: int
    resume: bool
    settings: dict[str, StageSettings]
    quiet: bool = False


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    """The random numbers of one training step: the same for the same seed, stage and step, even after resuming."""
    return torch.Generator().manual_seed(seed * 1_000_003 + STAGE_NUMBERS[stage] * 10_007 + step)


def learning_rate(settings: StageSettings, step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class EMA:
    """Exponential moving average of a model's weights (warmed up, so early steps count less)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                self.shadow[name].lerp_(tensor, 1 - decay)
            else:
                self.shadow[name].copy_(tensor)


def train_loop(stage: str, context: Context, models: dict[str, nn.Module],
               loss_fn: Callable[[int, torch.Generator], tuple[torch.Tensor, dict[str, float]]],
               ema_model: str | None = None, extra_parameters: list[nn.Parameter] | None = None) -> dict[str, Any]:
    """Run ``loss_fn`` for the stage's steps with AdamW; save and resume the state; return it.

    ``models`` are trained together; with ``ema_model`` (a key of
    ``models``) and a non-zero ``ema_decay`` an average of that model's
    weights is kept in ``state["ema"]``.
    """
    from tqdm.auto import tqdm

    settings = context.settings[stage]
    parameters = [p for model in models.values() for p in model.parameters() if p.requires_grad]
    parameters += list(extra_parameters or [])
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, betas=(0.9, 0.99), weight_decay=0.0)
    ema = EMA(models[ema_model], settings.ema_decay) if ema_model and settings.ema_decay > 0 else None
    start, wall, cpu = 0, 0.0, 0.0
    state = context.workspace.load_state(stage) if context.resume else None
    if state is not None and not state.get("done") and state.get("steps") == settings.steps:
        for name, model in models.items():
            model.load_state_dict(state["models"][name])
        for parameter, saved in zip(extra_parameters or [], state.get("extra", [])):
            parameter.data.copy_(saved)
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.shadow = state["ema"]
        start, wall, cpu = state["step"], state["wall_seconds"], state["cpu_seconds"]

    def snapshot(step: int, done: bool) -> dict[str, Any]:
        return {
            "stage": stage, "step": step, "steps": settings.steps, "done": done,
            "models": {name: model.state_dict() for name, model in models.items()},
            "extra": [p.detach().clone() for p in extra_parameters or []],
            "optimizer": optimizer.state_dict(), "ema": ema.shadow if ema is not None else None,
            "wall_seconds": wall, "cpu_seconds": cpu,
        }

    for model in models.values():
        model.train()
    bar = tqdm(range(start, settings.steps), initial=start, total=settings.steps, desc=stage,
               disable=context.quiet, dynamic_ncols=True)
    clock, cpu_clock, saved_at = time.perf_counter(), time.process_time(), time.perf_counter()
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(settings, step)
        loss, shown = loss_fn(step, step_generator(context.seed, stage, step))
        if not torch.isfinite(loss):
            raise RuntimeError(f"stage {stage}: the loss became {loss.item()} at step {step}; lower its learning rate")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(models[ema_model], step)
        bar.set_postfix({name: f"{value:.4f}" for name, value in shown.items()}, refresh=False)
        now = time.perf_counter()
        if now - saved_at > SAVE_EVERY_SECONDS and step + 1 < settings.steps:
            wall, cpu = wall + now - clock, cpu + time.process_time() - cpu_clock
            clock, cpu_clock = now, time.process_time()
            context.workspace.save_state(stage, snapshot(step + 1, done=False))
            saved_at = time.perf_counter()
    bar.close()
    wall, cpu = wall + time.perf_counter() - clock, cpu + time.process_time() - cpu_clock
    for model in models.values():
        model.eval()
    if ema is not None:
        models[ema_model].load_state_dict(ema.shadow)
    return snapshot(settings.steps, done=True)


def _rows(generator: torch.Generator, batch: int, pool: int) -> torch.Tensor:
    return torch.randint(0, pool, (batch,), generator=generator)


# --------------------------------------------------------------------------- stage: movq


def train_movq(context: Context, stage: str = "movq") -> dict[str, Any]:
    """Train a MoVQ on reconstruction (from slightly noised latents), then standardise its latents and fit its codebook.

    ``stage`` is ``movq`` (8x) or ``inpaint_movq`` (4x).
    """
    movq = architecture.build_untrained(stage, seed=context.seed)
    grid = 2 ** (len(movq.config.block_out_channels) - 1)
    pool = context.pool
    batch = context.settings[stage].batch_size

    steps = context.settings[stage].steps
    whole_from = steps - max(1, round(steps * MOVQ_WHOLE_PICTURE_FRACTION))

    def loss_fn(step: int, generator: torch.Generator):
        pictures = pool.pictures(_rows(generator, batch, len(pool)))
        # mirror half the pictures: every shape is left-right symmetric, so they are pictures of the data set too
        flip = torch.rand(batch, generator=generator) < 0.5
        pictures = torch.where(flip[:, None, None, None], pictures.flip(-1), pictures)
        if step < whole_from:
            cells = (architecture.IMAGE_SIZE - MOVQ_CROP) // grid + 1
            top, left = (int(cell) * grid for cell in torch.randint(0, cells, (2,), generator=generator))
            pictures = pictures[:, :, top:top + MOVQ_CROP, left:left + MOVQ_CROP]
        latents = movq.encode(pictures).latents
        # Noise relative to the latents' spread (not a fixed amount, which the encoder
        # could escape by making its latents larger).
        strength = MOVQ_LATENT_NOISE * torch.rand(batch, 1, 1, 1, generator=generator) * latents.std().detach()
        latents = latents + strength * torch.randn(latents.shape, generator=generator)
        # The pipelines decode un-quantised latents (force_not_quantize=True), so that is what is trained.
        reconstruction = movq.decode(latents, force_not_quantize=True).sample
        error = reconstruction - pictures
        loss = error.abs().mean() + error.square().mean()
        return loss, {"loss": loss.item()}

    state = train_loop(stage, context, {"movq": movq}, loss_fn)
    started = time.perf_counter()
    latents = encode_pool(movq, pool)
    mean, std = latents.mean(dim=(0, 2, 3)), latents.std(dim=(0, 2, 3))
    standardise_latents(movq, mean, std)
    latents = (latents - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    fit_codebook(movq, latents, seed=context.seed)
    state["models"]["movq"] = movq.state_dict()
    state["latents"] = latents.half()
    state["wall_seconds"] += time.perf_counter() - started
    return state


@torch.no_grad()
def encode_pool(movq: nn.Module, pool: Pool, batch: int = 256) -> torch.Tensor:
    """MoVQ latents of every training picture."""
    movq.eval()
    return torch.cat([movq.encode(pool.pictures(torch.arange(start, min(start + batch, len(pool))))).latents
                      for start in range(0, len(pool), batch)])


@torch.no_grad()
def standardise_latents(movq: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Fold ``(latents - mean) / std`` per channel into the MoVQ's weights; decoding is unchanged.

    The 2.2 pipelines use MoVQ latents as they come (no scaling factor), and
    diffusion wants them near zero mean and unit variance. The encoder's last
    1x1 convolution (``quant_conv``) is rescaled to produce standardised
    latents; every 1x1 convolution that reads latents (``post_quant_conv``
    and the ``conv_y`` / ``conv_b`` of each spatial norm) is rescaled to undo it.
    """
    movq.quant_conv.weight.div_(std.view(-1, 1, 1, 1))
    movq.quant_conv.bias.sub_(mean).div_(std)
    readers = [movq.post_quant_conv] + [
        module for name, module in movq.decoder.named_modules() if name.endswith(("conv_y", "conv_b"))
    ]
    for conv in readers:
        if conv.in_channels != mean.numel() or conv.kernel_size != (1, 1):
            raise RuntimeError(f"expected a 1x1 convolution reading the latents, got {conv}")
        conv.bias.add_(conv.weight[:, :, 0, 0] @ mean)
        conv.weight.mul_(std.view(1, -1, 1, 1))
    codebook = movq.quantize.embedding.weight
    codebook.sub_(mean).div_(std)


@torch.no_grad()
def fit_codebook(movq: nn.Module, latents: torch.Tensor, seed: int, iterations: int = 20,
                 sample: int = CODEBOOK_SAMPLE) -> None:
    """Set the codebook to k-means centres of (a random sample of ``sample``) latent pixels.

    The 2.2 pipelines never quantise (``force_not_quantize=True``), so the
    autoencoder is trained without the codebook; fitting it afterwards makes
    ``decode(..., force_not_quantize=False)`` give a faithful quantised picture too.
    """
    vectors = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).float()
    count = movq.quantize.embedding.weight.shape[0]
    generator = torch.Generator().manual_seed(seed)
    if vectors.shape[0] > sample:
        vectors = vectors[torch.randperm(vectors.shape[0], generator=generator)[:sample]]
    centres = vectors[torch.randperm(vectors.shape[0], generator=generator)[:count]].clone()
    for _ in range(iterations):
        nearest = torch.cdist(vectors, centres).argmin(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, nearest, vectors)
        counts = torch.bincount(nearest, minlength=count).float()
        used = counts > 0
        centres[used] = sums[used] / counts[used, None]
        # an empty cluster restarts at a random latent pixel
        empty = int((~used).sum())
        if empty:
            centres[~used] = vectors[torch.randint(0, vectors.shape[0], (empty,), generator=generator)]
    movq.quantize.embedding.weight.copy_(centres)


# --------------------------------------------------------------------------- stage: clip


def train_clip(context: Context) -> dict[str, Any]:
    """Train the CLIP text and image encoders together, contrastively, on captions and pictures."""
    tokenizer = architecture.build_tokenizer(context.workspace.training / "tokenizer")
    text_encoder = architecture.build_untrained("text_encoder", seed=context.seed, tokenizer=tokenizer)
    image_encoder = architecture.build_untrained("image_encoder", seed=context.seed + 1)
    captions = all_captions()
    tokens = tokenize(tokenizer, captions)
    pool = context.pool
    batch = context.settings["clip"].batch_size
    # CLIP's learned temperature (not part of the exported encoders)
    logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def loss_fn(step: int, generator: torch.Generator):
        rows = _rows(generator, batch, len(pool))
        pictures = pool.pictures(rows)
        flip = torch.rand(batch, generator=generator) < 0.5
        pictures = torch.where(flip[:, None, None, None], pictures.flip(-1), pictures)
        image = F.normalize(image_encoder(pixel_values=clip_pixels(pictures)).image_embeds, dim=-1)
        text = F.normalize(text_encoder(input_ids=tokens).text_embeds, dim=-1)
        logits = image @ text.T * logit_scale.clamp(max=math.log(100.0)).exp()  # batch x 90 captions
        labels = pool.caption_ids[rows]
        image_to_text = F.cross_entropy(logits, labels)
        # text -> image: each caption in the batch against all pictures, every picture of it a right answer
        per_caption = logits.T  # 90 x batch
        matches = labels[None, :] == torch.arange(len(captions))[:, None]
        present = matches.any(dim=1)
        right = per_caption.masked_fill(~matches, float("-inf")).logsumexp(dim=1)
        text_to_image = (per_caption.logsumexp(dim=1) - right)[present].mean()
        loss = (image_to_text + text_to_image) / 2
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return loss, {"loss": loss.item(), "accuracy": accuracy.item()}

    state = train_loop("clip", context, {"text_encoder": text_encoder, "image_encoder": image_encoder}, loss_fn,
                       extra_parameters=[logit_scale])
    started = time.perf_counter()
    embeds = embed_pool(image_encoder, pool)
    with torch.no_grad():
        zero = image_encoder(pixel_values=torch.zeros(1, 3, architecture.IMAGE_SIZE, architecture.IMAGE_SIZE))
    state.update(image_embeds=embeds, zero_embed=zero.image_embeds[0])
    state["wall_seconds"] += time.perf_counter() - started
    return state


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    """Token ids exactly as the prior pipeline makes them (padded to the tokenizer's length)."""
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


@torch.no_grad()
def embed_pool(image_encoder: nn.Module, pool: Pool, batch: int = 512) -> torch.Tensor:
    """CLIP image embeddings of every training picture."""
    image_encoder.eval()
    return torch.cat([
        image_encoder(pixel_values=clip_pixels(pool.pictures(torch.arange(start, min(start + batch, len(pool)))))).image_embeds
        for start in range(0, len(pool), batch)
    ])


def load_clip(context: Context) -> tuple[Any, nn.Module, nn.Module, dict[str, Any]]:
    """The trained tokenizer, text encoder and image encoder, and the clip stage's state."""
    state = context.workspace.finished("clip")
    tokenizer = architecture.build_tokenizer(context.workspace.training / "tokenizer")
    text_encoder = architecture.build_untrained("text_encoder", seed=context.seed, tokenizer=tokenizer)
    image_encoder = architecture.build_untrained("image_encoder", seed=context.seed + 1)
    text_encoder.load_state_dict(state["models"]["text_encoder"])
    image_encoder.load_state_dict(state["models"]["image_encoder"])
    return tokenizer, text_encoder.eval(), image_encoder.eval(), state


# --------------------------------------------------------------------------- stage: prior


def train_prior(context: Context) -> dict[str, Any]:
    """Train the prior to denoise normalised CLIP image embeddings, conditioned on the caption."""
    from ..schedulers import UnCLIPScheduler

    tokenizer, text_encoder, _, clip_state = load_clip(context)
    embeds = clip_state["image_embeds"]
    prior = architecture.build_untrained("prior", seed=context.seed)
    with torch.no_grad():
        prior.clip_mean.copy_(embeds.mean(dim=0, keepdim=True))
        prior.clip_std.copy_(embeds.std(dim=0, keepdim=True))
    normalised = (embeds - prior.clip_mean.detach()) / prior.clip_std.detach()
    # the text encoder is frozen: its outputs for the 90 captions and the empty prompt are computed once
    texts = all_captions() + [""]
    tokens = tokenize(tokenizer, texts)
    with torch.no_grad():
        encoded = text_encoder(input_ids=tokens)
    text_embeds, hidden_states = encoded.text_embeds, encoded.last_hidden_state
    text_masks = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                           return_tensors="pt").attention_mask.bool()
    empty = len(texts) - 1
    alphas_cumprod = UnCLIPScheduler(**architecture.prior_scheduler_config()).alphas_cumprod
    pool = context.pool
    batch = context.settings["prior"].batch_size

    def loss_fn(step: int, generator: torch.Generator):
        rows = _rows(generator, batch, len(pool))
        target = normalised[rows]
        caption = pool.caption_ids[rows]
        caption = torch.where(torch.rand(batch, generator=generator) < GUIDANCE_DROPOUT, empty, caption)
        timesteps = torch.randint(0, len(alphas_cumprod), (batch,), generator=generator)
        noise = torch.randn(target.shape, generator=generator)
        noisy = schedules.add_noise(alphas_cumprod, target, noise, timesteps)
        predicted = prior(noisy, timestep=timesteps, proj_embedding=text_embeds[caption],
                          encoder_hidden_states=hidden_states[caption],
                          attention_mask=text_masks[caption]).predicted_image_embedding
        loss = F.mse_loss(predicted, target)
        return loss, {"loss": loss.item()}

    return train_loop("prior", context, {"prior": prior}, loss_fn, ema_model="prior")


# --------------------------------------------------------------------------- stages: the decoders


class DiffusionLoss:
    """Epsilon-prediction loss plus the learned-variance term of Improved DDPM (Nichol & Dhariwal 2021).

    The UNet's first four output channels predict the noise (plain MSE). The
    other four choose, per latent pixel, where the step's variance lies
    between the posterior variance and beta (``variance_type="learned_range"``);
    they are trained on the variational bound with the mean's gradient
    stopped, so they do not disturb the noise prediction.
    """

    def __init__(self):
        from ..schedulers import DDPMScheduler

        scheduler = DDPMScheduler(**architecture.decoder_scheduler_config())
        # float64 tables: the bound subtracts nearly equal log-variances; each is cast to float32 where used
        self.alphas_cumprod = scheduler.alphas_cumprod.double()
        self.betas = scheduler.betas.double()
        self.posterior = schedules.posterior_tables(self.betas, self.alphas_cumprod)

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def sample_noisy(self, clean: torch.Tensor, generator: torch.Generator):
        """Random timesteps and noise for a batch, and ``clean`` noised with them (in that draw order)."""
        timesteps = torch.randint(0, self.num_timesteps, (clean.shape[0],), generator=generator)
        noise = torch.randn(clean.shape, generator=generator)
        return timesteps, noise, self.noisy(clean, noise, timesteps)

    def noisy(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        # the scheduler's own float32 alpha_bar, as the samplers see it
        return schedules.add_noise(self.alphas_cumprod.float(), clean, noise, timesteps)

    def __call__(self, output: torch.Tensor, clean: torch.Tensor, noisy: torch.Tensor, noise: torch.Tensor,
                 timesteps: torch.Tensor, where: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of ``output``; ``where`` (N x 1 x H x W, 0 or 1) limits it to those latent pixels."""
        posterior = self.posterior
        channels = clean.shape[1]
        predicted_noise, variance_fraction = output[:, :channels], output[:, channels:]
        if where is None:
            where = torch.ones_like(clean[:, :1])
        # per picture: the mean over its counted latent pixels (a picture with none counts nothing)
        counted = where.sum(dim=(1, 2, 3)) * channels

        def mean(values: torch.Tensor) -> torch.Tensor:
            return (values * where).sum(dim=(1, 2, 3)) / counted.clamp(min=1)

        mse = mean((predicted_noise - noise).square()).mean()

        def at(table: torch.Tensor) -> torch.Tensor:
            return table[timesteps].float().view(-1, 1, 1, 1)

        alpha = at(self.alphas_cumprod)
        clean_estimate = schedules.predicted_original("epsilon", predicted_noise.detach(), noisy, alpha, 1 - alpha)
        true_mean = at(posterior.original_coeff) * clean + at(posterior.sample_coeff) * noisy
        model_mean = at(posterior.original_coeff) * clean_estimate + at(posterior.sample_coeff) * noisy
        true_log_variance = at(posterior.log_variance)
        model_log_variance = schedules.learned_range_log_variance(variance_fraction, at(self.betas.log()),
                                                                  true_log_variance)
        kl = 0.5 * (-1.0 + model_log_variance - true_log_variance + (true_log_variance - model_log_variance).exp()
                    + (true_mean - model_mean).square() * (-model_log_variance).exp())
        # nats -> bits per latent value; t = 0 (the decoder's likelihood term) is left out
        kl = mean(kl) / math.log(2.0)
        vlb = (kl * (timesteps > 0)).mean()
        return mse + vlb, {"mse": mse.item(), "vlb": vlb.item()}


def _decoder_inputs(context: Context, stage: str):
    """The standardised latents of the training pictures (from ``stage``'s MoVQ), their CLIP embeddings and the zero picture's."""
    movq_state = context.workspace.finished(MOVQ_OF[stage])
    clip_state = context.workspace.finished("clip")
    return movq_state["latents"].float(), clip_state["image_embeds"], clip_state["zero_embed"]


def _conditions(embeds: torch.Tensor, zero_embed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Image embeddings, a few replaced by the zero picture's (the pipelines' default negative embedding)."""
    dropped = torch.rand(embeds.shape[0], generator=generator) < GUIDANCE_DROPOUT
    return torch.where(dropped[:, None], zero_embed[None, :], embeds)


def train_decoder(context: Context) -> dict[str, Any]:
    """Train the text-to-image UNet: denoise MoVQ latents, conditioned on the picture's CLIP embedding."""
    latents, embeds, zero_embed = _decoder_inputs(context, "decoder")
    unet = architecture.build_untrained("decoder_unet", seed=context.seed)
    diffusion = DiffusionLoss()
    batch = context.settings["decoder"].batch_size

    def loss_fn(step: int, generator: torch.Generator):
        rows = _rows(generator, batch, len(latents))
        clean = latents[rows]
        condition = _conditions(embeds[rows], zero_embed, generator)
        timesteps, noise, noisy = diffusion.sample_noisy(clean, generator)
        output = unet(noisy, timesteps, encoder_hidden_states=None,
                      added_cond_kwargs={"image_embeds": condition}).sample
        return diffusion(output, clean, noisy, noise, timesteps)

    return train_loop("decoder", context, {"unet": unet}, loss_fn, ema_model="unet")


def _trained_decoder(context: Context, kind: str) -> nn.Module:
    """A ``kind`` UNet starting from the trained text-to-image decoder."""
    decoder = architecture.build_untrained("decoder_unet", seed=context.seed)
    decoder.load_state_dict(context.workspace.finished("decoder")["models"]["unet"])
    unet = architecture.build_untrained(f"{kind}_unet", seed=context.seed + 1)
    return architecture.initialise_from_decoder(unet, decoder)


def repaint_masks(pool: Pool, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random pixel masks (N x 1 x 64 x 64, 1 = repaint) of the kinds people draw.

    Half cover the shape's bounding box with a margin (repaint the shape), a
    quarter are random rectangles, a tenth everything, the rest the shape's
    silhouette grown by a few pixels.
    """
    count, size = rows.shape[0], architecture.IMAGE_SIZE
    silhouettes = pool.masks[rows].float()[:, None]
    kind = torch.rand(count, generator=generator)
    ys = torch.arange(size).view(1, size, 1)
    xs = torch.arange(size).view(1, 1, size)

    def box(top, left, bottom, right):
        return ((ys >= top.view(-1, 1, 1)) & (ys < bottom.view(-1, 1, 1)) &
                (xs >= left.view(-1, 1, 1)) & (xs < right.view(-1, 1, 1))).float()[:, None]

    rows_any = silhouettes[:, 0].amax(dim=2) > 0
    cols_any = silhouettes[:, 0].amax(dim=1) > 0
    index = torch.arange(size).float()
    top = torch.where(rows_any, index, float(size)).amin(dim=1)
    bottom = torch.where(rows_any, index, -1.0).amax(dim=1) + 1
    left = torch.where(cols_any, index, float(size)).amin(dim=1)
    right = torch.where(cols_any, index, -1.0).amax(dim=1) + 1
    margin = torch.randint(0, 9, (count, 4), generator=generator).float()
    around_shape = box(top - margin[:, 0], left - margin[:, 1], bottom + margin[:, 2], right + margin[:, 3])
    extent = torch.randint(16, 49, (count, 2), generator=generator).float()
    corner = torch.rand(count, 2, generator=generator) * (size - extent)
    rectangle = box(corner[:, 0], corner[:, 1], corner[:, 0] + extent[:, 0], corner[:, 1] + extent[:, 1])
    grow = int(torch.randint(1, 6, (1,), generator=generator))
    grown = F.max_pool2d(silhouettes, 2 * grow + 1, stride=1, padding=grow)
    everything = torch.ones_like(silhouettes)
    choose = lambda low, high: ((kind >= low) & (kind < high)).float().view(-1, 1, 1, 1)  # noqa: E731
    return (choose(0.0, 0.5) * around_shape + choose(0.5, 0.75) * rectangle + choose(0.75, 0.85) * everything
            + choose(0.85, 1.01) * grown)


def train_inpaint(context: Context) -> dict[str, Any]:
    """Fine-tune the decoder into the 9-channel inpainting UNet (latents + kept latents + keep mask)."""
    from ..image import kandinsky_latent_mask

    latents, embeds, zero_embed = _decoder_inputs(context, "inpaint")
    unet = _trained_decoder(context, "inpaint")
    diffusion = DiffusionLoss()
    pool = context.pool
    batch = context.settings["inpaint"].batch_size

    def loss_fn(step: int, generator: torch.Generator):
        rows = _rows(generator, batch, len(latents))
        clean = latents[rows]
        # exactly what KandinskyV22InpaintPipeline gives the UNet: the keep mask at latent size with the
        # repainted region grown by one latent pixel, and the picture's latents times that mask
        keep = kandinsky_latent_mask(1 - repaint_masks(pool, rows, generator), clean.shape[-2:])
        condition = _conditions(embeds[rows], zero_embed, generator)
        timesteps, noise, noisy = diffusion.sample_noisy(clean, generator)
        inputs = torch.cat([noisy, clean * keep, keep], dim=1)
        output = unet(inputs, timesteps, encoder_hidden_states=None,
                      added_cond_kwargs={"image_embeds": condition}).sample
        # only the repainted latents count: after every step the pipeline puts the kept ones back (noised to
        # the next step) and keeps them as they are at the end, so what the UNet says about them is never used
        return diffusion(output, clean, noisy, noise, timesteps, where=1 - keep)

    return train_loop("inpaint", context, {"unet": unet}, loss_fn, ema_model="unet")


def train_controlnet(context: Context) -> dict[str, Any]:
    """Fine-tune the decoder into the hint-conditioned UNet (``image_hint``), hints being silhouettes."""
    latents, embeds, zero_embed = _decoder_inputs(context, "controlnet")
    unet = _trained_decoder(context, "controlnet")
    diffusion = DiffusionLoss()
    pool = context.pool
    batch = context.settings["controlnet"].batch_size

    def loss_fn(step: int, generator: torch.Generator):
        rows = _rows(generator, batch, len(latents))
        clean = latents[rows]
        condition = _conditions(embeds[rows], zero_embed, generator)
        timesteps, noise, noisy = diffusion.sample_noisy(clean, generator)
        output = unet(noisy, timesteps, encoder_hidden_states=None,
                      added_cond_kwargs={"image_embeds": condition, "hint": pool.hints(rows)}).sample
        return diffusion(output, clean, noisy, noise, timesteps)

    return train_loop("controlnet", context, {"unet": unet}, loss_fn, ema_model="unet")


TRAINERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "movq": train_movq, "clip": train_clip, "prior": train_prior, "decoder": train_decoder,
    "inpaint_movq": functools.partial(train_movq, stage="inpaint_movq"), "inpaint": train_inpaint,
    "controlnet": train_controlnet,
}


# --------------------------------------------------------------------------- export


_DECODER_CLASSES = {"decoder": "KandinskyV22Pipeline", "inpaint": "KandinskyV22InpaintPipeline",
                    "controlnet": "KandinskyV22ControlnetPipeline"}
_README = """---
license: mit
library_name: diffusers
tags:
- kandinsky
- sfumato-demo
prior:
- ../prior
---

# sfumato demo: {what}

A tiny Kandinsky 2.2 {what} for 64 x 64 pictures of one circle, square or
triangle in red, green, blue, yellow, white or black on a plain background of
another of those colours, prompted as `a <colour> <shape> on a <colour>
background`. Trained from scratch on procedural pictures by
`python -m sfumato.demo.train`; the prior it pairs with is `../prior`.
Defaults that suit it are in `{defaults}`.
"""


def export(context: Context, stage: str) -> Path:
    """Write the pipeline folder of a finished stage (fp16 weights) under ``--out``; return its path."""
    import sfumato
    from .. import DDPMScheduler, KandinskyV22PriorPipeline, UnCLIPScheduler

    workspace = context.workspace
    folder = workspace.out / EXPORTS[stage]
    if stage == "prior":
        tokenizer, text_encoder, image_encoder, _ = load_clip(context)
        prior = architecture.build_untrained("prior", seed=context.seed)
        prior.load_state_dict(workspace.finished("prior")["models"]["prior"])
        pipeline = KandinskyV22PriorPipeline(
            prior=prior.half(), image_encoder=image_encoder.half(), text_encoder=text_encoder.half(),
            tokenizer=tokenizer, scheduler=UnCLIPScheduler(**architecture.prior_scheduler_config()),
            image_processor=architecture.build_image_processor(),
        )
        pipeline.save_pretrained(folder)
        return folder
    movq_stage = MOVQ_OF[stage]
    movq = architecture.build_untrained(movq_stage, seed=context.seed)
    movq.load_state_dict(workspace.finished(movq_stage)["models"]["movq"])
    unet = architecture.build_untrained(f"{stage}_unet", seed=context.seed)
    unet.load_state_dict(workspace.finished(stage)["models"]["unet"])
    pipeline_class = getattr(sfumato, _DECODER_CLASSES[stage])
    pipeline = pipeline_class(unet=unet.half(), scheduler=DDPMScheduler(**architecture.decoder_scheduler_config()),
                              movq=movq.half())
    pipeline.save_pretrained(folder)
    (folder / "README.md").write_text(_README.format(what=_DECODER_CLASSES[stage], defaults=DEFAULTS_FILE),
                                      encoding="utf-8")
    (folder / DEFAULTS_FILE).write_text(json.dumps(GENERATION_DEFAULTS, indent=2) + "\n", encoding="utf-8")
    return folder


# --------------------------------------------------------------------------- guidance calibration


#: Prior guidance scales :func:`calibrate_guidance` tries, and how many held-out prompts it scores each on.
CALIBRATION_SCALES: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
CALIBRATION_PROMPTS = 180


def calibrate_guidance(out: str | Path, scales: tuple[float, ...] = CALIBRATION_SCALES,
                       count: int = CALIBRATION_PROMPTS, quiet: bool = False) -> dict[float, float]:
    """Choose the prior guidance of the exported model with the rule-based evaluator, and write it.

    Generates :func:`sfumato.demo.evaluate.held_out_prompts` (``count``
    prompts, every colour pair) with ``out/decoder`` at each prior guidance
    in ``scales`` and keeps the scale with the most pictures right on every
    criterion (ties go to the scale nearest :data:`GENERATION_DEFAULTS`'),
    writing it into the ``sfumato_defaults.json`` of every exported decoder
    folder. A small prior needs little guidance, and too much draws small or
    faded shapes (issue 16), so this is checked on each trained model rather
    than fixed once. Returns ``{scale: fraction right on every criterion}``.
    """
    from .. import AutoPipelineForText2Image
    from . import generation_defaults
    from .evaluate import evaluate, generate, held_out_prompts

    out = Path(out)
    if not (out / "decoder" / "model_index.json").is_file() or not (out / "prior" / "model_index.json").is_file():
        raise ValueError(f"calibrating the guidance needs the exported prior and decoder in {str(out)!r}; "
                         f"train them first")
    if not scales or any(not isinstance(s, (int, float)) or isinstance(s, bool) or s < 1 for s in scales):
        raise ValueError(f"scales must be a non-empty list of guidance scales >= 1, got {scales!r}")
    pipe = AutoPipelineForText2Image.from_pretrained(out / "decoder")
    pipe.set_progress_bar_config(disable=True)
    settings = generation_defaults(out / "decoder")
    prompts = held_out_prompts(count)
    captions = [caption for caption, _ in prompts]
    scores: dict[float, float] = {}
    for scale in scales:
        report = evaluate(generate(pipe, prompts, {**settings, "prior_guidance_scale": float(scale)}), captions)
        scores[float(scale)] = report.accuracy["all"]
        if not quiet:
            print(f"prior guidance {scale}: " + ", ".join(f"{name} {value:.1%}" for name, value in report.accuracy.items()),
                  file=sys.stderr, flush=True)
    best = max(scores.values())
    preferred = GENERATION_DEFAULTS["prior_guidance_scale"]
    chosen = min((scale for scale, value in scores.items() if value == best), key=lambda s: (abs(s - preferred), s))
    for stage in ("decoder", "inpaint", "controlnet"):
        path = out / EXPORTS[stage] / DEFAULTS_FILE
        if path.is_file():
            defaults = json.loads(path.read_text(encoding="utf-8"))
            defaults["prior_guidance_scale"] = chosen
            path.write_text(json.dumps(defaults, indent=2) + "\n", encoding="utf-8")
    if not quiet:
        print(f"prior guidance: chose {chosen} ({best:.1%} right on every criterion)", file=sys.stderr, flush=True)
    return scores


# --------------------------------------------------------------------------- command line


def run(out: str | Path, stages: list[str] | tuple[str, ...] = STAGES, steps: int | None = None, resume: bool = False,
        seed: int = 0, pool_size: int = POOL_SIZE, quiet: bool = False,
        settings: dict[str, StageSettings] | None = None) -> dict[str, dict[str, float]]:
    """Train ``stages`` into ``out``; return ``{stage: {"steps", "wall_seconds", "cpu_seconds"}}``.

    ``steps`` replaces every selected stage's step count (for quick trials);
    with ``resume`` finished stages are skipped and an interrupted one
    continues from its last saved state.
    """
    stages = list(stages)
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown or not stages:
        raise ValueError(f"stages must be a non-empty list of {', '.join(STAGES)}; got {stages!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive int (training steps per stage), got {steps!r}")
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        raise ValueError(f"pool_size must be a positive int (training pictures), got {pool_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    settings = dict(settings or SETTINGS)
    if steps is not None:
        for stage in stages:
            settings[stage] = replace(settings[stage], steps=steps, warmup_steps=min(settings[stage].warmup_steps, steps))
    workspace = Workspace(Path(out))
    context = Context(workspace, load_pool(workspace.training, pool_size, quiet), seed, resume, settings, quiet)
    report: dict[str, dict[str, float]] = {}
    for stage in sorted(stages, key=STAGES.index):
        missing = [need for need in NEEDS[stage] if need not in stages and not _is_finished(workspace, need)]
        if missing:
            raise ValueError(f"stage {stage!r} needs {', '.join(missing)} finished in {str(workspace.out)!r}; "
                             f"add them to --stage or train them first")
        state = workspace.load_state(stage) if resume else None
        if state is not None and state.get("done") and state.get("steps") == settings[stage].steps:
            _say(context, f"{stage}: already trained, skipped")
        else:
            state = TRAINERS[stage](context)
            workspace.save_state(stage, state)
        if EXPORTS[stage]:
            started = time.perf_counter()
            folder = export(context, stage)
            state["wall_seconds"] += time.perf_counter() - started
            _say(context, f"{stage}: wrote {folder}")
        report[stage] = {"steps": state["steps"], "wall_seconds": round(state["wall_seconds"], 1),
                         "cpu_seconds": round(state["cpu_seconds"], 1)}
        workspace.log(stage, report[stage])
    return report


def _is_finished(workspace: Workspace, stage: str) -> bool:
    state = workspace.load_state(stage)
    return bool(state and state.get("done"))


def _say(context: Context, message: str) -> None:
    if not context.quiet:
        print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sfumato.demo.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the pipelines and the training state")
    parser.add_argument("--stage", default="all", help=f"one of {', '.join(STAGES)}, a comma-separated list, or all")
    parser.add_argument("--steps", type=int, default=None, help="training steps for each selected stage (default: "
                        + ", ".join(f"{name} {value.steps}" for name, value in SETTINGS.items()) + ")")
    parser.add_argument("--resume", action="store_true", help="skip finished stages, continue an interrupted one")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything random (default 0)")
    parser.add_argument("--pool-size", type=int, default=POOL_SIZE, help=f"training pictures (default {POOL_SIZE})")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--calibrate", action="store_true",
                        help="afterwards choose the prior guidance with the rule-based evaluator on held-out prompts "
                        f"(scales {', '.join(map(str, CALIBRATION_SCALES))}, {CALIBRATION_PROMPTS} prompts each, about "
                        "2 minutes) and write it into the decoders' defaults")
    args = parser.parse_args(argv)
    stages = list(STAGES) if args.stage == "all" else [name.strip() for name in args.stage.split(",")]
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        report = run(args.out, stages, steps=args.steps, resume=args.resume, seed=args.seed,
                     pool_size=args.pool_size, quiet=args.quiet)
        if args.calibrate:
            calibrate_guidance(args.out, quiet=args.quiet)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    width = max(len(stage) for stage in report)
    print(f"{'stage':<{width}}  {'steps':>6}  {'wall s':>8}  {'cpu s':>8}")
    for stage, entry in report.items():
        print(f"{stage:<{width}}  {entry['steps']:>6}  {entry['wall_seconds']:>8.1f}  {entry['cpu_seconds']:>8.1f}")
    total_wall = sum(entry["wall_seconds"] for entry in report.values())
    print(f"{'total':<{width}}  {'':>6}  {total_wall:>8.1f}  {sum(e['cpu_seconds'] for e in report.values()):>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
