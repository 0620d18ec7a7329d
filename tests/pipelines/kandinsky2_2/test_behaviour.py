"""Kandinsky 2.2 pipeline behaviour beyond plain parity: latents, callbacks, output types, scheduler swap,
combined and auto pipelines, fp16 variants, and bad input."""

import json
import shutil

import numpy as np
import pytest
import torch

import sfumato

from .builders import load_both
from .test_parity import assert_close, embeds, generator, mask, picture


@pytest.fixture(scope="module")
def decoder(decoder_folder):
    pipe = sfumato.KandinskyV22Pipeline.from_pretrained(decoder_folder("small"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call(pipe, **kwargs):
    positive, negative = embeds(1, pipe.unet.config.encoder_hid_dim)
    args = dict(image_embeds=positive, negative_image_embeds=negative, height=64, width=64, num_inference_steps=2,
                output_type="np", generator=generator())
    args.update(kwargs)
    return pipe(**args)


def test_given_latents_and_ddim_swap_match_reference(decoder_folder):
    ours, theirs = load_both(decoder_folder("small"), "KandinskyV22Pipeline")
    from diffusers import DDIMScheduler as TheirDDIM

    ours.scheduler = sfumato.DDIMScheduler.from_config(ours.scheduler.config)
    theirs.scheduler = TheirDDIM.from_config(theirs.scheduler.config)
    assert ours.config["scheduler"] == ("diffusers", "DDIMScheduler")
    latents = torch.randn(1, 4, 32, 32, generator=generator(9))
    positive, negative = embeds(1, ours.unet.config.encoder_hid_dim)
    kwargs = dict(image_embeds=positive, negative_image_embeds=negative, height=64, width=64,
                  num_inference_steps=4, output_type="np", latents=latents)
    assert_close(ours(**kwargs).images, theirs(**kwargs).images)


def test_output_types(decoder):
    arrays = call(decoder).images
    assert arrays.shape == (1, 64, 64, 3) and arrays.dtype == np.float32 and 0 <= arrays.min() <= arrays.max() <= 1
    pil = call(decoder, output_type="pil").images
    assert pil[0].size == (64, 64)
    assert np.array_equal(np.asarray(pil[0]), (arrays[0] * 255).round().astype(np.uint8))
    raw = call(decoder, output_type="pt").images  # the reference's text-to-image "pt" is the raw [-1, 1] output
    torch.testing.assert_close((raw * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy(), arrays)
    latents = call(decoder, output_type="latent").images
    assert latents.shape == (1, 4, 32, 32)
    assert call(decoder, return_dict=False)[0].shape == (1, 64, 64, 3)
    with pytest.raises(ValueError, match="output_type.*'jpeg'"):
        call(decoder, output_type="jpeg")


def test_callback_on_step_end_can_edit_latents(decoder):
    seen = []

    def callback(pipe, i, t, tensors):
        seen.append((i, sorted(tensors)))
        return {"latents": tensors["latents"] * 0}

    out = call(decoder, output_type="latent", callback_on_step_end=callback,
               callback_on_step_end_tensor_inputs=["latents", "image_embeds"]).images
    assert seen == [(0, ["image_embeds", "latents"]), (1, ["image_embeds", "latents"])]
    assert torch.count_nonzero(out) == 0
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs.*'nope'"):
        call(decoder, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["nope"])


def test_batched_embeds_and_images_per_prompt(decoder):
    positive, negative = embeds(2, decoder.unet.config.encoder_hid_dim)
    out = decoder(image_embeds=[positive[:1], positive[1:]], negative_image_embeds=negative, height=64, width=64,
                  num_inference_steps=2, num_images_per_prompt=3, output_type="np", generator=generator()).images
    assert out.shape == (6, 64, 64, 3)


@pytest.mark.parametrize("kwargs,message", [
    (dict(height=62), "height must be a positive multiple of 4"),
    (dict(width=0), "width must be a positive multiple"),
    (dict(num_inference_steps=-1), "num_inference_steps must be a positive integer, got -1"),
    (dict(num_images_per_prompt=0), "num_images_per_prompt"),
    (dict(negative_image_embeds=torch.zeros(3, 32)), "negative_image_embeds has batch size 3"),
    (dict(image_embeds=torch.zeros(1, 32, 1)), "image_embeds must have 2 dimensions"),
])
def test_bad_input_fails_before_models_run(decoder, monkeypatch, kwargs, message):
    def boom(*args, **kwargs):
        raise AssertionError("a model ran before the input was checked")

    monkeypatch.setattr(decoder.unet, "forward", boom)
    monkeypatch.setattr(decoder.movq, "decode", boom)
    with pytest.raises(ValueError, match=message):
        call(decoder, **kwargs)


def test_img2img_bad_input(decoder_folder):
    pipe = sfumato.KandinskyV22Img2ImgPipeline.from_pretrained(decoder_folder("small"))
    positive, negative = embeds(2, pipe.unet.config.encoder_hid_dim)
    common = dict(image_embeds=positive, negative_image_embeds=negative, height=64, width=64, num_inference_steps=4)
    for strength in (-0.1, 1.5):
        with pytest.raises(ValueError, match=f"strength must be a number in \\[0, 1\\], got {strength}"):
            pipe(image=picture(64, 64), strength=strength, **common)
    with pytest.raises(ValueError, match="leaves no denoising step"):
        pipe(image=picture(64, 64), strength=0.1, **common)
    with pytest.raises(ValueError, match="image has batch size 3"):
        pipe(image=[picture(64, 64)] * 3, strength=0.5, **common)


def test_inpaint_bad_input(decoder_folder):
    pipe = sfumato.KandinskyV22InpaintPipeline.from_pretrained(decoder_folder("small", "inpaint"))
    positive, negative = embeds(1, pipe.unet.config.encoder_hid_dim)
    common = dict(image_embeds=positive, negative_image_embeds=negative, height=64, width=64, num_inference_steps=2)
    with pytest.raises(ValueError, match=r"image has size \(32, 32\) \(height, width\), but height and width ask"):
        pipe(image=np.zeros((32, 32, 3), np.uint8), mask_image=np.zeros((64, 64), np.float32), **common)
    with pytest.raises(ValueError, match="mask_image"):
        pipe(image=picture(64, 64), mask_image=None, **common)


def test_controlnet_bad_hint(decoder_folder):
    pipe = sfumato.KandinskyV22ControlnetPipeline.from_pretrained(decoder_folder("deep", "controlnet"))
    positive, negative = embeds(1, pipe.unet.config.encoder_hid_dim)
    common = dict(image_embeds=positive, negative_image_embeds=negative, height=64, width=64, num_inference_steps=2)
    with pytest.raises(ValueError, match="hint must have 3 channels"):
        pipe(hint=torch.rand(1, 1, 64, 64), **common)
    with pytest.raises(ValueError, match="hint has size"):
        pipe(hint=torch.rand(1, 3, 32, 32), **common)
    with pytest.raises(ValueError, match="hint has batch size 2"):
        pipe(hint=torch.rand(2, 3, 64, 64), **common)


def test_prior_bad_input(prior_folder):
    pipe = sfumato.KandinskyV22PriorPipeline.from_pretrained(prior_folder["small"])
    with pytest.raises(ValueError, match="prompt must be a string"):
        pipe(prompt=3)
    with pytest.raises(ValueError, match="negative_prompt has 3 entries"):
        pipe(prompt=["a", "b"], negative_prompt=["x", "y", "z"])
    with pytest.raises(ValueError, match="weights"):
        pipe.interpolate(["a", "b"], [1.0])


def combined_folder(tmp_path, prior_folder, decoder_folder, kind="text2img"):
    """A decoder folder whose model card names its prior, as the hub repos do."""
    folder = tmp_path / f"decoder-{kind}"
    shutil.copytree(decoder_folder("small", kind), folder)
    (folder / "README.md").write_text(f"---\nprior:\n- {prior_folder['small']}\n---\n# decoder\n")
    return folder


def test_combined_matches_reference_and_prior_plus_decoder(tmp_path, prior_folder, decoder_folder):
    folder = combined_folder(tmp_path, prior_folder, decoder_folder)
    ours = sfumato.AutoPipelineForText2Image.from_pretrained(folder)
    assert type(ours).__name__ == "KandinskyV22CombinedPipeline"
    import diffusers

    theirs = diffusers.AutoPipelineForText2Image.from_pretrained(folder)
    kwargs = dict(prompt="a red circle", height=64, width=64, num_inference_steps=2, prior_num_inference_steps=2,
                  output_type="np")
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    a = ours(**kwargs, generator=generator()).images
    assert_close(a, theirs(**kwargs, generator=generator()).images)
    # saved as one folder, it loads back as the same combined pipeline
    ours.save_pretrained(tmp_path / "combined")
    index = json.loads((tmp_path / "combined" / "model_index.json").read_text())
    assert index["prior_prior"] == ["diffusers", "PriorTransformer"]
    again = sfumato.AutoPipelineForText2Image.from_pretrained(tmp_path / "combined")
    again.set_progress_bar_config(disable=True)
    assert_close(again(**kwargs, generator=generator()).images, a)


def test_auto_from_pipe_reuses_components(tmp_path, prior_folder, decoder_folder):
    text2img = sfumato.AutoPipelineForText2Image.from_pretrained(combined_folder(tmp_path, prior_folder,
                                                                                decoder_folder))
    img2img = sfumato.AutoPipelineForImage2Image.from_pipe(text2img)
    assert type(img2img).__name__ == "KandinskyV22Img2ImgCombinedPipeline"
    assert img2img.unet is text2img.unet and img2img.prior_prior is text2img.prior_prior
    decoder_only = sfumato.KandinskyV22Pipeline.from_pipe(text2img)
    assert sfumato.AutoPipelineForImage2Image.from_pipe(decoder_only).__class__.__name__ == \
        "KandinskyV22Img2ImgPipeline"
    img2img.set_progress_bar_config(disable=True)
    out = img2img(prompt="a red circle", image=picture(64, 64), height=64, width=64, num_inference_steps=4,
                  strength=0.5, prior_num_inference_steps=2, output_type="np", generator=generator()).images
    assert out.shape == (1, 64, 64, 3)


def test_inpaint_combined_matches_reference(tmp_path, prior_folder, decoder_folder):
    folder = combined_folder(tmp_path, prior_folder, decoder_folder, "inpaint")
    import diffusers

    ours = sfumato.AutoPipelineForInpainting.from_pretrained(folder)
    theirs = diffusers.AutoPipelineForInpainting.from_pretrained(folder)
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a blue square", image=picture(64, 64), mask_image=mask(64, 64), height=64, width=64,
                  num_inference_steps=2, prior_num_inference_steps=2, output_type="np")
    assert_close(ours(**kwargs, generator=generator()).images, theirs(**kwargs, generator=generator()).images)


def test_reference_fp16_variant_loads_as_fp16(tmp_path, decoder_folder):
    import diffusers

    reference = diffusers.KandinskyV22Pipeline.from_pretrained(decoder_folder("small"), torch_dtype=torch.float16)
    reference.save_pretrained(tmp_path / "fp16", variant="fp16")
    assert (tmp_path / "fp16" / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    ours = sfumato.KandinskyV22Pipeline.from_pretrained(tmp_path / "fp16", variant="fp16",
                                                        torch_dtype=torch.float16)
    assert ours.unet.dtype == torch.float16 and ours.movq.dtype == torch.float16
    for name in ("unet", "movq"):
        mine, theirs = getattr(ours, name).state_dict(), getattr(reference, name).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_missing_prior_in_model_card_is_a_clear_error(tmp_path, decoder_folder):
    from sfumato.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="prior_prior"):
        sfumato.AutoPipelineForText2Image.from_pretrained(decoder_folder("small"))


@pytest.mark.parametrize("name", ["PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
                                  "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler"])
def test_every_scheduler_swaps_in(decoder, name):
    """Schedulers whose step draws no noise (PNDM, LMS) must work too: the loop passes a generator only
    to those that take one."""
    original = decoder.scheduler
    try:
        decoder.scheduler = getattr(sfumato, name).from_config(original.config)
        out = call(decoder, num_inference_steps=5).images
    finally:
        decoder.scheduler = original
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


@pytest.mark.parametrize("prompt,negative,n,strength", [
    ("a red circle", None, 1, 0.5),
    (["a red circle", "a blue square"], ["dark", "noisy"], 2, 0.75),
])
def test_img2img_combined_matches_reference(tmp_path, prior_folder, decoder_folder, prompt, negative, n, strength):
    import diffusers

    folder = combined_folder(tmp_path, prior_folder, decoder_folder)
    ours = sfumato.AutoPipelineForImage2Image.from_pretrained(folder)
    theirs = diffusers.AutoPipelineForImage2Image.from_pretrained(folder)
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt=prompt, negative_prompt=negative, image=picture(64, 64), height=64, width=64,
                  num_inference_steps=4, strength=strength, num_images_per_prompt=n, prior_num_inference_steps=2,
                  output_type="np")
    a = ours(**kwargs, generator=generator()).images
    assert len(a) == (2 if isinstance(prompt, list) else 1) * n
    assert_close(a, theirs(**kwargs, generator=generator()).images)


def test_text2img_combined_batch_matches_reference(tmp_path, prior_folder, decoder_folder):
    import diffusers

    folder = combined_folder(tmp_path, prior_folder, decoder_folder)
    ours = sfumato.KandinskyV22CombinedPipeline.from_pretrained(folder)
    theirs = diffusers.KandinskyV22CombinedPipeline.from_pretrained(folder)
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt=["a red circle", "a blue square"], negative_prompt=["dark", "noisy"], height=64, width=96,
                  num_inference_steps=2, prior_num_inference_steps=3, num_images_per_prompt=2, guidance_scale=3.0,
                  prior_guidance_scale=2.0, output_type="np")
    a = ours(**kwargs, generator=generator()).images
    assert a.shape == (4, 64, 96, 3)
    assert_close(a, theirs(**kwargs, generator=generator()).images)
