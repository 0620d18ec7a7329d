"""Kandinsky 2.1 behaviour the reference gets wrong or leaves open: batches, sizes, bad input, auto pipelines."""

import logging

import numpy as np
import pytest
import torch

import sfumato

from ..parity import assert_close, embeds, generator, mask, picture
from .builders import save_combined


def load(folder, name):
    pipe = getattr(sfumato, name).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def decoder(decoder_folder):
    return load(decoder_folder("small"), "KandinskyPipeline")


def common(pipe, batch=1, **kwargs):
    positive, negative = embeds(batch, pipe.unet.config.cross_attention_dim)
    return dict(prompt="a red circle", image_embeds=positive, negative_image_embeds=negative, height=64, width=64,
                num_inference_steps=2, output_type="np", **kwargs)


@pytest.mark.parametrize("kind,pipeline", [("text2img", "KandinskyPipeline"), ("text2img", "KandinskyImg2ImgPipeline"),
                                           ("inpaint", "KandinskyInpaintPipeline")])
def test_images_per_prompt_without_guidance(decoder_folder, kind, pipeline):
    """Without guidance the reference forgets to repeat image embeddings per image; each image must equal a
    single-image run with the same generator."""
    pipe = load(decoder_folder("small", kind), pipeline)
    extra = {"text2img": {}, "inpaint": dict(image=picture(64, 64), mask_image=mask(64, 64))}[kind]
    if pipeline == "KandinskyImg2ImgPipeline":
        extra = dict(image=picture(64, 64), strength=0.9)
    kwargs = common(pipe, guidance_scale=1.0, **extra)
    both = pipe(**kwargs, num_images_per_prompt=2, generator=[generator(1), generator(2)]).images
    for i, seed in enumerate((1, 2)):
        assert_close(both[i:i + 1], pipe(**kwargs, generator=generator(seed)).images)
    assert np.abs(both[0] - both[1]).max() > 1e-3


@pytest.mark.parametrize("height,width", [(64, 96), (96, 64)])
def test_img2img_non_square_is_right_way_round(decoder_folder, height, width, monkeypatch):
    """The reference resizes the picture to width x height swapped; ours encodes it at height x width."""
    pipe = load(decoder_folder("small"), "KandinskyImg2ImgPipeline")
    encoded = []
    encode = pipe.movq.encode
    monkeypatch.setattr(pipe.movq, "encode", lambda pixels: encoded.append(tuple(pixels.shape)) or encode(pixels))
    out = pipe(**{**common(pipe), "height": height, "width": width}, image=picture(height, width, 3), strength=0.5,
               generator=generator()).images
    assert encoded == [(1, 3, height, width)]
    assert out.shape == (1, height, width, 3)


def test_inpaint_batch_uses_each_picture(decoder_folder):
    pipe = load(decoder_folder("small", "inpaint"), "KandinskyInpaintPipeline")
    images = [picture(64, 64, 1), picture(64, 64, 2)]
    kwargs = common(pipe, batch=2)
    kwargs["prompt"] = ["a red circle", "a blue square"]
    both = pipe(**kwargs, image=images, mask_image=[mask(64, 64)] * 2,
                generator=[generator(1), generator(2)]).images
    for i in range(2):
        single = dict(kwargs, prompt=kwargs["prompt"][i], image_embeds=kwargs["image_embeds"][i:i + 1],
                      negative_image_embeds=kwargs["negative_image_embeds"][i:i + 1])
        assert_close(both[i:i + 1], pipe(**single, image=images[i], mask_image=mask(64, 64),
                                         generator=generator(i + 1)).images)


def test_combined_gives_every_image_its_prompt(tmp_path, prior_folder, decoder_folder):
    """Batched prompts with several images each: image k of prompt p is decoded with prompt p."""
    folder = save_combined(tmp_path / "combined", decoder_folder("small"), prior_folder["small"])
    pipe = load(folder, "KandinskyCombinedPipeline")
    prompts = ["a red circle", "a blue square"]
    kwargs = dict(num_images_per_prompt=2, height=64, width=64, num_inference_steps=2, prior_num_inference_steps=2,
                  output_type="np")
    out = pipe(prompt=prompts, **kwargs, generator=generator()).images
    embeds_, negative = pipe.prior_pipe(prompts, num_images_per_prompt=2, num_inference_steps=2,
                                        generator=generator(), return_dict=False)
    decoded = pipe.decoder_pipe(prompt=[p for p in prompts for _ in range(2)], image_embeds=embeds_,
                                negative_image_embeds=negative, height=64, width=64, num_inference_steps=2,
                                output_type="np", generator=generator_after_prior(pipe, prompts)).images
    assert_close(out, decoded)


def generator_after_prior(pipe, prompts):
    """The generator as the combined pipeline hands it to the decoder: after the prior drew from it."""
    g = generator()
    pipe.prior_pipe(prompts, num_images_per_prompt=2, num_inference_steps=2, generator=g)
    return g


@pytest.mark.parametrize("kwargs,message", [
    (dict(prompt=["a", "b"], negative_prompt=["x", "y", "z"], image_embeds=torch.zeros(2, 32),
          negative_image_embeds=torch.zeros(2, 32)), "negative_prompt has 3 entries, but prompt has 2"),
    (dict(prompt=[]), "prompt must be a string or a non-empty list"),
    (dict(image_embeds=torch.zeros(1, 7), negative_image_embeds=torch.zeros(1, 7)), "image_embeds has width 7"),
    (dict(negative_image_embeds=torch.zeros(1, 7)), "negative_image_embeds has width 7"),
    (dict(prompt=["a", "b", "c"]), "image_embeds has 1 rows, but there are 3 prompts"),
    (dict(height=65), "height must be a positive multiple"),
    (dict(output_type="foo"), "output_type must be one of"),
    (dict(callback_steps=0, callback=print), "callback_steps must be a positive integer"),
])
def test_bad_input_fails_before_models_run(decoder, monkeypatch, kwargs, message):
    def boom(*args, **kwargs):
        raise AssertionError("a model ran before the input was checked")

    monkeypatch.setattr(decoder.unet, "forward", boom)
    monkeypatch.setattr(decoder.text_encoder, "forward", boom)
    monkeypatch.setattr(decoder.movq, "decode", boom)
    with pytest.raises(ValueError, match=message):
        decoder(**{**common(decoder), **kwargs}, generator=generator())


def test_combined_checks_decoder_arguments_before_the_prior(tmp_path, prior_folder, decoder_folder, monkeypatch):
    pipe = load(save_combined(tmp_path / "combined", decoder_folder("small"), prior_folder["small"]),
                "KandinskyCombinedPipeline")

    def boom(*args, **kwargs):
        raise AssertionError("the prior ran before the decoder's arguments were checked")

    monkeypatch.setattr(pipe.prior_pipe.prior, "forward", boom)
    for bad, message in ((dict(height=65), "height"), (dict(num_inference_steps=0), "num_inference_steps"),
                         (dict(output_type="foo"), "output_type")):
        with pytest.raises(ValueError, match=message):
            pipe(prompt="a cat", **{"height": 64, "width": 64, **bad})


def test_long_prompt_is_truncated_with_a_warning(decoder, caplog):
    long_prompt = " ".join(["red blue green cat"] * 40)
    with caplog.at_level(logging.WARNING, logger="sfumato"):
        decoder(**{**common(decoder), "prompt": long_prompt}, generator=generator())
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "dropped" in message and "reads 77" in message
    assert len(message) < 400


def test_auto_pipelines_resolve_2_1_and_from_pipe_reuses_components(tmp_path, prior_folder, decoder_folder):
    folder = save_combined(tmp_path / "combined", decoder_folder("small", "inpaint"), prior_folder["small"])
    inpaint = sfumato.AutoPipelineForInpainting.from_pretrained(folder)
    assert type(inpaint).__name__ == "KandinskyInpaintCombinedPipeline"
    text2img = sfumato.AutoPipelineForText2Image.from_pipe(inpaint)
    img2img = sfumato.AutoPipelineForImage2Image.from_pipe(text2img)
    assert type(img2img).__name__ == "KandinskyImg2ImgCombinedPipeline"
    assert img2img.unet is inpaint.unet and img2img.prior_prior is inpaint.prior_prior
    assert img2img.text_encoder is inpaint.text_encoder
    decoder_only = sfumato.KandinskyPipeline.from_pipe(text2img)
    assert type(sfumato.AutoPipelineForImage2Image.from_pipe(decoder_only)).__name__ == "KandinskyImg2ImgPipeline"


def test_save_and_reload_combined_matches(tmp_path, prior_folder, decoder_folder):
    pipe = load(save_combined(tmp_path / "combined", decoder_folder("small"), prior_folder["small"]),
                "KandinskyCombinedPipeline")
    pipe.save_pretrained(tmp_path / "saved")
    again = load(tmp_path / "saved", "KandinskyCombinedPipeline")
    kwargs = dict(prompt="a cat", height=64, width=64, num_inference_steps=2, prior_num_inference_steps=2,
                  output_type="np")
    assert_close(pipe(**kwargs, generator=generator()).images, again(**kwargs, generator=generator()).images)
