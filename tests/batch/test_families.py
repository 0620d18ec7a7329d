"""`sfumato batch` runs jobs of the command line's new families and tasks: Stable Diffusion text-to-image and a
Stable Diffusion x4 upscale, from one job file, with each picture equal to the command line's."""

from __future__ import annotations

import numpy as np
import PIL.Image

from .conftest import manifest, pictures, write_jobs


def test_stable_diffusion_and_upscale_jobs(batch, tmp_path):
    from ..pipelines.stable_diffusion import builders as sd
    from ..pipelines.stable_diffusion import builders_upscale as upscale

    sd_folder, x4_folder = sd.save(tmp_path / "sd", "small"), upscale.save_x4(tmp_path / "x4", "small")
    small = tmp_path / "small.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(small)
    jobs = write_jobs(tmp_path / "jobs.jsonl", [
        {"prompt": "a lighthouse", "model": str(sd_folder), "steps": 2, "seed": 1, "num": 2},
        {"task": "upscale", "image": str(small), "model": str(x4_folder), "noise_level": 10, "steps": 2, "seed": 2},
    ])
    result = batch(jobs, "--out", tmp_path / "out", "--quiet")
    assert result.code == 0, result.err
    made = pictures(tmp_path / "out")
    assert sorted(picture.shape for picture in made.values()) == [(32, 32, 3), (32, 32, 3), (64, 64, 3)]
    assert {entry["status"] for entry in manifest(tmp_path / "out")} == {"done"}
