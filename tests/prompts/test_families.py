"""weighted_embeddings per family, end to end on tiny random models.

For each family: a prompt without syntax gives the plain prompt path's pictures
(or embeddings) bit for bit; ``(word:1.5)`` scales exactly that word's token
states before the mean is restored (checked by hand against the encoder's own
output); long prompts continue in chunks where the family's model reads them;
and the keywords returned are the ones the pipeline takes.
"""

import pytest
import torch

from sfumato.prompts import weighted_embeddings

from ..pipelines.parity import embeds, generator, picture

PROMPT = "a red cat on a blue sky"
LONG = ", ".join(["a red cat on a blue sky with a small green tree"] * 4)  # about 180 tokens here


def token_span(tokenizer, prompt, word, prefix=1):
    """(first token, number of tokens) of ``word`` in ``prompt``, after ``prefix`` special tokens."""
    before = prompt[:prompt.index(word)]
    start = prefix + len(tokenizer(before, add_special_tokens=False).input_ids)
    return start, len(tokenizer(word, add_special_tokens=False).input_ids)


def assert_only_word_scaled(weighted, plain, start, count, weight):
    """``weighted`` is ``plain`` with tokens ``start:start+count`` times ``weight``, then rescaled to its mean."""
    scaled = plain.clone()
    scaled[:, start:start + count] *= weight
    expected = scaled * (plain.mean() / scaled.mean())
    torch.testing.assert_close(weighted, expected, rtol=1e-5, atol=1e-6)
    ratio = weighted / plain
    assert torch.allclose(ratio[:, start:start + count], ratio[:, :1] * weight, rtol=1e-4)
    assert not torch.allclose(weighted, plain)


# ---------------------------------------------------------------------------------------------- Stable Diffusion


@pytest.fixture(scope="module")
def sd(load):
    return load("StableDiffusionPipeline", "sd")


SD_CALL = dict(height=32, width=32, num_inference_steps=2, output_type="np")


@pytest.mark.parametrize("negative", [None, "blurry"])
def test_sd_unweighted_is_bit_identical(sd, negative):
    plain = sd(prompt=[PROMPT, "a dog"], negative_prompt=negative, generator=generator(1), **SD_CALL).images
    kwargs = weighted_embeddings(sd, [PROMPT, "a dog"], negative)
    assert sorted(kwargs) == ["negative_prompt_embeds", "prompt_embeds"]
    weighted = sd(**kwargs, generator=generator(1), **SD_CALL).images
    assert (plain == weighted).all()


def test_sd_weight_scales_exactly_that_word(sd):
    kwargs = weighted_embeddings(sd, PROMPT.replace("cat", "(cat:1.5)"))
    plain = sd._encode_prompts([PROMPT], clip_skip=None)
    start, count = token_span(sd.tokenizer, PROMPT, "cat")
    assert_only_word_scaled(kwargs["prompt_embeds"], plain, start, count, 1.5)
    # the negative (empty) prompt is untouched
    assert torch.equal(kwargs["negative_prompt_embeds"], sd._encode_prompts([""], clip_skip=None))
    images = sd(**kwargs, generator=generator(1), **SD_CALL).images
    assert not (images == sd(prompt=PROMPT, generator=generator(1), **SD_CALL).images).all()


def test_sd_clip_skip_as_the_pipeline_applies_it(sd):
    plain = sd(prompt=PROMPT, negative_prompt="blurry", clip_skip=1, generator=generator(1), **SD_CALL).images
    weighted = sd(**weighted_embeddings(sd, PROMPT, "blurry", clip_skip=1), generator=generator(1), **SD_CALL).images
    assert (plain == weighted).all()


def test_sd_long_prompts_are_chunked_not_cut(sd):
    kwargs = weighted_embeddings(sd, LONG, "blurry")
    ids = sd.tokenizer(LONG, add_special_tokens=False).input_ids
    chunks = -(-len(ids) // 75)
    assert chunks >= 2
    assert kwargs["prompt_embeds"].shape[1] == kwargs["negative_prompt_embeds"].shape[1] == 77 * chunks
    # each chunk is the encoding of its 75 tokens with their own start and end tokens
    for chunk in range(chunks):
        body = ids[chunk * 75:(chunk + 1) * 75]
        row = [sd.tokenizer.bos_token_id] + body + [sd.tokenizer.eos_token_id]
        row += [sd.tokenizer.pad_token_id] * (77 - len(row))
        expected = sd.text_encoder(torch.tensor([row]))[0]
        torch.testing.assert_close(kwargs["prompt_embeds"][:, 77 * chunk:77 * (chunk + 1)], expected)
    # the negative prompt: its chunk, then empty ones
    empty = [sd.tokenizer.bos_token_id, sd.tokenizer.eos_token_id] + [sd.tokenizer.pad_token_id] * 75
    torch.testing.assert_close(kwargs["negative_prompt_embeds"][:, 77:154], sd.text_encoder(torch.tensor([empty]))[0])
    images = sd(**kwargs, generator=generator(1), **SD_CALL).images
    assert images.shape == (1, 32, 32, 3)


def test_sd_img2img_takes_them_too(sd):
    import sfumato

    img2img = sfumato.StableDiffusionImg2ImgPipeline.from_pipe(sd)
    call = dict(image=picture(32, 32), strength=0.7, num_inference_steps=3, output_type="np")
    plain = img2img(prompt=PROMPT, generator=generator(2), **call).images
    assert (img2img(**weighted_embeddings(img2img, PROMPT), generator=generator(2), **call).images == plain).all()


def test_sd_x4_upscaler_takes_them_too(load):
    pipe = load("StableDiffusionUpscalePipeline", "sd-x4")
    call = dict(image=picture(16, 16), num_inference_steps=2, noise_level=40, output_type="np")
    plain = pipe(prompt=PROMPT, negative_prompt="dark", generator=generator(2), **call).images
    assert (pipe(**weighted_embeddings(pipe, PROMPT, "dark"), generator=generator(2), **call).images == plain).all()
    weighted = pipe(**weighted_embeddings(pipe, "a (red:1.5) cat", "dark"), generator=generator(2), **call).images
    assert not (weighted == pipe(prompt="a red cat", negative_prompt="dark", generator=generator(2), **call).images).all()


def test_syntax_errors_come_before_any_model_runs(sd):
    with pytest.raises(ValueError, match=r"negative_prompt: at position 6"):
        weighted_embeddings(sd, "a cat", "blurry)")
    with pytest.raises(ValueError, match=r"prompt\[1\]: at position 0 .*never closed"):
        weighted_embeddings(sd, ["a cat", "(a dog"])
    with pytest.raises(ValueError, match="prompt must be a string or a non-empty list of strings, got 3"):
        weighted_embeddings(sd, 3)
    with pytest.raises(ValueError, match="negative_prompt has 3 entries, but prompt has 2"):
        weighted_embeddings(sd, ["a", "b"], ["x", "y", "z"])
    with pytest.raises(ValueError, match=r"clip_skip must be None or a number of layers to skip, 0 to \d, got 5"):
        weighted_embeddings(sd, "a cat", clip_skip=5)


# ---------------------------------------------------------------------------------------------- SDXL


SDXL_CALL = dict(height=32, width=40, num_inference_steps=2, output_type="np")


@pytest.fixture(scope="module")
def sdxl(load):
    return load("StableDiffusionXLPipeline", "sdxl")


@pytest.mark.parametrize("negative", [None, "blurry"])
def test_sdxl_unweighted_is_bit_identical(sdxl, negative):
    plain = sdxl(prompt=PROMPT, negative_prompt=negative, generator=generator(1), **SDXL_CALL).images
    kwargs = weighted_embeddings(sdxl, PROMPT, negative)
    expected = {"prompt_embeds", "pooled_prompt_embeds"}
    if negative is not None:  # else force_zeros_for_empty_prompt: the pipeline makes zeros, as for the plain prompt
        expected |= {"negative_prompt_embeds", "negative_pooled_prompt_embeds"}
    assert set(kwargs) == expected
    assert (sdxl(**kwargs, generator=generator(1), **SDXL_CALL).images == plain).all()


def test_sdxl_second_prompts(sdxl):
    texts = dict(prompt=[PROMPT, "a dog"], prompt_2="an oil painting", negative_prompt="blurry",
                 negative_prompt_2=["dark", "noisy"])
    plain = sdxl(**texts, generator=generator(1), **SDXL_CALL).images
    kwargs = weighted_embeddings(sdxl, texts["prompt"], texts["negative_prompt"], prompt_2=texts["prompt_2"],
                                 negative_prompt_2=texts["negative_prompt_2"])
    assert (sdxl(**kwargs, generator=generator(1), **SDXL_CALL).images == plain).all()
    # the second encoder's prompt weighs only its half of the token states
    width = sdxl.text_encoder.config.hidden_size
    weighted = weighted_embeddings(sdxl, PROMPT, prompt_2="an (oil:1.5) painting")["prompt_embeds"]
    plain_embeds = weighted_embeddings(sdxl, PROMPT, prompt_2="an oil painting")["prompt_embeds"]
    assert torch.equal(weighted[..., :width], plain_embeds[..., :width])
    assert not torch.equal(weighted[..., width:], plain_embeds[..., width:])
    with pytest.raises(ValueError, match="prompt_2 has 3 entries, but there are 2 prompts"):
        weighted_embeddings(sdxl, ["a", "b"], prompt_2=["x", "y", "z"])
    with pytest.raises(ValueError, match="negative_prompt_2: at position 0"):
        weighted_embeddings(sdxl, "a", "b", negative_prompt_2="(x")


def test_second_prompts_are_for_sdxl_only(sd):
    with pytest.raises(ValueError, match="prompt_2 / negative_prompt_2 are for SDXL pipelines"):
        weighted_embeddings(sd, "a cat", prompt_2="a dog")


def test_sdxl_without_zeroed_negatives_and_a_narrow_encoder(load):
    """The 'wide' config: encoders of 20 tokens, force_zeros_for_empty_prompt off (the negative "" is encoded)."""
    pipe = load("StableDiffusionXLPipeline", "sdxl-wide")
    assert not pipe.config.force_zeros_for_empty_prompt
    plain = pipe(prompt="a cat", generator=generator(1), **SDXL_CALL).images
    kwargs = weighted_embeddings(pipe, "a cat")
    assert "negative_prompt_embeds" in kwargs
    assert (pipe(**kwargs, generator=generator(1), **SDXL_CALL).images == plain).all()
    # 20-token encoders: a long prompt makes 20-token chunks on both encoders, side by side
    long = weighted_embeddings(pipe, "a red cat on a blue sky with a tree")
    assert long["prompt_embeds"].shape[1] % 20 == 0 and long["prompt_embeds"].shape[1] > 20
    assert long["negative_prompt_embeds"].shape == long["prompt_embeds"].shape
    pipe(**long, generator=generator(1), **SDXL_CALL)


def test_sdxl_weights_both_encoders_and_keeps_the_pooled_output(sdxl):
    kwargs = weighted_embeddings(sdxl, PROMPT.replace("cat", "(cat:1.5)"), "blurry")
    plain, plain_pooled = sdxl._encode_texts([PROMPT], [PROMPT], clip_skip=None)
    start, count = token_span(sdxl.tokenizer, PROMPT, "cat")
    width = sdxl.text_encoder.config.hidden_size
    # each encoder's states weighted, their means restored on their own
    assert_only_word_scaled(kwargs["prompt_embeds"][..., :width], plain[..., :width], start, count, 1.5)
    assert_only_word_scaled(kwargs["prompt_embeds"][..., width:], plain[..., width:], start, count, 1.5)
    # the pooled output is the unweighted prompt's (first chunk), as AUTOMATIC1111 and Compel make it
    assert torch.equal(kwargs["pooled_prompt_embeds"], plain_pooled)
    sdxl(**kwargs, generator=generator(1), **SDXL_CALL)


def test_sdxl_long_prompt_pooled_from_first_chunk(sdxl):
    kwargs = weighted_embeddings(sdxl, LONG)
    assert kwargs["prompt_embeds"].shape[1] > 77 and kwargs["prompt_embeds"].shape[1] % 77 == 0
    _, truncated_pooled = sdxl._encode_texts([LONG], [LONG], clip_skip=None)
    assert torch.equal(kwargs["pooled_prompt_embeds"], truncated_pooled)
    sdxl(**kwargs, generator=generator(1), **SDXL_CALL)


def test_sdxl_refiner_with_only_the_second_encoder(load):
    refiner = load("StableDiffusionXLImg2ImgPipeline", "sdxl-refiner")
    assert refiner.text_encoder is None
    call = dict(image=picture(32, 40), strength=0.6, num_inference_steps=3, output_type="np")
    plain = refiner(prompt=PROMPT, negative_prompt="blurry", generator=generator(3), **call).images
    kwargs = weighted_embeddings(refiner, PROMPT, "blurry")
    assert kwargs["prompt_embeds"].shape[-1] == refiner.text_encoder_2.config.hidden_size
    assert (refiner(**kwargs, generator=generator(3), **call).images == plain).all()


# ---------------------------------------------------------------------------------------------- Kandinsky 3


K3_CALL = dict(height=64, width=64, num_inference_steps=2, output_type="np")


@pytest.fixture(scope="module")
def k3(load):
    return load("Kandinsky3Pipeline", "k3")


@pytest.mark.parametrize("negative", [None, "blurry picture"])
def test_kandinsky3_unweighted_is_bit_identical(k3, negative):
    plain = k3(prompt=[PROMPT, "a dog"], negative_prompt=negative, generator=generator(1), **K3_CALL).images
    kwargs = weighted_embeddings(k3, [PROMPT, "a dog"], negative)
    expected = {"prompt_embeds", "attention_mask"}
    if negative is not None:
        expected |= {"negative_prompt_embeds", "negative_attention_mask"}
    assert set(kwargs) == expected
    assert (k3(**kwargs, generator=generator(1), **K3_CALL).images == plain).all()


def test_kandinsky3_weight_scales_exactly_that_word_within_the_mask(k3):
    kwargs = weighted_embeddings(k3, PROMPT.replace("cat", "(cat:1.5)"))
    plain, mask = k3._encode_texts([PROMPT], cut_context=True)
    start, count = token_span(k3.tokenizer, PROMPT, "cat", prefix=0)
    assert torch.equal(kwargs["attention_mask"], mask)
    kept = int(mask.sum())
    # the mean is restored over the tokens the mask keeps; the padding stays zero
    assert_only_word_scaled(kwargs["prompt_embeds"][:, :kept], plain[:, :kept], start, count, 1.5)
    assert bool((kwargs["prompt_embeds"][:, kept:] == 0).all())
    k3(**kwargs, generator=generator(1), **K3_CALL)


# ---------------------------------------------------------------------------------------------- Kandinsky 2.2 prior


PRIOR_CALL = dict(num_inference_steps=3)


@pytest.fixture(scope="module")
def prior(load):
    return load("KandinskyV22PriorPipeline", "k22-prior")


@pytest.mark.parametrize("negative", [None, "blurry"])
def test_prior_unweighted_is_bit_identical(prior, negative):
    plain = prior([PROMPT, "a dog"], negative_prompt=negative, generator=generator(1), **PRIOR_CALL)
    kwargs = weighted_embeddings(prior, [PROMPT, "a dog"], negative)
    expected = {"prompt_embeds", "text_encoder_hidden_states", "text_mask"}
    if negative is not None:
        expected |= {"negative_" + name for name in expected}
    assert set(kwargs) == expected
    weighted = prior(**kwargs, generator=generator(1), **PRIOR_CALL)
    assert torch.equal(weighted.image_embeds, plain.image_embeds)
    assert torch.equal(weighted.negative_image_embeds, plain.negative_image_embeds)


def test_prior_weight_scales_exactly_that_word(prior):
    kwargs = weighted_embeddings(prior, PROMPT.replace("cat", "(cat:1.5)"), "[blurry]")
    # the plain path encodes the prompt and the negative prompt as one batch
    plain_embeds, plain_states, mask = (t[:1] for t in prior._encode_texts([PROMPT, "blurry"], "cpu"))
    start, count = token_span(prior.tokenizer, PROMPT, "cat")
    assert_only_word_scaled(kwargs["text_encoder_hidden_states"], plain_states, start, count, 1.5)
    assert torch.equal(kwargs["prompt_embeds"], plain_embeds)  # the pooled embedding is unweighted
    assert torch.equal(kwargs["text_mask"], mask)
    weighted = prior(**kwargs, generator=generator(1), **PRIOR_CALL)
    plain = prior(PROMPT, negative_prompt="blurry", generator=generator(1), **PRIOR_CALL)
    assert not torch.equal(weighted.image_embeds, plain.image_embeds)


def test_prior_cuts_long_prompts_as_its_transformer_reads_77_tokens(prior, caplog):
    kwargs = weighted_embeddings(prior, LONG)
    assert kwargs["text_encoder_hidden_states"].shape[1] == 77
    assert "tokens were dropped" in caplog.text
    plain = prior(LONG, generator=generator(1), **PRIOR_CALL)
    assert torch.equal(prior(**kwargs, generator=generator(1), **PRIOR_CALL).image_embeds, plain.image_embeds)


def test_prior_embeddings_are_checked(prior):
    kwargs = weighted_embeddings(prior, PROMPT)
    with pytest.raises(ValueError, match="text_mask missing"):
        prior(prompt_embeds=kwargs["prompt_embeds"], text_encoder_hidden_states=kwargs["text_encoder_hidden_states"])
    with pytest.raises(ValueError, match="pass prompt or prompt_embeds"):
        prior(PROMPT, **kwargs)
    with pytest.raises(ValueError, match=r"text_encoder_hidden_states has shape \(1, 76, .*77 tokens"):
        prior(**{**kwargs, "text_encoder_hidden_states": kwargs["text_encoder_hidden_states"][:, :76]})
    with pytest.raises(ValueError, match="negative_prompt as text with prompt_embeds"):
        prior(**kwargs, negative_prompt="blurry")


def test_emb2emb_prior_takes_them_too(load):
    emb2emb = load("KandinskyV22PriorEmb2EmbPipeline", "k22-prior")
    start = embeds(1, emb2emb.prior.config.embedding_dim, seed=4)[0]
    call = dict(image=start, strength=0.5, num_inference_steps=4)
    plain = emb2emb(PROMPT, negative_prompt="blurry", generator=generator(2), **call)
    weighted = emb2emb(**weighted_embeddings(emb2emb, PROMPT, "blurry"), generator=generator(2), **call)
    assert torch.equal(weighted.image_embeds, plain.image_embeds)
    assert torch.equal(weighted.negative_image_embeds, plain.negative_image_embeds)


# ---------------------------------------------------------------------------------------------- Kandinsky 2.2 combined


COMBINED_CALL = dict(height=64, width=64, num_inference_steps=2, prior_num_inference_steps=2, output_type="np")


@pytest.mark.parametrize("negative", [None, "blurry"])
def test_kandinsky22_combined(load, negative):
    pipe = load("KandinskyV22CombinedPipeline", "k22-combined")
    plain = pipe(PROMPT, negative_prompt=negative, generator=generator(1), **COMBINED_CALL).images
    kwargs = weighted_embeddings(pipe, PROMPT, negative)
    assert all(name.startswith("prior_") for name in kwargs)
    assert (pipe(**kwargs, generator=generator(1), **COMBINED_CALL).images == plain).all()
    weighted = pipe(**weighted_embeddings(pipe, "a (red:1.8) cat", negative), generator=generator(1),
                    **COMBINED_CALL).images
    assert not (weighted == pipe("a red cat", negative_prompt=negative, generator=generator(1),
                                 **COMBINED_CALL).images).all()


def test_kandinsky22_decoder_reads_no_text(load):
    with pytest.raises(ValueError, match="reads image embeddings, not text"):
        weighted_embeddings(load("KandinskyV22Pipeline", "k22-decoder"), PROMPT)


# ---------------------------------------------------------------------------------------------- Kandinsky 2.1


@pytest.fixture(scope="module")
def k21(load):
    return load("KandinskyPipeline", "k21-decoder")


def k21_call(pipe, batch=1):
    positive, negative = embeds(batch, pipe.unet.config.cross_attention_dim)
    return dict(image_embeds=positive, negative_image_embeds=negative, height=64, width=64, num_inference_steps=2,
                output_type="np")


@pytest.mark.parametrize("negative", [None, "blurry"])
def test_kandinsky21_decoder_unweighted_is_bit_identical(k21, negative):
    call = k21_call(k21, batch=2)
    plain = k21(prompt=[PROMPT, "a dog"], negative_prompt=negative, generator=generator(1), **call).images
    kwargs = weighted_embeddings(k21, [PROMPT, "a dog"], negative)
    assert set(kwargs) == {"prompt_embeds", "text_encoder_hidden_states", "negative_prompt_embeds",
                           "negative_text_encoder_hidden_states"}
    assert (k21(**kwargs, generator=generator(1), **call).images == plain).all()


def test_kandinsky21_decoder_weights_and_chunks(k21):
    kwargs = weighted_embeddings(k21, PROMPT.replace("cat", "(cat:1.5)"))
    plain_embeds, plain_states = k21._encode_texts([PROMPT])
    start, count = token_span(k21.tokenizer, PROMPT, "cat")
    assert_only_word_scaled(kwargs["text_encoder_hidden_states"], plain_states, start, count, 1.5)
    assert torch.equal(kwargs["prompt_embeds"], plain_embeds)
    # long prompts: 77-token chunks side by side (its UNet reads any number of text tokens)
    long = weighted_embeddings(k21, ", ".join([LONG] * 2))  # most words are one token each here
    assert long["text_encoder_hidden_states"].shape[1] > 77 and long["text_encoder_hidden_states"].shape[1] % 77 == 0
    assert long["negative_text_encoder_hidden_states"].shape == long["text_encoder_hidden_states"].shape
    images = k21(**long, generator=generator(1), **k21_call(k21)).images
    assert images.shape == (1, 64, 64, 3)
    with pytest.raises(ValueError, match="pass negative_prompt_embeds and negative_text_encoder_hidden_states too"):
        k21(prompt_embeds=long["prompt_embeds"], text_encoder_hidden_states=long["text_encoder_hidden_states"],
            **k21_call(k21))
    with pytest.raises(ValueError, match="prompt_embeds and text_encoder_hidden_states come together"):
        k21(prompt_embeds=long["prompt_embeds"], **k21_call(k21))


def test_kandinsky21_prior(load):
    prior = load("KandinskyPriorPipeline", "k21-prior")
    plain = prior(PROMPT, negative_prompt="blurry", generator=generator(1), **PRIOR_CALL)
    weighted = prior(**weighted_embeddings(prior, PROMPT, "blurry"), generator=generator(1), **PRIOR_CALL)
    assert torch.equal(weighted.image_embeds, plain.image_embeds)


@pytest.mark.parametrize("negative", [None, "blurry"])
def test_kandinsky21_combined(load, negative):
    pipe = load("KandinskyCombinedPipeline", "k21-combined")
    plain = pipe(PROMPT, negative_prompt=negative, generator=generator(1), **COMBINED_CALL).images
    kwargs = weighted_embeddings(pipe, PROMPT, negative)
    assert {"prior_prompt_embeds", "prompt_embeds", "text_encoder_hidden_states"} <= set(kwargs)
    assert (pipe(**kwargs, generator=generator(1), **COMBINED_CALL).images == plain).all()
    # a long prompt: chunked for the decoder, cut for the prior; several images per prompt
    images = pipe(**weighted_embeddings(pipe, [LONG, "a (dog:1.3)"], negative), num_images_per_prompt=2,
                  generator=generator(1), **COMBINED_CALL).images
    assert images.shape == (4, 64, 64, 3)
