"""Every --scheduler on every task, on learned-variance UNets (8 output channels, as the built-in model and the
released Kandinsky decoders have): the scheduler decides whether it uses the variance, not a config key it
inherited from the checkpoint's scheduler (issue 8, item 1).

One chain per scheduler and family runs every task (the models load once per chain); each scheduler also runs
once through its own command, as a user types it.
"""

from __future__ import annotations

import json

import pytest

from sfumato.cli.models import SCHEDULERS
from sfumato.metadata import read_parameters

PROMPT = "a red circle on a blue background"


def _steps(scheduler: str) -> int:
    # PNDM's Runge-Kutta warm-up needs 4 steps (image-to-image runs half of them); the others run with 2
    return 4 if scheduler == "pndm" else 2


def _run_chain(cli, tmp_path, chain: dict) -> list[dict]:
    for number, step in enumerate(chain["steps"], start=1):
        step["out"] = f"step{number}.png"
    (tmp_path / "chain.json").write_text(json.dumps(chain))
    result = cli("chain", "chain.json", "-o", "final.png", "-q")
    assert result.code == 0, result.err
    return [read_parameters(tmp_path / f"step{number}.png") for number in range(1, len(chain["steps"]) + 1)]


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_every_scheduler_on_every_kandinsky22_task(cli, tmp_path, mask, scheduler):
    STEPS = _steps(scheduler)
    records = _run_chain(cli, tmp_path, {"scheduler": scheduler, "seed": 1, "steps": [
        {"task": "text2image", "prompt": PROMPT, "num_inference_steps": STEPS},
        {"task": "image2image", "prompt": PROMPT, "strength": 0.5, "num_inference_steps": STEPS},
        {"task": "inpaint", "prompt": PROMPT, "mask": str(mask), "num_inference_steps": STEPS},
        {"task": "controlnet", "prompt": PROMPT, "num_inference_steps": STEPS},
        {"task": "interpolate", "items": ["$previous", PROMPT], "num_inference_steps": STEPS},
    ]})
    assert [r["task"] for r in records] == ["text2image", "image2image", "inpaint", "controlnet", "interpolate"]
    assert {r["scheduler_class"] for r in records} == {SCHEDULERS[scheduler]}


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_every_scheduler_on_every_kandinsky21_task(cli, tmp_path, kandinsky21_root, mask, scheduler):
    STEPS = _steps(scheduler)
    decoder, inpaint = str(kandinsky21_root / "decoder"), str(kandinsky21_root / "inpaint")
    records = _run_chain(cli, tmp_path, {"scheduler": scheduler, "model": decoder, "seed": 1, "steps": [
        {"task": "text2image", "prompt": PROMPT, "num_inference_steps": STEPS},
        {"task": "image2image", "prompt": PROMPT, "strength": 0.5, "num_inference_steps": STEPS},
        {"task": "inpaint", "prompt": PROMPT, "mask": str(mask), "model": inpaint, "num_inference_steps": STEPS},
        {"task": "interpolate", "items": ["$previous", PROMPT], "num_inference_steps": STEPS},
    ]})
    assert [r["model"] for r in records] == [decoder, decoder, inpaint, decoder]
    assert {r["scheduler_class"] for r in records} == {SCHEDULERS[scheduler]}


# each scheduler once through a command as typed (the reports: generate and img2img crashed)
COMMANDS = {"ddim": "generate", "ddpm": "img2img", "dpm": "generate", "dpm++-karras": "inpaint", "euler": "img2img",
            "euler-a": "inpaint",
            "lms": "interpolate", "pndm": "controlnet"}


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_every_scheduler_through_a_command(cli, tmp_path, picture, mask, scheduler):
    command = COMMANDS[scheduler]
    inputs = {"generate": [], "img2img": [picture], "inpaint": [picture, mask], "interpolate": [picture],
              "controlnet": [picture]}[command]
    extra = ["--strength", 0.5] if command == "img2img" else []
    result = cli(command, *inputs, PROMPT, *extra, "--scheduler", scheduler, "--steps", _steps(scheduler), "--seed", 2,
                 "-o", "out.png", "-q")
    assert result.code == 0, result.err
    record = read_parameters(tmp_path / "out.png")
    assert record["scheduler"] == scheduler and record["scheduler_class"] == SCHEDULERS[scheduler]
