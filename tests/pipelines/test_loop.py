"""The shared denoising loop, tested on its own with a toy denoiser and a hand-written loop."""

import torch

from sfumato.pipelines.loop import denoise, guide, noise_latents, timesteps_for_strength


class ToyScheduler:
    """x_{t-1} = x_t - 0.1 * model_output, with an `order` and a config like real schedulers."""

    order = 1
    init_noise_sigma = 2.0

    class config:
        variance_type = None

    def __init__(self, steps=5):
        self.timesteps = torch.arange(steps - 1, -1, -1) * 100
        self.begin = None

    def set_begin_index(self, index):
        self.begin = index

    def scale_model_input(self, sample, t):
        return sample * 1.5

    def step(self, output, t, sample, generator=None):
        class Out:
            prev_sample = sample - 0.1 * output

        return Out


class ToyPipeline:
    def __init__(self, scheduler):
        self.scheduler = scheduler

    def progress_bar(self, iterable):
        return iterable


def toy_model(model_input, t, tensors):
    # conditional half (second) is pulled towards `target`, unconditional towards zero
    n = model_input.shape[0]
    cond = tensors["target"].expand(n, *model_input.shape[1:])
    weight = torch.ones(n, 1, 1, 1)
    if n == 2 * tensors["target"].shape[0]:
        weight[: n // 2] = 0
    return model_input - weight * cond + t.float() / 1000


def hand_loop(latents, timesteps, scale, target):
    for t in timesteps:
        x = torch.cat([latents] * 2) * 1.5
        uncond = x[:1] + t.float() / 1000
        cond = x[1:] - target + t.float() / 1000
        output = uncond + scale * (cond - uncond)
        latents = latents - 0.1 * output
    return latents


def test_loop_matches_hand_written_guided_loop():
    scheduler = ToyScheduler()
    latents = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    target = torch.full((1, 4, 3, 3), 0.5)
    out = denoise(ToyPipeline(scheduler), latents=latents, timesteps=scheduler.timesteps, predict=toy_model,
                  guidance_scale=4.0, guided=True, tensors={"target": target})
    torch.testing.assert_close(out, hand_loop(latents, scheduler.timesteps, 4.0, target), rtol=0, atol=1e-6)


def test_no_guidance_runs_single_batch():
    scheduler = ToyScheduler()
    seen = []

    def model(x, t, tensors):
        seen.append(x.shape[0])
        return x

    denoise(ToyPipeline(scheduler), latents=torch.zeros(3, 4, 2, 2), timesteps=scheduler.timesteps, predict=model,
            guidance_scale=1.0, guided=False)
    assert seen == [3] * 5


def test_callback_sees_and_replaces_tensors():
    scheduler = ToyScheduler(steps=3)
    calls = []

    def callback(pipe, i, t, tensors):
        calls.append((i, int(t), sorted(tensors)))
        return {"latents": torch.zeros_like(tensors["latents"])}

    out = denoise(ToyPipeline(scheduler), latents=torch.ones(1, 4, 2, 2), timesteps=scheduler.timesteps,
                  predict=lambda x, t, s: x,
                  callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents", "target"],
                  tensors={"target": torch.ones(1)})
    assert calls == [(0, 200, ["latents", "target"]), (1, 100, ["latents", "target"]), (2, 0, ["latents", "target"])]
    assert torch.count_nonzero(out) == 0


def test_after_step_hook_blends_each_step():
    scheduler = ToyScheduler(steps=4)
    steps = []

    def keep_left_half(latents, i, t):
        steps.append(i)
        latents = latents.clone()
        latents[..., 0] = 7.0
        return latents

    out = denoise(ToyPipeline(scheduler), latents=torch.ones(1, 4, 2, 2), timesteps=scheduler.timesteps,
                  predict=lambda x, t, s: x,
                  after_step=keep_left_half)
    assert steps == [0, 1, 2, 3]
    assert torch.all(out[..., 0] == 7.0) and torch.all(out[..., 1] != 7.0)


def test_guidance_keeps_conditional_variance():
    uncond = torch.cat([torch.zeros(1, 4, 2, 2), torch.full((1, 4, 2, 2), 3.0)], dim=1)
    cond = torch.cat([torch.ones(1, 4, 2, 2), torch.full((1, 4, 2, 2), 5.0)], dim=1)
    guided = guide(torch.cat([uncond, cond]), 4.0, latent_channels=4)
    assert torch.all(guided[:, :4] == 4.0) and torch.all(guided[:, 4:] == 5.0)


def test_strength_picks_schedule_tail():
    scheduler = ToyScheduler(steps=10)
    assert timesteps_for_strength(scheduler, 10, 0.3).tolist() == [200, 100, 0]
    assert scheduler.begin == 7
    assert len(timesteps_for_strength(scheduler, 10, 1.0)) == 10
    assert len(timesteps_for_strength(scheduler, 10, 0.0)) == 0


def test_noise_latents_seeded_and_scaled():
    scheduler = ToyScheduler()
    a = noise_latents(shape=(2, 4, 3, 3), scheduler=scheduler, generator=torch.Generator().manual_seed(1))
    b = torch.randn((2, 4, 3, 3), generator=torch.Generator().manual_seed(1)) * 2.0
    assert torch.equal(a, b)
    given = torch.ones(2, 4, 3, 3)
    assert torch.equal(noise_latents(shape=(2, 4, 3, 3), scheduler=scheduler, latents=given), given * 2.0)
    try:
        noise_latents(shape=(1, 4, 3, 3), scheduler=scheduler, latents=given)
    except ValueError as error:
        assert "latents has shape (2, 4, 3, 3)" in str(error)
    else:
        raise AssertionError("a wrong latents shape must be refused")


def test_variance_channels_kept_only_for_schedulers_that_use_them():
    """A learned-variance model's extra channels reach the scheduler only if it says it uses them."""
    seen = []

    class Recording(ToyScheduler):
        def step(self, output, t, sample, generator=None):
            seen.append(output.shape[1])
            return super().step(output[:, :4], t, sample)

    def model(x, t, tensors):
        return torch.cat([x, x], dim=1)

    for accepts, channels in ((False, 4), (True, 8)):
        scheduler = Recording(steps=2)
        scheduler.accepts_predicted_variance = accepts
        seen.clear()
        denoise(ToyPipeline(scheduler), latents=torch.ones(1, 4, 2, 2), timesteps=scheduler.timesteps, predict=model)
        assert seen == [channels, channels]


def test_eta_reaches_only_schedulers_that_take_it():
    """eta is DDIM's; a scheduler says it takes it (accepts_eta) and the others never see it."""
    seen = []

    class WithEta(ToyScheduler):
        accepts_eta = True

        def step(self, output, t, sample, generator=None, eta=None):
            seen.append(eta)
            return super().step(output, t, sample)

    class WithoutEta(ToyScheduler):
        def step(self, output, t, sample, generator=None):  # would fail if given eta
            seen.append("no eta")
            return super().step(output, t, sample)

    for scheduler in (WithEta(steps=2), WithoutEta(steps=2)):
        denoise(ToyPipeline(scheduler), latents=torch.ones(1, 4, 2, 2), timesteps=scheduler.timesteps,
                predict=lambda x, t, s: x, eta=0.3)
    assert seen == [0.3, 0.3, "no eta", "no eta"]


def test_guidance_rescale_matches_the_reference_formula():
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    from sfumato.pipelines.loop import rescale_guidance

    generator = torch.Generator().manual_seed(3)
    guided, cond = torch.randn(2, 4, 5, 5, generator=generator), torch.randn(2, 4, 5, 5, generator=generator)
    torch.testing.assert_close(rescale_guidance(guided, cond, 0.7), rescale_noise_cfg(guided, cond, 0.7),
                               rtol=0, atol=1e-6)
