"""The README's commands run as written, in order, from the repository root after the set-up command
(issue 8, item 6), on the shipped built-in model: the set-up line's picture, the tour's commands, and the
library example that needs nothing downloaded."""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def readme_commands() -> list[str]:
    """The command lines a reader types: the set-up line's sfumato command, then the tour's, in order."""
    text = README.read_text(encoding="utf-8")
    setup = re.findall(r"^scripts/setup\.sh && (\.venv/bin/sfumato .+)$", _section(text, "Set-up"), re.M)
    tour = _section(text, "A tour of the command line")
    activate = re.findall(r"^source \.venv/bin/activate$", tour, re.M)
    assert setup and activate, "the README lost its set-up command or its `source .venv/bin/activate` line"
    # inline code that starts with the command; `sfumato COMMAND --help` names no real command
    prose = re.sub(r"```.*?```", "", tour, flags=re.S)
    typed = [code for code in re.findall(r"`([^`]+)`", prose) if code.startswith("sfumato ") and "COMMAND" not in code]
    return setup + typed


def library_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", _section(README.read_text(encoding="utf-8"), "Library"), re.S)
    return blocks[0]


def test_the_readme_has_the_tour_we_run():
    commands = readme_commands()
    assert len(commands) >= 9
    assert [shlex.split(c)[1] for c in commands[-9:]] == ["generate", "generate", "img2img", "inpaint", "inpaint",
                                                          "interpolate", "controlnet", "controlnet", "chain"]


@pytest.fixture
def repository_root(tmp_path, monkeypatch):
    """A working folder that reads like the repository root (docs/ and examples/), with the shipped model."""
    for name in ("docs", "examples"):
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SFUMATO_BUILTIN_MODEL", raising=False)  # the cli tests' tiny model is not the README's
    return tmp_path


def test_readme_commands_run_as_written(repository_root, capsys):
    from sfumato.cli import main

    timings = []
    for command in readme_commands():
        argv = shlex.split(command)
        assert argv[0] in ("sfumato", ".venv/bin/sfumato"), command
        start = time.perf_counter()
        code = main(argv[1:])
        timings.append((time.perf_counter() - start, command))
        captured = capsys.readouterr()
        assert code == 0, f"{command}\n{captured.err}"
        assert "warning" not in captured.err, f"{command}\n{captured.err}"  # the tour stays in the vocabulary
        if "-o" in argv:
            out = Path(argv[argv.index("-o") + 1])
            assert out.is_file() or out.with_name(f"{out.stem}-0{out.suffix}").is_file(), command
    print("\n".join(f"{seconds:5.1f} s  {command}" for seconds, command in timings))
    # and the README shows what they make (the last bit of a pixel may depend on the CPU thread count)
    for shown in sorted((ROOT / "docs" / "images").glob("*.png")):
        made = repository_root / shown.name
        if made.is_file():
            difference = np.abs(_pixels(made) - _pixels(shown))
            assert difference.mean() < 1 / 255 and difference.max() <= 8, (
                f"docs/images/{shown.name} is not what its README command makes now (mean difference "
                f"{difference.mean():.2f}/255); re-make the pictures with scripts/readme_tour.sh")


def _pixels(path: Path) -> np.ndarray:
    with PIL.Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"), dtype=np.int16)


def test_readme_library_example_runs(repository_root):
    exec(compile(library_example(), str(README), "exec"), {})
    assert (repository_root / "triangle.png").is_file()
