"""Kandinsky 3 behaviour the reference gets wrong or leaves open: batches, sizes, bad input, saving, truncation."""

import logging

import numpy as np
import pytest
import torch

import sfumato

from ..parity import assert_close, generator, picture
from .builders import load_both


def load(folder, name="Kandinsky3Pipeline", **kwargs):
    pipe = getattr(sfumato, name).from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe(k3_folder):
    return load(k3_folder("small"))


@pytest.fixture(scope="module")
def img2img(pipe):
    return sfumato.Kandinsky3Img2ImgPipeline.from_pipe(pipe)


def common(**kwargs):
    return dict(dict(height=64, width=64, num_inference_steps=2, output_type="np"), **kwargs)


# ----------------------------------------------------------------------------- batches


def test_each_image_reads_its_own_prompts_mask(pipe):
    """Two prompts of different lengths, two images each: every image equals its prompt's single run.

    (The reference repeats the embeddings per image but tiles the masks, so its images 1 and 2 read the
    other prompt's mask.)
    """
    prompts = ["a cat", "a very old house in the dark forest at night"]
    negatives = ["blurry", "low quality"]
    seeds = [1, 2, 3, 4]
    batch = pipe(prompt=prompts, negative_prompt=negatives, num_images_per_prompt=2,
                 generator=[generator(s) for s in seeds], **common()).images
    for i, seed in enumerate(seeds):
        single = pipe(prompt=prompts[i // 2], negative_prompt=negatives[i // 2], generator=generator(seed),
                      **common()).images
        assert_close(batch[i:i + 1], single)
    assert np.abs(batch[0] - batch[2]).max() > 1e-3


def test_one_negative_prompt_serves_every_prompt(pipe):
    """The reference fails on one negative string with several prompts; it means that negative for each."""
    one = pipe(prompt=["a cat", "a dog"], negative_prompt="blurry", generator=generator(), **common()).images
    each = pipe(prompt=["a cat", "a dog"], negative_prompt=["blurry", "blurry"], generator=generator(),
                **common()).images
    assert_close(one, each)


def test_no_negative_prompt_differs_from_the_empty_one(pipe):
    """As in the reference: no negative prompt means an all-zero unconditional half, not the encoding of ""."""
    none = pipe(prompt="a cat", generator=generator(), **common()).images
    empty = pipe(prompt="a cat", negative_prompt="", generator=generator(), **common()).images
    assert np.abs(none - empty).max() > 1e-3


def test_img2img_one_picture_for_every_prompt(img2img):
    kwargs = dict(image=picture(64, 64, 3), strength=0.7, num_inference_steps=3, output_type="np")
    both = img2img(prompt=["a cat", "a dog"], generator=[generator(1), generator(2)], **kwargs).images
    for i, (prompt, seed) in enumerate((("a cat", 1), ("a dog", 2))):
        assert_close(both[i:i + 1], img2img(prompt=prompt, generator=generator(seed), **kwargs).images)


def test_img2img_keeps_the_pictures_size(img2img):
    out = img2img(prompt="a cat", image=picture(128, 64, 3), strength=0.5, num_inference_steps=2,
                  output_type="pil").images
    assert out[0].size == (64, 128)


def test_callback_sees_no_negative_tensors_without_guidance(pipe):
    seen = []
    pipe(prompt="a cat", guidance_scale=1.0, generator=generator(), **common(),
         callback_on_step_end=lambda p, i, t, tensors: seen.append(tensors) or {},
         callback_on_step_end_tensor_inputs=["latents", "prompt_embeds", "negative_prompt_embeds", "attention_mask"])
    assert len(seen) == 2 and seen[0]["negative_prompt_embeds"] is None
    assert seen[0]["prompt_embeds"].shape[0] == seen[0]["attention_mask"].shape[0] == 1


# ----------------------------------------------------------------------------- prompts and embeddings


def test_too_long_prompt_is_cut_with_a_warning_as_the_reference_cuts_it(k3_folder, caplog):
    ours, theirs = load_both(k3_folder("small"), "Kandinsky3Pipeline")
    long_prompt = " ".join(["a red cat on the sea at night"] * 30)  # far beyond 128 tokens
    with caplog.at_level(logging.WARNING, logger="sfumato"):
        a = ours(prompt=long_prompt, generator=generator(), **common()).images
    assert any("128" in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records)
    b = theirs(prompt=long_prompt, generator=generator(), **common()).images
    assert_close(a, b)
    embeds, _, mask, _ = ours.encode_prompt(long_prompt, _cut_context=True)
    assert embeds.shape[1] == mask.shape[1] == 128 and int(mask.sum()) == 128


def test_encode_prompt_then_release_the_encoder(k3_folder, pipe):
    """The memory recipe by hand: encode, drop the encoder, generate from the embeddings."""
    embeds, negative, mask, negative_mask = pipe.encode_prompt("a red cat", negative_prompt="blurry",
                                                               _cut_context=True)
    expected = pipe(prompt="a red cat", negative_prompt="blurry", generator=generator(), **common()).images
    without = load(k3_folder("small"), text_encoder=None, tokenizer=None)
    assert without.text_encoder is None
    got = without(prompt_embeds=embeds, negative_prompt_embeds=negative, attention_mask=mask,
                  negative_attention_mask=negative_mask, generator=generator(), **common()).images
    assert_close(got, expected)
    with pytest.raises(ValueError, match="no text_encoder or tokenizer"):
        without(prompt="a cat", **common())


def test_save_and_reload_in_both_libraries(tmp_path, pipe):
    import diffusers

    pipe.save_pretrained(tmp_path / "saved")
    again = load(tmp_path / "saved")
    theirs = diffusers.Kandinsky3Pipeline.from_pretrained(tmp_path / "saved")
    theirs.set_progress_bar_config(disable=True)
    expected = pipe(prompt="a cat", generator=generator(), **common()).images
    assert_close(again(prompt="a cat", generator=generator(), **common()).images, expected)
    assert_close(theirs(prompt="a cat", generator=generator(), **common()).images, expected)


def test_dtype_per_component(k3_folder):
    pipe = load(k3_folder("small"), torch_dtype={"text_encoder": torch.bfloat16, "default": torch.float32})
    assert pipe.text_encoder.dtype == torch.bfloat16 and pipe.unet.dtype == torch.float32
    out = pipe(prompt="a cat", generator=generator(), **common()).images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


def test_movq_in_another_dtype_than_the_unet(k3_folder, pipe, img2img):
    """torch_dtype per component: latents cross into the MoVQ's dtype and back (the reference fails here)."""
    mixed = load(k3_folder("small"), torch_dtype={"movq": torch.bfloat16, "default": torch.float32})
    assert mixed.movq.dtype == torch.bfloat16 and mixed.unet.dtype == torch.float32
    got = mixed(prompt="a cat", generator=generator(), **common()).images
    assert np.abs(got - pipe(prompt="a cat", generator=generator(), **common()).images).max() < 0.05
    kwargs = dict(prompt="a cat", image=picture(64, 64, 3), strength=0.5, num_inference_steps=2, output_type="np")
    got = sfumato.Kandinsky3Img2ImgPipeline.from_pipe(mixed)(**kwargs, generator=generator()).images
    assert np.abs(got - img2img(**kwargs, generator=generator()).images).max() < 0.05


# ----------------------------------------------------------------------------- bad input, before any model runs


@pytest.fixture
def no_models(pipe, monkeypatch):
    """Every model raises if it runs: errors must come from the checks."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model ran before the input was checked")

    for module in (pipe.unet, pipe.text_encoder, pipe.movq):
        monkeypatch.setattr(module, "forward", refuse)
    monkeypatch.setattr(pipe.movq, "encode", refuse)
    monkeypatch.setattr(pipe.movq, "decode", refuse)
    return pipe


def embeds_of(pipe, batch=1, tokens=5, width=None):
    width = width or pipe.unet.config.encoder_hid_dim
    return torch.randn(batch, tokens, width), torch.ones(batch, tokens, dtype=torch.long)


@pytest.mark.parametrize("kwargs,message", [
    (dict(prompt=["a", "b"], negative_prompt=["x", "y", "z"]), "negative_prompt has 3 entries, but prompt has 2"),
    (dict(prompt=[]), "prompt must be a string or a non-empty list"),
    (dict(prompt=None), "prompt is required"),
    (dict(prompt=["a cat", 3]), "prompt must be a string or a non-empty list"),
    (dict(prompt="a cat", height=96), "height must be a positive multiple of 64"),
    (dict(prompt="a cat", width=100), "width must be a positive multiple of 64"),
    (dict(prompt="a cat", num_images_per_prompt=0), "num_images_per_prompt must be a positive integer"),
    (dict(prompt="a cat", output_type="jpeg"), "output_type must be one of"),
    (dict(prompt="a cat", callback_on_step_end_tensor_inputs=["noise"]), "callback_on_step_end_tensor_inputs"),
    (dict(prompt="a cat", latents=torch.zeros(1, 4, 4, 4)), "latents"),
    (dict(prompt="a cat", unknown_keyword=1), "unexpected keyword"),
])
def test_bad_input_is_named_before_any_model_runs(no_models, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        no_models(**common(**kwargs))


def test_bad_embeddings_are_named_before_any_model_runs(no_models):
    pipe = no_models
    embeds, mask = embeds_of(pipe)
    wide, wide_mask = embeds_of(pipe, width=pipe.unet.config.encoder_hid_dim + 1)
    cases = [
        (dict(prompt_embeds=embeds), "prompt_embeds needs attention_mask"),
        (dict(prompt_embeds=wide, attention_mask=wide_mask), "prompt_embeds has width 25, but this UNet reads"),
        (dict(prompt_embeds=embeds, attention_mask=mask[:, :3]), r"attention_mask must have shape \(1, 5\)"),
        (dict(prompt_embeds=embeds, attention_mask=mask * 2), "only 0"),
        (dict(prompt_embeds=embeds[0], attention_mask=mask), "prompt_embeds must be a tensor of shape"),
        (dict(prompt_embeds=embeds * float("nan"), attention_mask=mask), "NaN"),
        (dict(prompt="a cat", prompt_embeds=embeds, attention_mask=mask), "not both"),
        (dict(prompt="a cat", attention_mask=mask), "attention_mask goes with prompt_embeds"),
        (dict(prompt_embeds=embeds, attention_mask=mask, negative_prompt_embeds=embeds),
         "negative_prompt_embeds needs negative_attention_mask"),
        (dict(prompt_embeds=embeds, attention_mask=mask, negative_prompt_embeds=embeds[:, :4],
              negative_attention_mask=mask[:, :4]), "must be the same"),
        (dict(prompt="a cat", negative_prompt_embeds=embeds, negative_attention_mask=mask),
         "negative_prompt_embeds goes with prompt_embeds"),
        (dict(prompt_embeds=embeds, attention_mask=mask, negative_prompt="x", negative_prompt_embeds=embeds,
              negative_attention_mask=mask), "not both"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            pipe(**common(**kwargs))


def test_img2img_bad_input_before_any_model_runs(no_models):
    img2img = sfumato.Kandinsky3Img2ImgPipeline.from_pipe(no_models)
    with pytest.raises(ValueError, match="height must be a positive multiple of 64"):
        img2img(prompt="a cat", image=picture(100, 64), num_inference_steps=2)
    with pytest.raises(ValueError, match="image is required"):
        img2img(prompt="a cat", num_inference_steps=2)
    with pytest.raises(ValueError, match="strength"):
        img2img(prompt="a cat", image=picture(64, 64), strength=0.1, num_inference_steps=2)
    with pytest.raises(ValueError, match="image has batch size 3"):
        img2img(prompt=["a", "b"], image=[picture(64, 64, i) for i in range(3)], strength=0.5,
                num_inference_steps=2)
    with pytest.raises(TypeError, match="unexpected keyword"):
        img2img(prompt="a cat", image=picture(64, 64), strength=0.5, num_inference_steps=2, unknown_keyword=1)


def test_sizes_the_reference_would_round_are_refused(k3_folder):
    """The reference silently makes 128x128 when asked for 96x96 (it rounds up to 64); we say so instead."""
    ours, theirs = load_both(k3_folder("small"), "Kandinsky3Pipeline")
    assert theirs(prompt="a cat", **common(height=96, width=96)).images.shape == (1, 128, 128, 3)
    with pytest.raises(ValueError, match=r"height must be a positive multiple of 64 .* \(e.g. 64 or 128\)"):
        ours(prompt="a cat", **common(height=96, width=96))
