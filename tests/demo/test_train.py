"""The demo model's training: a few steps of every stage, and what comes out loads in the real pipelines."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from sfumato.demo import architecture, generation_defaults, train
from sfumato.schedulers import DDPMScheduler, schedules
from sfumato.demo.data import all_captions, make_sample


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every stage for two steps on 48 pictures with small batches (a smoke run, not a model)."""
    out = tmp_path_factory.mktemp("demo-train")
    settings = {name: replace(value, batch_size=4) for name, value in train.SETTINGS.items()}
    report = train.run(out, steps=2, pool_size=48, quiet=True, settings=settings)
    return out, report, settings


def test_every_stage_runs_and_reports_its_time(trained):
    out, report, _ = trained
    assert list(report) == list(train.STAGES)
    for stage, entry in report.items():
        assert entry["steps"] == 2, stage
        assert entry["wall_seconds"] > 0, stage
        assert train.Workspace(out).load_state(stage)["done"], stage
    for folder in ("prior", "decoder", "inpaint", "controlnet"):
        assert (out / folder / "model_index.json").is_file()


def test_folders_have_the_reference_layout_in_fp16(trained):
    out, _, _ = trained
    from safetensors import safe_open

    expected = {
        "prior": ["prior", "text_encoder", "image_encoder", "tokenizer", "scheduler", "image_processor"],
        "decoder": ["unet", "scheduler", "movq"],
    }
    for folder, components in expected.items():
        for component in components:
            assert (out / folder / component).is_dir(), (folder, component)
    weights = out / "decoder" / "unet" / "diffusion_pytorch_model.safetensors"
    with safe_open(str(weights), "pt") as handle:
        assert {handle.get_tensor(key).dtype for key in handle.keys()} == {torch.float16}
    for folder in ("decoder", "inpaint", "controlnet"):
        card = (out / folder / "README.md").read_text()
        assert "prior:\n- ../prior" in card
        assert generation_defaults(out / folder)["height"] == architecture.IMAGE_SIZE


def test_saved_folders_generate_through_the_pipelines(trained):
    out, _, _ = trained
    from sfumato import AutoPipelineForInpainting, AutoPipelineForText2Image, KandinskyV22ControlnetPipeline
    from sfumato import KandinskyV22PriorPipeline

    prompt = "a red circle on a blue background"
    text2image = AutoPipelineForText2Image.from_pretrained(out / "decoder", torch_dtype=torch.float32)
    text2image.set_progress_bar_config(disable=True)
    image = text2image(prompt, num_inference_steps=2, prior_num_inference_steps=2, height=64, width=64,
                       generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)

    sample = make_sample(3)
    mask = np.zeros((64, 64), np.float32)
    mask[16:48, 16:48] = 1
    inpaint = AutoPipelineForInpainting.from_pretrained(out / "inpaint", torch_dtype=torch.float32)
    inpaint.set_progress_bar_config(disable=True)
    image = inpaint(prompt, image=sample.image, mask_image=mask, num_inference_steps=2, prior_num_inference_steps=2,
                    height=64, width=64).images[0]
    assert image.size == (64, 64)

    prior = KandinskyV22PriorPipeline.from_pretrained(out / "prior", torch_dtype=torch.float32)
    prior.set_progress_bar_config(disable=True)
    embeds = prior(prompt, num_inference_steps=2)
    controlnet = KandinskyV22ControlnetPipeline.from_pretrained(out / "controlnet", torch_dtype=torch.float32)
    controlnet.set_progress_bar_config(disable=True)
    hint = torch.from_numpy(sample.mask).float()[None, None].expand(1, 3, 64, 64)
    image = controlnet(image_embeds=embeds.image_embeds, negative_image_embeds=embeds.negative_image_embeds,
                       hint=hint, num_inference_steps=2, height=64, width=64).images[0]
    assert image.size == (64, 64)


def test_guidance_calibration_writes_the_chosen_scale(trained, tmp_path):
    out, _, _ = trained
    scores = train.calibrate_guidance(out, scales=(1.0, 3.0), count=4, quiet=True)
    assert set(scores) == {1.0, 3.0} and all(0.0 <= value <= 1.0 for value in scores.values())
    chosen = generation_defaults(out / "decoder")["prior_guidance_scale"]
    assert chosen in scores and scores[chosen] == max(scores.values())
    for folder in ("inpaint", "controlnet"):
        assert generation_defaults(out / folder)["prior_guidance_scale"] == chosen
    assert generation_defaults(out / "decoder")["num_inference_steps"] == train.GENERATION_DEFAULTS["num_inference_steps"]
    with pytest.raises(ValueError, match="needs the exported prior and decoder"):
        train.calibrate_guidance(tmp_path)
    with pytest.raises(ValueError, match="scales must be"):
        train.calibrate_guidance(out, scales=(0.5,))


def test_command_line_calibrates_after_training(trained, monkeypatch, capsys):
    out, _, _ = trained
    calls = []
    monkeypatch.setattr(train, "calibrate_guidance", lambda folder, quiet=False: calls.append((folder, quiet)))
    assert train.main(["--out", str(out), "--stage", "prior", "--steps", "2", "--pool-size", "48", "--resume",
                       "--quiet", "--calibrate"]) == 0
    assert calls == [(str(out), True)]
    assert "prior" in capsys.readouterr().out


def test_resume_skips_finished_stages_and_keeps_their_weights(trained):
    out, _, settings = trained
    before = train.Workspace(out).load_state("clip")["models"]["text_encoder"]
    report = train.run(out, stages=["clip"], steps=2, pool_size=48, quiet=True, settings=settings, resume=True)
    after = train.Workspace(out).load_state("clip")["models"]["text_encoder"]
    assert report["clip"]["steps"] == 2
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_an_interrupted_stage_continues_where_it_stopped(tmp_path, monkeypatch):
    """A run cut off after step 2 of 4 and resumed ends with the same weights as an uninterrupted one."""
    settings = {name: replace(value, batch_size=4, warmup_steps=1) for name, value in train.SETTINGS.items()}

    def image_encoder_weights(out):
        return train.Workspace(out).load_state("clip")["models"]["image_encoder"]

    train.run(tmp_path / "straight", stages=["clip"], steps=4, pool_size=16, quiet=True, settings=settings)

    # Save after every step, then stop the run after its third step's state is written.
    monkeypatch.setattr(train, "SAVE_EVERY_SECONDS", -1.0)
    saves = []
    original = train.Workspace.save_state

    def save_then_stop(self, stage, state):
        original(self, stage, state)
        saves.append(state["step"])
        if state["step"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train.Workspace, "save_state", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train.run(tmp_path / "cut", stages=["clip"], steps=4, pool_size=16, quiet=True, settings=settings)
    monkeypatch.setattr(train.Workspace, "save_state", original)
    assert train.Workspace(tmp_path / "cut").load_state("clip")["step"] == 2
    train.run(tmp_path / "cut", stages=["clip"], steps=4, pool_size=16, quiet=True, settings=settings, resume=True)
    straight, resumed = image_encoder_weights(tmp_path / "straight"), image_encoder_weights(tmp_path / "cut")
    assert all(torch.allclose(straight[key], resumed[key], atol=1e-6) for key in straight)


def test_clip_pixels_match_the_image_processor():
    processor = architecture.build_image_processor()
    samples = [make_sample(seed) for seed in (1, 2, 3)]
    expected = processor([sample.image for sample in samples], return_tensors="pt").pixel_values
    pictures = torch.stack([torch.tensor(sample.pixels).permute(2, 0, 1).float() / 127.5 - 1 for sample in samples])
    assert torch.allclose(train.clip_pixels(pictures), expected, atol=1e-5)


def test_tokenizer_keeps_every_caption_word_whole(tmp_path):
    tokenizer = architecture.build_tokenizer(tmp_path)
    for caption in all_captions():
        assert len(tokenizer.tokenize(caption)) == 7, caption
    # any other word still tokenizes (letter by letter), nothing is unknown
    assert tokenizer.convert_tokens_to_ids(tokenizer.tokenize("a purple star")).count(tokenizer.unk_token_id) == 0


def test_standardised_latents_decode_to_the_same_pictures():
    movq = architecture.build_untrained("movq").eval()
    pictures = torch.stack([torch.tensor(make_sample(s).pixels).permute(2, 0, 1).float() / 127.5 - 1
                            for s in range(4)])
    with torch.no_grad():
        latents = movq.encode(pictures).latents
        before = movq.decode(latents, force_not_quantize=True).sample
        mean, std = latents.mean(dim=(0, 2, 3)), latents.std(dim=(0, 2, 3))
        train.standardise_latents(movq, mean, std)
        standard = movq.encode(pictures).latents
        after = movq.decode(standard, force_not_quantize=True).sample
    assert torch.allclose(standard.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4)
    assert torch.allclose(standard.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-4)
    assert torch.allclose(before, after, atol=1e-4)


def test_variance_term_trains_only_the_variance_channels():
    loss = train.DiffusionLoss()
    clean = torch.randn(3, 4, 8, 8)
    noise = torch.randn(3, 4, 8, 8)
    timesteps = torch.tensor([0, 10, 500])
    noisy = loss.noisy(clean, noise, timesteps)
    # the exact noise and the posterior variance (fraction -1): nothing to learn
    exact = torch.cat([noise, -torch.ones_like(noise)], dim=1)
    total, parts = loss(exact, clean, noisy, noise, timesteps)
    assert parts["mse"] == 0 and abs(parts["vlb"]) < 1e-6
    # with the mean's gradient stopped, the variance term reaches only the variance channels
    output = torch.cat([noise + 0.1, torch.zeros_like(noise)], dim=1).requires_grad_()
    total, parts = loss(output, clean, noisy, noise, timesteps)
    assert parts["vlb"] > 0
    variance_term = total - torch.nn.functional.mse_loss(output[:, :4], noise)
    gradient = torch.autograd.grad(variance_term, output)[0]
    assert gradient[:, :4].abs().max() == 0 and gradient[:, 4:].abs().max() > 0


def test_diffusion_loss_uses_the_schedulers_math():
    loss = train.DiffusionLoss()
    scheduler = DDPMScheduler(**architecture.decoder_scheduler_config())
    generator = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(2, 6, 4, 8, 8, generator=generator).unbind(0)
    output = torch.randn(6, 8, 8, 8, generator=generator)
    timesteps = torch.tensor([0, 1, 2, 500, 998, 999])
    # noising is the sampler's forward process, bit for bit
    noisy = loss.noisy(clean, noise, timesteps)
    assert torch.equal(noisy, scheduler.add_noise(clean, noise, timesteps))
    # the bound's posterior is the shared one, over the sampler's own schedule
    tables = schedules.posterior_tables(scheduler.betas.double(), scheduler.alphas_cumprod.double())
    for field in ("variance", "log_variance", "original_coeff", "sample_coeff"):
        assert torch.equal(getattr(loss.posterior, field), getattr(tables, field)), field
    # the variance the channels learn is the one the learned_range sampler steps with
    fraction = output[:, 4:]
    for t in (1, 500, 999):
        trained = schedules.learned_range_log_variance(fraction, scheduler.betas[t].double().log().float(),
                                                       loss.posterior.log_variance[t].float())
        torch.testing.assert_close(trained, scheduler._get_variance(t, predicted_variance=fraction),
                                   rtol=1e-5, atol=1e-5)
    # and the numbers the shipped model was trained with stay put
    total, parts = loss(output, clean, noisy, noise, timesteps)
    assert total.item() == pytest.approx(2.321828603744507, rel=1e-6)
    assert parts == pytest.approx({"mse": 2.0248234272003174, "vlb": 0.2970051169395447}, rel=1e-6)


def test_bad_arguments_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="stages must be"):
        train.run(tmp_path, stages=["unet"])
    with pytest.raises(ValueError, match="steps must be a positive int"):
        train.run(tmp_path, stages=["movq"], steps=0)
    with pytest.raises(ValueError, match="needs movq"):
        train.run(tmp_path, stages=["decoder"], steps=1, pool_size=4, quiet=True)
    with pytest.raises(ValueError, match="part must be one of"):
        architecture.build_untrained("vae")
    assert train.main(["--out", str(tmp_path), "--stage", "nope"]) == 2
