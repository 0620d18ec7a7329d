"""The public names, and prompt_keywords: what the command line passes to a pipeline."""

import subprocess
import sys

import pytest
import torch

import sfumato
import sfumato.prompts

from ..pipelines.parity import generator


def test_exports():
    assert sfumato.weighted_embeddings is sfumato.prompts.weighted_embeddings
    assert sfumato.parse_prompt is sfumato.prompts.parse_prompt
    assert issubclass(sfumato.PromptSyntaxError, ValueError)
    assert {"weighted_embeddings", "prompt_keywords", "parse_prompt", "apply_weights"} <= set(dir(sfumato.prompts))


def test_parsing_needs_neither_torch_nor_the_reference():
    code = ("import sys, sfumato; print(sfumato.parse_prompt('a (b:2)')); "
            "print(sorted(m for m in ('torch', 'diffusers', 'compel') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[('a ', 1.0), ('b', 2.0)]", "[]"]


def test_prompt_keywords(load):
    pipe = load("StableDiffusionPipeline", "sd")
    plain = {"prompt": "a red cat", "negative_prompt": None}
    assert sfumato.prompts.prompt_keywords(pipe, "a red cat") == plain
    assert sfumato.prompts.prompt_keywords(pipe, "a (red) cat", weighted=False) == {"prompt": "a (red) cat",
                                                                                   "negative_prompt": None}
    weighted = sfumato.prompts.prompt_keywords(pipe, "a red cat", "[blurry]")
    assert set(weighted) == {"prompt_embeds", "negative_prompt_embeds"}
    # a prompt without syntax but past the encoder's 77 tokens: chunked, not cut
    long = sfumato.prompts.prompt_keywords(pipe, " ".join(["cat"] * 40))
    assert long["prompt_embeds"].shape[1] == 154
    with pytest.raises(ValueError, match="prompt: at position 2"):
        sfumato.prompts.prompt_keywords(pipe, "a (red cat")
    call = dict(height=32, width=32, num_inference_steps=2, output_type="np")
    images = pipe(**sfumato.prompts.prompt_keywords(pipe, "a (red:1.3) cat"), generator=generator(1), **call).images
    assert images.shape == (1, 32, 32, 3) and torch.isfinite(torch.from_numpy(images)).all()


def test_prompt_keywords_plain_for_pipelines_without_text(load):
    decoder = load("KandinskyV22Pipeline", "k22-decoder")
    assert sfumato.prompts.prompt_keywords(decoder, "a (red) cat") == {"prompt": "a (red) cat", "negative_prompt": None}
