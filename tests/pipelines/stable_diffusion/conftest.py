"""Reference-layout Stable Diffusion folders, built once per session."""

import pytest

from . import builders


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory):
    """``sd_folder(config, kind)``: config in ``builders.CONFIGS``; kind "text2img", "inpaint", "unsafe", "nochecker"."""
    cache = {}

    def get(config: str = "small", kind: str = "text2img"):
        if (config, kind) not in cache:
            folder = tmp_path_factory.mktemp("sd") / f"{config}-{kind}"
            cache[config, kind] = builders.save(folder, config, kind)
        return cache[config, kind]

    return get
