"""Kandinsky 3 pipelines against the reference: same folders, inputs and seeds -> same numbers.

Configurations stay where the reference is right: it tiles attention masks while
it repeats prompts per image (several prompts with several images each), cannot
spread one negative prompt or one picture over several prompts, and sizes its
latents for an 8x MoVQ at multiples of 64; those cases are tested against our
own invariants in test_behaviour.py.
"""

import numpy as np
import pytest
import torch

import sfumato

from ..parity import assert_close, generator, picture, run_both
from .builders import load_both


def saturated(images) -> float:
    """Share of values at 0 or 1: random weights must not make pictures that hide differences."""
    array = np.asarray(images)
    return float(((array <= 0) | (array >= 1)).mean())


@pytest.mark.parametrize("config,height,width,prompt,negative,n,guidance", [
    ("small", 64, 128, "a red cat", None, 1, 3.0),
    ("small", 128, 64, ["a red cat", "a blue dog on the sea"], ["blurry", "dark"], 1, 5.0),
    ("deep", 64, 64, "a green house", "blurry", 2, 3.0),
    ("deep", 128, 64, ["a red cat", "a blue dog"], None, 1, 1.0),
    ("deep", 64, 64, ["an old tree"], [""], 1, 2.0),
])
def test_text2img(k3_folder, config, height, width, prompt, negative, n, guidance):
    ours, theirs = load_both(k3_folder(config), "Kandinsky3Pipeline")
    batch = 1 if isinstance(prompt, str) else len(prompt)
    a, b = run_both(ours, theirs, prompt=prompt, negative_prompt=negative, height=height, width=width,
                    num_inference_steps=3, guidance_scale=guidance, num_images_per_prompt=n, output_type="np")
    assert a.shape == (batch * n, height, width, 3)
    assert saturated(a) < 0.5
    assert_close(a, b)


@pytest.mark.parametrize("config", ["small", "deep"])
def test_text2img_with_prompt_embeds(k3_folder, config):
    """Embeddings from the reference's encode_prompt (full 128 tokens, not cut) give the same pictures."""
    ours, theirs = load_both(k3_folder(config), "Kandinsky3Pipeline")
    embeds, negative, mask, negative_mask = theirs.encode_prompt(["a red cat", "a dog"], negative_prompt=["x", "y"])
    kwargs = dict(prompt_embeds=embeds, negative_prompt_embeds=negative, attention_mask=mask,
                  negative_attention_mask=negative_mask, height=64, width=64, num_inference_steps=2,
                  output_type="np")
    assert_close(*run_both(ours, theirs, **kwargs))
    # without negative embeddings the unconditional half is zeros, as with no negative prompt
    del kwargs["negative_prompt_embeds"], kwargs["negative_attention_mask"]
    assert_close(*run_both(ours, theirs, **kwargs))


@pytest.mark.parametrize("cut", [False, True])
def test_encode_prompt_matches_reference(k3_folder, cut):
    ours, theirs = load_both(k3_folder("small"), "Kandinsky3Pipeline")
    for negative in (None, ["blurry", "the dark sea"]):
        got = ours.encode_prompt(["a red cat", "a very old tree in the forest"], negative_prompt=negative,
                                 num_images_per_prompt=1, _cut_context=cut)
        expected = theirs.encode_prompt(["a red cat", "a very old tree in the forest"], negative_prompt=negative,
                                        num_images_per_prompt=1, _cut_context=cut)
        for a, b in zip(got, expected):
            assert a.shape == b.shape
            assert_close(a.float(), b.float())
    assert ours.encode_prompt("a cat", do_classifier_free_guidance=False)[1:4:2] == (None, None)


def test_fp16_variant_loads_as_fp32(k3_folder):
    ours, theirs = load_both(k3_folder("small", variant="fp16"), "Kandinsky3Pipeline", variant="fp16",
                             torch_dtype=torch.float32)
    assert ours.unet.dtype == ours.text_encoder.dtype == ours.movq.dtype == torch.float32
    a, b = run_both(ours, theirs, prompt=["a red cat", "a blue dog"], negative_prompt=["blurry", "dark"],
                    height=64, width=64, num_inference_steps=3, output_type="np")
    assert_close(a, b)


@pytest.mark.parametrize("output_type", ["pt", "pil", "latent"])
def test_output_types_and_given_latents(k3_folder, output_type):
    ours, theirs = load_both(k3_folder("small"), "Kandinsky3Pipeline")
    latents = torch.randn(1, 4, 8, 16, generator=generator(3))
    a, b = run_both(ours, theirs, prompt="a cat", height=64, width=128, num_inference_steps=2, latents=latents,
                    output_type=output_type)
    if output_type == "pil":
        a, b = np.stack([np.asarray(i) for i in a]), np.stack([np.asarray(i) for i in b])
        assert a.shape == (1, 64, 128, 3)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    else:
        assert_close(a, b)
        assert a.shape == ((1, 4, 8, 16) if output_type == "latent" else (1, 3, 64, 128))
    tuple_out = ours(prompt="a cat", height=64, width=128, num_inference_steps=2, latents=latents,
                     output_type="np", return_dict=False)
    assert isinstance(tuple_out, tuple) and tuple_out[0].shape == (1, 64, 128, 3)


def test_callback_on_step_end_sees_and_changes_the_same_tensors(k3_folder):
    ours, theirs = load_both(k3_folder("deep"), "Kandinsky3Pipeline")
    names = ["latents", "prompt_embeds", "negative_prompt_embeds", "attention_mask", "negative_attention_mask"]
    seen = {"ours": [], "theirs": []}

    def callback(name):
        def on_step(pipe, i, t, tensors):
            seen[name].append({k: v.clone() for k, v in tensors.items()})
            return {"latents": tensors["latents"] * 0.9, "prompt_embeds": tensors["prompt_embeds"] * 1.1}
        return on_step

    images = {}
    for name, pipe in (("ours", ours), ("theirs", theirs)):
        images[name] = pipe(prompt="a red cat", negative_prompt="blurry", height=64, width=64,
                            num_inference_steps=3, generator=generator(), output_type="np",
                            callback_on_step_end=callback(name), callback_on_step_end_tensor_inputs=names).images
    assert_close(images["ours"], images["theirs"])
    assert len(seen["ours"]) == len(seen["theirs"]) == 3
    for step_ours, step_theirs in zip(seen["ours"], seen["theirs"]):
        assert set(step_ours) == set(names)
        for key in names:
            assert step_ours[key].shape == step_theirs[key].shape, key
            assert step_ours[key].dtype == step_theirs[key].dtype, key
            assert_close(step_ours[key].float(), step_theirs[key].float())


def test_legacy_callback_sees_the_same_steps(k3_folder):
    ours, theirs = load_both(k3_folder("small"), "Kandinsky3Pipeline")
    seen = {"ours": [], "theirs": []}
    for name, pipe in (("ours", ours), ("theirs", theirs)):
        pipe(prompt="a cat", height=64, width=64, num_inference_steps=4, generator=generator(), output_type="np",
             callback_steps=2, callback=lambda i, t, latents, name=name: seen[name].append((i, int(t), latents)))
    assert [s[:2] for s in seen["ours"]] == [s[:2] for s in seen["theirs"]] and len(seen["ours"]) == 2
    for (_, _, a), (_, _, b) in zip(seen["ours"], seen["theirs"]):
        assert_close(a, b)


@pytest.mark.parametrize("config,prompt,negative,n,strength,size,guidance", [
    ("small", "a red circle", None, 1, 0.5, (64, 128), 3.0),
    ("small", "a red circle", "blurry", 2, 1.0, (64, 64), 3.0),
    ("deep", ["a red circle", "a blue square"], ["dark", "blurry"], 1, 0.75, (128, 64), 4.0),
    ("deep", ["a red circle", "a blue square"], None, 1, 0.6, (64, 64), 1.0),
])
def test_img2img(k3_folder, config, prompt, negative, n, strength, size, guidance):
    ours, theirs = load_both(k3_folder(config), "Kandinsky3Img2ImgPipeline")
    batch = 1 if isinstance(prompt, str) else len(prompt)
    # one picture per prompt: the reference cannot spread one picture over several prompts
    image = picture(*size, 4) if batch == 1 else [picture(*size, 4 + i) for i in range(batch)]
    a, b = run_both(ours, theirs, prompt=prompt, negative_prompt=negative, image=image, strength=strength,
                    num_inference_steps=4, guidance_scale=guidance, num_images_per_prompt=n, output_type="np")
    assert a.shape == (batch * n, *size, 3)
    assert saturated(a) < 0.5
    assert_close(a, b)


def test_img2img_tensor_picture_prompt_embeds_and_pt_output(k3_folder):
    ours, theirs = load_both(k3_folder("deep"), "Kandinsky3Img2ImgPipeline")
    embeds, negative, mask, negative_mask = theirs.encode_prompt("a red cat", negative_prompt="blurry")
    image = torch.rand(1, 3, 64, 64, generator=generator(5))
    a, b = run_both(ours, theirs, prompt_embeds=embeds, negative_prompt_embeds=negative, attention_mask=mask,
                    negative_attention_mask=negative_mask, image=image, strength=0.8, num_inference_steps=5,
                    output_type="pt")
    assert a.shape == (1, 3, 64, 64) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert_close(a, b)


def test_auto_pipelines_and_from_pipe(k3_folder):
    import diffusers

    folder = k3_folder("small")
    ours = sfumato.AutoPipelineForText2Image.from_pretrained(folder)
    theirs = diffusers.AutoPipelineForText2Image.from_pretrained(folder)
    assert type(ours) is sfumato.Kandinsky3Pipeline
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    assert_close(*run_both(ours, theirs, prompt="a cat", height=64, width=64, num_inference_steps=2,
                           output_type="np"))

    ours_i2i = sfumato.AutoPipelineForImage2Image.from_pipe(ours)
    theirs_i2i = diffusers.AutoPipelineForImage2Image.from_pipe(theirs)
    assert type(ours_i2i) is sfumato.Kandinsky3Img2ImgPipeline
    assert ours_i2i.unet is ours.unet and ours_i2i.text_encoder is ours.text_encoder  # nothing loaded again
    assert_close(*run_both(ours_i2i, theirs_i2i, prompt="a cat", image=picture(64, 64, 2), strength=0.6,
                           num_inference_steps=3, output_type="np"))
    assert type(sfumato.AutoPipelineForImage2Image.from_pretrained(folder)) is sfumato.Kandinsky3Img2ImgPipeline
    assert sfumato.AutoPipelineForText2Image.from_pipe(ours_i2i).unet is ours.unet
