"""Every snippet of the two guides runs with ``diffusers`` replaced by ``sfumato``, and makes the reference's
pictures.

The snippets (``snippets.py``, verbatim) run in the guides' order, the ones that build on each other in one
namespace, against a hub cache of tiny random checkpoints under the ids they name (``hub.py``; offline). What
this machine needs is changed, the same for both libraries: ``"cuda"`` is ``"cpu"``, ``torch.float16`` is
``torch.float32`` (fp16 on a CPU is slow, and the pictures are compared in fp32), the pictures' addresses are
local files, and the Arabic commas that the translation put into some code are commas. The reference cannot
run ``enable_model_cpu_offload()`` (it needs an accelerator) nor ``enable_xformers_memory_efficient_attention()``
(xformers) here, so those two lines are left out of its run only; sfumato runs them as written.

The guides call the pipelines without a generator, so the global torch generator decides the noise: both runs
seed it before every statement, and every picture and tensor the snippets leave behind must then be the
reference's (pictures within one step of 255, from rounding; tensors within 1e-4).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize

import numpy as np
import PIL.Image
import pytest
import torch

from . import hub
from .snippets import IMAGE_TO_IMAGE, KANDINSKY

# parts of the English guides that the translated ones leave out, which later snippets build on
K21_IMAGE_TO_IMAGE_PIPELINES = '''\
import torch
from diffusers import KandinskyImg2ImgPipeline, KandinskyPriorPipeline

prior_pipeline = KandinskyPriorPipeline.from_pretrained("kandinsky-community/kandinsky-2-1-prior", torch_dtype=torch.float16, use_safetensors=True).to("cuda")
pipeline = KandinskyImg2ImgPipeline.from_pretrained("kandinsky-community/kandinsky-2-1", torch_dtype=torch.float16, use_safetensors=True).to("cuda")
'''  # noqa: E501
K21_IMAGE_TO_IMAGE_CALL = '''\
from diffusers.utils import make_image_grid

image = pipeline(prompt, negative_prompt=negative_prompt, image=original_image, image_embeds=image_embeds, negative_image_embeds=negative_image_embeds, height=768, width=768, strength=0.3).images[0]
make_image_grid([original_image.resize((512, 512)), image.resize((512, 512))], rows=1, cols=2)
'''  # noqa: E501
CONTROLNET_IMAGE_TO_IMAGE = '''\
import torch
from diffusers import ControlNetModel, AutoPipelineForImage2Image
from diffusers.utils import load_image, make_image_grid

url = "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/diffusers/img2img-init.png"
init_image = load_image(url)
init_image = init_image.resize((958, 960)) # resize to depth image dimensions
depth_image = load_image("https://huggingface.co/lllyasviel/control_v11f1p_sd15_depth/resolve/main/images/control.png")
make_image_grid([init_image, depth_image], rows=1, cols=2)

controlnet = ControlNetModel.from_pretrained("lllyasviel/control_v11f1p_sd15_depth", torch_dtype=torch.float16, variant="fp16", use_safetensors=True)
pipeline = AutoPipelineForImage2Image.from_pretrained(
    "runwayml/stable-diffusion-v1-5", controlnet=controlnet, torch_dtype=torch.float16, variant="fp16", use_safetensors=True
)
pipeline.enable_model_cpu_offload()
pipeline.enable_xformers_memory_efficient_attention()

prompt = "Astronaut in a jungle, cold color palette, muted colors, detailed, 8k"
image_control_net = pipeline(prompt, image=init_image, control_image=depth_image).images[0]
make_image_grid([init_image, depth_image, image_control_net], rows=1, cols=3)
'''  # noqa: E501

# (name, the snippets that run together, in order)
GROUPS = [
    ("kandinsky-2-1", [KANDINSKY[0], KANDINSKY[1]]),
    ("kandinsky-2-2", [KANDINSKY[2], KANDINSKY[3]]),
    ("kandinsky-3", [KANDINSKY[4]]),
    ("auto-text2image-2-1", [KANDINSKY[5]]),
    ("auto-text2image-2-2", [KANDINSKY[6]]),
    ("image2image-2-1", [K21_IMAGE_TO_IMAGE_PIPELINES, KANDINSKY[7], KANDINSKY[8], K21_IMAGE_TO_IMAGE_CALL]),
    ("auto-image2image-2-1", [KANDINSKY[9]]),
    ("auto-image2image-2-2", [KANDINSKY[10]]),
    ("inpaint-2-1", KANDINSKY[11:15]),
    ("auto-inpaint-2-1", [KANDINSKY[15]]),
    ("interpolate-2-1", KANDINSKY[16:19]),
    ("image2image-guide-kandinsky-2-2", IMAGE_TO_IMAGE[0:3]),
    ("image2image-guide-stable-diffusion", [IMAGE_TO_IMAGE[3]]),
    ("image2image-guide-sdxl-refiner", [IMAGE_TO_IMAGE[4]]),
    ("image2image-guide-popular-kandinsky-2-2", [IMAGE_TO_IMAGE[5]]),
    ("image2image-guide-controlnet-then-style", [CONTROLNET_IMAGE_TO_IMAGE, IMAGE_TO_IMAGE[6]]),
]
_REFERENCE_ONLY_SKIPS = re.compile(r"^\s*\w+\.(enable_model_cpu_offload|enable_xformers_memory_efficient_attention)"
                                   r"\(\)\s*(#.*)?$", re.M)


def test_every_snippet_is_in_a_group():
    grouped = [id(snippet) for _, snippets in GROUPS for snippet in snippets]
    for snippet in KANDINSKY + IMAGE_TO_IMAGE:
        assert grouped.count(id(snippet)) == 1, snippet[:80]


def as_run_here(source: str, library: str, pictures: dict[str, str]) -> str:
    """The snippet with what this machine needs changed (see the module's docstring)."""
    source = _commas(source)
    for url, path in pictures.items():
        source = source.replace(f'"{url}"', repr(path))
    source = source.replace('"cuda"', '"cpu"').replace("torch.float16", "torch.float32")
    if library == "diffusers":
        return _REFERENCE_ONLY_SKIPS.sub("", source)
    return re.sub(r"\bdiffusers\b", "sfumato", source)


def _commas(source: str) -> str:
    """Arabic commas outside strings and comments read as commas (the translation's, in code)."""
    lines = source.splitlines(keepends=True)
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    places = [token.start for token in tokens if token.type == tokenize.ERRORTOKEN and token.string == "،"]
    for row, column in reversed(places):
        line = lines[row - 1]
        lines[row - 1] = line[:column] + "," + line[column + 1:]
    return "".join(lines)


def run_group(snippets: list[str], library: str, pictures: dict[str, str]) -> dict:
    """Run the snippets one statement at a time in one namespace, the global generator seeded before each."""
    namespace: dict = {}
    for snippet in snippets:
        tree = ast.parse(as_run_here(snippet, library, pictures))
        for statement in tree.body:
            torch.manual_seed(0)
            code = compile(ast.Module([statement], type_ignores=[]), f"<{library} snippet>", "exec")
            exec(code, namespace)
    return namespace


def _results(namespace: dict) -> dict:
    """The pictures and tensors a group leaves behind, by name (what its later snippets or a reader use)."""
    kept = {}
    for name, value in namespace.items():
        if isinstance(value, PIL.Image.Image):
            kept[name] = np.asarray(value.convert("RGB"), dtype=np.int16)
        elif isinstance(value, torch.Tensor) and value.is_floating_point():
            kept[name] = value.detach().float()
        elif hasattr(value, "image_embeds") and isinstance(value.image_embeds, torch.Tensor):  # prior outputs
            kept[f"{name}.image_embeds"] = value.image_embeds.detach().float()
            kept[f"{name}.negative_image_embeds"] = value.negative_image_embeds.detach().float()
    return kept


@pytest.fixture(scope="module")
def guide_hub(tmp_path_factory):
    import huggingface_hub.constants

    root = tmp_path_factory.mktemp("guide-hub")
    cache = hub.build_cache(root)
    pictures = hub.write_pictures(root / "pictures")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        patch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
        yield pictures


@pytest.mark.parametrize("name, snippets", GROUPS, ids=[name for name, _ in GROUPS])
def test_the_guide_runs_with_sfumato_and_makes_the_references_pictures(guide_hub, name, snippets):
    ours = _results(run_group(snippets, "sfumato", guide_hub))
    theirs = _results(run_group(snippets, "diffusers", guide_hub))
    assert ours.keys() == theirs.keys() and any(isinstance(v, np.ndarray) for v in ours.values()), (ours, theirs)
    for key, value in ours.items():
        expected = theirs[key]
        assert value.shape == expected.shape, (key, value.shape, expected.shape)
        if isinstance(value, np.ndarray):
            assert np.abs(value - expected).max() <= 1, (key, np.abs(value - expected).max())
        else:
            assert torch.allclose(value, expected, atol=1e-4, rtol=1e-4), (key, (value - expected).abs().max())
