"""ResnetBlock2D parity with the reference for every conditioning mode and resampling option."""

import pytest
import torch

from sfumato.nn import ResnetBlock2D, ResnetBlockCondNorm2D

reference = pytest.importorskip("diffusers.models.resnet")


def _copy_and_compare(ours, theirs, *inputs):
    ours.load_state_dict(theirs.state_dict(), strict=True)
    with torch.no_grad():
        expected = theirs(*inputs)
        got = ours(*inputs)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "options",
    [
        dict(time_embedding_norm="default"),
        dict(time_embedding_norm="scale_shift"),
        dict(time_embedding_norm="scale_shift", skip_time_act=True, output_scale_factor=2.0),
        dict(time_embedding_norm="scale_shift", down=True),
        dict(time_embedding_norm="scale_shift", up=True),
        dict(time_embedding_norm="default", out_channels=48),
    ],
    ids=["default", "scale_shift", "skip_act_scaled", "down", "up", "shortcut"],
)
def test_resnet_block_matches_reference(options):
    torch.manual_seed(0)
    kwargs = dict(in_channels=32, temb_channels=24, groups=8, eps=1e-5, non_linearity="silu", **options)
    theirs = reference.ResnetBlock2D(**kwargs).eval()
    ours = ResnetBlock2D(**kwargs).eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    _copy_and_compare(ours, theirs, torch.randn(2, 32, 6, 10), torch.randn(2, 24))


def test_resnet_block_without_time_matches_reference():
    torch.manual_seed(0)
    kwargs = dict(in_channels=32, out_channels=64, temb_channels=None, groups=8)
    _copy_and_compare(ResnetBlock2D(**kwargs), reference.ResnetBlock2D(**kwargs), torch.randn(1, 32, 5, 7), None)


@pytest.mark.parametrize("mode", ["spatial", "ada_group"])
def test_conditional_norm_block_matches_reference(mode):
    torch.manual_seed(0)
    kwargs = dict(in_channels=32, out_channels=64, temb_channels=4, groups=8, time_embedding_norm=mode)
    theirs = reference.ResnetBlockCondNorm2D(**kwargs).eval()
    condition = torch.randn(2, 4, 3, 5) if mode == "spatial" else torch.randn(2, 4)
    for ours in (ResnetBlockCondNorm2D(**kwargs), ResnetBlock2D(**kwargs)):
        assert list(ours.state_dict()) == list(theirs.state_dict())
        _copy_and_compare(ours.eval(), theirs, torch.randn(2, 32, 6, 10), condition)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="time_embedding_norm"):
        ResnetBlock2D(in_channels=8, groups=4, time_embedding_norm="group")
    with pytest.raises(ValueError, match="temb"):
        ResnetBlock2D(in_channels=8, groups=4, time_embedding_norm="scale_shift", temb_channels=4)(
            torch.randn(1, 8, 4, 4), None
        )
