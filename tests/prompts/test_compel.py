"""Embeddings made by Compel (the prompt-weighting library users install) are accepted as ``prompt_embeds``.

Compel is in the ``test`` extra; it runs on the pipelines' own tokenizers and
text encoders (transformers models), and its embeddings go in as any others.
"""

import pytest
import torch

from ..pipelines.parity import generator

compel = pytest.importorskip("compel", reason="compel is in the test extra: pip install -e '.[test]'")


def test_compel_embeddings_for_stable_diffusion(load):
    pipe = load("StableDiffusionPipeline", "sd")
    build = compel.Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, device="cpu")
    call = dict(height=32, width=32, num_inference_steps=2, output_type="np")
    # without weights Compel's embeddings are the plain prompt's (the same encoder, the same tokens)
    plain, empty = build("a red cat"), build("")
    torch.testing.assert_close(plain, pipe._encode_prompts(["a red cat"], clip_skip=None), rtol=1e-5, atol=1e-5)
    images = pipe(prompt_embeds=plain, negative_prompt_embeds=empty, generator=generator(1), **call).images
    reference = pipe(prompt="a red cat", generator=generator(1), **call).images
    assert abs(images - reference).max() < 1e-4
    # weighted (Compel's syntax): accepted, and it changes the picture
    weighted = pipe(prompt_embeds=build("a red++ cat"), negative_prompt_embeds=empty, generator=generator(1),
                    **call).images
    assert weighted.shape == images.shape and abs(weighted - images).max() > 1e-4


def test_compel_embeddings_for_sdxl(load):
    pipe = load("StableDiffusionXLPipeline", "sdxl")
    # SDXL's settings in Compel's documentation: both encoders' penultimate layers, the second's pooled output
    penultimate = compel.ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
    build = compel.Compel(tokenizer=[pipe.tokenizer, pipe.tokenizer_2],
                          text_encoder=[pipe.text_encoder, pipe.text_encoder_2], returned_embeddings_type=penultimate,
                          requires_pooled=[False, True], device="cpu")
    call = dict(height=32, width=40, num_inference_steps=2, output_type="np")
    embeds, pooled = build("a red cat")
    plain_embeds, plain_pooled = pipe._encode_texts(["a red cat"], ["a red cat"], clip_skip=None)
    torch.testing.assert_close(embeds, plain_embeds, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, plain_pooled, rtol=1e-5, atol=1e-5)
    images = pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, generator=generator(1), **call).images
    reference = pipe(prompt="a red cat", generator=generator(1), **call).images
    assert abs(images - reference).max() < 1e-4
    weighted, weighted_pooled = build("a (red)1.5 cat")
    out = pipe(prompt_embeds=weighted, pooled_prompt_embeds=weighted_pooled, generator=generator(1), **call).images
    assert abs(out - images).max() > 1e-4
