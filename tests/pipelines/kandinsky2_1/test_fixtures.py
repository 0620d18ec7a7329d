"""The tiny 2.1 folders are sound: the reference runs them, and our text encoder and tokenizer load from them."""

import json

import numpy as np
import PIL.Image
import pytest
import torch

from sfumato.models.multilingual_clip import MultilingualCLIP
from sfumato.pipelines.base import load_component

from . import builders

PROMPTS = ["a red cat, 4k photo", "Ein Pferd im Wald bei Nacht!"]


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def embeds(dim, batch=1, seed=0):
    g = generator(seed)
    return torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g)


def reference(folder, class_name):
    import diffusers

    pipe = getattr(diffusers, class_name).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_folders_have_the_reference_layout(decoder_folder, prior_folder):
    index = json.loads((decoder_folder("small") / "model_index.json").read_text())
    assert index["_class_name"] == "KandinskyPipeline"
    assert index["text_encoder"] == ["kandinsky", "MultilingualCLIP"]
    assert index["tokenizer"] == ["transformers", "XLMRobertaTokenizer"]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    scheduler = json.loads((decoder_folder("small") / "scheduler" / "scheduler_config.json").read_text())
    assert {k: scheduler[k] for k in builders.DDIM_CONFIG} == builders.DDIM_CONFIG
    assert scheduler["timestep_spacing"] == "leading"
    inpaint = json.loads((decoder_folder("small", "inpaint") / "model_index.json").read_text())
    assert inpaint["_class_name"] == "KandinskyInpaintPipeline"
    assert json.loads((decoder_folder("small", "inpaint") / "unet" / "config.json").read_text())["in_channels"] == 9
    prior = json.loads((prior_folder["small"] / "model_index.json").read_text())
    assert prior["_class_name"] == "KandinskyPriorPipeline"
    assert prior["scheduler"] == ["diffusers", "UnCLIPScheduler"]


@pytest.mark.parametrize("config", list(builders.DECODER_CONFIGS))
def test_reference_text2img_runs(decoder_folder, config):
    pipe = reference(decoder_folder(config), "KandinskyPipeline")
    image_embeds, negative = embeds(builders.DECODER_CONFIGS[config]["image_embed_dim"])
    images = pipe(prompt=PROMPTS[0], image_embeds=image_embeds, negative_image_embeds=negative, height=64, width=64,
                  num_inference_steps=2, generator=generator(), output_type="np").images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all() and images.std() > 0.01


def test_reference_img2img_and_inpaint_run(decoder_folder):
    dim = builders.DECODER_CONFIGS["small"]["image_embed_dim"]
    image_embeds, negative = embeds(dim)
    picture = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    img2img = reference(decoder_folder("small"), "KandinskyImg2ImgPipeline")
    images = img2img(prompt=PROMPTS[0], image=picture, image_embeds=image_embeds, negative_image_embeds=negative,
                     height=64, width=64, num_inference_steps=4, strength=0.5, generator=generator(),
                     output_type="np").images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()

    inpaint = reference(decoder_folder("small", "inpaint"), "KandinskyInpaintPipeline")
    mask = np.zeros((64, 64), dtype=np.float32)
    mask[16:40, 20:60] = 1
    images = inpaint(prompt=PROMPTS[0], image=picture, mask_image=mask, image_embeds=image_embeds,
                     negative_image_embeds=negative, height=64, width=64, num_inference_steps=2,
                     generator=generator(), output_type="np").images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_reference_prior_runs(prior_folder):
    pipe = reference(prior_folder["small"], "KandinskyPriorPipeline")
    output = pipe(prompt=PROMPTS[0], num_inference_steps=2, generator=generator())
    dim = builders.PRIOR_CONFIGS["small"]["embed_dim"]
    assert output.image_embeds.shape == output.negative_image_embeds.shape == (1, dim)
    assert torch.isfinite(output.image_embeds).all()


def test_reference_combined_runs(tmp_path, decoder_folder, prior_folder):
    import diffusers

    folder = builders.save_combined(tmp_path / "combined", decoder_folder("small"), prior_folder["small"])
    pipe = diffusers.AutoPipelineForText2Image.from_pretrained(folder)
    assert type(pipe).__name__ == "KandinskyCombinedPipeline"
    pipe.set_progress_bar_config(disable=True)
    images = pipe(prompt=PROMPTS[0], height=64, width=64, num_inference_steps=2, prior_num_inference_steps=2,
                  generator=generator(), output_type="np").images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_tokenizer_round_trips_and_spells_prompts(decoder_folder):
    from transformers import AutoTokenizer, XLMRobertaTokenizer

    folder = decoder_folder("small") / "tokenizer"
    built = builders.xlm_roberta_tokenizer()
    for loaded in (AutoTokenizer.from_pretrained(folder), XLMRobertaTokenizer.from_pretrained(folder)):
        assert type(loaded).__name__ == "XLMRobertaTokenizer"
        assert loaded.get_vocab() == built.get_vocab()
        batch = loaded(PROMPTS, padding="max_length", max_length=77, truncation=True, return_attention_mask=True,
                       add_special_tokens=True, return_tensors="pt")
        assert batch.input_ids.shape == (2, 77)
        assert batch.input_ids[:, 0].tolist() == [0, 0] and (batch.input_ids == loaded.unk_token_id).sum() == 0
        assert batch.input_ids[0, 1:4].tolist() == loaded.convert_tokens_to_ids(["\u2581a", "\u2581red", "\u2581cat"])
        assert loaded.decode(batch.input_ids[1], skip_special_tokens=True) == PROMPTS[1]
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.mask_token_id) == (1, 2, len(loaded) - 1)


@pytest.mark.parametrize("config", list(builders.DECODER_CONFIGS))
def test_our_text_encoder_loads_from_the_folder_and_matches(decoder_folder, config):
    folder = decoder_folder(config)
    index = json.loads((folder / "model_index.json").read_text())
    ours = load_component(folder, "text_encoder", index["text_encoder"], None, None, None)
    tokenizer = load_component(folder, "tokenizer", index["tokenizer"], None, None, None)
    assert type(ours) is MultilingualCLIP and not ours.training
    # released folders may name the fast class; in transformers 5 it is the same tokenizer
    fast = load_component(folder, "tokenizer", ["transformers", "XLMRobertaTokenizerFast"], None, None, None)
    assert fast.get_vocab() == tokenizer.get_vocab()
    theirs = reference(folder, "KandinskyPipeline").text_encoder

    batch = tokenizer(PROMPTS + [""], padding="max_length", max_length=77, truncation=True,
                      return_attention_mask=True, add_special_tokens=True, return_tensors="pt")
    with torch.no_grad():
        got = ours(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        expected = theirs(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and (g - e).abs().max() <= 1e-5
    dims = builders.DECODER_CONFIGS[config]
    assert got[0].shape == (3, dims["image_embed_dim"]) and got[1].shape == (3, 77, dims["text_dim"])
