"""The rule-based evaluator: accurate on the data set, clean and degraded; clear errors."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from sfumato.demo import data
from sfumato.demo.data import COLOURS, PALETTE, area_range, iterate_samples, make_sample, shape_coverage, split_of
from sfumato.demo.evaluate import (HELD_OUT_SEED_START, MIN_PRESENT_AREA, EvaluationReport, evaluate,
                                   format_pair_table, format_table, held_out_prompts, in_trained_size_range, predict)


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
    for attribute in ("background", "colour", "shape", "present", "size"):
        assert report.accuracy[attribute] >= 0.98, (degradation, attribute, report.accuracy)


def test_heavy_blur_still_gives_the_shape(samples):
    # A small model draws soft edges; comparing with sharp ideal shapes alone
    # would call most blurred squares and triangles circles.
    subset = samples[:150]
    report = evaluate([s.image.filter(ImageFilter.GaussianBlur(4.0)) for s in subset], [s.caption for s in subset])
    assert report.accuracy["background"] == 1.0 and report.accuracy["colour"] == 1.0
    assert report.accuracy["shape"] >= 0.9, report.accuracy
    assert report.accuracy["present"] == 1.0, report.accuracy


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
    assert report.correct == {"background": 1, "colour": 0, "shape": 0, "present": 0, "size": 0, "all": 0}


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
    assert report.correct == {"background": 12, "colour": 12, "shape": 12, "present": 12, "size": 12, "all": 12}
    by_shape = report.accuracy_by_value("shape")
    assert sum(asked for _, asked in by_shape.values()) == 12
    assert all(right == asked for right, asked in by_shape.values())
    table = format_table(report)
    lines = table.splitlines()
    assert lines[0].split() == ["attribute", "right", "total", "accuracy"]
    assert any(line.startswith("background colour") and line.rstrip().endswith("100.0%") for line in lines)
    assert any(line.startswith("shape class") for line in lines)
    assert any(line.startswith("shape present") for line in lines)
    assert any(line.startswith("shape size in range") for line in lines)
    assert any(line.startswith("all criteria") for line in lines)
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
        (lambda: evaluate([], []).matches("area"), "attribute must be one of"),
        (lambda: format_pair_table([]), "EvaluationReport"),
        (lambda: held_out_prompts(-1), "count must be"),
        (lambda: held_out_prompts(10, start_seed=100_001), "eval-split seed"),
    ],
)
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------- presence and size


def _draw(shape, side, colour="white", background="green", centre=(32.0, 32.0), faint=1.0):
    """A picture of one shape of box side ``side`` pixels; ``faint`` < 1 blends it towards the background."""
    coverage = shape_coverage(shape, centre, side, (64, 64)) * faint
    backdrop, foreground = np.array(PALETTE[background], float), np.array(PALETTE[colour], float)
    return np.rint(backdrop + coverage[:, :, None] * (foreground - backdrop)).astype(np.uint8)


def test_faint_dot_is_no_shape():
    # what the shipped model drew for "a white triangle on a green background" --seed 2: a faint blob
    dot = Image.fromarray(_draw("circle", 6, faint=0.7)).filter(ImageFilter.GaussianBlur(1.0))
    prediction = predict(dot)
    assert prediction.background == "green"
    assert not prediction.present and prediction.colour is None and prediction.shape is None
    assert prediction.area < MIN_PRESENT_AREA and not prediction.size_ok
    report = evaluate([dot], ["a white triangle on a green background"])
    assert report.correct == {"background": 1, "colour": 0, "shape": 0, "present": 0, "size": 0, "all": 0}


def test_faint_large_shape_is_no_shape():
    # a full-size triangle only a fifth of the way from the background to white: not a visible shape
    prediction = predict(_draw("triangle", 30, faint=0.2))
    assert not prediction.present and not prediction.size_ok


@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
def test_tiny_shape_is_there_but_too_small(shape):
    # a shape a few pixels wide (the shipped model's --seed 1 triangle): present, right colour, wrong size
    prediction = predict(_draw(shape, 11))
    assert prediction.present and prediction.colour == "white"
    assert not prediction.size_ok
    report = evaluate([_draw(shape, 11)], [f"a white {shape} on a green background"])
    assert report.correct["present"] == 1 and report.correct["size"] == 0 and report.correct["all"] == 0


@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
@pytest.mark.parametrize("colour, background", [("white", "green"), ("white", "yellow"), ("black", "blue")])
def test_large_right_shape_is_right(shape, colour, background):
    picture = _draw(shape, 0.45 * 64, colour, background)
    prediction = predict(picture)
    assert prediction.present and prediction.size_ok
    expected_fill = data.BOX_FILL[shape]
    assert prediction.fill == pytest.approx(expected_fill, abs=0.12)
    report = evaluate([picture], [f"a {colour} {shape} on a {background} background"])
    assert report.accuracy["all"] == 1.0, report.predictions


def test_shape_over_the_trained_size_is_too_large():
    prediction = predict(_draw("square", 0.75 * 64))
    assert prediction.present and prediction.shape == "square" and not prediction.size_ok


def test_size_range_is_read_from_the_data_generator(monkeypatch):
    low, high = area_range()
    assert low == pytest.approx(0.5 * data.MIN_SHAPE_FRACTION**2) and high == pytest.approx(data.MAX_SHAPE_FRACTION**2)
    # the closed-form areas agree with the drawn shapes
    for shape in ("circle", "square", "triangle"):
        side = data.MIN_SHAPE_FRACTION * 64
        drawn = shape_coverage(shape, (32.0, 32.0), side, (64, 64), supersample=8).sum() / 64**2
        assert drawn == pytest.approx(area_range(shape)[0], rel=0.02)
    assert in_trained_size_range(0.2, "square") and not in_trained_size_range(0.2, "triangle")
    monkeypatch.setattr(data, "MIN_SHAPE_FRACTION", 0.1)
    assert area_range()[0] == pytest.approx(0.5 * 0.1**2)
    assert in_trained_size_range(0.01, "triangle")


def test_held_out_prompts_cover_every_pair_with_unused_seeds():
    prompts = held_out_prompts(270)
    captions = [caption for caption, _ in prompts]
    seeds = [seed for _, seed in prompts]
    assert len(set(captions)) == 90 and all(captions.count(c) == 3 for c in set(captions))
    first = {data.parse_caption(c)[::2] for c in captions[:30]}
    assert len(first) == 30  # every 30 prompts name every (colour, background) pair
    assert len(set(seeds)) == 270 and all(split_of(seed) == "eval" for seed in seeds)
    # past the training pool (first 12 000 train seeds) and the training steps' generator seeds
    assert min(seeds) == HELD_OUT_SEED_START >= 60_000
    assert held_out_prompts(5) == prompts[:5]


def test_pair_table_names_every_pair_and_the_worst():
    prompts = held_out_prompts(60)
    pictures = []
    for index, (caption, seed) in enumerate(prompts):
        colour, shape, background = data.parse_caption(caption)
        sample = make_sample(seed, shape=shape, colour=colour, background=background)
        # white shapes on green fade to a dot, like the shipped model at guidance 4
        pictures.append(_draw("circle", 5, colour, background) if (colour, background) == ("white", "green")
                        else sample.image)
    report = evaluate(pictures, [caption for caption, _ in prompts])
    pairs = report.accuracy_by_pair()
    assert len(pairs) == 30 and all(counts["all"][1] == 2 for counts in pairs.values())
    assert pairs[("white", "green")]["present"] == (0, 2) and pairs[("red", "green")]["all"] == (2, 2)
    table = format_pair_table(report)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["colour", "on", "background", "n"]
    white_green = next(line for line in lines if line.startswith("white on green "))
    assert white_green.split()[-6:] == ["100.0%", "0.0%", "0.0%", "0.0%", "0.0%", "0.0%"]
    assert any(line.startswith("overall") for line in lines)
    assert lines[-1] == "worst pair: white on green (0/2 right on all criteria)"
    assert set(COLOURS) <= {word for line in lines[2:-3] for word in line.split()[:3]}


def test_command_line_prints_both_tables(capsys, tmp_path):
    from sfumato.demo.evaluate import main

    assert main(["--data", "--count", "30", "--json", str(tmp_path / "scores.json"),
                 "--grid", str(tmp_path / "grid.png")]) == 0
    out = capsys.readouterr().out
    assert "shape size in range" in out and "white on green" in out
    assert "overall                 30   100.0%   100.0%   100.0%   100.0%   100.0%   100.0%" in out
    import json

    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["accuracy"]["size"] == 1.0 and len(scores["pictures"]) == 30 and len(scores["pairs"]) == 30
    assert Image.open(tmp_path / "grid.png").size == (640, 192)
    assert main(["--data", "--start-seed", "7"]) == 2
    assert "eval-split seed" in capsys.readouterr().err


# --- inpainting: tasks and the kept-region measure ----------------------------------------------------------


def test_inpainting_tasks_are_held_out_and_alternate_their_masks():
    from sfumato.demo.data import parse_caption
    from sfumato.demo.evaluate import inpainting_tasks

    tasks = inpainting_tasks(12)
    assert [t.kind for t in tasks] == ["box", "rectangle"] * 6
    assert [t.seed for t in tasks] == [seed for _, seed in held_out_prompts(12)]
    for task, (caption, _) in zip(tasks, held_out_prompts(12)):
        sample = make_sample(task.seed)
        assert task.picture.tobytes() == sample.image.tobytes()
        colour, _, background = parse_caption(task.prompt)
        assert background == sample.background and colour != background
        repaint = task.mask > 0.5
        assert 0 < repaint.mean() < 1
        if task.kind == "box":  # the whole shape is inside the repainted box, and a new one is asked for
            assert repaint[sample.mask].all()
            asked_colour, asked_shape, _ = parse_caption(caption)
            assert parse_caption(task.prompt)[1] == asked_shape
            assert colour == asked_colour or asked_colour == sample.background
        else:  # a part of the picture, repainted as the picture's own caption says
            assert task.prompt == sample.caption
            rows, columns = np.nonzero(repaint)
            assert 16 <= rows.max() - rows.min() + 1 <= 32 and 16 <= columns.max() - columns.min() + 1 <= 32
    assert [t.mask.tobytes() for t in inpainting_tasks(12)] == [t.mask.tobytes() for t in tasks]


def test_kept_region_change_counts_only_the_kept_pixels():
    from sfumato.demo.evaluate import inpainting_tasks, kept_region_change

    task = inpainting_tasks(1)[0]
    original = np.asarray(task.picture, np.float64)
    assert kept_region_change(task.picture, task) == (0.0, 0.0)
    inside = original.copy()
    inside[task.mask > 0.5] = 255 - inside[task.mask > 0.5]
    assert kept_region_change(inside.astype(np.uint8), task) == (0.0, 0.0)
    outside = original.copy()
    kept = task.mask < 0.5
    outside[kept] = np.clip(outside[kept] + np.where(outside[kept] > 127, -12, 12), 0, 255)
    overall, near = kept_region_change(outside.astype(np.uint8), task)
    assert overall == pytest.approx(12.0) and near == pytest.approx(12.0)
