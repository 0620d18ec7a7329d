"""Fuzz suite for bad pipeline input (issue 15, library part): Kandinsky 2.2 decoders, prior, emb2emb,
interpolate and the combined pipelines.

Every case is a row: a pipeline, the arguments that differ from a call that works, the error it must raise
and key words its message must hold (the argument's name, what it got). Every row runs with every model
replaced by one that raises ``AssertionError("a model ran")`` (UNet, MoVQ encode / decode, prior, CLIP text
and image encoders), so an error found only after some model work fails the row. Bomb rows (huge sizes and
counts) also forbid drawing the starting noise: a bomb is refused, never run.

Rows sfumato does not pass yet are ``xfail(strict=True)`` with the reason; the session's report proposes the
fix for each. ``test_base_calls_work`` checks that every base call runs, so each row fails for its own input.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import sfumato
from sfumato.limits import RequestTooLarge

from ..parity import generator, mask, picture
from .test_behaviour import combined_folder

NAN, INF = float("nan"), float("inf")
CLEAR = (ValueError, TypeError)  # CheckpointError and RequestTooLarge are ValueErrors
REMOVE = object()  # an override that drops the base argument


def xfail(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


# ------------------------------------------------------------------------------------------------ pipelines

@pytest.fixture(scope="module")
def pipes(decoder_folder, prior_folder, tmp_path_factory):
    def load(name, folder):
        pipe = getattr(sfumato, name).from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    tmp = tmp_path_factory.mktemp("bad-input")
    out = {
        "decoder": load("KandinskyV22Pipeline", decoder_folder("small")),
        "img2img": load("KandinskyV22Img2ImgPipeline", decoder_folder("small")),
        "inpaint": load("KandinskyV22InpaintPipeline", decoder_folder("small", "inpaint")),
        "controlnet": load("KandinskyV22ControlnetPipeline", decoder_folder("deep", "controlnet")),
        "controlnet_img2img": load("KandinskyV22ControlnetImg2ImgPipeline", decoder_folder("deep", "controlnet")),
        "prior": load("KandinskyV22PriorPipeline", prior_folder["small"]),
        "emb2emb": load("KandinskyV22PriorEmb2EmbPipeline", prior_folder["small"]),
        "combined": load("KandinskyV22CombinedPipeline", combined_folder(tmp, prior_folder, decoder_folder)),
        "combined_inpaint": load("KandinskyV22InpaintCombinedPipeline",
                                 combined_folder(tmp, prior_folder, decoder_folder, "inpaint")),
    }
    out["combined_img2img"] = sfumato.KandinskyV22Img2ImgCombinedPipeline.from_pipe(out["combined"])
    out["interpolate"] = out["prior"]
    return out


def embeds(batch=1, dim=32):
    g = generator(0)
    return torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g)


def nan_like(shape, value=NAN):
    tensor = torch.rand(*shape)
    tensor.view(-1)[tensor.numel() // 2] = value
    return tensor


def base_kwargs(kind: str) -> dict:
    positive, negative = embeds()
    decoder = dict(image_embeds=positive, negative_image_embeds=negative, height=64, width=64,
                   num_inference_steps=2, output_type="np")
    combined = dict(prompt="a red circle", height=64, width=64, num_inference_steps=2, prior_num_inference_steps=2,
                    output_type="np")
    return {
        "decoder": decoder,
        "img2img": {**decoder, "image": picture(64, 64), "strength": 0.5, "num_inference_steps": 4},
        "inpaint": {**decoder, "image": picture(64, 64), "mask_image": mask(64, 64)},
        "controlnet": {**decoder, "hint": torch.rand(1, 3, 64, 64)},
        "controlnet_img2img": {**decoder, "hint": torch.rand(1, 3, 64, 64), "image": picture(64, 64),
                               "strength": 0.5, "num_inference_steps": 4},
        "prior": dict(prompt="a red circle", num_inference_steps=2),
        "emb2emb": dict(prompt="a red circle", image=picture(32, 32), strength=0.5, num_inference_steps=4),
        "interpolate": dict(images_and_prompts=["a red circle", picture(32, 32)], weights=[0.5, 0.5],
                            num_inference_steps=2),
        "combined": combined,
        "combined_img2img": {**combined, "image": picture(64, 64), "strength": 0.5, "num_inference_steps": 4},
        "combined_inpaint": {**combined, "image": picture(64, 64), "mask_image": mask(64, 64)},
    }[kind]


def run(pipes, kind: str, overrides: dict):
    pipe = pipes[kind]
    kwargs = {**base_kwargs(kind), "generator": generator(0)}
    for name, value in overrides.items():
        if value is REMOVE:
            kwargs.pop(name, None)
        else:
            kwargs[name] = value
    call = pipe.interpolate if kind == "interpolate" else pipe
    return call(**kwargs)


def models_must_not_run(monkeypatch, pipe) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("a model ran before the input was checked")

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            monkeypatch.setattr(component, "forward", boom)
            for method in ("encode", "decode"):
                if hasattr(component, method):
                    monkeypatch.setattr(component, method, boom)


def noise_must_not_be_drawn(monkeypatch) -> None:
    """A bomb's starting noise (gigabytes) must never be allocated."""
    import sfumato.pipelines.loop as loop

    def boom(*args, **kwargs):
        raise AssertionError("the starting noise of a bomb was drawn: the request was not refused")

    monkeypatch.setattr(loop, "randn_tensor", boom)


@pytest.fixture(autouse=True)
def default_limits(monkeypatch):
    for name in ("SFUMATO_MAX_SIDE", "SFUMATO_MAX_IMAGES", "SFUMATO_MAX_MEMORY"):
        monkeypatch.delenv(name, raising=False)


def assert_clear(error: BaseException, patterns) -> None:
    message = str(error)
    for pattern in patterns:
        assert re.search(pattern, message, re.IGNORECASE | re.DOTALL), f"{pattern!r} not in {message!r}"


# ------------------------------------------------------------------------------------------------ the table

DECODERS = ["decoder", "img2img", "inpaint", "controlnet", "controlnet_img2img"]
WITH_LATENTS = ["decoder", "inpaint", "controlnet"]
BOMB = "bomb"

CASES: list = []


def case(kind, overrides, words, raises=CLEAR, why=None, bomb=False, env=None, name=None):
    """One row. ``why``: the reason it fails today (makes the row a strict xfail)."""
    label = name or ",".join(f"{k}={_short(v)}" for k, v in overrides.items())
    CASES.append(pytest.param(kind, overrides, raises, tuple(words), bomb, env or {}, id=f"{kind}:{label}",
                              marks=[xfail(why)] if why else []))


def _short(value) -> str:
    if isinstance(value, torch.Tensor):
        kind = "nan" if torch.isnan(value).any() else "inf" if torch.isinf(value).any() else "t"
        return f"{kind}{tuple(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"np{value.shape}"
    if isinstance(value, list) and len(value) > 4:
        return f"[{len(value)} items]"
    if value is REMOVE:
        return "missing"
    text = repr(value) if not callable(value) or isinstance(value, type) else "fn"
    return text[:24]


# ---- everything the decoders share
for kind in DECODERS:
    latents = kind in WITH_LATENTS
    case(kind, dict(guidance_scale=NAN), ["guidance_scale", "nan"])
    case(kind, dict(guidance_scale=INF), ["guidance_scale", "inf"])
    case(kind, dict(guidance_scale=-INF), ["guidance_scale", "inf"])
    case(kind, dict(guidance_scale="4"), ["guidance_scale", "'4'"])
    case(kind, dict(image_embeds=nan_like((1, 32))), ["image_embeds", "nan|finite"])
    case(kind, dict(image_embeds=nan_like((1, 32), INF)), ["image_embeds", "inf|finite"])
    case(kind, dict(negative_image_embeds=nan_like((1, 32))), ["negative_image_embeds", "nan|finite"])
    case(kind, dict(image_embeds=[torch.rand(1, 32), nan_like((1, 32))]), ["image_embeds", "nan|finite"],
         name="image_embeds=[ok, nan]")
    case(kind, dict(image_embeds=torch.zeros(0, 32), negative_image_embeds=torch.zeros(0, 32)),
         ["image_embeds", "empty|0"], name="image_embeds=empty")
    case(kind, dict(image_embeds=None), ["image_embeds", "None"])
    case(kind, dict(image_embeds=np.zeros((1, 32), np.float32)), ["image_embeds", "ndarray|numpy"])
    case(kind, dict(image_embeds=torch.rand(1, 31), negative_image_embeds=torch.rand(1, 31)),
         ["image_embeds", "31", "32"], name="image_embeds-width-31")
    case(kind, dict(num_images_per_prompt=100_000), ["100000", "limit|256"], raises=RequestTooLarge, bomb=True)
    case(kind, dict(num_images_per_prompt=257), ["257", "256"], raises=RequestTooLarge, bomb=True)
    case(kind, dict(image_embeds=torch.rand(300, 32), negative_image_embeds=torch.rand(300, 32)),
         ["300", "256"], raises=RequestTooLarge, bomb=True, name="300-embeddings")
    case(kind, dict(height=16384, width=16384), ["16384", "8192"], raises=RequestTooLarge, bomb=True,
         name="16384x16384")
    case(kind, dict(height=4096, width=4096), ["GiB", "SFUMATO_MAX_MEMORY"], raises=RequestTooLarge, bomb=True,
         env={"SFUMATO_MAX_MEMORY": "1GB"}, name="4096x4096-over-1GB")
    case(kind, dict(generator=[generator(0), generator(1), generator(2)]), ["generator", "3"],
         name="3-generators-for-1")
    case(kind, dict(num_images_per_prompt=2, generator=[generator(0)] * 3), ["generator", "3", "2"],
         name="3-generators-for-2")
    case(kind, dict(generator=42), ["generator", "42|int"])
    case(kind, dict(generator=[generator(0), 7]), ["generator"], name="generator-list-with-int")
    case(kind, dict(callback_on_step_end=42), ["callback_on_step_end", "int"])
    case(kind, dict(callback_on_step_end="print"), ["callback_on_step_end", "str"])
    case(kind, dict(callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["nope"]),
         ["callback_on_step_end_tensor_inputs", "nope"])
    case(kind, dict(num_inference_steps=0), ["num_inference_steps", "0"])
    case(kind, dict(num_inference_steps=2.5), ["num_inference_steps", "2.5"])
    case(kind, dict(num_inference_steps=10_000_000), ["num_inference_steps", "10000000", "1000"], bomb=True)
    case(kind, dict(output_type="jpeg"), ["output_type", "jpeg"])
    case(kind, dict(height=65), ["height", "65"])
    case(kind, dict(height="64"), ["height", "'64'"])
    case(kind, dict(width=-64), ["width", "-64"])
    if kind in ("decoder", "inpaint"):  # the others have no **kwargs: Python's own TypeError names it too
        case(kind, dict(colour="red"), ["colour"])
    if latents:
        case(kind, dict(latents=nan_like((1, 4, 32, 32) if kind != "controlnet" else (1, 4, 8, 8))),
             ["latents", "nan|finite"])
        case(kind, dict(latents=torch.rand(1, 4, 16, 16)), ["latents", "16", "shape"])
        case(kind, dict(latents=np.zeros((1, 4, 32, 32), np.float32)), ["latents", "ndarray"])

# ---- image-to-image (plain and ControlNet)
for kind in ("img2img", "controlnet_img2img"):
    case(kind, dict(image=nan_like((1, 3, 64, 64))), ["image", "nan|finite"])
    case(kind, dict(image=nan_like((1, 3, 64, 64), INF)), ["image", "inf|finite"])
    case(kind, dict(image=np.full((64, 64, 3), np.nan, np.float32)), ["image", "nan|finite"],
         name="image=np-nan")
    case(kind, dict(image=None), ["image", "None"])
    case(kind, dict(image=42), ["image", "int"])
    case(kind, dict(image=[]), ["image", "empty"])
    case(kind, dict(image=[picture(64, 64)] * 3), ["image", "3"])
    case(kind, dict(strength=1.5), ["strength", "1.5"])
    case(kind, dict(strength=NAN), ["strength", "nan"])
    case(kind, dict(strength="0.5"), ["strength", "'0.5'"])
    case(kind, dict(strength=-0.1), ["strength", "-0.1"])

# ---- inpainting (tensors with tensors, arrays with arrays: the forms must agree)
def image_tensor(value=None):
    tensor = torch.rand(1, 3, 64, 64) * 2 - 1
    if value is not None:
        tensor[0, 1, 10, 20] = value
    return tensor


def mask_tensor(value=None):
    tensor = torch.zeros(1, 1, 64, 64)
    tensor[..., 16:32, 20:60] = 1
    if value is not None:
        tensor[0, 0, 40, 5] = value
    return tensor


def mask_array(value=None):
    array = np.zeros((64, 64), np.float32)
    array[16:32, 20:60] = 1
    if value is not None:
        array[40, 5] = value
    return array


for kind in ("inpaint", "combined_inpaint"):
    case(kind, dict(image=image_tensor(NAN), mask_image=mask_tensor()), ["image", "nan|finite"],
         name="image=nan-tensor")
    case(kind, dict(image=image_tensor(INF), mask_image=mask_tensor()), ["image", "inf|finite"],
         name="image=inf-tensor")
    case(kind, dict(image=image_tensor(), mask_image=mask_tensor(NAN)), ["mask_image", "nan|finite"],
         name="mask_image=nan-tensor")
    case(kind, dict(image=image_tensor(), mask_image=mask_tensor(INF)), ["mask_image", "inf|finite"],
         name="mask_image=inf-tensor")
    case(kind, dict(image=np.zeros((64, 64, 3), np.uint8), mask_image=mask_array(NAN)),
         ["mask_image", "nan|finite"], name="mask_image=nan-array")
    case(kind, dict(image=np.full((64, 64, 3), np.nan, np.float32), mask_image=mask_array()),
         ["image", "nan|finite"], name="image=nan-array")
    case(kind, dict(mask_image=None), ["mask_image", "None"])
    case(kind, dict(mask_image=42), ["mask_image", "int"])
    case(kind, dict(image=None), ["image", "None"])
    case(kind, dict(image=42), ["image", "int"])
    case(kind, dict(image=image_tensor(), mask_image=picture(64, 64)), ["image", "mask_image", "Tensor"],
         name="tensor-image-with-PIL-mask")
    # an array mask of another size is valid: sampled onto the latent grid, as the reference does (test_parity)

# ---- ControlNet hints
for kind in ("controlnet", "controlnet_img2img"):
    case(kind, dict(hint=nan_like((1, 3, 64, 64))), ["hint", "nan|finite"])
    case(kind, dict(hint=nan_like((1, 3, 64, 64), INF)), ["hint", "inf|finite"])
    case(kind, dict(hint=None), ["hint", "None"])
    case(kind, dict(hint=42), ["hint", "int"])
    case(kind, dict(hint=np.zeros((1, 3, 64, 64), np.float32)), ["hint", "ndarray"])
    case(kind, dict(hint=torch.rand(1, 1, 64, 64)), ["hint", "3 channels"])
    case(kind, dict(hint=torch.rand(2, 3, 64, 64)), ["hint", "2"])

# ---- the prior (text -> image embeddings)
case("prior", dict(guidance_scale=NAN), ["guidance_scale", "nan"])
case("prior", dict(guidance_scale=INF), ["guidance_scale", "inf"])
case("prior", dict(num_images_per_prompt=100_000), ["100000", "256"], raises=RequestTooLarge, bomb=True)
case("prior", dict(prompt=["a red circle"] * 100_000), ["100000", "256"], raises=RequestTooLarge, bomb=True)
case("prior", dict(latents=torch.rand(3, 32)), ["latents", "shape", "3"])
case("prior", dict(latents=torch.rand(1, 32, 1)), ["latents", "dimensions|shape"])
case("prior", dict(latents=nan_like((1, 32))), ["latents", "nan|finite"])
case("prior", dict(latents=np.zeros((1, 32), np.float32)), ["latents", "ndarray"])
case("prior", dict(generator=[generator(0)] * 3), ["generator", "3"])
case("prior", dict(generator="seed"), ["generator", "seed|str"])
case("prior", dict(callback_on_step_end=42), ["callback_on_step_end", "int"])
case("prior", dict(callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["nope"]),
     ["callback_on_step_end_tensor_inputs", "nope"])
case("prior", dict(num_inference_steps=0), ["num_inference_steps", "0"])
case("prior", dict(num_inference_steps=10_000_000), ["num_inference_steps", "10000000", "1000"])
case("prior", dict(output_type="pil"), ["output_type", "pil"])
case("prior", dict(prompt=None), ["prompt", "None"])
case("prior", dict(prompt=42), ["prompt", "42"])
case("prior", dict(prompt=[]), ["prompt", r"\[\]|empty"])
case("prior", dict(negative_prompt=42), ["negative_prompt", "42"])
case("prior", dict(prompt=["a", "b"], negative_prompt=["x", "y", "z"]), ["negative_prompt", "3", "2"])

# ---- interpolate (weighted prompts and pictures)
case("interpolate", dict(weights=[NAN, 0.5]), [r"weights\[0\]", "nan"])
case("interpolate", dict(weights=[0.5, INF]), [r"weights\[1\]", "inf"])
case("interpolate", dict(weights=["a", 0.5]), [r"weights\[0\]", "'a'"])
case("interpolate", dict(weights=[1.0]), ["weights", "1", "2"])
case("interpolate", dict(images_and_prompts=[], weights=[]), ["images_and_prompts", "empty"])
case("interpolate", dict(images_and_prompts=["a red circle", 42]), ["images_and_prompts", "int"])
case("interpolate", dict(images_and_prompts=["a red circle", nan_like((1, 3, 32, 32))]),
     ["images_and_prompts|image", "nan|finite"])
case("interpolate", dict(num_images_per_prompt=100_000), ["100000", "256"], raises=RequestTooLarge, bomb=True)
case("interpolate", dict(guidance_scale=NAN), ["guidance_scale", "nan"])
case("interpolate", dict(latents=nan_like((1, 32))), ["latents", "nan|finite"])

# ---- emb2emb (prompt + picture -> image embeddings)
case("emb2emb", dict(strength=1.5), ["strength", "1.5"])
case("emb2emb", dict(strength=NAN), ["strength", "nan"])
case("emb2emb", dict(strength="0.3"), ["strength", "'0.3'"])
case("emb2emb", dict(image=None), ["image", "None"])
case("emb2emb", dict(image=42), ["image", "int"])
case("emb2emb", dict(image="/nonexistent/picture.png"), ["image|picture", "nonexistent/picture.png"])
case("emb2emb", dict(image=nan_like((1, 3, 32, 32))), ["image", "nan|finite"])
case("emb2emb", dict(image=nan_like((1, 32))), ["image", "nan|finite"])
case("emb2emb", dict(guidance_scale=NAN), ["guidance_scale", "nan"])
case("emb2emb", dict(num_images_per_prompt=100_000), ["100000", "256"], raises=RequestTooLarge, bomb=True)
case("emb2emb", dict(generator=[generator(0)] * 3), ["generator", "3"])
case("emb2emb", dict(prompt=42), ["prompt", "42"])
case("emb2emb", dict(output_type="pil"), ["output_type", "pil"])
case("emb2emb", dict(num_inference_steps=0), ["num_inference_steps|strength", "0"])

# ---- combined text-to-image: every argument is checked before the prior runs
for kind in ("combined", "combined_img2img", "combined_inpaint"):
    case(kind, dict(height=16384, width=16384), ["16384", "8192"], raises=RequestTooLarge, bomb=True,
         name="16384x16384")
    case(kind, dict(num_images_per_prompt=100_000), ["100000", "256"], raises=RequestTooLarge, bomb=True)
    case(kind, dict(height=65), ["height", "65"])
    case(kind, dict(width=0), ["width", "0"])
    case(kind, dict(output_type="foo"), ["output_type", "foo"])
    case(kind, dict(num_inference_steps=0), ["num_inference_steps", "0"])
    case(kind, dict(callback_on_step_end=42), ["callback_on_step_end", "int"])
    case(kind, dict(callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["nope"]),
         ["callback_on_step_end_tensor_inputs", "nope"])
    case(kind, dict(guidance_scale=NAN), ["guidance_scale", "nan"])
    case(kind, dict(prior_guidance_scale=NAN), ["guidance_scale", "nan"])
    case(kind, dict(prior_num_inference_steps=0), ["num_inference_steps", "0"])
    case(kind, dict(prior_callback_on_step_end=42), ["callback_on_step_end", "int"])
    case(kind, dict(latents=torch.rand(3, 32)), ["latents", "shape"])
    case(kind, dict(latents=nan_like((1, 32))), ["latents", "nan|finite"])
    case(kind, dict(generator=[generator(0)] * 3), ["generator", "3"])
case("combined", dict(height=4096, width=4096), ["GiB", "SFUMATO_MAX_MEMORY"], raises=RequestTooLarge, bomb=True,
     env={"SFUMATO_MAX_MEMORY": "1GB"}, name="4096x4096-over-1GB")
case("combined", dict(prompt=None), ["prompt", "None"])
case("combined", dict(prompt=["a"] * 300), ["300", "256"], raises=RequestTooLarge, bomb=True)

case("combined_img2img", dict(image=None), ["image", "None"])
case("combined_img2img", dict(image=42), ["image", "int"])
case("combined_img2img", dict(image=[]), ["image", "empty"])
case("combined_img2img", dict(image=[picture(64, 64)] * 3), ["image", "3"])
case("combined_img2img", dict(image=REMOVE), ["image"], name="image-missing")
case("combined_img2img", dict(strength=1.5), ["strength", "1.5"])
case("combined_img2img", dict(strength=NAN), ["strength", "nan"])
case("combined_img2img", dict(image=nan_like((1, 3, 64, 64))), ["image", "nan|finite"])


@pytest.mark.parametrize("kind,overrides,raises,words,bomb,env", CASES)
def test_bad_input_is_refused_clearly_before_any_model_runs(pipes, monkeypatch, kind, overrides, raises, words,
                                                           bomb, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    models_must_not_run(monkeypatch, pipes[kind])
    if bomb:
        noise_must_not_be_drawn(monkeypatch)
    with pytest.raises(raises) as excinfo:
        run(pipes, kind, overrides)
    assert_clear(excinfo.value, words)


@pytest.mark.parametrize("kind", ["decoder", "img2img", "inpaint", "controlnet", "controlnet_img2img", "prior",
                                  "emb2emb", "interpolate", "combined", "combined_img2img", "combined_inpaint"])
def test_base_calls_work(pipes, kind):
    """Each row above differs from one of these working calls only by its bad argument."""
    out = run(pipes, kind, {})
    result = out.images if hasattr(out, "images") else out.image_embeds
    assert np.isfinite(np.asarray(result)).all()


# ------------------------------------------------------------------------------ from_pipe over the wrong UNet

def test_inpaint_from_pipe_over_a_4_channel_unet(pipes, monkeypatch):
    """Either from_pipe refuses, or the call does, naming in_channels, before any model runs."""
    try:
        pipe = sfumato.KandinskyV22InpaintPipeline.from_pipe(pipes["decoder"])
    except CLEAR as error:
        assert_clear(error, ["in_channels|inpaint", "4"])
        return
    models_must_not_run(monkeypatch, pipe)
    with pytest.raises(CLEAR) as excinfo:
        pipe(**base_kwargs("inpaint"), generator=generator(0))
    assert_clear(excinfo.value, ["in_channels", "4", "9"])


def test_inpaint_combined_from_pipe_over_a_4_channel_unet(pipes, monkeypatch):
    try:
        pipe = sfumato.AutoPipelineForInpainting.from_pipe(pipes["combined"])
    except CLEAR as error:
        assert_clear(error, ["in_channels|inpaint", "4"])
        return
    assert type(pipe).__name__ == "KandinskyV22InpaintCombinedPipeline"
    models_must_not_run(monkeypatch, pipe)
    with pytest.raises(CLEAR) as excinfo:
        pipe(**base_kwargs("combined_inpaint"), generator=generator(0))
    assert_clear(excinfo.value, ["in_channels", "4", "9"])


def test_cases_summary():
    """Keeps the table honest: enough rows, and every pipeline covered."""
    kinds = {param.values[0] for param in CASES}
    assert kinds == {"decoder", "img2img", "inpaint", "controlnet", "controlnet_img2img", "prior", "emb2emb",
                     "interpolate", "combined", "combined_img2img", "combined_inpaint"}
    assert len(CASES) > 250
