"""Reference-layout SDXL folders, built once per session."""

import pytest

from . import builders


@pytest.fixture(scope="session")
def sdxl_folder(tmp_path_factory):
    """``sdxl_folder(config, kind)``: config in ``builders.CONFIGS``; kind "base", "refiner" or "inpaint"."""
    cache = {}

    def get(config: str = "small", kind: str = "base"):
        if (config, kind) not in cache:
            folder = tmp_path_factory.mktemp("sdxl") / f"{config}-{kind}"
            cache[config, kind] = builders.save(folder, config, kind)
        return cache[config, kind]

    return get
