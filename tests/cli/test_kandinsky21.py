"""Every command that takes --model runs a Kandinsky 2.1 checkpoint folder (issue 7): generate, img2img,
inpaint, interpolate and chain, on tiny 2.1 folders whose decoders name their prior; `info` and `reproduce` on
what they make. ControlNet is 2.2's only, and a 2.1 folder there is refused before loading."""

from __future__ import annotations

import json

import numpy as np

from sfumato.metadata import read_parameters

from .conftest import pixels

PROMPT = "a red cat on a blue sky"


def _made(cli, tmp_path, name: str, *argv) -> dict:
    result = cli(*argv, "-o", f"{name}.png", "-q")
    assert result.code == 0, result.err
    record = read_parameters(tmp_path / f"{name}.png")
    assert cli("reproduce", f"{name}.png", "-o", f"{name}-again.png", "--check", "-q").code == 0
    info = cli("info", f"{name}.png")
    assert info.code == 0 and f"model: {record['model']}" in info.out
    return record


def test_generate(cli, tmp_path, kandinsky21_root):
    decoder = kandinsky21_root / "decoder"
    record = _made(cli, tmp_path, "gen", "generate", PROMPT, "--model", decoder, "--seed", 1, "--negative", "dark")
    assert record["model"] == str(decoder) and "prior" not in record  # the README names it
    assert record["scheduler_class"] == "DDIMScheduler"  # the 2.1 decoder's own
    assert (record["width"], record["height"], record["steps"]) == (32, 32, 2)  # its sfumato_defaults.json
    assert pixels(tmp_path / "gen.png").shape == (32, 32, 3)
    # --prior by hand gives the same picture as the one the model card names
    again = cli("generate", PROMPT, "--model", decoder, "--prior", kandinsky21_root / "prior", "--seed", 1,
                "--negative", "dark", "-o", "explicit.png", "-q")
    assert again.code == 0, again.err
    assert np.array_equal(pixels(tmp_path / "gen.png"), pixels(tmp_path / "explicit.png"))


def test_img2img_inpaint_interpolate(cli, tmp_path, kandinsky21_root, picture, mask):
    decoder, inpaint = kandinsky21_root / "decoder", kandinsky21_root / "inpaint"
    record = _made(cli, tmp_path, "i2i", "img2img", picture, PROMPT, "--model", decoder, "--strength", 0.5,
                   "--seed", 2)
    assert record["task"] == "image2image" and (record["width"], record["height"]) == (32, 32)
    record = _made(cli, tmp_path, "inp", "inpaint", picture, mask, PROMPT, "--model", inpaint, "--seed", 3,
                   "--size", "64x64")
    assert record["task"] == "inpaint" and record["keep_unmasked"] is True
    assert np.array_equal(pixels(tmp_path / "inp.png")[:, :32], pixels(picture)[:, :32])
    record = _made(cli, tmp_path, "mix", "interpolate", PROMPT, picture, "--model", decoder, "--weights", 0.3, 0.7,
                   "--seed", 4)
    assert record["items"][0] == {"text": PROMPT}


def test_chain(cli, tmp_path, kandinsky21_root, mask):
    chain = {"model": str(kandinsky21_root / "decoder"), "seed": 5, "steps": [
        {"task": "KandinskyCombinedPipeline", "prompt": PROMPT},
        {"task": "KandinskyImg2ImgCombinedPipeline", "prompt": "a blue cat", "strength": 0.5},
        {"task": "KandinskyInpaintCombinedPipeline", "prompt": "a dog", "mask": str(mask), "size": "32x32",
         "model": str(kandinsky21_root / "inpaint")},
    ]}
    (tmp_path / "chain.json").write_text(json.dumps(chain))
    record = _made(cli, tmp_path, "chained", "chain", "chain.json")
    assert record["task"] == "inpaint" and record["image"]["task"] == "image2image"
    assert record["image"]["image"]["model"] == str(kandinsky21_root / "decoder")


def test_a_21_folder_is_checked_before_loading(cli, tmp_path, kandinsky21_root, picture):
    decoder = kandinsky21_root / "decoder"
    cases = {
        ("controlnet", picture, PROMPT, "--model", decoder): "use it with `sfumato generate`",
        ("inpaint", picture, picture, PROMPT, "--model", decoder): "needs an inpainting one",
        ("generate", PROMPT, "--model", kandinsky21_root / "prior"): "is a prior (KandinskyPriorPipeline)",
        ("generate", PROMPT, "--model", decoder, "--size", "30x32"): "not a multiple of 4",
        ("generate", PROMPT, "--model", decoder, "--prior-steps", 1): "--prior-steps 1: UnCLIPScheduler",
    }
    for argv, expected in cases.items():
        result = cli(*argv)
        assert result.code == 2 and expected in result.err, (argv, result.err)
