"""The x2 latent upscaler and the x4 upscaler against the reference, their behaviour, and the guide's chain
image-to-image -> x2 (latents) -> x4.

Each comparison prints ``PARITY <test> <max abs difference>`` (run with ``-s`` to collect them).
"""

import json
import logging

import numpy as np
import pytest
import torch

import sfumato

from ..parity import assert_close, generator, picture
from .builders import load_both, swap_scheduler
from .test_behaviour import no_model_may_run
from .test_parity import close, run_both

X2, X4 = "StableDiffusionLatentUpscalePipeline", "StableDiffusionUpscalePipeline"


@pytest.fixture(scope="module")
def pipelines(upscaler_folder):
    cache = {}

    def get(kind="x2", config="small"):
        if (kind, config) not in cache:
            pipe = getattr(sfumato, X2 if kind == "x2" else X4).from_pretrained(upscaler_folder(kind, config))
            pipe.set_progress_bar_config(disable=True)
            cache[kind, config] = pipe
        return cache[kind, config]

    return get


def x2_embeds(pipe, prompts, seed=5):
    """What the x2 upscaler reads of a prompt: the last layer's states (before the final norm) and the pooled
    output, weighted as a prompt-weighting library would."""
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        output = pipe.text_encoder(ids, output_hidden_states=True)
    weights = 1 + 0.2 * torch.randn(output.hidden_states[-1].shape[:2], generator=generator(seed))
    return output.hidden_states[-1] * weights[..., None], output.pooler_output


# ---------------------------------------------------------------------------------------------- x2


@pytest.mark.parametrize("config,image,prompt,scheduler,extra", [
    ("small", [(32, 48)], "a red circle", None, {}),
    ("wide", [(24, 40), (24, 40)], ["a cat", "a dog"], None,
     dict(negative_prompt=["dark", "noisy"], guidance_scale=5.0)),
    ("small", [(48, 32)], "a cat", ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
     dict(negative_prompt="blurry")),
    ("wide", [(16, 16)], "a cat", ("LMSDiscreteScheduler", {}), dict(guidance_scale=1.0)),
    ("small", [(35, 50)], "a cat", None, dict(guidance_scale=0)),  # snaps to 32 x 48; guidance 0: empty prompt
])
def test_x2(request, upscaler_folder, config, image, prompt, scheduler, extra):
    ours, theirs = load_both(upscaler_folder("x2", config), X2)
    if scheduler:
        swap_scheduler(ours, theirs, scheduler[0], **scheduler[1])
    pictures = [picture(h, w, seed=i) for i, (h, w) in enumerate(image)]
    a, b = run_both(ours, theirs, prompt=prompt, image=pictures if len(pictures) > 1 else pictures[0],
                    num_inference_steps=3, output_type="np", **extra)
    scale = ours.vae_scale_factor
    assert a.images.shape[1:] == tuple(2 * (s - s % scale) for s in image[0]) + (3,)
    close(request, a.images, b.images)


def test_x2_latents_in_and_out_prompt_embeds_and_given_latents(request, upscaler_folder):
    ours, theirs = load_both(upscaler_folder("x2", "small"), X2)
    low_res = torch.randn(2, 4, 8, 12, generator=generator(3))  # another SD pipeline's output_type="latent"
    embeds, pooled = x2_embeds(ours, ["a cat", "a dog"])
    negative, negative_pooled = x2_embeds(ours, ["", "dark"], seed=6)
    a, b = run_both(ours, theirs, image=low_res, prompt_embeds=embeds, pooled_prompt_embeds=pooled,
                    negative_prompt_embeds=negative, negative_pooled_prompt_embeds=negative_pooled,
                    num_inference_steps=3, output_type="latent")
    assert a.images.shape == (2, 4, 16, 24)
    close(request, a.images, b.images)
    latents = torch.randn(1, 4, 16, 24, generator=generator(4))
    a, b = run_both(ours, theirs, prompt="a cat", image=low_res[0], latents=latents, num_inference_steps=3,
                    output_type="pt")
    close(request, a.images, b.images)


def test_x2_a_generator_per_prompt_equals_single_runs(pipelines):
    pipe = pipelines("x2")
    pictures = [picture(32, 32, 1), picture(32, 32, 2)]
    common = dict(negative_prompt="dark", num_inference_steps=3, output_type="np")
    both = pipe(prompt=["a cat", "a dog"], image=pictures, generator=[generator(1), generator(2)], **common).images
    for i, (prompt, image) in enumerate(zip(["a cat", "a dog"], pictures)):
        assert_close(both[i:i + 1], pipe(prompt=prompt, image=image, generator=generator(i + 1), **common).images)


def test_x2_one_picture_for_every_prompt(pipelines):
    """The reference fails when several prompts share one picture; here the picture serves each."""
    pipe = pipelines("x2")
    common = dict(image=picture(32, 32), num_inference_steps=3, output_type="np")
    both = pipe(prompt=["a cat", "a dog"], generator=[generator(1), generator(2)], **common).images
    for i, prompt in enumerate(["a cat", "a dog"]):
        assert_close(both[i:i + 1], pipe(prompt=prompt, generator=generator(i + 1), **common).images)


def test_x2_legacy_callback(pipelines):
    calls = []
    pipelines("x2")("a cat", image=picture(32, 32), num_inference_steps=4, output_type="latent",
                    generator=generator(), callback=lambda step, t, latents: calls.append((step, latents.shape)),
                    callback_steps=2)
    assert calls == [(0, (1, 4, 16, 16)), (2, (1, 4, 16, 16))]


# ---------------------------------------------------------------------------------------------- x4


@pytest.mark.parametrize("config,image,prompt,n,scheduler,extra", [
    ("small", [(16, 24)], "a red circle", 1, None, {}),
    ("wide", [(16, 16), (16, 16)], ["a cat", "a dog"], 1, None,
     dict(negative_prompt=["dark", "noisy"], guidance_scale=5.0, noise_level=100)),
    ("small", [(24, 16)], "a cat", 2, ("DDIMScheduler", {}), dict(eta=0.6, noise_level=0)),
    ("wide", [(18, 22)], "a cat", 1, ("EulerDiscreteScheduler", {}), dict(noise_level=350)),  # snaps to 16 x 20
    ("small", [(16, 16)], "a cat", 1, ("DPMSolverMultistepScheduler", {}), dict(guidance_scale=1.0)),
    ("wide", [(16, 24)], "a cat", 1, ("EulerAncestralDiscreteScheduler", {}), dict(negative_prompt="blurry")),
])
def test_x4(request, upscaler_folder, config, image, prompt, n, scheduler, extra):
    ours, theirs = load_both(upscaler_folder("x4", config), X4)
    if scheduler:
        swap_scheduler(ours, theirs, scheduler[0], **scheduler[1])
    pictures = [picture(h, w, seed=i) for i, (h, w) in enumerate(image)]
    a, b = run_both(ours, theirs, prompt=prompt, image=pictures if len(pictures) > 1 else pictures[0],
                    num_images_per_prompt=n, num_inference_steps=3, output_type="np", **extra)
    assert a.images.shape[1:] == tuple(4 * (s - s % 4) for s in image[0]) + (3,)
    assert a.nsfw_content_detected == b.nsfw_content_detected is None
    close(request, a.images, b.images)


def test_x4_prompt_embeds_tensor_picture_and_given_latents(request, upscaler_folder):
    from .test_parity import text_embeds

    ours, theirs = load_both(upscaler_folder("x4", "small"), X4)
    embeds, negative = text_embeds(ours, ["a cat"]), text_embeds(ours, ["dark"], seed=7)
    pixels = torch.from_numpy(np.asarray(picture(16, 20), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    latents = torch.randn(1, 4, 16, 20, generator=generator(8))
    a, b = run_both(ours, theirs, prompt_embeds=embeds, negative_prompt_embeds=negative, image=pixels,
                    latents=latents, num_inference_steps=3, output_type="np")
    close(request, a.images, b.images)


def test_x4_images_per_prompt_with_a_generator_each_equal_single_runs(pipelines):
    """Each sample noises its own copy of the picture with its own generator (the reference draws once, from the
    first generator), and prompts keep their pictures with num_images_per_prompt > 1 (the reference pairs them
    as picture 0, 1, 0, 1 against prompts 0, 0, 1, 1)."""
    pipe = pipelines("x4")
    pictures = [picture(16, 16, 1), picture(16, 16, 2)]
    common = dict(negative_prompt="dark", num_inference_steps=3, output_type="np", noise_level=60)
    both = pipe(prompt=["a cat", "a dog"], image=pictures, num_images_per_prompt=2,
                generator=[generator(s) for s in (1, 2, 3, 4)], **common).images
    for i, (prompt, image) in enumerate([("a cat", pictures[0])] * 2 + [("a dog", pictures[1])] * 2):
        assert_close(both[i:i + 1], pipe(prompt=prompt, image=image, generator=generator(i + 1), **common).images)
    assert np.abs(both[0] - both[1]).max() > 1e-3


def test_x4_one_generator_many_images_and_one_picture_for_every_prompt(pipelines):
    pipe = pipelines("x4")
    common = dict(image=picture(16, 16), num_inference_steps=2, output_type="np")
    out = pipe(prompt=["a cat", "a dog"], num_images_per_prompt=3, generator=generator(), **common).images
    assert out.shape == (6, 64, 64, 3)
    assert np.abs(out[0] - out[1]).max() > 1e-4 and np.abs(out[0] - out[3]).max() > 1e-4


def test_x4_bounds_apply_to_the_upscaled_pictures_and_they_decode_one_at_a_time(pipelines, monkeypatch):
    """Memory follows the pictures made: the size and memory bounds see the 4x result before any model runs, and
    the decoder, which works at that size, takes one picture at a time."""
    from sfumato.limits import RequestTooLarge

    pipe = pipelines("x4")
    monkeypatch.setenv("SFUMATO_MAX_SIDE", "100")
    with pytest.raises(RequestTooLarge, match="height=128"):
        pipe("a cat", image=picture(32, 16), num_inference_steps=2)
    monkeypatch.delenv("SFUMATO_MAX_SIDE")
    decoded = []
    decode = pipe.vae.decode
    monkeypatch.setattr(pipe.vae, "decode", lambda z, **kw: decoded.append(z.shape[0]) or decode(z, **kw))
    out = pipe(["a cat", "a dog"], image=picture(16, 16), num_images_per_prompt=2, num_inference_steps=2,
               output_type="np", generator=generator())
    assert out.images.shape == (4, 64, 64, 3) and decoded == [1, 1, 1, 1]


def test_x4_scaling_factor_and_safety_checker_like_the_reference(upscaler_folder, sd_folder, caplog):
    import diffusers

    folder = upscaler_folder("x4", "small")
    vae = sfumato.AutoencoderKL.from_pretrained(folder, subfolder="vae")
    vae.register_to_config(scaling_factor=0.18215)
    with caplog.at_level(logging.WARNING, logger="sfumato"):
        pipe = sfumato.StableDiffusionUpscalePipeline.from_pretrained(folder, vae=vae)
    assert pipe.vae.config.scaling_factor == 0.08333 and "scaling_factor" in caplog.text
    assert "safety checker" not in caplog.text  # the x4 upscaler does not ask for one
    # a safety checker, when given, flags like in text-to-image
    unsafe = sfumato.StableDiffusionPipeline.from_pretrained(sd_folder("small", "unsafe"))
    pipe = sfumato.StableDiffusionUpscalePipeline.from_pretrained(
        folder, safety_checker=unsafe.safety_checker, feature_extractor=unsafe.feature_extractor)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a cat", image=picture(16, 16), num_inference_steps=2, output_type="np", generator=generator())
    assert out.nsfw_content_detected == [True] and np.all(out.images == 0)
    theirs = diffusers.StableDiffusionUpscalePipeline.from_pretrained(folder)
    assert theirs.vae.config.scaling_factor == 0.08333


def test_save_and_reload_in_the_reference(tmp_path, upscaler_folder, pipelines):
    import diffusers

    for kind, name, size in (("x2", X2, 32), ("x4", X4, 16)):
        pipe = pipelines(kind)
        pipe.save_pretrained(tmp_path / kind)
        ours_index = json.loads((tmp_path / kind / "model_index.json").read_text())
        theirs_index = json.loads((upscaler_folder(kind) / "model_index.json").read_text())
        ours_index.pop("_diffusers_version"), theirs_index.pop("_diffusers_version")
        assert ours_index == theirs_index
        theirs = getattr(diffusers, name).from_pretrained(tmp_path / kind)
        theirs.set_progress_bar_config(disable=True)
        kwargs = dict(prompt="a cat", image=picture(size, size), num_inference_steps=2, output_type="np")
        assert_close(pipe(**kwargs, generator=generator()).images, theirs(**kwargs, generator=generator()).images)


# ---------------------------------------------------------------------------------------------- the guide's chain


def test_chain_img2img_latents_into_x2_into_x4(request, sd_folder, upscaler_folder):
    """The guide: image-to-image with output_type="latent" -> the x2 latent upscaler (the latents as image=, one
    sample: ``.images[0]``) -> the x4 upscaler. The x4 upscaler takes pictures, so the x2 step hands it a picture
    (the reference cannot take the x2's latents there either). Same chain in the reference."""
    import diffusers

    prompt = "a photo of an astronaut high resolution, unreal engine, ultra realistic"
    results = []
    for library in (sfumato, diffusers):
        pipeline = library.AutoPipelineForImage2Image.from_pretrained(sd_folder("small"))
        upscaler = library.StableDiffusionLatentUpscalePipeline.from_pretrained(upscaler_folder("x2", "small"))
        super_res = library.StableDiffusionUpscalePipeline.from_pretrained(upscaler_folder("x4", "small"))
        for pipe in (pipeline, upscaler, super_res):
            pipe.set_progress_bar_config(disable=True)
        image_1 = pipeline(prompt, image=picture(32, 48), output_type="latent", num_inference_steps=4,
                           generator=generator(1)).images[0]
        image_2 = upscaler(prompt, image=image_1, output_type="pil", num_inference_steps=3,
                           generator=generator(2)).images[0]
        image_3 = super_res(prompt, image=image_2, num_inference_steps=3, output_type="np",
                            generator=generator(3)).images
        results.append((image_1, np.asarray(image_2), image_3))
    for ours, theirs in zip(*results):
        close(request, ours, theirs)
    assert results[0][2].shape == (1, 256, 384, 3)


def test_x2_latents_into_the_x4_upscaler_are_refused_clearly(pipelines):
    latents = pipelines("x2")("a cat", image=picture(32, 32), num_inference_steps=2, output_type="latent",
                              generator=generator()).images[0]
    with pytest.raises(ValueError, match=r"image has 4 channels \(latents\?\), but the x4 upscaler takes pictures"):
        pipelines("x4")("a cat", image=latents, num_inference_steps=2)


# ---------------------------------------------------------------------------------------------- bad input


BAD_INPUT = [
    ("x4", "small", dict(image=picture(16, 16), noise_level=351), ValueError, r"noise_level must be an integer from 0 "
                                                                              r"to 350"),
    ("x4", "small", dict(image=picture(16, 16), noise_level=-1), ValueError, "noise_level"),
    ("x4", "small", dict(image=picture(16, 16), noise_level=20.5), ValueError, "noise_level"),
    ("x4", "small", dict(image=torch.zeros(1, 4, 16, 16)), ValueError, "image has 4 channels"),
    ("x4", "small", dict(), ValueError, "image is required"),
    ("x4", "small", dict(image="low_res.png"), TypeError, "image"),
    ("x4", "small", dict(prompt=["a", "b"], image=[picture(16, 16)] * 3), ValueError, "image has batch size 3"),
    ("x4", "small", dict(image=picture(16, 16), prompt_embeds=torch.zeros(1, 77, 24)), ValueError, "not both"),
    ("x4", "small", dict(image=picture(16, 16), latents=torch.zeros(1, 4, 8, 8)), ValueError, "latents have shape"),
    ("x2", "small", dict(image=torch.zeros(1, 8, 8, 8)), ValueError, "image has 8 channels"),
    ("x2", "eight", dict(image=torch.zeros(1, 4, 8, 8)), ValueError, "image has 4 channels"),
    ("x2", "eight", dict(image=picture(32, 32), latents=torch.zeros(1, 4, 32, 32)), ValueError,
     "latents have 4 channels, but this pipeline's latent space has 8"),
    ("x2", "small", dict(image=picture(32, 40)), ValueError, "multiples of 16 pixels"),
    ("x2", "small", dict(image=picture(32, 32), prompt_embeds=torch.zeros(1, 77, 32), prompt=None), ValueError,
     "need pooled_prompt_embeds"),
    ("x2", "small", dict(image=picture(32, 32), pooled_prompt_embeds=torch.zeros(1, 32)), ValueError,
     "without prompt_embeds"),
    ("x2", "small", dict(image=[picture(32, 32)] * 2), ValueError, "image has batch size 2"),
]


@pytest.mark.parametrize("kind,config,kwargs,error,message", BAD_INPUT,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_INPUT)])
def test_bad_input_is_named_before_any_model_runs(pipelines, monkeypatch, kind, config, kwargs, error, message):
    pipe = pipelines(kind, config)
    no_model_may_run(pipe, monkeypatch)
    kwargs = {"prompt": "a cat", **kwargs}
    with pytest.raises(error, match=message):
        pipe(**kwargs, num_inference_steps=2)


def test_x2_needs_a_sigma_space_scheduler(pipelines, upscaler_folder):
    pipe = sfumato.StableDiffusionLatentUpscalePipeline.from_pretrained(upscaler_folder("x2", "small"))
    pipe.scheduler = sfumato.DDIMScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="EulerDiscreteScheduler"):
        pipe("a cat", image=picture(32, 32), num_inference_steps=2)
