"""Command line test fixtures: a tiny built-in model and an in-process runner."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import PIL.Image
import pytest
import torch

from . import builders


@pytest.fixture(scope="session")
def model_root(tmp_path_factory):
    """The tiny model, installed as the built-in one through SFUMATO_BUILTIN_MODEL for the session."""
    root = builders.build(tmp_path_factory.mktemp("builtin"))
    old_env, old_threads = os.environ.get("SFUMATO_BUILTIN_MODEL"), torch.get_num_threads()
    os.environ["SFUMATO_BUILTIN_MODEL"] = str(root)
    # these models are so small that a second thread only adds overhead (and the CPU may be shared)
    torch.set_num_threads(1)
    yield root
    torch.set_num_threads(old_threads)
    if old_env is None:
        os.environ.pop("SFUMATO_BUILTIN_MODEL", None)
    else:
        os.environ["SFUMATO_BUILTIN_MODEL"] = old_env


@pytest.fixture(scope="session")
def kandinsky21_root(tmp_path_factory, model_root):
    """Tiny Kandinsky 2.1 folders: prior/, decoder/ and inpaint/ (decoders name ../prior)."""
    return builders.build_kandinsky21(tmp_path_factory.mktemp("kandinsky21"))


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys, model_root, monkeypatch, tmp_path):
    """``cli("generate", ...)`` runs main() in this process, in a fresh working directory."""
    from sfumato.cli import main

    monkeypatch.chdir(tmp_path)

    def run(*argv: str) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def picture(tmp_path):
    """A 64x64 test picture file: a red disc on blue."""
    y, x = np.mgrid[:64, :64]
    array = np.zeros((64, 64, 3), dtype=np.uint8)
    array[...] = (0, 0, 255)
    array[(x - 30) ** 2 + (y - 34) ** 2 < 15 ** 2] = (255, 0, 0)
    path = tmp_path / "input.png"
    PIL.Image.fromarray(array).save(path)
    return path


@pytest.fixture
def mask(tmp_path):
    """White (repaint) on the right half."""
    array = np.zeros((64, 64), dtype=np.uint8)
    array[:, 32:] = 255
    path = tmp_path / "mask.png"
    PIL.Image.fromarray(array).save(path)
    return path


def pixels(path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return np.asarray(image.convert("RGB")).copy()


@pytest.fixture(scope="session")
def family(tmp_path_factory, model_root):
    """``family(name)``: a tiny checkpoint folder of another family, built on first use with the pipeline
    tests' builders: "sd" (Stable Diffusion text-to-image, "small"), "sd-inpaint" (9-channel), "controlnet"
    (a ControlNetModel for "sd"), "x2" / "x4" (the upscalers; x2 shares "sd"'s VAE), "xl-base" / "xl-refiner"
    (SDXL, sharing their VAE), "k3" (Kandinsky 3)."""
    root = tmp_path_factory.mktemp("families")
    built: dict[str, object] = {}

    def build(name: str):
        from ..pipelines.kandinsky3 import builders as k3
        from ..pipelines.stable_diffusion import builders as sd
        from ..pipelines.stable_diffusion import builders_upscale as upscale
        from ..pipelines.stable_diffusion_xl import builders as xl

        folder = root / name
        makers = {
            "sd": lambda: sd.save(folder, "small"),
            "sd-inpaint": lambda: sd.save(folder, "small", "inpaint"),
            "controlnet": lambda: upscale.save_controlnet(folder, "small"),
            "x2": lambda: upscale.save_x2(folder, "small"),
            "x4": lambda: upscale.save_x4(folder, "small"),
            "xl-base": lambda: xl.save(folder, "small", "base"),
            "xl-refiner": lambda: xl.save(folder, "small", "refiner"),
            "k3": lambda: k3.save_pipeline(folder, k3.CONFIGS["small"]),
        }
        return makers[name]()

    def get(name: str):
        if name not in built:
            built[name] = build(name)
        return built[name]

    return get
