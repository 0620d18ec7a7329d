"""Stable Diffusion ControlNet pipelines against the reference, their behaviour, and the guide's depth chain.

Each comparison prints ``PARITY <test> <max abs difference>`` (run with ``-s`` to collect them).
"""

import json

import numpy as np
import pytest
import torch

import sfumato

from ...image.test_depth import dpt_folder  # noqa: F401 - a tiny depth-estimation model folder (module fixture)
from ..parity import assert_close, generator, picture
from .builders import swap_scheduler
from .test_behaviour import no_model_may_run
from .test_parity import close, run_both, text_embeds

IMG2IMG, TEXT2IMG = "StableDiffusionControlNetImg2ImgPipeline", "StableDiffusionControlNetPipeline"


def load_both(sd_folder, controlnet_folder, class_name, config="small"):
    import diffusers

    ours = getattr(sfumato, class_name).from_pretrained(
        sd_folder(config), controlnet=sfumato.ControlNetModel.from_pretrained(controlnet_folder(config)))
    theirs = getattr(diffusers, class_name).from_pretrained(
        sd_folder(config), controlnet=diffusers.ControlNetModel.from_pretrained(controlnet_folder(config)))
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    return ours, theirs


@pytest.fixture(scope="module")
def pipelines(sd_folder, controlnet_folder):
    cache = {}

    def get(class_name=IMG2IMG, config="small"):
        if (class_name, config) not in cache:
            ours = getattr(sfumato, class_name).from_pretrained(
                sd_folder(config), controlnet=sfumato.ControlNetModel.from_pretrained(controlnet_folder(config)))
            ours.set_progress_bar_config(disable=True)
            cache[class_name, config] = ours
        return cache[class_name, config]

    return get


# ---------------------------------------------------------------------------------------------- image-to-image


@pytest.mark.parametrize("config,size,prompt,n,scheduler,extra", [
    ("small", (32, 48), "a red circle", 1, None, dict(strength=0.6)),
    ("small", (48, 32), ["a cat", "a dog"], 1, ("DDIMScheduler", {}),
     dict(negative_prompt=["dark", "noisy"], eta=0.5, guess_mode=True, guidance_scale=4.0)),
    ("wide", (40, 32), "a green triangle", 2, ("EulerAncestralDiscreteScheduler", {}),
     dict(control_guidance_start=0.2, control_guidance_end=0.7, controlnet_conditioning_scale=1.3)),
    ("wide", (32, 32), ["a cat", "a dog"], 1, ("DPMSolverMultistepScheduler", {}),
     dict(guidance_scale=1.0, strength=0.9, negative_prompt="blurry")),
    ("small", (70, 90), "a house", 1, ("EulerDiscreteScheduler", {}), dict(control_guidance_end=[0.5])),  # snaps to 8s
])
def test_controlnet_img2img(request, sd_folder, controlnet_folder, config, size, prompt, n, scheduler, extra):
    ours, theirs = load_both(sd_folder, controlnet_folder, IMG2IMG, config)
    if scheduler:
        swap_scheduler(ours, theirs, scheduler[0], **scheduler[1])
    count = 1 if isinstance(prompt, str) else len(prompt)
    images = [picture(*size, seed=i) for i in range(count)]
    controls = [picture(*size, seed=10 + i) for i in range(count)]
    a, b = run_both(ours, theirs, prompt=prompt, image=images if count > 1 else images[0],
                    control_image=controls if count > 1 else controls[0], num_images_per_prompt=n,
                    num_inference_steps=5, output_type="np", **extra)
    assert a.images.shape[1:3] == tuple(s - s % ours.vae_scale_factor for s in size)
    assert a.nsfw_content_detected == b.nsfw_content_detected
    close(request, a.images, b.images)


def test_controlnet_img2img_prompt_embeds_one_control_for_all(request, sd_folder, controlnet_folder):
    ours, theirs = load_both(sd_folder, controlnet_folder, IMG2IMG)
    embeds = text_embeds(ours, ["a red circle", "a blue square"])
    negative = text_embeds(ours, ["dark", ""], seed=8)
    a, b = run_both(ours, theirs, prompt_embeds=embeds, negative_prompt_embeds=negative,
                    image=[picture(32, 32, 1), picture(32, 32, 2)], control_image=picture(32, 32, 3), strength=0.7,
                    num_inference_steps=4, output_type="np")
    close(request, a.images, b.images)


def test_controlnet_img2img_explicit_size_latents_image_and_given_latents(request, sd_folder, controlnet_folder):
    """height / width resize the picture (the control image has their size); latents as image pass through;
    caller latents are the start."""
    ours, theirs = load_both(sd_folder, controlnet_folder, IMG2IMG)
    a, b = run_both(ours, theirs, prompt="a cat", image=picture(48, 48), control_image=picture(32, 40, 4), height=32,
                    width=40, num_inference_steps=4, output_type="np")
    assert a.images.shape == (1, 32, 40, 3)
    close(request, a.images, b.images)
    latents = torch.randn(1, 4, 8, 12, generator=generator(5))
    a, b = run_both(ours, theirs, prompt="a cat", image=latents, control_image=picture(32, 48, 4), strength=0.5,
                    num_inference_steps=4, output_type="np")
    close(request, a.images, b.images)
    a, b = run_both(ours, theirs, prompt="a cat", image=picture(32, 48), control_image=picture(32, 48, 4),
                    latents=latents, num_inference_steps=4, output_type="np")
    close(request, a.images, b.images)


# ---------------------------------------------------------------------------------------------- inpainting


@pytest.mark.parametrize("kind,size,extra", [
    ("inpaint", (32, 40), {}),  # a 9-channel inpainting UNet: it sees the mask and the masked picture
    ("inpaint", (40, 32), dict(prompt=["a cat", "a dog"], num_images_per_prompt=2, strength=0.8, guess_mode=True)),
    ("text2img", (32, 32), dict(strength=0.7, controlnet_conditioning_scale=1.2, control_guidance_end=0.6)),  # 4
])
def test_controlnet_inpaint(request, sd_folder, controlnet_folder, kind, size, extra):
    """Repaint where the mask is white while the ControlNet holds the layout; the size is the picture's."""
    import diffusers

    from ..parity import mask

    cls = "StableDiffusionControlNetInpaintPipeline"
    ours = getattr(sfumato, cls).from_pretrained(
        sd_folder("small", kind), controlnet=sfumato.ControlNetModel.from_pretrained(controlnet_folder("small")))
    theirs = getattr(diffusers, cls).from_pretrained(
        sd_folder("small", kind), controlnet=diffusers.ControlNetModel.from_pretrained(controlnet_folder("small")))
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    kwargs = {"prompt": "a red circle", "image": picture(*size), "mask_image": mask(*size),
              "control_image": picture(*size, seed=5), **extra}
    a, b = run_both(ours, theirs, num_inference_steps=5, output_type="np", **kwargs)
    count = 1 if isinstance(kwargs["prompt"], str) else len(kwargs["prompt"])
    assert a.images.shape == (count * extra.get("num_images_per_prompt", 1), *size, 3)
    close(request, a.images, b.images)
    with pytest.raises(ValueError, match="padding_mask_crop is not supported with a ControlNet"):
        ours(**kwargs, padding_mask_crop=4)


# ---------------------------------------------------------------------------------------------- text-to-image


@pytest.mark.parametrize("config,size,prompt,n,scheduler,extra", [
    ("small", (32, 48), "a red circle", 1, None, {}),
    ("wide", (40, 32), ["a cat", "a dog"], 2, ("DDIMScheduler", {}),
     dict(eta=0.3, guess_mode=True, negative_prompt=["x", "y"], controlnet_conditioning_scale=0.7)),
    ("small", (40, 32), "a tree", 1, ("EulerDiscreteScheduler", {}),
     dict(height=40, width=32, control_guidance_start=0.3, timesteps=[901, 601, 301, 1])),
])
def test_controlnet_text2img(request, sd_folder, controlnet_folder, config, size, prompt, n, scheduler, extra):
    ours, theirs = load_both(sd_folder, controlnet_folder, TEXT2IMG, config)
    if scheduler:
        swap_scheduler(ours, theirs, scheduler[0], **scheduler[1])
    count = 1 if isinstance(prompt, str) else len(prompt)
    controls = [picture(*size, seed=20 + i) for i in range(count)]
    a, b = run_both(ours, theirs, prompt=prompt, image=controls if count > 1 else controls[0],
                    num_images_per_prompt=n, num_inference_steps=4, output_type="np", **extra)
    assert a.images.shape == (count * n, *size, 3)  # the control image's size
    close(request, a.images, b.images)


# ---------------------------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("class_name", [IMG2IMG, TEXT2IMG])
def test_images_per_prompt_with_a_generator_each_equal_single_runs(pipelines, class_name):
    pipe = pipelines(class_name)
    common = dict(prompt="a red circle", negative_prompt="dark", num_inference_steps=3, output_type="np")
    common.update(image=picture(32, 40), control_image=picture(32, 40, 7)) if class_name == IMG2IMG \
        else common.update(image=picture(32, 40, 7))
    both = pipe(**common, num_images_per_prompt=2, generator=[generator(1), generator(2)]).images
    for i, seed in enumerate((1, 2)):
        assert_close(both[i:i + 1], pipe(**common, generator=generator(seed)).images)
    assert np.abs(both[0] - both[1]).max() > 1e-3


def test_the_control_image_steers_and_the_window_turns_it_off(pipelines):
    pipe = pipelines(IMG2IMG)
    common = dict(prompt="a cat", image=picture(32, 32), num_inference_steps=4, output_type="np")

    def run(**kwargs):
        return pipe(**common, **kwargs, generator=generator(3)).images

    one, other = run(control_image=picture(32, 32, 1)), run(control_image=picture(32, 32, 2))
    assert np.abs(one - other).max() > 1e-3
    # a window that holds no step leaves the ControlNet out, whatever the control image
    off = dict(control_guidance_start=0.0, control_guidance_end=0.1)
    assert np.array_equal(run(control_image=picture(32, 32, 1), **off), run(control_image=picture(32, 32, 2), **off))
    assert np.array_equal(run(control_image=picture(32, 32, 1), **off),
                          run(control_image=picture(32, 32, 1), controlnet_conditioning_scale=0.0))


def test_callbacks_see_the_control_image_under_the_references_name(sd_folder, controlnet_folder):
    ours, theirs = load_both(sd_folder, controlnet_folder, IMG2IMG)
    seen = {}

    def record(pipe, i, t, tensors):
        seen.setdefault(type(pipe).__module__.split(".")[0], []).append(tuple(tensors["control_image"].shape))
        return {"latents": tensors["latents"] * 0.9} if i == 1 else {}

    kwargs = dict(prompt="a cat", image=picture(32, 32), control_image=picture(32, 32, 1), num_inference_steps=4,
                  output_type="np", callback_on_step_end=record,
                  callback_on_step_end_tensor_inputs=["latents", "control_image"])
    assert_close(ours(**kwargs, generator=generator()).images, theirs(**kwargs, generator=generator()).images)
    assert seen["sfumato"] == seen["diffusers"]


def test_save_and_reload_in_the_reference(tmp_path, pipelines):
    import diffusers

    pipe = pipelines(IMG2IMG)
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == IMG2IMG and index["controlnet"] == ["diffusers", "ControlNetModel"]
    theirs = diffusers.StableDiffusionControlNetImg2ImgPipeline.from_pretrained(tmp_path / "saved")
    theirs.set_progress_bar_config(disable=True)
    ours = sfumato.StableDiffusionControlNetImg2ImgPipeline.from_pretrained(tmp_path / "saved")
    ours.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a cat", image=picture(32, 32), control_image=picture(32, 32, 1), num_inference_steps=3,
                  output_type="np")
    assert_close(ours(**kwargs, generator=generator()).images, theirs(**kwargs, generator=generator()).images)


def _several(library: str, sd_folder, controlnet_folder, tmp_path, class_name: str):
    """``class_name`` of ``library`` with two ControlNets (the fixture's and another with other weights)."""
    import diffusers

    from .builders_upscale import save_controlnet

    second = tmp_path / "second-controlnet"
    if not second.is_dir():
        save_controlnet(second, "small", seed=12)
    module = sfumato if library == "sfumato" else diffusers
    nets = [module.ControlNetModel.from_pretrained(folder) for folder in (controlnet_folder("small"), second)]
    pipe = getattr(module, class_name).from_pretrained(sd_folder("small"), controlnet=nets)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("class_name,extra", [
    (TEXT2IMG, dict(controlnet_conditioning_scale=[0.6, 1.2], control_guidance_start=[0.0, 0.4],
                    control_guidance_end=[0.6, 1.0])),
    (TEXT2IMG, dict(prompt=["a cat", "a dog"], num_images_per_prompt=2, control_guidance_end=[0.5, 1.0])),
    (IMG2IMG, dict(controlnet_conditioning_scale=0.8, control_guidance_end=0.75, guess_mode=True, strength=0.7)),
])
def test_several_controlnets_equal_the_reference(request, tmp_path, sd_folder, controlnet_folder, class_name, extra):
    """controlnet=[a, b]: each reads its own control image with its own scale and window; residuals add up."""
    ours = _several("sfumato", sd_folder, controlnet_folder, tmp_path, class_name)
    theirs = _several("diffusers", sd_folder, controlnet_folder, tmp_path, class_name)
    assert isinstance(ours.controlnet, sfumato.MultiControlNetModel) and len(ours.controlnets()) == 2
    controls = [picture(32, 40, 1), picture(32, 40, 2)]
    kwargs = dict(image=controls) if class_name == TEXT2IMG else dict(image=picture(32, 40), control_image=controls)
    kwargs = {"prompt": "a cat", **kwargs, **extra}
    a, b = run_both(ours, theirs, num_inference_steps=5, output_type="np", **kwargs)
    close(request, a.images, b.images)
    # the second ControlNet counts: another control image for it alone changes the picture (the tiny random
    # ControlNets steer weakly, but far above the two libraries' rounding difference, ~1e-7)
    other = {**kwargs, ("image" if class_name == TEXT2IMG else "control_image"): [controls[0], picture(32, 40, 3)]}
    changed = ours(**other, num_inference_steps=5, output_type="np", generator=generator()).images
    assert np.abs(changed - a.images).max() > 1e-5


def test_several_controlnets_save_and_load_in_the_references_layout(tmp_path, sd_folder, controlnet_folder):
    import diffusers

    ours = _several("sfumato", sd_folder, controlnet_folder, tmp_path, TEXT2IMG)
    ours.save_pretrained(tmp_path / "ours")
    index = json.loads((tmp_path / "ours" / "model_index.json").read_text())
    assert index["controlnet"] == ["diffusers", "MultiControlNetModel"]
    assert (tmp_path / "ours" / "controlnet" / "config.json").is_file()
    assert (tmp_path / "ours" / "controlnet_1" / "config.json").is_file()
    theirs = diffusers.StableDiffusionControlNetPipeline.from_pretrained(tmp_path / "ours")
    theirs.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a cat", image=[picture(32, 32, 1), picture(32, 32, 2)], num_inference_steps=3,
                  output_type="np")
    assert_close(ours(**kwargs, generator=generator()).images, theirs(**kwargs, generator=generator()).images)
    theirs.save_pretrained(tmp_path / "theirs")
    again = sfumato.StableDiffusionControlNetPipeline.from_pretrained(tmp_path / "theirs")
    again.set_progress_bar_config(disable=True)
    assert len(again.controlnets()) == 2
    assert_close(again(**kwargs, generator=generator()).images, theirs(**kwargs, generator=generator()).images)
    alone = sfumato.MultiControlNetModel.from_pretrained(tmp_path / "theirs" / "controlnet")
    assert len(alone.nets) == 2


def test_several_controlnets_in_the_fast_mode(tmp_path, sd_folder, controlnet_folder):
    """The fast CPU mode converts each ControlNet (the pipeline calls them one by one); disable undoes it exactly."""
    pipe = _several("sfumato", sd_folder, controlnet_folder, tmp_path, IMG2IMG)
    kwargs = dict(prompt="a cat", image=picture(32, 32), control_image=[picture(32, 32, 1), picture(32, 32, 2)],
                  num_inference_steps=3, output_type="np")
    parity = pipe(**kwargs, generator=generator()).images
    sfumato.optimize(pipe, sfumato.fast.Plan(dtype=torch.bfloat16, channels_last=True))
    assert all(net.dtype == torch.float32 and next(net.parameters()).dtype == torch.bfloat16
               for net in pipe.controlnets())  # fp32 to its callers, bf16 inside
    fast = pipe(**kwargs, generator=generator()).images
    assert np.abs(fast - parity).max() < 0.05
    sfumato.fast.disable(pipe)
    assert np.array_equal(pipe(**kwargs, generator=generator()).images, parity)


@pytest.mark.parametrize("kwargs,message", [
    (dict(image=picture(32, 32, 1)), "must be a list with one control image \\(or list of them\\) per ControlNet: "
                                     "there are 2 ControlNets, got Image"),
    (dict(image=[picture(32, 32, 1)] * 3), "there are 2 ControlNets, got a list of 3"),
    (dict(image=[picture(32, 32, 1)] * 2, controlnet_conditioning_scale=[1.0, 0.5, 0.2]),
     "controlnet_conditioning_scale has 3 values, but there are 2 ControlNets"),
    (dict(image=[picture(32, 32, 1), picture(32, 40, 2)]), "pictures must all have one size"),
])
def test_several_controlnets_bad_input_is_named(tmp_path, sd_folder, controlnet_folder, kwargs, message):
    pipe = _several("sfumato", sd_folder, controlnet_folder, tmp_path, TEXT2IMG)
    with pytest.raises(ValueError, match=message):
        pipe(prompt="a cat", num_inference_steps=2, **kwargs)


# ---------------------------------------------------------------------------------------------- auto pipelines


def test_auto_pipelines_pick_controlnet_classes_where_the_reference_does(sd_folder, controlnet_folder):
    import diffusers

    folder = sd_folder("small")
    ours_cn = sfumato.ControlNetModel.from_pretrained(controlnet_folder("small"))
    theirs_cn = diffusers.ControlNetModel.from_pretrained(controlnet_folder("small"))
    for auto in ("AutoPipelineForText2Image", "AutoPipelineForImage2Image", "AutoPipelineForInpainting"):
        ours = getattr(sfumato, auto).from_pretrained(folder, controlnet=ours_cn)
        theirs = getattr(diffusers, auto).from_pretrained(folder, controlnet=theirs_cn)
        assert type(ours).__name__ == type(theirs).__name__
        assert ours.controlnet is ours_cn


def test_auto_from_pipe_adds_keeps_and_drops_the_controlnet(sd_folder, controlnet_folder):
    import diffusers

    ours_cn = sfumato.ControlNetModel.from_pretrained(controlnet_folder("small"))
    theirs_cn = diffusers.ControlNetModel.from_pretrained(controlnet_folder("small"))
    ours = sfumato.StableDiffusionPipeline.from_pretrained(sd_folder("small"))
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(sd_folder("small"))
    steps = [("AutoPipelineForImage2Image", dict(controlnet=True)), ("AutoPipelineForText2Image", {}),
             ("AutoPipelineForImage2Image", {}), ("AutoPipelineForImage2Image", dict(controlnet=None)),
             ("AutoPipelineForText2Image", {})]
    for auto, kwargs in steps:
        ours_kwargs = {k: (ours_cn if v else v) for k, v in kwargs.items()}
        theirs_kwargs = {k: (theirs_cn if v else v) for k, v in kwargs.items()}
        new_ours = getattr(sfumato, auto).from_pipe(ours, **ours_kwargs)
        theirs = getattr(diffusers, auto).from_pipe(theirs, **theirs_kwargs)
        assert type(new_ours).__name__ == type(theirs).__name__, (auto, kwargs)
        for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            assert getattr(new_ours, name) is getattr(ours, name)
        if hasattr(ours, "controlnet") and hasattr(new_ours, "controlnet"):
            assert new_ours.controlnet is ours.controlnet
        ours = new_ours


# ---------------------------------------------------------------------------------------------- the guide's chain


@pytest.fixture(scope="module")
def depth_estimator(dpt_folder):
    """A random DPT depth model as a local folder, loaded as the transformers depth-estimation pipeline."""
    from sfumato.image import load_depth_estimator

    return load_depth_estimator(dpt_folder)


def test_chain_depth_controlnet_img2img_then_a_style_model(request, sd_folder, controlnet_folder, depth_estimator):
    """The guide: a depth map of the picture steers ControlNet image-to-image (AutoPipelineForImage2Image with
    controlnet=); another model then restyles the result by image-to-image. Same chain in the reference."""
    import diffusers

    from sfumato.image import depth_control_image

    init_image = picture(36, 50, seed=4)  # not multiples of 4: both pictures snap down alike
    depth_image = depth_control_image(init_image, depth_estimator)
    assert depth_image.size == init_image.size
    first = dict(prompt="Astronaut in a jungle, cold color palette", image=init_image, control_image=depth_image,
                 num_inference_steps=4)
    second = dict(prompt="elden ring style astronaut in a jungle", negative_prompt="ugly, deformed, disfigured",
                  strength=0.45, guidance_scale=10.5, num_inference_steps=6, output_type="np")
    results = []
    for library in (sfumato, diffusers):
        controlnet = library.ControlNetModel.from_pretrained(controlnet_folder("small"))
        pipeline = library.AutoPipelineForImage2Image.from_pretrained(sd_folder("small"), controlnet=controlnet)
        pipeline.set_progress_bar_config(disable=True)
        image_control_net = pipeline(**first, generator=generator(1)).images[0]
        style = library.AutoPipelineForImage2Image.from_pretrained(sd_folder("wide"))
        style.set_progress_bar_config(disable=True)
        results.append((np.asarray(image_control_net),
                        style(image=image_control_net, **second, generator=generator(2)).images))
    (ours_pil, ours), (theirs_pil, theirs) = results
    assert ours_pil.shape == (36, 48, 3)
    close(request, ours_pil, theirs_pil)
    close(request, ours, theirs)


# ---------------------------------------------------------------------------------------------- bad input


BAD_INPUT = [
    (IMG2IMG, "small", dict(image=picture(32, 32), control_image=picture(32, 48)), ValueError,
     r"control_image has size \(32, 48\).*makes pictures of \(32, 32\)"),
    (IMG2IMG, "small", dict(image=picture(32, 32), control_image=picture(32, 32), height=32, width=48), ValueError,
     "control_image has size"),
    (IMG2IMG, "small", dict(image=picture(32, 32), control_image=[picture(32, 32), picture(32, 40)]), ValueError,
     "must all have one size"),
    (IMG2IMG, "small", dict(image=picture(32, 32)), ValueError, "control_image is required"),
    (IMG2IMG, "small", dict(image=picture(32, 32), control_image="depth.png"), TypeError, "control_image must be"),
    (IMG2IMG, "small", dict(image=picture(32, 32), control_image=picture(32, 32), strength=0), ValueError, "strength"),
    (IMG2IMG, "small", dict(image=picture(32, 32), control_image=picture(32, 32), strength=1.5), ValueError,
     "strength must be a number in"),
    (IMG2IMG, "small", dict(image=picture(32, 32), control_image=picture(32, 32), control_guidance_start=0.6,
                            control_guidance_end=0.4), ValueError, "control_guidance_start and control_guidance_end"),
    (IMG2IMG, "small", dict(image=picture(32, 32), control_image=picture(32, 32), control_guidance_end=[0.5, 1.0]),
     ValueError, "one ControlNet"),
    (IMG2IMG, "small", dict(image=picture(32, 32), control_image=picture(32, 32), controlnet_conditioning_scale="1"),
     TypeError, "controlnet_conditioning_scale must be a number"),
    (IMG2IMG, "small", dict(prompt=["a", "b"], image=picture(32, 32), control_image=[picture(32, 32)] * 3),
     ValueError, "control_image has batch size 3, but there are 2 prompts"),
    (IMG2IMG, "small", dict(image=picture(32, 32), control_image=torch.rand(1, 1, 32, 32)), ValueError,
     "control_image has 1 channels"),
    (IMG2IMG, "small", dict(prompt="a cat", image=picture(32, 32), control_image=picture(32, 32),
                            prompt_embeds=torch.zeros(1, 77, 32)), ValueError, "not both"),
    (IMG2IMG, "small", dict(image=picture(32, 32), control_image=picture(32, 32), latents=torch.zeros(1, 4, 8, 4)),
     ValueError, "latents have shape"),
    (TEXT2IMG, "small", dict(image=picture(32, 48), height=32, width=32), ValueError,
     r"image has size \(32, 48\).*makes pictures of \(32, 32\)"),
    (TEXT2IMG, "small", dict(), ValueError, "image is required"),
    (TEXT2IMG, "small", dict(image=picture(32, 32), callback_on_step_end_tensor_inputs=["control_image"]),
     ValueError, "offers"),
]


@pytest.mark.parametrize("class_name,config,kwargs,error,message", BAD_INPUT,
                         ids=[f"{c[0].replace('StableDiffusion', '')}-{i}" for i, c in enumerate(BAD_INPUT)])
def test_bad_input_is_named_before_any_model_runs(pipelines, monkeypatch, class_name, config, kwargs, error, message):
    pipe = pipelines(class_name, config)
    no_model_may_run(pipe, monkeypatch)
    kwargs = dict(kwargs)
    kwargs.setdefault("prompt", "a cat")
    with pytest.raises(error, match=message):
        pipe(**kwargs, num_inference_steps=2)
