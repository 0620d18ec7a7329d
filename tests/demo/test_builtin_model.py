"""The shipped demo model: it is there, small, draws what it is asked, and diffusers reads it the same way."""

import json

import numpy as np
import pytest
import torch

from sfumato.demo import BUILTIN_MODELS, builtin_model, generation_defaults
from sfumato.demo.data import make_sample
from sfumato.demo.evaluate import evaluate, generate, held_out_prompts

PROMPT = "a red circle on a blue background"
# Lower floors than the targets of issue 16 (background 98 %, shape colour and class 95 %, present and
# in the trained size range 98 %, over at least 200 held-out prompts), where the shipped model with its
# shipped defaults scores 100 % on each over 270 (python -m sfumato.demo.evaluate): 60 prompts (two per
# colour pair) are noisier, but a broken model, pipeline or default lands below.
PROMPTS = 60
FLOOR = {"background": 0.93, "colour": 0.9, "shape": 0.9, "present": 0.93, "size": 0.9}
# The caption whose shapes faded to a dot at the old default prior guidance (4.0): 20 held-out seeds.
FADING = "a white triangle on a green background"
FADING_FLOOR = 0.9
# Mean change (0-255) of the kept pixels of 12 held-out inpaintings, no pixel composite (issue 16's target: 4).
INPAINT_FLOOR = 5.0


@pytest.fixture(scope="module")
def text2image():
    from sfumato import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(builtin_model("decoder"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_every_shipped_folder_is_a_pipeline():
    for name in BUILTIN_MODELS:
        folder = builtin_model(name)
        index = json.loads((folder / "model_index.json").read_text())
        assert index["_class_name"].startswith("KandinskyV22"), name
    assert builtin_model() == builtin_model("decoder")
    with pytest.raises(ValueError, match="name must be one of prior, decoder, inpaint, controlnet; got 'vae'"):
        builtin_model("vae")


def test_shipped_weights_are_fp16_and_small():
    from safetensors import safe_open

    total = 0
    for name in BUILTIN_MODELS:
        for path in builtin_model(name).rglob("*"):
            if path.is_file():
                total += path.stat().st_size
            if path.suffix == ".safetensors":
                with safe_open(str(path), "pt") as handle:
                    dtypes = {handle.get_tensor(key).dtype for key in handle.keys()}
                assert dtypes == {torch.float16}, path
    assert total < 21 * 2**20, f"the built-in model takes {total / 2**20:.1f} MiB"


def test_defaults_suit_the_model():
    defaults = generation_defaults(builtin_model("decoder"))
    assert (defaults["height"], defaults["width"]) == (64, 64)
    assert defaults["num_inference_steps"] <= 50 and defaults["prior_num_inference_steps"] <= 50
    assert generation_defaults(builtin_model("prior")) == {}


def test_held_out_prompts_come_out_right(text2image):
    """Held-out captions (every colour pair twice) with unused seeds, scored by the rule-based evaluator."""
    prompts = held_out_prompts(PROMPTS)
    images = generate(text2image, prompts, generation_defaults(builtin_model("decoder")))
    report = evaluate(images, [caption for caption, _ in prompts])
    for attribute, floor in FLOOR.items():
        assert report.accuracy[attribute] >= floor, (attribute, report.accuracy)
    # no colour pair may fail on both of its prompts
    worst = {pair: counts["all"] for pair, counts in report.accuracy_by_pair().items() if counts["all"][0] == 0}
    assert not worst, worst


def test_white_shapes_do_not_fade(text2image):
    """Issue 16: white triangles on green came out as faint dots or a few pixels wide."""
    prompts = [(FADING, seed) for seed in range(100_000, 100_200, 10)]
    report = evaluate(generate(text2image, prompts, generation_defaults(builtin_model("decoder"))),
                      [FADING] * len(prompts))
    assert report.accuracy["size"] >= FADING_FLOOR and report.accuracy["all"] >= FADING_FLOOR, report.accuracy


def test_inpainting_keeps_the_unmasked_region_without_the_composite():
    """Issue 16: the inpainting folder's 4x MoVQ (16 x 16 latents) keeps what the mask does not cover.

    The target is a mean change of at most 4/255 over the kept pixels of held-out inpaintings; the shipped
    model measures 3.32 over 200 (``python -m sfumato.demo.evaluate --inpaint --count 200``; 3.13 on these
    twelve), the 8x model it replaced 7.28. Twelve are noisier, so the floor here is looser.
    """
    from sfumato.demo.evaluate import evaluate_inpainting

    report, images = evaluate_inpainting(count=12)
    assert all(image.size == (64, 64) for image in images)
    assert report.mean <= INPAINT_FLOOR, report.format()


def test_same_seed_same_picture(text2image):
    settings = generation_defaults(builtin_model("decoder"))
    first = text2image(PROMPT, generator=torch.Generator().manual_seed(3), output_type="np", **settings).images
    second = text2image(PROMPT, generator=torch.Generator().manual_seed(3), output_type="np", **settings).images
    assert np.array_equal(first, second)


# --------------------------------------------------------------------------- the reference reads it the same


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers")


def _pair(diffusers, class_name, folder):
    import sfumato

    pipes = [getattr(library, class_name).from_pretrained(folder, torch_dtype=torch.float32)
             for library in (diffusers, sfumato)]
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    return pipes


def test_reference_prior_gives_the_same_embeddings(diffusers):
    theirs, ours = _pair(diffusers, "KandinskyV22PriorPipeline", builtin_model("prior"))
    expected = theirs(PROMPT, num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    actual = ours(PROMPT, num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(expected.image_embeds, actual.image_embeds, atol=1e-4)
    assert torch.allclose(expected.negative_image_embeds, actual.negative_image_embeds, atol=1e-4)


@pytest.mark.parametrize("name", ["decoder", "inpaint", "controlnet"])
def test_reference_decoders_give_the_same_pictures(diffusers, name):
    import sfumato

    prior = sfumato.KandinskyV22PriorPipeline.from_pretrained(builtin_model("prior"))
    prior.set_progress_bar_config(disable=True)
    embeds = prior(PROMPT, num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    sample = make_sample(4)
    extra = {}
    if name == "inpaint":
        mask = np.zeros((64, 64), np.float32)
        mask[8:40, 16:56] = 1
        extra = {"image": sample.image, "mask_image": mask}
    elif name == "controlnet":
        extra = {"hint": torch.from_numpy(sample.mask).float()[None, None].expand(1, 3, 64, 64)}
    class_name = {"decoder": "KandinskyV22Pipeline", "inpaint": "KandinskyV22InpaintPipeline",
                  "controlnet": "KandinskyV22ControlnetPipeline"}[name]
    theirs, ours = _pair(diffusers, class_name, builtin_model(name))
    images = [pipe(image_embeds=embeds.image_embeds, negative_image_embeds=embeds.negative_image_embeds, height=64,
                   width=64, num_inference_steps=10, generator=torch.Generator().manual_seed(1), output_type="np",
                   **extra).images for pipe in (theirs, ours)]
    assert np.abs(images[0] - images[1]).max() <= 1e-4


def test_reference_combined_pipeline_reads_the_model_card(diffusers, text2image, monkeypatch):
    """diffusers resolves the card's ``prior: ../prior`` from the working directory, so run it from the folder."""
    monkeypatch.chdir(builtin_model("decoder"))
    theirs = diffusers.AutoPipelineForText2Image.from_pretrained(".", torch_dtype=torch.float32)
    theirs.set_progress_bar_config(disable=True)
    assert type(theirs).__name__ == type(text2image).__name__ == "KandinskyV22CombinedPipeline"
    settings = {**generation_defaults(builtin_model("decoder")), "num_inference_steps": 10,
                "prior_num_inference_steps": 10}
    images = [pipe(PROMPT, generator=torch.Generator().manual_seed(2), output_type="np", **settings).images
              for pipe in (theirs, text2image)]
    assert np.abs(images[0] - images[1]).max() <= 1e-4
