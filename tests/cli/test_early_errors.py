"""Mistakes are reported before any model loads (issue 8, item 3), and those that files alone reveal before
torch is even imported: asserted as "no model was loaded" / "torch was not imported", not as wall times."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap

import PIL.Image
import pytest

PROMPT = "a red circle on a blue background"


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load a model fails the test (main() lets an AssertionError through)."""
    from sfumato.cli import models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the mistake was reported")

    monkeypatch.setattr(models.Loader, "__init__", refuse)


def _file(tmp_path):
    (tmp_path / "file.txt").write_text("not a folder")
    return "file.txt/out.png"


def _not_a_picture(tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    return "notes.png"


def _broken_model_card(tmp_path):
    import shutil

    from sfumato.cli.models import builtin_folder

    shutil.copytree(builtin_folder("decoder"), tmp_path / "broken")
    (tmp_path / "broken" / "README.md").write_text("---\nprior: [unclosed\n---\n")
    return "broken"


def _chain_with_bad_steps(tmp_path):
    steps = [{"task": "text2image", "prompt": PROMPT},
             {"task": "image2image", "prompt": PROMPT, "strength": 0.5, "prior_steps": 1}]
    (tmp_path / "chain.json").write_text(json.dumps(steps))
    return "chain.json"


EARLY = {
    "output is the current folder": (lambda t: ["generate", PROMPT, "-o", "."], "'.' is a folder; name the .png file"),
    "output is a folder": (lambda t: (t / "made.png").mkdir() or ["generate", PROMPT, "-o", "made.png"],
                           "is a folder"),
    "output ends with a slash": (lambda t: ["generate", PROMPT, "-o", "pictures/"], "is a folder"),
    "output folder cannot be made": (lambda t: ["generate", PROMPT, "-o", _file(t)], "cannot create the folder"),
    "output of --num is a folder": (lambda t: (t / "many-1.png").mkdir() or ["generate", PROMPT, "--num", "2",
                                                                              "-o", "many.png"], "is a folder"),
    "prior steps below the UnCLIP minimum": (lambda t: ["generate", PROMPT, "--prior-steps", "1"],
                                             "--prior-steps 1: UnCLIPScheduler"),
    "steps below the PNDM minimum": (lambda t: ["generate", PROMPT, "--scheduler", "pndm", "--steps", "3"],
                                     "--steps 3: PNDMScheduler"),
    "more steps than trained": (lambda t: ["generate", PROMPT, "--steps", "1001"], "num_train_timesteps=1000"),
    "size not a multiple": (lambda t: ["generate", PROMPT, "--size", "100x64"], "not a multiple of"),
    "size beyond the library's limit": (lambda t: ["generate", PROMPT, "--size", "16384x64"], "limit of 8192 pixels"),
    "missing input": (lambda t: ["img2img", "nope.png", PROMPT], "no such file"),
    "broken model card": (lambda t: ["generate", PROMPT, "--model", _broken_model_card(t)], "cannot be read"),
    "input is not a picture": (lambda t: ["img2img", _not_a_picture(t), PROMPT], "not a picture"),
    "mask is not a picture": (lambda t: ["inpaint", "in.png", _not_a_picture(t), PROMPT], "not a picture"),
    "missing hint": (lambda t: ["controlnet", "hint.png", PROMPT], "no such file"),
    "strength leaves no step": (lambda t: ["img2img", "in.png", PROMPT, "--strength", "0.1"], "no denoising step"),
    "chain step with too few prior steps": (lambda t: ["chain", _chain_with_bad_steps(t)],
                                            "chain step 2: --prior-steps 1"),
    "reproduce into a folder": (lambda t: ["reproduce", "made.png", "-o", "."], "is a folder"),
}


@pytest.mark.parametrize("name", list(EARLY))
def test_mistakes_are_reported_before_any_model_loads(cli, tmp_path, picture, name, request):
    if name == "reproduce into a folder":  # a real picture to reproduce, made before models are refused
        assert cli("generate", PROMPT, "--seed", 1, "-o", "made.png", "-q").code == 0
    request.getfixturevalue("no_loading")
    PIL.Image.open(picture).save(tmp_path / "in.png")
    make_argv, expected = EARLY[name]
    result = cli(*make_argv(tmp_path))
    assert result.code == 2, result.err
    assert result.err.startswith("sfumato: error: ") and expected in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1


def test_a_read_only_output_folder_is_reported_before_any_model_loads(cli, monkeypatch, no_loading):
    from sfumato.cli import commands

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(commands.tempfile, "NamedTemporaryFile", read_only)
    result = cli("generate", PROMPT, "-o", "out.png")
    assert result.code == 2
    assert "cannot write in the folder" in result.err and "Read-only file system" in result.err


def test_the_output_folder_is_created(cli, tmp_path):
    result = cli("generate", PROMPT, "--seed", 1, "-o", "new/deeper/out.png", "-q")
    assert result.code == 0, result.err
    assert (tmp_path / "new" / "deeper" / "out.png").is_file()
    assert not [p for p in (tmp_path / "new" / "deeper").iterdir() if p.name.startswith(".sfumato-probe")]


# the mistakes that files alone reveal: reported without importing torch, so a typo costs a fraction of a second
TORCH_FREE = {
    "output folder": ["generate", PROMPT, "-o", "."],
    "output suffix": ["generate", PROMPT, "-o", "out.jpg"],
    "missing input": ["img2img", "nope.png", PROMPT],
    "input is not a picture": ["img2img", "notes.png", PROMPT],
    "not a checkpoint": ["generate", PROMPT, "--model", "empty"],
    "wrong kind of checkpoint": ["generate", PROMPT, "--model", "builtin:inpaint"],
    "a prior as --model": ["generate", PROMPT, "--model", "builtin:prior"],
    "weights do not match": ["interpolate", "a", "b", "--weights", "1"],
    "unknown scheduler": ["generate", PROMPT, "--scheduler", "fast"],
    "bad chain": ["chain", "missing.yaml"],
}


def test_file_mistakes_are_reported_without_importing_torch(model_root, tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "empty").mkdir()
    script = textwrap.dedent(f"""
        import os, sys
        os.chdir({str(tmp_path)!r})
        os.environ["SFUMATO_BUILTIN_MODEL"] = {str(model_root)!r}
        from sfumato.cli import main
        codes = [main(argv) for argv in {list(TORCH_FREE.values())!r}]
        print(codes, "torch" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("]")[-1].strip() == "False", (result.stdout, result.stderr)
    assert result.stdout.startswith("[" + ", ".join(["2"] * len(TORCH_FREE)) + "]"), result.stdout
    assert len(result.stderr.strip().splitlines()) == len(TORCH_FREE), result.stderr
