"""The rule-based evaluator: accurate on the data set, clean and degraded; clear errors."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from sfumato.demo.data import PALETTE, iterate_samples, make_sample
from sfumato.demo.evaluate import EvaluationReport, evaluate, format_table, predict


@pytest.fixture(scope="module")
def samples():
    return list(iterate_samples(0, 300, split="eval"))


def _noisy(image, sigma=12.0, seed=0):
    rng = np.random.default_rng(seed)
    pixels = np.asarray(image, dtype=np.float64) + rng.normal(0.0, sigma, (image.height, image.width, 3))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _jpeg(image, quality=50):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


DEGRADATIONS = {
    "clean": lambda image: image,
    "noise": lambda image: _noisy(image, sigma=12.0),
    "blur": lambda image: image.filter(ImageFilter.GaussianBlur(1.0)),
    "jpeg": lambda image: _jpeg(image, quality=50),
    "all": lambda image: _jpeg(_noisy(image.filter(ImageFilter.GaussianBlur(1.5)), sigma=15.0), quality=40),
}


@pytest.mark.parametrize("degradation", list(DEGRADATIONS))
def test_reads_the_data_set_back(samples, degradation):
    degrade = DEGRADATIONS[degradation]
    report = evaluate([degrade(sample.image) for sample in samples], [sample.caption for sample in samples])
    assert report.total == 300
    for attribute in ("background", "colour", "shape"):
        assert report.accuracy[attribute] >= 0.98, (degradation, attribute, report.accuracy)


def test_heavy_blur_still_gives_the_shape(samples):
    # A small model draws soft edges; comparing with sharp ideal shapes alone
    # would call most blurred squares and triangles circles.
    subset = samples[:150]
    report = evaluate([s.image.filter(ImageFilter.GaussianBlur(4.0)) for s in subset], [s.caption for s in subset])
    assert report.accuracy["background"] == 1.0 and report.accuracy["colour"] == 1.0
    assert report.accuracy["shape"] >= 0.9, report.accuracy


def test_wrong_captions_score_wrong(samples):
    # Swap shape colour and background in every caption: both must then fail.
    swapped = [f"a {s.background} {s.shape} on a {s.colour} background" for s in samples[:30]]
    report = evaluate([s.image for s in samples[:30]], swapped)
    assert report.accuracy["background"] == 0.0 and report.accuracy["colour"] == 0.0
    assert report.accuracy["shape"] == 1.0 and report.accuracy["all"] == 0.0
    other_shape = {"circle": "square", "square": "triangle", "triangle": "circle"}
    wrong_shapes = [f"a {s.colour} {other_shape[s.shape]} on a {s.background} background" for s in samples[:30]]
    assert evaluate([s.image for s in samples[:30]], wrong_shapes).accuracy["shape"] == 0.0


def test_accepts_pil_uint8_float_and_tensor_pictures():
    sample = make_sample(4)
    expected = (sample.background, sample.colour, sample.shape)
    pixels = sample.pixels
    as_float = pixels.astype(np.float32) / 255
    for picture in (
        sample.image,
        pixels,
        as_float,
        np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)]),  # RGBA
        torch.from_numpy(as_float).permute(2, 0, 1),
        sample.image.convert("RGBA"),
    ):
        prediction = predict(picture)
        assert (prediction.background, prediction.colour, prediction.shape) == expected
    stacked = np.stack([make_sample(seed).pixels for seed in range(5)])
    report = evaluate(stacked, [make_sample(seed).caption for seed in range(5)])
    assert report.accuracy["all"] == 1.0


def test_empty_picture_has_no_shape():
    blank = np.zeros((64, 64, 3), dtype=np.uint8)
    blank[:] = PALETTE["blue"]
    prediction = predict(blank)
    assert (prediction.background, prediction.colour, prediction.shape) == ("blue", None, None)
    report = evaluate([blank], ["a red circle on a blue background"])
    assert report.correct == {"background": 1, "colour": 0, "shape": 0, "all": 0}


@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
def test_stray_specks_do_not_change_the_shape(shape):
    sample = make_sample(21, shape=shape, colour="red", background="white")
    clean = predict(sample.image)
    pixels = sample.pixels.copy()
    # Specks of the shape colour away from the shape, and a small blob in the
    # corner farthest from it: only the shape itself may be measured.
    rows, cols = np.nonzero(~sample.mask[4:-4, 4:-4])
    for index in np.linspace(0, len(rows) - 1, 6).astype(int):
        pixels[rows[index] + 4, cols[index] + 4] = PALETTE["red"]
    corner_rows = slice(2, 8) if sample.centre[1] > 32 else slice(-8, -2)
    corner_cols = slice(2, 8) if sample.centre[0] > 32 else slice(-8, -2)
    pixels[corner_rows, corner_cols] = PALETTE["red"]
    prediction = predict(pixels)
    assert (prediction.background, prediction.colour, prediction.shape) == ("white", "red", shape)
    assert prediction.shape_scores == pytest.approx(clean.shape_scores, abs=0.01)


def test_report_and_table(samples):
    report = evaluate([s.image for s in samples[:12]], [s.caption for s in samples[:12]])
    assert isinstance(report, EvaluationReport)
    assert report.correct == {"background": 12, "colour": 12, "shape": 12, "all": 12}
    by_shape = report.accuracy_by_value("shape")
    assert sum(asked for _, asked in by_shape.values()) == 12
    assert all(right == asked for right, asked in by_shape.values())
    table = format_table(report)
    lines = table.splitlines()
    assert lines[0].split() == ["attribute", "right", "total", "accuracy"]
    assert any(line.startswith("background colour") and line.rstrip().endswith("100.0%") for line in lines)
    assert any(line.startswith("shape class") for line in lines)
    assert any(line.startswith("all three") for line in lines)
    detailed = format_table(report, by_value=True)
    assert "shape class: " in detailed and len(detailed.splitlines()) > len(lines)
    empty = evaluate([], [])
    assert empty.total == 0 and empty.accuracy["shape"] == 0.0
    assert "-" in format_table(empty).splitlines()[-1]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: evaluate([make_sample(1).image], []), "same length"),
        (lambda: evaluate([make_sample(1).image], "a red circle on a blue background"), "single string"),
        (lambda: evaluate([make_sample(1).image], ["a red blob"]), "of the form"),
        (lambda: evaluate(np.zeros((64, 64, 3), np.uint8), ["x"]), "N x H x W x 3"),
        (lambda: predict(np.zeros((64, 64), np.uint8)), r"H x W x 3 \(or 4\)"),
        (lambda: predict(np.zeros((4, 4, 3), np.uint8)), "H, W >= 8"),
        (lambda: predict(np.full((64, 64, 3), 2.0)), r"floats must lie in \[0, 1\]"),
        (lambda: predict(np.full((64, 64, 3), np.nan)), r"floats must lie in \[0, 1\]"),
        (lambda: predict(np.zeros((64, 64, 3), np.int32)), "dtype int32"),
        (lambda: predict("picture.png"), "must be a PIL image"),
        (lambda: format_table({"shape": 1.0}), "EvaluationReport"),
        (lambda: evaluate([], []).matches("size"), "attribute must be one of"),
    ],
)
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
