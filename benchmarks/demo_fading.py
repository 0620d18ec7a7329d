"""Why do the built-in model's white (and other light) shapes fade? Measurements, not guesses.

Usage:
    python benchmarks/demo_fading.py                 # every section (about 10 minutes on one busy CPU thread)
    python benchmarks/demo_fading.py --only data,text,prior,guidance,decoder,inpaint

Sections:

``data``      balance of the training pool per (shape colour, background) pair and the contrast of each pair:
              RGB distance, luminance contrast ratio, how far a shape moves the MoVQ latents and the CLIP
              image embedding away from those of the plain background, and how much of its area survives
              a MoVQ round trip
``text``      cosine similarity of the CLIP text embeddings of captions that differ only in the shape's
              colour word (is "white" separated from the other colours?)
``prior``     the prior's sampled image embeddings against the true CLIP image embeddings of pictures of
              each caption (top-1 retrieval among the 90 captions' centroids, and how close each lands to
              the plain background's embedding, i.e. to "no shape"); and the decoder alone, fed the true
              embeddings of held-out pictures of the failing captions
``guidance``  the evaluator on the failing captions (and on all held-out prompts) for several prior and
              decoder guidance scales
``inpaint``   the inpainting pipeline's mean change of the unmasked region without the pixel composite,
              and the MoVQ round trip's change there alone
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np
import torch

from sfumato import AutoPipelineForText2Image
from sfumato.demo import builtin_model, generation_defaults
from sfumato.demo.data import (BOX_FILL, COLOURS, PALETTE, SHAPES, all_captions, make_caption, make_sample,
                               shape_coverage, split_seeds)
from sfumato.demo.evaluate import evaluate, generate, predict

PAIRS = [(c, b) for c in COLOURS for b in COLOURS if c != b]
#: The captions that fail most on the shipped model (white and light shapes on light backgrounds).
FAILING = [make_caption("white", "triangle", background) for background in ("green", "yellow", "blue", "red")] + [
    make_caption("red", "triangle", "green"), make_caption("white", "circle", "yellow")]


def _luminance(rgb) -> float:
    channel = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(channel <= 0.03928, channel / 12.92, ((channel + 0.055) / 1.055) ** 2.4)
    return float(linear @ np.array([0.2126, 0.7152, 0.0722]))


def _plain(colour: str) -> np.ndarray:
    return np.tile(np.array(PALETTE[colour], np.uint8), (64, 64, 1))


def _to_movq(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _clip_input(pipe, pixels: np.ndarray) -> torch.Tensor:
    from sfumato.demo.train import clip_pixels

    return clip_pixels(_to_movq(pixels))


@torch.no_grad()
def section_data(pipe) -> None:
    print("\n== data balance and contrast ==")
    started = time.perf_counter()
    counts, sizes = collections.Counter(), collections.defaultdict(list)
    for seed in split_seeds("train", 12_000):
        sample = make_sample(seed)
        counts[(sample.colour, sample.background)] += 1
        sizes[(sample.colour, sample.background)].append(sample.size / 64)
    print(f"training pool (first 12000 train seeds, {time.perf_counter() - started:.0f} s): pictures per pair "
          f"min {min(counts.values())} max {max(counts.values())} mean {np.mean(list(counts.values())):.0f}; "
          f"shape side mean per pair {min(np.mean(v) for v in sizes.values()):.3f}..{max(np.mean(v) for v in sizes.values()):.3f}")
    movq = pipe.decoder_pipe.movq.float().eval()
    image_encoder = pipe.prior_pipe.image_encoder.float().eval()
    print(f"{'pair':<18} {'n':>4} {'RGB dist':>8} {'lum ratio':>9} {'latent d':>8} {'CLIP cos bg':>11} "
          f"{'MoVQ area kept':>14}")
    rows = []
    for colour, background in PAIRS:
        samples = [make_sample(seed, colour=colour, background=background) for seed in range(200_000, 200_400, 20)]
        pixels = np.stack([s.pixels for s in samples])
        plain = _plain(background)[None]
        latents = movq.encode(_to_movq(pixels)).latents
        plain_latent = movq.encode(_to_movq(plain)).latents
        spread = latents.std()
        latent_distance = float(((latents - plain_latent).flatten(1).norm(dim=1) / spread).mean())
        embeds = torch.nn.functional.normalize(image_encoder(pixel_values=_clip_input(pipe, pixels)).image_embeds, dim=-1)
        plain_embed = torch.nn.functional.normalize(image_encoder(pixel_values=_clip_input(pipe, plain)).image_embeds, dim=-1)
        cosine = float((embeds @ plain_embed.T).mean())
        decoded = movq.decode(latents, force_not_quantize=True).sample.clamp(-1, 1)
        decoded = ((decoded + 1) * 127.5).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)
        kept = np.mean([predict(d).area / max(predict(p).area, 1e-6) for d, p in zip(decoded, pixels)])
        rgb = float(np.linalg.norm(np.subtract(PALETTE[colour], PALETTE[background])))
        lum = (max(_luminance(PALETTE[colour]), _luminance(PALETTE[background])) + 0.05) / (
            min(_luminance(PALETTE[colour]), _luminance(PALETTE[background])) + 0.05)
        rows.append((colour, background, counts[(colour, background)], rgb, lum, latent_distance, cosine, kept))
        print(f"{colour + ' on ' + background:<18} {counts[(colour, background)]:>4} {rgb:>8.0f} {lum:>9.2f} "
              f"{latent_distance:>8.2f} {cosine:>11.3f} {kept:>14.2f}")


@torch.no_grad()
def _text_embeds(pipe, captions):
    prior = pipe.prior_pipe
    tokens = prior.tokenizer(captions, padding="max_length", max_length=prior.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
    return torch.nn.functional.normalize(prior.text_encoder.float()(input_ids=tokens).text_embeds, dim=-1)


def section_text(pipe) -> None:
    print("\n== CLIP text encoder: cosine of captions differing only in the shape colour word ==")
    matrix = np.zeros((len(COLOURS), len(COLOURS)))
    for shape in SHAPES:
        for background in COLOURS:
            colours = [c for c in COLOURS if c != background]
            embeds = _text_embeds(pipe, [make_caption(c, shape, background) for c in colours])
            similarity = (embeds @ embeds.T).numpy()
            for i, a in enumerate(colours):
                for j, b in enumerate(colours):
                    matrix[COLOURS.index(a), COLOURS.index(b)] += similarity[i, j]
    pairs_seen = np.zeros_like(matrix)
    for shape in SHAPES:
        for background in COLOURS:
            for a in COLOURS:
                for b in COLOURS:
                    if a != background and b != background:
                        pairs_seen[COLOURS.index(a), COLOURS.index(b)] += 1
    matrix /= pairs_seen
    print(f"{'':>8} " + " ".join(f"{c:>7}" for c in COLOURS))
    for i, a in enumerate(COLOURS):
        print(f"{a:>8} " + " ".join(f"{matrix[i, j]:>7.3f}" for j in range(len(COLOURS))))
    embeds = _text_embeds(pipe, all_captions())
    similarity = (embeds @ embeds.T).numpy()
    np.fill_diagonal(similarity, -1)
    print(f"nearest other caption, cosine: max {similarity.max():.3f}, mean of each caption's nearest "
          f"{similarity.max(axis=1).mean():.3f}")
    shape_matrix = []
    for colour, background in PAIRS:
        e = _text_embeds(pipe, [make_caption(colour, s, background) for s in SHAPES])
        shape_matrix.append(float((e @ e.T).numpy()[np.triu_indices(3, 1)].mean()))
    print(f"captions differing only in the shape word: mean cosine {np.mean(shape_matrix):.3f}")


@torch.no_grad()
def _true_embeds(pipe, caption: str, count: int = 40, start: int = 300_000):
    from sfumato.demo.data import parse_caption

    colour, shape, background = parse_caption(caption)
    samples = [make_sample(seed, shape=shape, colour=colour, background=background)
               for seed in range(start, start + 10 * count, 10)]
    pixels = np.stack([s.pixels for s in samples])
    embeds = pipe.prior_pipe.image_encoder.float()(pixel_values=_clip_input(pipe, pixels)).image_embeds
    return embeds, samples


@torch.no_grad()
def section_prior(pipe, settings) -> None:
    print("\n== the prior's sampled image embeddings vs the true ones ==")
    captions = all_captions()
    centroids = []
    for caption in captions:
        embeds, _ = _true_embeds(pipe, caption, count=12)
        centroids.append(torch.nn.functional.normalize(embeds, dim=-1).mean(0))
    centroids = torch.nn.functional.normalize(torch.stack(centroids), dim=-1)
    prior = pipe.prior_pipe
    for scale in (1.0, 4.0, 8.0):
        right, per = 0, {}
        for index, caption in enumerate(captions):
            generators = [torch.Generator().manual_seed(seed) for seed in range(100_000, 100_080, 10)]
            out = prior([caption] * 8, generator=generators, guidance_scale=scale,
                        num_inference_steps=settings["prior_num_inference_steps"]).image_embeds
            out = torch.nn.functional.normalize(out.float(), dim=-1)
            hits = (out @ centroids.T).argmax(dim=1) == index
            right += int(hits.sum())
            per[caption] = (float((out @ centroids[index]).mean()), int(hits.sum()))
        worst = sorted(per.items(), key=lambda item: item[1][0])[:5]
        print(f"prior guidance {scale}: top-1 caption retrieval {right}/{len(captions) * 8} "
              f"({100 * right / len(captions) / 8:.1f}%); lowest cosine to own centroid: "
              + "; ".join(f"{c.removeprefix('a ').removesuffix(' background')} {cos:.3f} ({hit}/8)"
                          for c, (cos, hit) in worst))
        for caption in FAILING[:2]:
            print(f"    {caption}: cosine to own centroid {per[caption][0]:.3f}, retrieved {per[caption][1]}/8")
    # the decoder alone, on the true embeddings of held-out pictures of the failing captions
    decoder = pipe.decoder_pipe
    zero = prior.get_zero_embed(1) if hasattr(prior, "get_zero_embed") else None
    print("decoder alone, fed the CLIP embeddings of held-out data pictures (size ok / shown):")
    for caption in FAILING:
        embeds, samples = _true_embeds(pipe, caption, count=30)
        negative = zero.expand(len(embeds), -1) if zero is not None else torch.zeros_like(embeds)
        generators = [torch.Generator().manual_seed(seed) for seed in range(100_000, 100_300, 10)]
        images = decoder(image_embeds=embeds, negative_image_embeds=negative, generator=generators,
                         num_inference_steps=settings["num_inference_steps"], guidance_scale=1.0,
                         height=64, width=64).images
        report = evaluate(images, [caption] * len(images))
        areas = [p.area / (BOX_FILL[s.shape] * (s.size / 64) ** 2) for p, s in zip(report.predictions, samples)]
        print(f"    {caption}: size ok {report.correct['size']}/{report.total}, all {report.correct['all']}/"
              f"{report.total}, drawn area / asked area median {np.median(areas):.2f}")


def section_guidance(pipe, settings) -> None:
    print("\n== guidance: failing captions (30 held-out seeds each) ==")
    failing = [(caption, seed) for caption in FAILING for seed in range(100_000, 100_300, 10)]
    grid = [(p, 1.0) for p in (1.0, 2.0, 4.0, 6.0, 8.0, 12.0)] + [(4.0, g) for g in (2.0, 3.0)] + [(8.0, 2.0)]
    print(f"{'prior g':>7} {'dec g':>5}  {'size ok':>8} {'all':>6}  per caption (all right of 30)")
    for prior_scale, decoder_scale in grid:
        run = {**settings, "prior_guidance_scale": prior_scale, "guidance_scale": decoder_scale}
        images = generate(pipe, failing, run)
        report = evaluate(images, [c for c, _ in failing])
        hits = report.matches("size")
        alls = [all(h) for h in zip(*(report.matches(a) for a in ("background", "colour", "shape", "size")))]
        per = [sum(alls[i:i + 30]) for i in range(0, len(alls), 30)]
        print(f"{prior_scale:>7} {decoder_scale:>5}  {100 * np.mean(hits):>7.1f}% {100 * np.mean(alls):>5.1f}%  {per}")


@torch.no_grad()
def section_inpaint(settings) -> None:
    from sfumato import AutoPipelineForInpainting

    print("\n== inpainting: mean change of the unmasked region, without the pixel composite ==")
    pipe = AutoPipelineForInpainting.from_pretrained(builtin_model("inpaint"))
    pipe.set_progress_bar_config(disable=True)
    movq = pipe.decoder_pipe.movq.float()
    for same_shape in (False, True):
        _inpaint_run(pipe, movq, settings, same_shape)


def _inpaint_run(pipe, movq, settings, same_shape: bool) -> None:
    from sfumato.image.masks import kandinsky_latent_mask

    changes, roundtrip, whole, ideal = [], [], [], []
    repainted = {8: [], 16: []}
    rings = {"1-4 px": (1, 4), "5-8 px": (5, 8), "9-16 px": (9, 16), "over 16 px": (17, 64)}
    by_ring = {name: [] for name in rings}
    share = {name: [] for name in rings}
    from PIL import Image

    ys, xs = np.mgrid[0:64, 0:64]
    for index, seed in enumerate(range(400_000, 400_400, 10)):
        sample = make_sample(seed)
        rows, cols = np.nonzero(sample.mask)
        mask = np.zeros((64, 64), np.uint8)
        top, bottom, left, right = max(rows.min() - 2, 0), rows.max() + 3, max(cols.min() - 2, 0), cols.max() + 3
        mask[top:bottom, left:right] = 255
        other = [c for c in COLOURS if c not in (sample.colour, sample.background)][index % 4]
        new_shape = sample.shape if same_shape else SHAPES[(SHAPES.index(sample.shape) + 1) % 3]
        prompt = make_caption(other, new_shape, sample.background)
        out = pipe(prompt, image=sample.image, mask_image=Image.fromarray(mask),
                   generator=torch.Generator().manual_seed(seed), **settings).images[0]
        keep = mask == 0
        difference = np.abs(np.asarray(out, np.float64) - sample.pixels.astype(np.float64)).mean(axis=-1)
        changes.append(difference[keep].mean())
        whole.append(keep.mean())
        # Chebyshev distance of each kept pixel from the masked box
        distance = np.maximum(np.maximum(top - ys, ys - (bottom - 1)), np.maximum(left - xs, xs - (right - 1)))
        for name, (low, high) in rings.items():
            ring = keep & (distance >= low) & (distance <= high)
            share[name].append(ring.sum() / keep.sum())
            if ring.any():
                by_ring[name].append(difference[ring].mean())
        latents = movq.encode(_to_movq(sample.pixels[None].copy())).latents
        decoded = _decode(movq, latents)
        roundtrip.append(np.abs(decoded - sample.pixels).mean(axis=-1)[keep].mean())
        # an ideal inpainting UNet: the asked picture's own latents inside the latent mask, the kept
        # picture's outside; what the MoVQ alone then changes outside the pixel mask
        target = _plain(sample.background).astype(np.float64) + shape_coverage(new_shape, sample.centre, sample.size, (64, 64))[
            :, :, None] * (np.array(PALETTE[other], np.float64) - np.array(PALETTE[sample.background], np.float64))
        target_latents = movq.encode(_to_movq(np.rint(np.clip(target, 0, 255)).astype(np.uint8)[None])).latents
        keep_latent = kandinsky_latent_mask(torch.from_numpy(keep[None, None].astype(np.float32)), latents.shape[-2:])
        for cells in (8, 16):  # which kept pixels lie under repainted latents, on today's grid and a 4x MoVQ's
            grid = kandinsky_latent_mask(torch.from_numpy(keep[None, None].astype(np.float32)), (cells, cells))
            under = torch.nn.functional.interpolate(grid, (64, 64), mode="nearest")[0, 0].numpy() < 0.5
            repainted[cells].append((under & keep).sum() / keep.sum())
        mixed = _decode(movq, keep_latent * latents + (1 - keep_latent) * target_latents)
        ideal.append(np.abs(mixed - sample.pixels).mean(axis=-1)[keep].mean())
    print(f"40 pictures, mask = the shape's box + 2 px ({100 * (1 - np.mean(whole)):.0f}% of the picture on average), "
          f"prompt = another colour and {'the same shape' if same_shape else 'another shape'}:")
    print(f"  mean change of the unmasked region {np.mean(changes):.2f}/255 (median {np.median(changes):.2f}, "
          f"max {np.max(changes):.2f}, pictures over 4/255: {sum(c > 4 for c in changes)}/40); target within 4/255")
    print("  by distance from the mask: " + ", ".join(
        f"{name} {np.mean(values):.2f}/255 ({100 * np.mean(share[name]):.0f}% of the kept pixels)"
        for name, values in by_ring.items()))
    # a 4x MoVQ halves the latent cell (8 -> 4 px), so the band the repainted latents spread into halves:
    # estimate its change as today's 1-8 px band falling within 1-4 px, today's 9-16 px level within 5-8 px
    band = (np.mean(by_ring["1-4 px"]) + np.mean(by_ring["5-8 px"])) / 2
    estimate = (np.mean(share["1-4 px"]) * band + np.mean(share["5-8 px"]) * np.mean(by_ring["9-16 px"])
                + (np.mean(share["9-16 px"]) + np.mean(share["over 16 px"])) * np.mean(by_ring["over 16 px"]))
    print(f"  estimate with 16 x 16 latents (4 px cells, band halved): about {estimate:.1f}/255")
    print(f"  kept pixels under repainted latents (the keep mask at latent size, grown by one latent): "
          f"{100 * np.mean(repainted[8]):.0f}% with 8 x 8 latents, {100 * np.mean(repainted[16]):.0f}% with 16 x 16")
    print(f"  the MoVQ round trip alone (no repainting): {np.mean(roundtrip):.2f}/255; an ideal UNet (the asked "
          f"picture's own latents inside the grown latent mask): {np.mean(ideal):.2f}/255")


def _decode(movq, latents: torch.Tensor) -> np.ndarray:
    """Latents -> 64 x 64 x 3 float pixels on the 0..255 scale, as the pipelines decode them."""
    decoded = movq.decode(latents, force_not_quantize=True).sample.clamp(-1, 1)
    return ((decoded + 1) * 127.5).round()[0].permute(1, 2, 0).numpy().astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="data,text,prior,guidance,inpaint")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = builtin_model("decoder")
    pipe = AutoPipelineForText2Image.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    settings = generation_defaults(folder)
    sections = args.only.split(",")
    for name in sections:
        started = time.perf_counter()
        if name == "data":
            section_data(pipe)
        elif name == "text":
            section_text(pipe)
        elif name == "prior":
            section_prior(pipe, settings)
        elif name == "guidance":
            section_guidance(pipe, settings)
        elif name == "inpaint":
            section_inpaint(settings)
        else:
            raise SystemExit(f"unknown section {name!r}")
        print(f"({name}: {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
