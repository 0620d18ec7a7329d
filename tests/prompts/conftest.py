"""Tiny random checkpoints of every family with a text encoder, built once per session with the pipelines'
own test builders."""

import pytest

from ..pipelines.kandinsky2_1 import builders as k21
from ..pipelines.kandinsky2_2 import builders as k22
from ..pipelines.kandinsky3 import builders as k3
from ..pipelines.stable_diffusion import builders as sd
from ..pipelines.stable_diffusion import builders_upscale as upscale
from ..pipelines.stable_diffusion_xl import builders as sdxl


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    """``folders(name)``: the folder of a tiny checkpoint, built on first use."""
    makers = {
        "sd": lambda root: sd.save(root / "sd", "small"),
        "sd-x4": lambda root: upscale.save_x4(root / "sd-x4", "small"),
        "sdxl": lambda root: sdxl.save(root / "sdxl", "small", "base"),
        "sdxl-refiner": lambda root: sdxl.save(root / "sdxl-refiner", "small", "refiner"),
        "sdxl-wide": lambda root: sdxl.save(root / "sdxl-wide", "wide", "base"),
        "k3": lambda root: k3.save_pipeline(root / "k3", k3.CONFIGS["small"]),
        "k22-prior": lambda root: k22.save_prior(root / "k22-prior", k22.PRIOR_CONFIGS["small"]),
        "k22-decoder": lambda root: k22.save_decoder(root / "k22-decoder", k22.DECODER_CONFIGS["small"]),
        "k21-prior": lambda root: k21.save_prior(root / "k21-prior", k21.PRIOR_CONFIGS["small"]),
        "k21-decoder": lambda root: k21.save_decoder(root / "k21-decoder", k21.DECODER_CONFIGS["small"]),
        # a decoder folder whose model card names its prior, as combined pipelines load them
        "k22-combined": lambda root: k21.save_combined(root / "k22-combined", get("k22-decoder"), get("k22-prior")),
        "k21-combined": lambda root: k21.save_combined(root / "k21-combined", get("k21-decoder"), get("k21-prior")),
    }
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = makers[name](tmp_path_factory.mktemp(name))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def load(folders):
    """``load(class_name, folder_name)``: an sfumato pipeline over a tiny folder, progress bars off."""
    import sfumato

    def get(class_name: str, folder_name: str, **kwargs):
        pipe = getattr(sfumato, class_name).from_pretrained(folders(folder_name), **kwargs)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return get
