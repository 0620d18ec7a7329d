"""Reference-layout Kandinsky 2.2 folders, built once per session."""

import pytest

from . import builders


@pytest.fixture(scope="session")
def prior_folder(tmp_path_factory):
    return {name: builders.save_prior(tmp_path_factory.mktemp("prior") / name, config)
            for name, config in builders.PRIOR_CONFIGS.items()}


@pytest.fixture(scope="session")
def decoder_folder(tmp_path_factory):
    cache = {}

    def get(config: str, kind: str = "text2img"):
        if (config, kind) not in cache:
            folder = tmp_path_factory.mktemp("decoder") / f"{config}-{kind}"
            cache[config, kind] = builders.save_decoder(folder, builders.DECODER_CONFIGS[config], kind)
        return cache[config, kind]

    return get
