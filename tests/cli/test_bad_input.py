"""The command line's share of issue 15: a fuzz suite of bad input, each case refused early and clearly.

Every case in :data:`CASES` must end with exactly one ``sfumato: error: ...`` line that names the option, file
or field, what it got and what it needs, exit with status 2 (a usage error), before any model loads (a
loader that fails the test is patched in), leave nothing on disk, and, unless listed in :data:`NEEDS_TORCH`
(checks that ask the schedulers or the device), before torch is even imported. Bombs (``--num 100000``, a
billion-laughs YAML, a PNG that decodes to gigapixels, a record nested thousands deep) are refused from what
they say, never run or expanded.

A case is ``name: (make(place) -> argv, expected fragments of the message[, environment])``; ``place``
gives a fresh working folder (``place.work``, the current directory) and a folder outside it
(``place.elsewhere``) and writes the files a case needs.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import PIL.Image
import pytest

from sfumato.metadata import write_png

PROMPT = "a red circle on a blue background"
BASE_RECORD = {"sfumato": "0", "task": "text2image", "prompt": PROMPT, "seed": 1, "model": "builtin:decoder",
               "dtype": "fp32", "device": "cpu", "command": "generate"}


# ---------------------------------------------------------------------------------------------- files the cases use


class Place:
    """The working folder of one case and helpers that write what the case needs into it."""

    def __init__(self, root: Path):
        self.work, self.elsewhere = root / "work", root / "elsewhere"
        self.work.mkdir(parents=True)
        self.elsewhere.mkdir()

    def text(self, name: str, content: str | bytes, folder: Path | None = None) -> str:
        path = (folder or self.work) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return str(path) if folder is not None else name

    def chain(self, data, name: str = "chain.json") -> str:
        return self.text(name, json.dumps(data))

    def picture(self, name: str = "in.png", folder: Path | None = None, size=(64, 64)) -> str:
        path = (folder or self.work) / name
        PIL.Image.new("RGB", size, (0, 0, 255)).save(path)
        return str(path) if folder is not None else name

    def record(self, record, name: str = "made.png") -> str:
        write_png(PIL.Image.new("RGB", (64, 64)), self.work / name, record)
        return name

    def png(self, name: str, chunks: list[tuple[bytes, bytes]], width: int = 8, height: int = 8) -> str:
        """A PNG file written chunk by chunk: a header claiming ``width`` x ``height``, ``chunks``, a tiny
        image data chunk, the end (a small file can claim any size and carry any text)."""
        (self.work / name).write_bytes(png_bytes(width, height, chunks))
        return name


def png_bytes(width: int, height: int, chunks: list[tuple[bytes, bytes]]) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    pixels = zlib.compress(b"\0" * (width + 1) * min(height, 8))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + b"".join(chunk(k, d) for k, d in chunks)
            + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def itxt(text: str | bytes, keyword: bytes = b"sfumato", compressed: bool = False) -> tuple[bytes, bytes]:
    data = text.encode() if isinstance(text, str) else text
    if compressed:
        data = zlib.compress(data, 9)
    return b"iTXt", keyword + b"\0" + (b"\1" if compressed else b"\0") + b"\0" + b"\0" + b"\0" + data


def laughs(levels: int) -> str:
    """A billion-laughs YAML chain: each level nine aliases of the one before, as a step's prompt."""
    lines = ['  - &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  - &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "- task: text2image\n  prompt:\n" + "\n".join(lines) + "\n"


def nested_record(depth: int) -> dict:
    """A record whose image was made by an image-to-image step ... ``depth`` steps deep."""
    record = dict(BASE_RECORD)
    for _ in range(depth):
        record = {**BASE_RECORD, "task": "image2image", "strength": 0.5, "image": record}
    return record


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def outside_link(place: Place) -> str:
    place.picture("secret.png", place.elsewhere)
    os.symlink(place.elsewhere / "secret.png", place.work / "link.png")
    return "link.png"


# ---------------------------------------------------------------------------------------------- chain step fields

# field -> (the step it is put in, bad values, the words that name it in the message)
_STEP = {"task": "image2image", "prompt": PROMPT, "strength": 0.5}
FIELDS = {
    "prompt": (_STEP, [42, ["a", "b"], {"text": "x"}, 1.5], "PROMPT"),
    "negative_prompt": (_STEP, [5, ["x"]], "--negative"),
    "steps": (_STEP, ["10", [1], 1.5, True, 0, -3], "--steps"),
    "prior_steps": (_STEP, ["x", {}], "--prior-steps"),
    "guidance": (_STEP, ["high", [1.0]], "--guidance"),
    "prior_guidance": (_STEP, [{}, "4"], "--prior-guidance"),
    "seed": (_STEP, ["1", -1, 1.5, 2 ** 64, [1]], "--seed"),
    "strength": (_STEP, ["0.5", 2, [0.5], 0], "--strength"),
    "size": (_STEP, [64, [64, 64], "64", "0x64", {"w": 64}], "size"),
    "width": (_STEP, ["64", 1.5], "--size width"),
    "height": (_STEP, [[64], False], "--size height"),
    "scheduler": (_STEP, [5, "fast", ["ddim"]], "--scheduler"),
    "preset": (_STEP, [5, "turbo", ["fast"], True], "--preset"),
    "model": (_STEP, [5, ["builtin"], "bad\nname", "x" * 300], "--model"),
    "prior": (_STEP, [{"a": 1}, 7], "--prior"),
    "task": ({"prompt": PROMPT}, [5, ["text2image"], "paint"], "task"),
    "image": (_STEP, [5, ["in.png"], True, ""], "image"),
    "mask": ({"task": "inpaint", "prompt": PROMPT}, [5, [], "bad\x00name.png"], "mask"),
    "keep_unmasked": ({"task": "inpaint", "prompt": PROMPT, "mask": "in.png"}, ["yes", 1], "keep_unmasked"),
    "weighting": (_STEP, ["yes", 1, [True]], "weighting"),
    "hint": ({"task": "controlnet", "prompt": PROMPT}, [3.5, ["in.png"]], "hint"),
    "items": ({"task": "interpolate"}, ["abc", [], [5], [{"text": 5}], [{"image": 5}]], "items"),
    "weights": ({"task": "interpolate", "items": ["$previous", PROMPT]}, ["0.5", [True, 1], [0.5]], "weight"),
    "out": (_STEP, [5, ["a.png"], "", "x.jpg"], "out"),
    "dtype": (_STEP, ["fp16"], "dtype is set for the whole chain"),
    "fast": (_STEP, [True, "yes"], "fast is set for the whole chain (--fast)"),
    "noise_level": ({"task": "upscale"}, ["5", -1, 1.5, True], "--noise-level"),
    "controlnet": ({"task": "controlnet", "prompt": PROMPT}, [5, ["x"], "", "bad\nname"], "--controlnet"),
    "controlnet_scale": ({"task": "controlnet", "prompt": PROMPT}, ["x", [1.0], float("nan")], "--controlnet-scale"),
    "control_start": ({"task": "controlnet", "prompt": PROMPT}, ["x", [0.1], -0.5, 1.5], "--control-start"),
    "control_end": ({"task": "controlnet", "prompt": PROMPT}, ["x", float("inf"), 2], "--control-end"),
    "depth_model": ({"task": "controlnet", "prompt": PROMPT}, [5, "", "bad\x00name"], "--depth-model"),
    "denoising_end": (_STEP, ["0.5", 0, 1, 1.5, [0.5]], "denoising_end"),
    "denoising_start": (_STEP, ["0.5", 0, 1.2, False], "denoising_start"),
    "output_type": (_STEP, ["np", 5, ["latent"]], "output_type"),
}


def _field_case(field: str, value):
    """Step 2 of a chain gets ``value`` in ``field``: the message names the step, the field and (where the
    value itself is the culprit, not one of its elements) the value."""
    step, _, label = FIELDS[field]

    def make(place: Place):
        place.picture()
        bad = {**step, field: value}
        return ["chain", place.chain([{"task": "text2image", "prompt": PROMPT}, bad])]

    whole = field not in ("dtype", "fast", "out", "items") and not (field == "weights" and isinstance(value, list)
                                                             and len(value) == 2)
    return make, ("chain step 2", label) + ((repr(value),) if whole and len(repr(value)) < 100 else ())


FIELD_CASES = {f"chain step field {field}={value!r:.40}": _field_case(field, value)
               for field, (_, values, _) in FIELDS.items() for value in values}


# ---------------------------------------------------------------------------------------------- the cases


def _steps(count: int) -> list:
    return [{"task": "text2image", "prompt": PROMPT}] * count


CASES = {
    # --- requests that run away, refused from what they ask
    "--num 100000": (lambda p: ["generate", PROMPT, "--num", "100000"], ("--num 100000", "limit of 256")),
    "img2img --num 100000": (lambda p: ["img2img", p.picture(), PROMPT, "--num", "100000"],
                             ("--num 100000", "limit of 256")),
    "--num over a lowered limit": (lambda p: ["generate", PROMPT, "--num", "3"], ("--num 3", "limit of 2"),
                                   {"SFUMATO_MAX_IMAGES": "2"}),
    "--size 16384x16384": (lambda p: ["generate", PROMPT, "--size", "16384x16384"],
                           ("--size", "16384", "limit of 8192")),
    "--size with a 20-digit side": (lambda p: ["generate", PROMPT, "--size", "99999999999999999999x64"],
                                    ("--size width", "99999999999999999999", "limit of 8192")),
    "--size beyond the memory limit": (lambda p: ["generate", PROMPT, "--size", "4096x4096"],
                                       ("4096x4096", "needs about", "SFUMATO_MAX_MEMORY"),
                                       {"SFUMATO_MAX_MEMORY": "1GB"}),
    "--steps 10000000": (lambda p: ["generate", PROMPT, "--steps", "10000000"],
                         ("--steps 10000000", "num_train_timesteps=1000")),
    "--prior-steps 10000000": (lambda p: ["generate", PROMPT, "--prior-steps", "10000000"],
                               ("--prior-steps 10000000", "num_train_timesteps=1000")),
    "--steps of 5000 digits": (lambda p: ["generate", PROMPT, "--steps", "9" * 5000],
                               ("--steps", "must be a positive whole number", "(5000 characters)")),
    "chain --num 100000": (lambda p: ["chain", p.chain(_steps(1)), "--num", "100000"],
                           ("--num 100000", "limit of 256")),
    "chain runs times steps": (lambda p: ["chain", p.chain(_steps(4)), "--num", "100"],
                               ("--num 100 runs of a chain of 4 steps", "400 pictures", "limit of 256")),
    "chain of 10000 steps": (lambda p: ["chain", p.chain(_steps(10000))], ("10000 steps", "limit of 64")),
    "interpolate of 1000 items": (lambda p: ["chain", p.chain([{"task": "interpolate", "items": [PROMPT] * 1000}])],
                                  ("chain step 1", "items has 1000", "limit of 256")),
    "prompt of a megabyte": (lambda p: ["generate", "a " * 500_000], ("PROMPT is 1000000 characters", "10000")),
    "negative prompt of a megabyte": (lambda p: ["generate", PROMPT, "--negative", "x" * 1_000_000],
                                      ("--negative is 1000000 characters", "10000")),
    "chain prompt of 200 KB": (lambda p: ["chain", p.chain([{"task": "text2image", "prompt": "x" * 200_000}])],
                               ("chain step 1", "PROMPT is 200000 characters")),
    "interpolate of 300 items": (lambda p: ["interpolate", *[PROMPT] * 300], ("items has 300", "limit of 256")),
    "interpolate item of a megabyte": (lambda p: ["interpolate", PROMPT, "y" * 1_000_000],
                                       ("items[1] is 1000000 characters",)),
    "input picture of 100000x100000 pixels": (lambda p: ["img2img", p.png("bomb.png", [], 100_000, 100_000), PROMPT],
                                              ("IMAGE", "bomb.png", "limit of 8192", "decompression bomb")),
    "input picture of 9000x16 pixels": (lambda p: ["img2img", p.png("wide.png", [], 9000, 16), PROMPT],
                                        ("IMAGE", "wide.png", "9000x16", "limit of 8192")),
    "mask of 30000x30000 pixels": (lambda p: ["inpaint", p.picture(), p.png("m.png", [], 30000, 30000), PROMPT],
                                   ("MASK", "m.png", "limit of 8192", "900000000 pixels")),
    "hint of 8193x8 pixels": (lambda p: ["controlnet", p.png("h.png", [], 8193, 8), PROMPT],
                              ("HINT", "h.png", "8193x8", "limit of 8192")),

    # --- chain files: bombs, nesting, size, encoding
    "billion laughs YAML (9 levels)": (lambda p: ["chain", p.text("laughs.yaml", laughs(9))],
                                       ("laughs.yaml", "more than 20000 values", "not expanded")),
    "billion laughs YAML (30 levels)": (lambda p: ["chain", p.text("laughs.yml", laughs(30))],
                                        ("laughs.yml", "more than 20000 values")),
    "billion laughs without a suffix": (lambda p: ["chain", p.text("laughs", laughs(12))],
                                        ("more than 20000 values",)),
    "YAML merge-key bomb": (lambda p: ["chain", p.text("merge.yaml", "steps: [&a {task: t, x: [" + ", ".join(
        ["1"] * 400) + "]}, " + ", ".join(["{<<: *a}"] * 63) + "]\n")], ("merge.yaml", "more than 20000 values",)),
    "YAML alias inside itself": (lambda p: ["chain", p.text("self.yaml", "- &a {task: text2image, prompt: [*a]}\n")],
                                 ("self.yaml", "expand forever")),
    "YAML nested 5000 deep": (lambda p: ["chain", p.text("deep.yaml", deep_json(5000))],
                              ("deep.yaml", "more than 256 levels")),
    "YAML block mappings nested 3000 deep": (
        lambda p: ["chain", p.text("deep2.yaml", "steps: " + "{k: " * 3000 + "v" + "}" * 3000 + "\n")],
        ("deep2.yaml", "more than 256 levels")),
    "JSON nested 5000 deep": (lambda p: ["chain", p.text("deep.json", deep_json(5000))],
                              ("deep.json", "more than 256 levels")),
    "JSON nested 300 deep": (lambda p: ["chain", p.text("deep300.json", deep_json(300))],
                             ("deep300.json", "more than 256 levels")),
    "JSON nested 200000 deep": (lambda p: ["chain", p.text("deeper.json", deep_json(200_000))],
                                ("deeper.json", "more than 256 levels")),
    "chain record nested 100 steps deep": (lambda p: ["chain", p.chain([{"task": "image2image", "prompt": PROMPT,
                                                                          "image": nested_record(100)}])],
                                           ("chain step 1", "more than 64 earlier steps")),
    "chain file of 2 MB": (lambda p: ["chain", p.text("big.yaml", "# " + "x" * 2_000_000 + "\n- {}\n")],
                           ("big.yaml", "larger than 1048576 bytes")),
    "chain file not UTF-8": (lambda p: ["chain", p.text("latin.yaml", "- {task: text2image, prompt: caf\xe9}\n"
                                                        .encode("latin-1"))], ("latin.yaml", "not UTF-8")),
    "chain file is binary": (lambda p: ["chain", p.text("bin.json", bytes(range(256)) * 4)],
                             ("bin.json", "not UTF-8")),
    "chain file is a folder": (lambda p: (p.work / "steps.yaml").mkdir() or ["chain", "steps.yaml"],
                               ("steps.yaml", "is a folder")),
    "chain file name with a NUL": (lambda p: ["chain", "a\x00.yaml"], ("chain file", "control character")),
    "YAML python tag": (lambda p: ["chain", p.text("tag.yaml", "- !!python/object/apply:os.system ['touch pwned']\n")],
                        ("tag.yaml", "not valid YAML", "python/object/apply")),
    "YAML that is a number": (lambda p: ["chain", p.text("n.yaml", "42\n")], ("n.yaml", "list of steps")),
    "YAML that is empty": (lambda p: ["chain", p.text("e.yaml", "")], ("e.yaml", "list of steps")),
    "chain with no steps": (lambda p: ["chain", p.chain([])], ("has no steps",)),
    "chain step that is a string": (lambda p: ["chain", p.chain(["text2image"])],
                                    ("chain step 1 must be a mapping", "'text2image'")),
    "chain step that is a huge list": (lambda p: ["chain", p.chain([[1] * 5000])],
                                       ("chain step 1 must be a mapping", "5000 items")),
    "chain step with an unknown key": (lambda p: ["chain", p.chain([{"task": "text2image", "prompt": PROMPT,
                                                                      "k" * 5000: 1}])],
                                       ("chain step 1", "unknown key", "(5002 characters)")),
    "chain top level with mixed keys": (lambda p: ["chain", p.text("mixed.yaml", "1: x\nfoo: y\nsteps: []\n")],
                                        ("unknown top-level keys", "'foo'")),
    "chain top-level dtype is a list": (lambda p: ["chain", p.chain({"dtype": ["fp32"], "steps": _steps(1)})],
                                        ("dtype must be one of", "['fp32']")),
    "chain top-level device is a number": (lambda p: ["chain", p.chain({"device": 0, "steps": _steps(1)})],
                                           ("device must be a torch device", "got 0")),
    "chain top-level seed is text": (lambda p: ["chain", p.chain({"seed": "x", "steps": _steps(1)})],
                                     ("the chain's seed", "'x'")),
    "chain top-level steps is text": (lambda p: ["chain", p.chain({"steps": _steps(1), "num_inference_steps": "x"})],
                                      ("chain step 1 (chain defaults)", "--steps", "'x'")),
    "chain top-level size is a list": (lambda p: ["chain", p.chain({"steps": _steps(1), "size": [64, 64]})],
                                       ("chain defaults", "size", "[64, 64]")),
    "chain guidance NaN in YAML": (lambda p: ["chain", p.text("nan.yaml", f"- {{task: text2image, prompt: {PROMPT}, "
                                                                         f"guidance_scale: .nan}}\n")],
                                   ("chain step 1", "--guidance must be a number, got nan (a finite one)")),
    "chain steps infinite in YAML": (lambda p: ["chain", p.text("inf.yaml", f"- {{task: text2image, prompt: {PROMPT}, "
                                                                           f"steps: .inf}}\n")],
                                     ("chain step 1", "--steps must be a positive whole number", "inf")),
    "chain seed is a date in YAML": (lambda p: ["chain", p.text("date.yaml", f"- {{task: text2image, prompt: {PROMPT}, "
                                                                            f"seed: 2024-01-01}}\n")],
                                     ("chain step 1", "--seed", "datetime.date(2024, 1, 1)")),
    "chain $previous in the first step": (lambda p: ["chain", p.chain([{"task": "image2image", "prompt": PROMPT,
                                                                         "image": "$previous"}])],
                                          ("chain step 1", "$previous", "no previous step")),

    # --- chain files name only files in the working folder (unless --allow-outside-paths)
    "chain out: ../": (lambda p: ["chain", p.chain([{**_steps(1)[0], "out": "../escape.png"}])],
                       ("chain step 1: out '../escape.png'", "outside the folder", "--allow-outside-paths")),
    "chain out: absolute elsewhere": (lambda p: ["chain", p.chain([{**_steps(1)[0],
                                                                     "out": str(p.elsewhere / "x.png")}])],
                                      ("chain step 1: out", "elsewhere", "outside the folder")),
    "chain out: home": (lambda p: ["chain", p.chain([{**_steps(1)[0], "out": "~/sfumato-escape.png"}])],
                        ("chain step 1: out", "outside the folder")),
    "chain out: through a link": (lambda p: os.symlink(p.elsewhere, p.work / "exit") or
                                  ["chain", p.chain([{**_steps(1)[0], "out": "exit/x.png"}])],
                                  ("chain step 1: out 'exit/x.png'", "outside the folder")),
    "chain image: ../": (lambda p: p.picture("x.png", p.elsewhere) and
                         ["chain", p.chain([{"task": "image2image", "prompt": PROMPT, "image": "../elsewhere/x.png"}])],
                         ("chain step 1: IMAGE '../elsewhere/x.png'", "outside the folder")),
    "chain image: absolute elsewhere": (lambda p: ["chain", p.chain([{"task": "image2image", "prompt": PROMPT,
                                                                       "image": p.picture("x.png", p.elsewhere)}])],
                                        ("chain step 1: IMAGE", "outside the folder")),
    "chain image: /etc/passwd": (lambda p: ["chain", p.chain([{"task": "image2image", "prompt": PROMPT,
                                                                "image": "/etc/passwd"}])],
                                 ("chain step 1: IMAGE '/etc/passwd'", "outside the folder")),
    "chain mask: a link out": (lambda p: p.picture() and ["chain", p.chain([
        {"task": "inpaint", "prompt": PROMPT, "image": "in.png", "mask": outside_link(p)}])],
                               ("chain step 1: MASK 'link.png'", "outside the folder")),
    "chain hint: a URL": (lambda p: ["chain", p.chain([{"task": "controlnet", "prompt": PROMPT,
                                                         "hint": "http://169.254.169.254/latest/x.png"}])],
                          ("chain step 1: HINT", "is a URL", "--allow-outside-paths")),
    "chain interpolate item outside": (lambda p: ["chain", p.chain([{"task": "interpolate", "items": [
        PROMPT, {"image": p.picture("x.png", p.elsewhere)}]}])], ("chain step 1: items", "outside the folder")),
    "chain nested record's input outside": (lambda p: ["chain", p.chain([{
        "task": "image2image", "prompt": PROMPT, "strength": 0.5,
        "image": {**BASE_RECORD, "task": "image2image", "strength": 0.5, "image": p.picture("x.png", p.elsewhere)}}])],
                                            ("chain step 1: IMAGE (made by an earlier step): IMAGE",
                                             "outside the folder")),

    # --- reproduce / info of a PNG whose record is wrong, deep, huge or damaged
    "reproduce: seed is text": (lambda p: ["reproduce", p.record({**BASE_RECORD, "seed": "1"})],
                                ("made.png", "--seed", "'1'")),
    "reproduce: steps is a list": (lambda p: ["reproduce", p.record({**BASE_RECORD, "steps": [2]})],
                                   ("made.png", "--steps", "[2]")),
    "reproduce: prompt is a number": (lambda p: ["reproduce", p.record({**BASE_RECORD, "prompt": 5})],
                                      ("made.png", "PROMPT must be a string", "got 5")),
    "reproduce: task is a list": (lambda p: ["reproduce", p.record({**BASE_RECORD, "task": ["text2image"]})],
                                  ("made.png", "unknown task", "['text2image']")),
    "reproduce: width is text": (lambda p: ["reproduce", p.record({**BASE_RECORD, "width": "64"})],
                                 ("made.png", "--size width", "'64'")),
    "reproduce: guidance is a mapping": (lambda p: ["reproduce", p.record({**BASE_RECORD, "guidance": {"a": 1}})],
                                         ("made.png", "--guidance", "{'a': 1}")),
    "reproduce: dtype is a list": (lambda p: ["reproduce", p.record({**BASE_RECORD, "dtype": ["fp32"]})],
                                   ("made.png", "--dtype", "['fp32']")),
    "reproduce: device is a number": (lambda p: ["reproduce", p.record({**BASE_RECORD, "device": 0})],
                                      ("made.png", "--device", "got 0")),
    "reproduce: device is meta": (lambda p: ["reproduce", p.record({**BASE_RECORD, "device": "meta"})],
                                  ("--device 'meta'", "not meta")),
    "reproduce: model has a newline": (lambda p: ["reproduce", p.record({**BASE_RECORD, "model": "a\nb"})],
                                       ("made.png", "--model", "control character")),
    "reproduce: image is a number": (lambda p: ["reproduce", p.record({**BASE_RECORD, "task": "image2image",
                                                                        "image": 5})],
                                     ("made.png", "image must be a file path", "got 5")),
    "reproduce: items is text": (lambda p: ["reproduce", p.record({**BASE_RECORD, "task": "interpolate",
                                                                    "prompt": None, "items": "x"})],
                                 ("made.png", "items must be a non-empty list", "'x'")),
    "reproduce: input_sha256 is a list": (lambda p: ["reproduce", p.record({**BASE_RECORD, "input_sha256": [1]})],
                                          ("made.png", "input_sha256", "[1]")),
    "reproduce: cpu_threads is text": (lambda p: ["reproduce", p.record({**BASE_RECORD, "cpu_threads": "abc"})],
                                       ("made.png", "cpu_threads", "'abc'")),
    "reproduce: cpu_threads is a billion": (lambda p: ["reproduce", p.record({**BASE_RECORD,
                                                                               "cpu_threads": 10 ** 9})],
                                            ("made.png", "cpu_threads", "1000000000", "1 to 1024")),
    "reproduce: num is a list": (lambda p: ["reproduce", p.record({**BASE_RECORD, "num": [2]})],
                                 ("made.png", "num", "[2]")),
    "reproduce: index past num": (lambda p: ["reproduce", p.record({**BASE_RECORD, "index": 5, "num": 2})],
                                  ("made.png", "index 5", "num 2")),
    "reproduce: command is a mapping": (lambda p: ["reproduce", p.record({**BASE_RECORD, "command": {}})],
                                        ("made.png", "command", "{}")),
    "reproduce: nested 100 steps deep": (lambda p: ["reproduce", p.record(nested_record(100))],
                                         ("made.png", "more than 64 earlier steps")),
    "reproduce: nested 300 steps deep": (lambda p: ["reproduce", p.record(nested_record(300))],
                                         ("made.png", "more than 256 levels")),
    "reproduce: JSON nested 100000 deep": (lambda p: ["reproduce", p.png("deep.png", [itxt(deep_json(100_000))])],
                                           ("deep.png", "more than 256 levels")),
    "reproduce: picture of 100000x100000 pixels": (lambda p: ["reproduce", p.png("bomb.png", [itxt(json.dumps(
        BASE_RECORD))], 100_000, 100_000)], ("IMAGE.png", "bomb.png", "limit of 8192", "decompression bomb")),
    "reproduce: picture of 9000x9 pixels": (lambda p: ["reproduce", p.png("wide.png", [itxt(json.dumps(
        BASE_RECORD))], 9000, 9)], ("IMAGE.png", "wide.png", "9000x9", "limit of 8192")),
    "reproduce: record is a list": (lambda p: ["reproduce", p.png("list.png", [itxt("[1, 2]")])],
                                    ("list.png", "not a JSON object")),
    "reproduce: record is not JSON": (lambda p: ["reproduce", p.png("bad.png", [itxt("{seed: 1")])],
                                      ("bad.png", "not valid JSON")),
    "reproduce: record is not UTF-8": (lambda p: ["reproduce", p.png("latin.png", [itxt(b'{"prompt": "caf\xe9"}')])],
                                       ("latin.png", "cannot be decoded")),
    "info: record of 9 MB": (lambda p: ["info", p.png("huge.png", [itxt('{"p": "' + "x" * 9_000_000 + '"}')])],
                             ("huge.png", "9000021 bytes", "more than the 8388608")),
    "info: compressed record of 50 MB": (lambda p: ["info", p.png("zip.png", [itxt(b" " * 50_000_000,
                                                                                   compressed=True)])],
                                          ("zip.png", "expand to more than the 8388608")),
    "info: 4 GB claimed by a chunk": (lambda p: ["info", p.text("claim.png", b"\x89PNG\r\n\x1a\n" + struct.pack(
        ">I", 0xFFFFFFF0) + b"iTXtsfumato\0")], ("claim.png", "4294967280 bytes")),
    "info: 100000x100000 picture": (lambda p: ["info", p.png("bomb.png", [], 100_000, 100_000)],
                                    ("bomb.png", "PNG without sfumato parameters")),
    "info: text file": (lambda p: ["info", p.text("notes.png", "hello")], ("notes.png", "not a picture")),
    "info: a folder": (lambda p: (p.work / "pics.png").mkdir() or ["info", "pics.png"],
                       ("pics.png", "not a file")),

    # --- outputs (issue 8's early checks cover -o ., folders, a trailing slash, under a file, read-only)
    "-o ''": (lambda p: ["generate", PROMPT, "-o", ""], ("--out is empty",)),
    "-o ..": (lambda p: ["generate", PROMPT, "-o", ".."], ("--out '..' is a folder",)),
    "-o /": (lambda p: ["generate", PROMPT, "-o", "/"], ("--out '/' is a folder",)),
    "-o in /proc": (lambda p: ["generate", PROMPT, "-o", "/proc/sfumato-test.png"],
                    ("--out '/proc/sfumato-test.png'", "cannot write in the folder '/proc'")),
    "-o in /proc/self": (lambda p: ["generate", PROMPT, "-o", "/proc/self/sfumato-test.png"],
                         ("--out", "cannot write in the folder '/proc/self'")),
    "-o in a new folder in /proc": (lambda p: ["generate", PROMPT, "-o", "/proc/new/deeper/x.png"],
                                    ("--out", "cannot create the folder '/proc/new/deeper'")),
    "-o in /sys": (lambda p: ["generate", PROMPT, "-o", "/sys/sfumato-test.png"], ("--out", "'/sys'")),
    "-o under a file, two folders deep": (lambda p: p.text("f.txt", "x") and
                                          ["generate", PROMPT, "-o", "f.txt/a/b/out.png"],
                                          ("cannot create the folder 'f.txt/a/b'", "'f.txt' is a file")),
    "-o name of 300 bytes": (lambda p: ["generate", PROMPT, "-o", "n" * 300 + ".png"],
                             ("--out", "bytes, longer than the 255")),
    "-o --num names too long": (lambda p: ["generate", PROMPT, "--num", "12", "-o", "n" * 249 + ".png"],
                                ("--out", "256 bytes, longer than the 255")),
    "-o with a NUL": (lambda p: ["generate", PROMPT, "-o", "a\x00b.png"], ("--out", "control character")),
    "-o with a newline": (lambda p: ["generate", PROMPT, "-o", "a\nb.png"], ("--out", "control character")),
    "-o an existing folder named .png": (lambda p: (p.work / "x.png").mkdir() or ["generate", PROMPT, "-o", "x.png"],
                                         ("'x.png' is a folder",)),
    "chain step out: a folder": (lambda p: ["chain", p.chain([{**_steps(1)[0], "out": "."}])],
                                 ("chain step 1: out '.' is a folder",)),
    "chain step out: under a file": (lambda p: p.text("f.txt", "x") and
                                     ["chain", p.chain([{**_steps(1)[0], "out": "f.txt/x.png"}])],
                                     ("chain step 1: out", "'f.txt' is a file")),
    "a new output folder is not made before a refusal": (lambda p: ["generate", PROMPT, "--steps", "5000", "-o",
                                                                    "new/deeper/out.png"], ("--steps 5000",)),
    "reproduce -o in /proc": (lambda p: ["reproduce", p.record(BASE_RECORD), "-o", "/proc/x.png"],
                              ("--out '/proc/x.png'", "cannot write")),

    # --- other arguments read with an attacker's eyes
    "--model with a newline": (lambda p: ["generate", PROMPT, "--model", "org/name\n--evil"],
                               ("--model", "control character '\\n'")),
    "--model with a NUL": (lambda p: ["generate", PROMPT, "--model", "a\x00b"], ("--model", "control character")),
    "--model with an escape sequence": (lambda p: ["generate", PROMPT, "--model", "\x1b]0;pwned\x07"],
                                        ("--model", "control character '\\x1b'")),
    "--model of 300 characters": (lambda p: ["generate", PROMPT, "--model", "m" * 300],
                                  ("--model", "300 bytes, longer than the 255")),
    "--model of 10000 characters": (lambda p: ["generate", PROMPT, "--model", "m/" * 5000],
                                    ("--model", "10000 characters long", "4096")),
    "--prior of 300 characters": (lambda p: ["generate", PROMPT, "--prior", "p" * 300],
                                  ("--prior", "300 bytes, longer than the 255")),
    "--model is /proc/self": (lambda p: ["generate", PROMPT, "--model", "/proc/self"],
                              ("--model '/proc/self'", "no model_index.json")),
    "--device meta": (lambda p: ["generate", PROMPT, "--device", "meta"], ("--device 'meta'", "not meta")),
    "--dtype of a megabyte": (lambda p: ["generate", PROMPT, "--dtype", "x" * 1_000_000],
                              ("--dtype", "characters)")),
    "unknown option of a megabyte": (lambda p: ["generate", PROMPT, "--" + "x" * 1_000_000],
                                     ("unrecognized arguments", "characters)")),
    "--size of a megabyte": (lambda p: ["generate", PROMPT, "--size", "6" * 1_000_000],
                             ("--size", "WIDTHxHEIGHT", "(1000000 characters)")),
    "input picture that is a folder": (lambda p: (p.work / "pics").mkdir() or ["img2img", "pics", PROMPT],
                                       ("IMAGE 'pics' is a folder",)),
    "input picture that is truncated": (lambda p: p.text("cut.png", png_bytes(64, 64, [])[:20]) and
                                        ["img2img", "cut.png", PROMPT], ("IMAGE", "cut.png")),
    "input picture that lies about its chunks": (lambda p: p.text("lies.png", b"\x89PNG\r\n\x1a\n" + b"\xff" * 64)
                                                 and ["img2img", "lies.png", PROMPT], ("IMAGE", "lies.png")),
    **FIELD_CASES,
}

#: Cases whose check asks the library's classes (the schedulers' step limits, the device, the memory
#: estimate), which settle() does after importing torch, still before any model loads.
NEEDS_TORCH = {"--steps 10000000", "--prior-steps 10000000", "--size beyond the memory limit", "--device meta",
               "reproduce: device is meta", "a new output folder is not made before a refusal"}


def _case(name: str, place: Place):
    make, expected, *env = CASES[name]
    return make(place), expected, (env[0] if env else {})


def _files(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load a model fails the test (main() lets an AssertionError through)."""
    from sfumato.cli import models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the mistake was reported")

    monkeypatch.setattr(models.Loader, "__init__", refuse)


@pytest.fixture
def place(tmp_path, monkeypatch):
    place = Place(tmp_path)
    monkeypatch.chdir(place.work)
    return place


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_early_in_one_clear_line(cli, place, no_loading, monkeypatch, name):
    argv, expected, env = _case(name, place)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    before = _files(place.work.parent)
    result = cli(*argv)
    assert result.code == 2, result.err[:2000]
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err[:2000]
    assert lines[0].startswith("sfumato: error: "), lines[0][:2000]
    assert "Traceback" not in result.err and result.out == ""
    assert len(lines[0]) < 1200, f"{len(lines[0])} characters: {lines[0][:300]}"  # never the expansion of a value
    for fragment in expected:
        assert fragment in lines[0], (fragment, lines[0])
    assert _files(place.work.parent) == before  # nothing written, no folder made, no probe left


def test_every_field_of_a_chain_step_is_covered():
    from sfumato.cli.jobs import Job

    fields = {f.name for f in Job.__dataclass_fields__.values()} - {"model_ref", "prior_ref", "controlnet_ref", "index",
                                                                    "scheduler_class", "device"}
    assert fields | {"size", "out"} <= set(FIELDS) | {"device"}


def test_the_bombs_are_never_expanded(cli, place, no_loading, monkeypatch):
    import yaml

    def refuse(*args, **kwargs):
        raise AssertionError("the YAML was built")

    monkeypatch.setattr(yaml.constructor.SafeConstructor, "construct_document", refuse)
    result = cli("chain", place.text("laughs.yaml", laughs(40)))
    assert result.code == 2 and "more than 20000 values" in result.err


def test_outside_paths_are_allowed_with_the_flag(cli, place, no_loading):
    """--allow-outside-paths lets the same chain file through its path checks (it then loads the model)."""
    outside = place.picture("x.png", place.elsewhere)
    chain = place.chain([{"task": "image2image", "prompt": PROMPT, "strength": 0.5, "image": outside,
                          "out": str(place.elsewhere / "step.png")}])
    assert "outside the folder" in cli("chain", chain).err
    with pytest.raises(AssertionError, match="a model was loaded"):
        cli("chain", chain, "--allow-outside-paths")
    assert _files(place.elsewhere) == {"x.png"}


def test_paths_inside_the_working_folder_need_no_flag(cli, place, no_loading):
    place.picture("in.png")
    (place.work / "sub").mkdir()
    chain = place.chain([{"task": "image2image", "prompt": PROMPT, "strength": 0.5,
                          "image": str(place.work / "in.png"), "out": "sub/../sub/step.png"}])
    with pytest.raises(AssertionError, match="a model was loaded"):
        cli("chain", chain)


def test_info_shows_escape_sequences_escaped(cli, place):
    place.record({**BASE_RECORD, "prompt": "a red \x1b[2J\x1b]0;pwned\x07circle\nseed: 666", "items": 5,
                  "input_sha256": [1], "\x1b[31mkey": "v"})
    result = cli("info", "made.png")
    assert result.code == 0, result.err
    assert "\x1b" not in result.out and "\x07" not in result.out
    assert "a red \\x1b[2J\\x1b]0;pwned\\x07circle\\x0aseed: 666" in result.out
    assert "items: 5" in result.out and "input_sha256: [1]" in result.out


def test_a_chain_with_sixty_four_steps_still_runs_its_checks(cli, place, no_loading):
    """The bounds are above what real chains use: 64 steps and a record nested 64 deep pass the checks."""
    with pytest.raises(AssertionError, match="a model was loaded"):
        cli("chain", place.chain(_steps(64)))
    place.record(nested_record(63))
    with pytest.raises(AssertionError, match="a model was loaded"):
        cli("reproduce", "made.png", "-o", "again.png")


def test_the_refusals_need_no_torch(model_root, tmp_path):
    """All but NEEDS_TORCH are reported before torch is imported, in a fresh interpreter."""
    names = [name for name in CASES if name not in NEEDS_TORCH and not CASES[name][2:]]
    runs = []
    for number, name in enumerate(names):
        place = Place(tmp_path / f"case{number}")
        argv, expected, _ = _case(name, place)
        runs.append((str(place.work), argv))
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys
        os.environ["SFUMATO_BUILTIN_MODEL"] = {str(model_root)!r}
        from sfumato.cli import main
        codes = []
        for folder, argv in json.load(open({str(tmp_path / "runs.json")!r})):
            os.chdir(folder)
            codes.append(main(argv))
        print(json.dumps({{"codes": codes, "torch": "torch" in sys.modules}}))
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["codes"] == [2] * len(names), [n for n, c in zip(names, report["codes"]) if c != 2]
    assert not report["torch"]
    assert len(result.stderr.strip().splitlines()) == len(names)
