"""What all schedulers share: configs that load in both libraries, swapping, add_noise, bad input."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

import diffusers
import sfumato
import sfumato.schedulers as ours
from sfumato.checkpoint import CheckpointError
from sfumato.schedulers.base import DEFAULTS_KEY

from .parity import pair

ALL = ["DDPMScheduler", "DDIMScheduler", "UnCLIPScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
       "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "LMSDiscreteScheduler"]
SWAPPABLE = [name for name in ALL if name != "UnCLIPScheduler"]
WITH_SPACING = SWAPPABLE
SIGMA_BASED = ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler",
               "DPMSolverMultistepScheduler"]

# runwayml/stable-diffusion-v1-5's scheduler_config.json: written by an old release, so it lacks
# fields added since (timestep_spacing, prediction_type, ...) and those take each class's defaults
SD15_SCHEDULER_JSON = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
    "clip_sample": False,
}
# kandinsky-community/kandinsky-2-2-decoder's scheduler config
KANDINSKY22_DDPM_JSON = {
    "_class_name": "DDPMScheduler", "_diffusers_version": "0.18.0.dev0", "beta_end": 0.012,
    "beta_schedule": "linear", "beta_start": 0.00085, "clip_sample": False, "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995, "num_train_timesteps": 1000, "prediction_type": "epsilon",
    "sample_max_value": 1.0, "steps_offset": 1, "thresholding": False, "timestep_spacing": "leading",
    "trained_betas": None, "variance_type": "fixed_small",
}
KANDINSKY_PRIOR_JSON = {
    "_class_name": "UnCLIPScheduler", "_diffusers_version": "0.17.0.dev0", "clip_sample": True,
    "clip_sample_range": 10.0, "num_train_timesteps": 1000, "prediction_type": "sample",
    "variance_type": "fixed_small_log",
}


def public(config) -> dict:
    """A config as it is saved: JSON values, no private entries."""
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}))


def write_config(folder, data: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scheduler_config.json").write_text(json.dumps(data))


# -- configs --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_default_config_matches_diffusers(name):
    mine, reference = pair(name)
    assert public(mine.config) == public(reference.config)
    assert type(mine).config_name == "scheduler_config.json"


@pytest.mark.parametrize("name", ALL)
def test_saved_config_loads_in_diffusers_and_back(name, tmp_path):
    mine = getattr(ours, name)(num_train_timesteps=500, clip_sample=False) if name == "UnCLIPScheduler" else \
        getattr(ours, name)(num_train_timesteps=500, prediction_type="v_prediction")
    mine.save_pretrained(tmp_path / "scheduler")
    assert [p.name for p in (tmp_path / "scheduler").iterdir()] == ["scheduler_config.json"]  # no temp files
    saved = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert saved["_class_name"] == name and "_use_default_values" not in saved
    reference = getattr(diffusers, name).from_pretrained(tmp_path, subfolder="scheduler")
    assert public(reference.config) == public(mine.config)
    reference.save_pretrained(tmp_path / "theirs")
    again = getattr(ours, name).from_pretrained(tmp_path / "theirs")
    assert public(again.config) == public(mine.config)


@pytest.mark.parametrize(
    ("name", "data"),
    [("PNDMScheduler", SD15_SCHEDULER_JSON), ("DDPMScheduler", KANDINSKY22_DDPM_JSON),
     ("UnCLIPScheduler", KANDINSKY_PRIOR_JSON)],
)
def test_real_checkpoint_configs_load_like_diffusers(name, data, tmp_path):
    write_config(tmp_path / "scheduler", data)
    mine = getattr(ours, name).from_pretrained(tmp_path, subfolder="scheduler")
    reference = getattr(diffusers, name).from_pretrained(tmp_path, subfolder="scheduler")
    assert public(mine.config) == public(reference.config)
    for scheduler in (mine, reference):
        scheduler.set_timesteps(20)
    torch.testing.assert_close(mine.timesteps, reference.timesteps, rtol=0, atol=0)


def test_from_pretrained_keywords_override_the_file(tmp_path):
    write_config(tmp_path, SD15_SCHEDULER_JSON)
    scheduler, unused = ours.PNDMScheduler.from_pretrained(tmp_path, steps_offset=0, not_a_field=3,
                                                           return_unused_kwargs=True)
    assert scheduler.config.steps_offset == 0
    assert unused["not_a_field"] == 3


@pytest.mark.parametrize("target", SWAPPABLE)
@pytest.mark.parametrize("source", SWAPPABLE)
def test_swapping_matches_diffusers(source, target):
    config = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction")
    mine, reference = pair(source, **config)
    swapped = getattr(ours, target).from_config(mine.config)
    expected = getattr(diffusers, target).from_config(reference.config)
    assert type(swapped).__name__ == target
    assert public(swapped.config) == public(expected.config)


@pytest.mark.parametrize("target", SWAPPABLE)
def test_swapping_a_loaded_checkpoint_config_matches_diffusers(target, tmp_path):
    # the fields the file lacks must take the new class's defaults (Euler's "linspace", not PNDM's "leading")
    write_config(tmp_path, SD15_SCHEDULER_JSON)
    loaded = ours.PNDMScheduler.from_pretrained(tmp_path)
    swapped = getattr(ours, target).from_config(loaded.config)
    expected = getattr(diffusers, target).from_config(diffusers.PNDMScheduler.from_pretrained(tmp_path).config)
    assert public(swapped.config) == public(expected.config)
    for scheduler in (swapped, expected):
        scheduler.set_timesteps(30)
    torch.testing.assert_close(swapped.timesteps, expected.timesteps, rtol=0, atol=0)


def test_diffusers_scheduler_config_swaps_into_ours():
    reference = diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True, solver_order=3)
    mine = ours.EulerDiscreteScheduler.from_config(reference.config)
    expected = diffusers.EulerDiscreteScheduler.from_config(reference.config)
    assert public(mine.config) == public(expected.config)


def test_from_config_overrides_and_returns_unused():
    source = ours.DDPMScheduler(variance_type="fixed_large")
    scheduler, unused = ours.DDIMScheduler.from_config(source.config, timestep_spacing="trailing", bogus=1,
                                                      return_unused_kwargs=True)
    assert scheduler.config.timestep_spacing == "trailing"
    assert unused == {"bogus": 1, "variance_type": "fixed_large"}
    # kept in the config, so that swapping back restores it
    assert ours.DDPMScheduler.from_config(scheduler.config).config.variance_type == "fixed_large"


@pytest.mark.parametrize("name", ALL)
def test_compatibles_match_diffusers(name):
    mine, reference = pair(name)
    assert sorted(c.__name__ for c in mine.compatibles) == sorted(
        c.__name__ for c in reference.compatibles if hasattr(ours, c.__name__))
    assert all(c is getattr(sfumato, c.__name__) for c in mine.compatibles)


def test_compatibility_list_matches_diffusers():
    assert [(e.name, e.value) for e in ours.KarrasDiffusionSchedulers] == [
        (e.name, e.value) for e in diffusers.schedulers.KarrasDiffusionSchedulers]


# -- the constructor ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_init_signature_matches_diffusers(name):
    # from_config and the pipelines read the accepted fields and their defaults from this signature
    def fields(cls):
        return [(n, p.default, p.kind) for n, p in inspect.signature(cls.__init__).parameters.items()]

    assert fields(getattr(ours, name)) == fields(getattr(diffusers, name))
    assert list(getattr(ours, name)._init_parameters()) == list(getattr(ours, name).config_fields)


def test_positional_arguments_mean_what_they_mean_in_diffusers():
    args = (500, 0.001, 0.03, "scaled_linear", None)
    for name in SWAPPABLE:
        assert public(getattr(ours, name)(*args).config) == public(getattr(diffusers, name)(*args).config)
    # past the shared fields each class has its own order: DDIM's sixth is clip_sample, DDPM's variance_type
    for name, sixth in (("DDIMScheduler", False), ("DDPMScheduler", "fixed_large")):
        assert public(getattr(ours, name)(*args, sixth).config) == public(getattr(diffusers, name)(*args, sixth).config)
    assert public(ours.UnCLIPScheduler(10, "learned_range").config) == \
        public(diffusers.UnCLIPScheduler(10, "learned_range").config)
    with pytest.raises(TypeError):
        ours.DDIMScheduler(num_train_timesteps=10, not_a_field=1)
    with pytest.raises(TypeError):
        ours.DDIMScheduler(10, num_train_timesteps=10)


def test_fields_left_at_their_defaults_are_recorded():
    scheduler = ours.DDPMScheduler(500, beta_end=0.03)
    defaulted = scheduler.config[DEFAULTS_KEY]
    assert "num_train_timesteps" not in defaulted and "beta_end" not in defaulted
    assert set(defaulted) == set(ours.DDPMScheduler.config_fields) - {"num_train_timesteps", "beta_end"}
    assert DEFAULTS_KEY not in json.loads(scheduler.to_json_string())


# -- what the denoising loop asks of every scheduler --------------------------------------------


def _short_loop(scheduler, steps=4, **step_kwargs):
    sample = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        output = 0.1 * scheduler.scale_model_input(sample, t)
        sample = scheduler.step(output, t, sample, **step_kwargs).prev_sample
    return sample


@pytest.mark.parametrize(
    ("name", "config"),
    [(name, {}) for name in ALL] + [("PNDMScheduler", {"skip_prk_steps": True})],
)
def test_every_step_takes_a_generator(name, config):
    # the loop passes generator= to any scheduler, with no signature reflection
    assert "generator" in inspect.signature(getattr(ours, name).step).parameters
    seeded = _short_loop(getattr(ours, name)(**config), generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(seeded).all()
    if name in ("PNDMScheduler", "LMSDiscreteScheduler", "DDIMScheduler", "EulerDiscreteScheduler",
                "DPMSolverMultistepScheduler"):  # these draw no noise here: the generator changes nothing
        torch.testing.assert_close(seeded, _short_loop(getattr(ours, name)(**config)), rtol=0, atol=0)


def test_accepts_predicted_variance_follows_the_schedulers_own_variance_type():
    learned = ours.DDPMScheduler(variance_type="learned_range")
    assert learned.accepts_predicted_variance
    assert ours.DDPMScheduler(variance_type="learned").accepts_predicted_variance
    assert ours.UnCLIPScheduler(variance_type="learned_range").accepts_predicted_variance
    for fixed in ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log"):
        assert not ours.DDPMScheduler(variance_type=fixed).accepts_predicted_variance
    assert not ours.UnCLIPScheduler().accepts_predicted_variance
    for name in SWAPPABLE:
        if name != "DDPMScheduler":
            # from_config carries variance_type along (a hidden field, or DPM-Solver's own): still no
            swapped = getattr(ours, name).from_config(learned.config)
            assert swapped.config.variance_type == "learned_range"
            assert not swapped.accepts_predicted_variance, name
            assert not getattr(ours, name)().accepts_predicted_variance, name
    assert ours.DDPMScheduler.from_config(ours.DDIMScheduler.from_config(learned.config).config) \
        .accepts_predicted_variance


# -- the noise and input scaling that pipelines use ---------------------------------------------


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("begin", [None, 3])
def test_add_noise_matches_diffusers(name, begin):
    mine, reference = pair(name, beta_schedule="squaredcos_cap_v2") if name == "UnCLIPScheduler" else pair(name)
    generator = torch.Generator().manual_seed(0)
    original, noise = torch.randn(2, 2, 3, 4, 4, generator=generator).unbind(0)
    for scheduler in (mine, reference):
        scheduler.set_timesteps(10)
        if begin is not None and hasattr(reference, "set_begin_index"):
            scheduler.set_begin_index(begin)
    timesteps = reference.timesteps[[1, 6]]
    got = mine.add_noise(original, noise, timesteps)
    expected = reference.add_noise(original, noise, timesteps)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler"])
def test_get_velocity_matches_diffusers(name):
    mine, reference = pair(name)
    sample, noise = torch.randn(2, 2, 3, 4, generator=torch.Generator().manual_seed(2)).unbind(0)
    timesteps = torch.tensor([10, 900])
    torch.testing.assert_close(mine.get_velocity(sample, noise, timesteps),
                               reference.get_velocity(sample, noise, timesteps), rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_scale_model_input_and_init_noise_sigma_match_diffusers(name):
    mine, reference = pair(name, timestep_spacing="leading") if name in WITH_SPACING else pair(name)
    for scheduler in (mine, reference):
        scheduler.set_timesteps(10)
    torch.testing.assert_close(torch.as_tensor(mine.init_noise_sigma), torch.as_tensor(reference.init_noise_sigma),
                               rtol=0, atol=0)
    sample = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(4))
    t = reference.timesteps[0]
    torch.testing.assert_close(mine.scale_model_input(sample, t), reference.scale_model_input(sample, t),
                               rtol=0, atol=0)


@pytest.mark.parametrize("name", SIGMA_BASED)
def test_step_index_bookkeeping_matches_diffusers(name):
    mine, reference = pair(name)
    for scheduler in (mine, reference):
        scheduler.set_timesteps(8)
        assert scheduler.step_index is None and scheduler.begin_index is None
        scheduler.set_begin_index(2)
        scheduler.scale_model_input(torch.zeros(1, 1), scheduler.timesteps[2])
    assert (mine.step_index, mine.begin_index) == (reference.step_index, reference.begin_index)
    for scheduler in (mine, reference):
        scheduler.step(torch.zeros(1, 1), scheduler.timesteps[2], torch.ones(1, 1))
    assert (mine.step_index, mine.begin_index) == (reference.step_index, reference.begin_index) == (3, 2)


def test_timesteps_before_set_timesteps_match_diffusers():
    for name in ALL:
        mine, reference = pair(name)
        if reference.timesteps is None:
            assert mine.timesteps is None
            continue
        assert mine.timesteps.dtype == reference.timesteps.dtype, name
        torch.testing.assert_close(mine.timesteps, reference.timesteps, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["DDPMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler"])
def test_step_output_supports_tuple_access(name):
    scheduler = getattr(ours, name)()
    scheduler.set_timesteps(5)
    sample = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    output = scheduler.step(torch.zeros_like(sample), scheduler.timesteps[0], sample)
    assert output[0] is output.prev_sample is output["prev_sample"]
    assert output.to_tuple()[0] is output.prev_sample


def test_len_is_the_number_of_training_steps():
    assert len(ours.DDIMScheduler(num_train_timesteps=321)) == 321


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("steps", [0, -3, 1001])
def test_out_of_range_step_counts_are_rejected(name, steps):
    with pytest.raises(ValueError, match=f"num_inference_steps.*got {steps}"):
        getattr(ours, name)().set_timesteps(steps)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("steps", [2.5, "10"])
def test_non_integer_step_counts_are_rejected(name, steps):
    with pytest.raises(TypeError, match="num_inference_steps must be an int"):
        getattr(ours, name)().set_timesteps(steps)


@pytest.mark.parametrize("name", SWAPPABLE)
@pytest.mark.parametrize(
    ("field", "value"),
    [("beta_schedule", "quadratic"), ("prediction_type", "noise"), ("timestep_spacing", "evenly")],
)
def test_unknown_options_are_rejected(name, field, value):
    with pytest.raises(ValueError, match=f"{field} must be one of .*got '{value}'"):
        getattr(ours, name)(**{field: value})


def test_from_config_rejects_a_path():
    with pytest.raises(TypeError, match="from_pretrained"):
        ours.DDIMScheduler.from_config("some/folder")


def test_from_pretrained_reports_a_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match="scheduler_config.json"):
        ours.DDIMScheduler.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="subfolder"):
        ours.DDIMScheduler.from_pretrained(tmp_path, subfolder="scheduler")


def test_push_to_hub_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="push_to_hub"):
        ours.DDIMScheduler().save_pretrained(tmp_path / "out", push_to_hub=True)
    assert not (tmp_path / "out").exists()


def test_top_level_names_resolve_to_the_schedulers():
    for name in ALL + ["SchedulerMixin"]:
        assert getattr(sfumato, name) is getattr(ours, name)
    assert isinstance(ours.DDPMScheduler(), sfumato.SchedulerMixin)
