"""Inpainting keeps what the mask keeps (issue 8, item 2): the command line pastes the picture's own pixels
back outside the mask, records that it did, and replays it; --no-keep-unmasked gives the library's output."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest

from sfumato.metadata import read_parameters, write_png

from .conftest import pixels

PROMPT = "a white triangle on a blue background"


def _kept_change(result, original, mask) -> float:
    kept = np.asarray(PIL.Image.open(mask).convert("L")) < 128
    return float(np.abs(pixels(result).astype(int) - pixels(original).astype(int))[kept].mean())


def test_inpaint_keeps_the_unmasked_part_and_records_it(cli, tmp_path, picture, mask):
    assert cli("inpaint", picture, mask, PROMPT, "--seed", 4, "-o", "kept.png", "-q").code == 0
    assert cli("inpaint", picture, mask, PROMPT, "--seed", 4, "-o", "raw.png", "-q", "--no-keep-unmasked").code == 0
    assert _kept_change(tmp_path / "kept.png", picture, mask) == 0
    assert _kept_change(tmp_path / "raw.png", picture, mask) > 1  # a random model changes everything
    assert read_parameters(tmp_path / "kept.png")["keep_unmasked"] is True
    assert read_parameters(tmp_path / "raw.png")["keep_unmasked"] is False
    # deep inside the mask both are the model's picture
    assert np.array_equal(pixels(tmp_path / "kept.png")[:, 40:], pixels(tmp_path / "raw.png")[:, 40:])
    for name in ("kept", "raw"):
        assert cli("reproduce", f"{name}.png", "-o", f"{name}-again.png", "--check", "-q").code == 0
    assert "keep_unmasked: True" in cli("info", "kept.png").out


def test_a_picture_made_before_the_option_is_replayed_without_it(cli, tmp_path, picture, mask):
    assert cli("inpaint", picture, mask, PROMPT, "--seed", 5, "-o", "old.png", "-q", "--no-keep-unmasked").code == 0
    record = read_parameters(tmp_path / "old.png")
    del record["keep_unmasked"]
    with PIL.Image.open(tmp_path / "old.png") as old:
        write_png(old.copy(), tmp_path / "old.png", record)
    assert cli("reproduce", "old.png", "-o", "again.png", "--check", "-q").code == 0


def test_chains_can_turn_it_off(cli, tmp_path, picture, mask):
    chain = {"keep_unmasked": False, "steps": [
        {"task": "image2image", "image": str(picture), "prompt": PROMPT, "strength": 0.5, "seed": 1},
        {"task": "inpaint", "mask": str(mask), "prompt": PROMPT, "seed": 2},
    ]}
    (tmp_path / "chain.json").write_text(json.dumps(chain))
    assert cli("chain", "chain.json", "-o", "chained.png", "-q").code == 0
    record = read_parameters(tmp_path / "chained.png")
    assert record["keep_unmasked"] is False and "keep_unmasked" not in record["image"]
    (tmp_path / "bad.json").write_text(json.dumps([{"task": "text2image", "prompt": PROMPT, "keep_unmasked": True}]))
    result = cli("chain", "bad.json")
    assert result.code == 2 and "keep-unmasked does not apply to text2image" in result.err


@pytest.fixture
def shipped_model(monkeypatch):
    monkeypatch.delenv("SFUMATO_BUILTIN_MODEL")


# the right half, and the README's kind of mask (the shape's box)
@pytest.mark.parametrize("region", ["right half", "the circle's box"])
def test_the_built_in_model_keeps_the_kept_region(cli, tmp_path, shipped_model, region):
    """The issue's measurement on the shipped model: at most 2/255 mean change in the kept region with the
    composite (it is 0: the kept pixels are the original's); without it, printed for the record."""
    y, x = np.mgrid[:64, :64]
    array = np.zeros((64, 64, 3), dtype=np.uint8)
    array[...] = (0, 0, 255)
    array[(x - 30) ** 2 + (y - 34) ** 2 < 15 ** 2] = (255, 0, 0)
    PIL.Image.fromarray(array).save(tmp_path / "circle.png")
    mask = np.zeros((64, 64), dtype=np.uint8)
    box = {"right half": (slice(None), slice(32, None)), "the circle's box": (slice(15, 54), slice(11, 50))}[region]
    mask[box] = 255
    PIL.Image.fromarray(mask).save(tmp_path / "mask.png")
    for name, flags in (("kept", []), ("raw", ["--no-keep-unmasked"])):
        result = cli("inpaint", "circle.png", "mask.png", PROMPT, "--seed", 3, "-o", f"{name}.png", "-q", *flags)
        assert result.code == 0, result.err
    kept = _kept_change(tmp_path / "kept.png", tmp_path / "circle.png", tmp_path / "mask.png")
    raw = _kept_change(tmp_path / "raw.png", tmp_path / "circle.png", tmp_path / "mask.png")
    print(f"\n{region}: kept-region mean change {kept:.2f}/255 with the composite, {raw:.2f}/255 without")
    assert kept <= 2
