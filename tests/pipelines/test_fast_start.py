"""from_pretrained(fast_start=True): sfumato's CLIP parts instead of transformers', the same pictures bit for bit."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import sfumato
from sfumato.checkpoint import registry
from sfumato.models import clip, clip_tokenizer
from sfumato.pipelines.base import DeferredComponent
from tests.pipelines.kandinsky2_2 import builders as k22
from tests.pipelines.stable_diffusion import builders as sd
from tests.pipelines.stable_diffusion_xl import builders as sdxl


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast-start")
    return {"sd": sd.save(root / "sd", "small", "nochecker"), "sdxl": sdxl.save(root / "sdxl", "small"),
            "prior": k22.save_prior(root / "prior", k22.PRIOR_CONFIGS["small"])}


def _pictures(pipe, **arguments):
    return pipe(generator=torch.Generator().manual_seed(3), output_type="np", **arguments).images


@pytest.mark.parametrize("family, arguments", [
    ("sd", dict(prompt=["a red circle", "on blue"], num_inference_steps=2, height=32, width=32, clip_skip=1)),
    ("sdxl", dict(prompt="a red circle", prompt_2="a blue square", negative_prompt="green", num_inference_steps=2,
                  height=32, width=32)),
], ids=["sd15-clip-skip", "sdxl-two-encoders"])
def test_stable_diffusion_pictures_equal_the_transformers_loading(folders, family, arguments):
    usual = sfumato.DiffusionPipeline.from_pretrained(folders[family])
    fast = sfumato.DiffusionPipeline.from_pretrained(folders[family], fast_start=True)
    assert type(fast.text_encoder).__module__ == clip.__name__
    assert isinstance(fast.tokenizer, clip_tokenizer.CLIPTokenizer)
    assert type(usual.text_encoder).__module__.startswith("transformers.")
    np.testing.assert_array_equal(_pictures(fast, **arguments), _pictures(usual, **arguments))


def test_prior_embeddings_equal_and_the_image_processor_loads_when_used(folders):
    usual = sfumato.KandinskyV22PriorPipeline.from_pretrained(folders["prior"])
    fast = sfumato.KandinskyV22PriorPipeline.from_pretrained(folders["prior"], fast_start=True)
    assert isinstance(fast.image_encoder, clip.CLIPVisionModelWithProjection)
    assert isinstance(fast.image_processor, DeferredComponent) and fast.image_processor._component is None
    arguments = dict(prompt=["a red circle", "a green square"], negative_prompt="blue", num_inference_steps=3)
    for name in ("image_embeds", "negative_image_embeds"):
        assert torch.equal(getattr(fast(generator=torch.Generator().manual_seed(1), **arguments), name),
                           getattr(usual(generator=torch.Generator().manual_seed(1), **arguments), name))
    assert fast.image_processor._component is None  # text alone never needed it
    picture = Image.fromarray(np.full((40, 48, 3), 200, dtype=np.uint8))
    mixed = dict(images_and_prompts=["a red circle", picture], weights=[0.4, 0.6], num_inference_steps=3)
    expected = usual.interpolate(generator=torch.Generator().manual_seed(2), **mixed).image_embeds
    assert torch.equal(fast.interpolate(generator=torch.Generator().manual_seed(2), **mixed).image_embeds, expected)
    assert type(fast.image_processor.loaded()).__name__.startswith("CLIPImageProcessor")


def test_saved_fast_start_pipeline_names_transformers_classes_and_loads_back(folders, tmp_path):
    fast = sfumato.KandinskyV22PriorPipeline.from_pretrained(folders["prior"], fast_start=True)
    fast.save_pretrained(tmp_path / "copy")
    index = json.loads((tmp_path / "copy" / "model_index.json").read_text())
    original = json.loads((folders["prior"] / "model_index.json").read_text())
    for name in ("text_encoder", "image_encoder", "tokenizer", "image_processor"):
        assert index[name] == original[name], name
    again = sfumato.KandinskyV22PriorPipeline.from_pretrained(tmp_path / "copy")
    usual = sfumato.KandinskyV22PriorPipeline.from_pretrained(folders["prior"])
    arguments = dict(prompt="a red circle", num_inference_steps=2)
    assert torch.equal(again(generator=torch.Generator().manual_seed(1), **arguments).image_embeds,
                       usual(generator=torch.Generator().manual_seed(1), **arguments).image_embeds)


def test_fast_start_must_be_a_bool(folders):
    with pytest.raises(TypeError, match="fast_start must be True or False, got 'yes'"):
        sfumato.DiffusionPipeline.from_pretrained(folders["sd"], fast_start="yes")


def test_builtin_model_makes_its_picture_without_importing_transformers(tmp_path):
    """The command line loads with fast_start: the built-in model's whole command never imports transformers."""
    script = ("import sys\nfrom sfumato.cli import main\n"
              f"code = main(['generate', 'a red circle on a blue background', '--steps', '3', '--prior-steps', '3', "
              f"'--seed', '1', '--quiet', '-o', {str(tmp_path / 'circle.png')!r}])\n"
              "print(code, 'transformers' in sys.modules, 'torch._dynamo' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-3:] == ["0", "False", "False"], result.stdout + result.stderr
    assert (tmp_path / "circle.png").is_file()


def test_transformers_hook_runs_once_just_before_it_is_needed(monkeypatch):
    calls = []
    # as in a process that has not imported transformers yet (before_transformers would otherwise call at once)
    monkeypatch.setattr(registry, "_BEFORE_TRANSFORMERS", [lambda: calls.append("quiet")])
    registry.resolve_class("diffusers", "UNet2DConditionModel")
    assert calls == []
    registry.resolve_class("transformers", "CLIPTokenizer")
    registry.resolve_class("transformers", "CLIPTextModel")
    assert calls == ["quiet"]
    withdraw = registry.before_transformers(lambda: calls.append("now"))  # imported by now: the hook runs at once
    assert calls == ["quiet", "now"]
    withdraw()
    assert registry._BEFORE_TRANSFORMERS == []
