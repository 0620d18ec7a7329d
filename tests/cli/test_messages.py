"""What the command line tells a user besides errors: the built-in model's vocabulary and size (issue 8,
item 4) and prompts cut to the text encoder's length (item 5)."""

from __future__ import annotations

import pytest

PROMPT = "a red circle on a blue background"


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("sfumato: warning: ")]


def test_words_outside_the_vocabulary_give_one_warning_line(cli):
    result = cli("generate", "a purple cat on a blue background", "--seed", 1, "-o", "cat.png")
    assert result.code == 0, result.err
    [warning] = _warnings(result.err)
    assert "'purple', 'cat'" in warning and "6 colours" in warning and "3 shapes" in warning
    assert "will not follow the prompt" in warning


def test_another_size_gives_one_warning_line(cli):
    result = cli("generate", PROMPT, "--size", "128x64", "--seed", 1, "-o", "wide.png")
    assert result.code == 0, result.err
    [warning] = _warnings(result.err)
    assert "trained on 64x64" in warning and "128x64" in warning


def test_interpolate_items_are_read_too_and_quiet_silences(cli, picture):
    result = cli("interpolate", "a red dragon", picture, "--seed", 1, "-o", "mix.png")
    assert "'dragon'" in "".join(_warnings(result.err))
    assert cli("generate", "a purple cat", "--seed", 1, "-o", "q.png", "-q").err == ""


def test_the_vocabulary_prompt_and_other_models_give_no_warning(cli, kandinsky21_root):
    assert _warnings(cli("generate", PROMPT, "--seed", 1, "-o", "ok.png").err) == []
    other = cli("generate", "a purple cat", "--model", kandinsky21_root / "decoder", "--seed", 1, "-o", "other.png")
    assert other.code == 0 and _warnings(other.err) == []  # the vocabulary is the built-in model's only


def test_help_lists_the_vocabulary(cli):
    import subprocess
    import sys

    for argv in (["--help"], ["generate", "--help"]):
        out = subprocess.run([sys.executable, "-m", "sfumato", *argv], capture_output=True, text=True,
                             timeout=60).stdout
        text = " ".join(out.split())
        assert "red, green, blue, yellow, white, black" in text and "circle, square, triangle" in text


@pytest.mark.parametrize("prompt", ["a red circle on a blue background " * 60,
                                    "دائرة حمراء على خلفية زرقاء", "красный круг на синем фоне"])
def test_a_cut_prompt_is_said_in_one_short_line(cli, monkeypatch, prompt):
    # the shipped model: its prior's tokenizer reads 20 tokens and knows no Arabic or Cyrillic
    monkeypatch.delenv("SFUMATO_BUILTIN_MODEL")
    result = cli("generate", prompt, "--seed", 1, "-o", "cut.png")
    assert result.code == 0, result.err
    [line] = [line for line in _warnings(result.err) if "tokens" in line]
    assert "dropped" in line and len(line) < 300, line
    assert "<|endoftext|>" not in line and "<pad>" not in line  # the padding is not the prompt
    if prompt.startswith("a red"):
        assert "a red circle" in line or "blue background" in line  # the start of what was dropped
