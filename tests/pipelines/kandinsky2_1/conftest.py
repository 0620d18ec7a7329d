"""Reference-layout Kandinsky 2.1 folders, built once per session."""

import pytest

from . import builders


@pytest.fixture(scope="session")
def prior_folder(tmp_path_factory):
    return {name: builders.save_prior(tmp_path_factory.mktemp("prior21") / name, config)
            for name, config in builders.PRIOR_CONFIGS.items()}


@pytest.fixture(scope="session")
def decoder_folder(tmp_path_factory):
    """``decoder_folder(config, kind)``: config in DECODER_CONFIGS, kind "text2img" (also img2img) or "inpaint"."""
    cache = {}

    def get(config: str = "small", kind: str = "text2img"):
        if (config, kind) not in cache:
            folder = tmp_path_factory.mktemp("decoder21") / f"{config}-{kind}"
            cache[config, kind] = builders.save_decoder(folder, builders.DECODER_CONFIGS[config], kind)
        return cache[config, kind]

    return get
