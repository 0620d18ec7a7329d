"""Depth hints from a tiny random DPT saved to a local folder (nothing is downloaded)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from sfumato.image import depth_control_image, depth_hint, estimate_depth, load_depth_estimator


@pytest.fixture(scope="module")
def dpt_folder(tmp_path_factory):
    """A random DPTForDepthEstimation (133k parameters) and its image processor, as a model folder."""
    import transformers

    torch.manual_seed(0)
    config = transformers.DPTConfig(
        image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=4, backbone_out_indices=[0, 1, 2, 3],
        num_attention_heads=4, intermediate_size=37, neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=16,
    )
    folder = tmp_path_factory.mktemp("dpt")
    transformers.DPTForDepthEstimation(config).eval().save_pretrained(folder)
    # the PIL processor needs no torchvision; same preprocessing
    processor = getattr(transformers, "DPTImageProcessorPil", transformers.DPTImageProcessor)
    processor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def estimator(dpt_folder):
    return load_depth_estimator(dpt_folder)


def picture(width: int, height: int, seed: int) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def guide_make_hint(image, depth_estimator):
    """The Kandinsky 2.2 ControlNet guide's helper, verbatim in behaviour."""
    image = depth_estimator(image)["depth"]
    image = np.array(image)
    image = image[:, :, None]
    image = np.concatenate([image, image, image], axis=2)
    detected_map = torch.from_numpy(image).float() / 255.0
    return detected_map.permute(2, 0, 1)


def test_hint_is_the_guides_make_hint(estimator):
    image = picture(48, 40, seed=1)
    hint = depth_hint(image, estimator)
    assert hint.dtype == torch.float32 and tuple(hint.shape) == (1, 3, 40, 48)
    assert torch.equal(hint, guide_make_hint(image, estimator).unsqueeze(0))
    assert 0 <= hint.min() and hint.max() <= 1 and hint.max() > hint.min()  # the map spans its range


def test_batches_are_the_single_hints_stacked(estimator):
    images = [picture(32, 24, seed=2), picture(32, 24, seed=3)]
    hints = depth_hint(images, estimator)
    assert tuple(hints.shape) == (2, 3, 24, 32)
    for index, image in enumerate(images):
        assert torch.equal(hints[index], depth_hint(image, estimator)[0])
    # array and tensor input mean the same pictures
    array = np.stack([np.asarray(image, dtype=np.float32) / 255 for image in images])
    assert torch.equal(depth_hint(array, estimator), hints)
    assert torch.equal(depth_hint(torch.from_numpy(array).permute(0, 3, 1, 2), estimator), hints)


def test_control_image_for_stable_diffusion(estimator):
    image = picture(40, 56, seed=4)
    control = depth_control_image(image, estimator)
    assert isinstance(control, PIL.Image.Image) and control.mode == "RGB" and control.size == (40, 56)
    depth = np.asarray(estimate_depth(image, estimator)[0])
    assert all(np.array_equal(np.asarray(control)[..., channel], depth) for channel in range(3))
    controls = depth_control_image([image, picture(16, 24, seed=5)], estimator)
    assert [c.size for c in controls] == [(40, 56), (16, 24)]


def test_a_folder_path_is_loaded(dpt_folder, estimator):
    image = picture(24, 24, seed=6)
    assert torch.equal(depth_hint(image, str(dpt_folder)), depth_hint(image, estimator))


def test_hint_drives_the_kandinsky_controlnet_pipeline(estimator):
    """The hint goes straight into KandinskyV22ControlnetPipeline (the built-in tiny model)."""
    from sfumato import KandinskyV22ControlnetPipeline
    from sfumato.demo import builtin_model

    pipe = KandinskyV22ControlnetPipeline.from_pretrained(builtin_model("controlnet"))
    pipe.set_progress_bar_config(disable=True)
    hint = depth_hint(picture(64, 64, seed=7), estimator)
    embeds = torch.randn(1, pipe.unet.config.encoder_hid_dim, generator=torch.Generator().manual_seed(0))
    images = pipe(image_embeds=embeds, negative_image_embeds=torch.zeros_like(embeds), hint=hint, height=64,
                  width=64, num_inference_steps=2, generator=torch.Generator().manual_seed(1), output_type="np").images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_sd_control_image_feeds_a_controlnet(estimator):
    """As the SD ControlNet pipelines prepare it: RGB in [0, 1], 8x the latent size."""
    from sfumato.image import to_tensor
    from sfumato.models.controlnet import ControlNetModel

    controlnet = ControlNetModel(block_out_channels=[8, 16], attention_head_dim=2, cross_attention_dim=8,
                                 norm_num_groups=4, layers_per_block=1,
                                 down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                                 conditioning_embedding_out_channels=[4, 4, 8, 8]).eval()
    control = to_tensor(depth_control_image(picture(64, 48, seed=8), estimator))
    with torch.no_grad():
        output = controlnet(torch.randn(1, 4, 6, 8), 10, torch.randn(1, 3, 8), control)
    assert tuple(output.mid_block_res_sample.shape) == (1, 16, 3, 4)


# -- bad input --------------------------------------------------------------------------------------------------


def test_missing_model_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"local folder .*got '.*nowhere'.*nothing is downloaded"):
        load_depth_estimator(tmp_path / "nowhere")


def test_bad_inputs_are_named(estimator):
    with pytest.raises(ValueError, match=r"one size .*\[\(16, 16\), \(24, 16\)\]"):
        depth_hint([picture(16, 16, seed=1), picture(24, 16, seed=1)], estimator)
    with pytest.raises(TypeError, match="images must be .*got str; load files with sfumato.utils.load_image"):
        depth_hint("photo.png", estimator)
    with pytest.raises(ValueError, match="at least one picture"):
        depth_hint([], estimator)
    with pytest.raises(TypeError, match="depth_estimator must be a transformers depth-estimation pipeline"):
        depth_hint(picture(16, 16, seed=1), 42)
    with pytest.raises(TypeError, match=r"depth_estimator must return \{'depth': PIL image\}"):
        depth_hint(picture(16, 16, seed=1), lambda image: {"predicted_depth": torch.zeros(16, 16)})
