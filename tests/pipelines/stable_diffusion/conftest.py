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


@pytest.fixture(scope="session")
def controlnet_folder(tmp_path_factory):
    """``controlnet_folder(config)``: a random ControlNetModel folder for the UNet of ``builders.CONFIGS[config]``."""
    from . import builders_upscale

    cache = {}

    def get(config: str = "small"):
        if config not in cache:
            cache[config] = builders_upscale.save_controlnet(tmp_path_factory.mktemp("controlnet") / config, config)
        return cache[config]

    return get


@pytest.fixture(scope="session")
def upscaler_folder(tmp_path_factory):
    """``upscaler_folder(kind, config)``: kind "x2" (configs in ``X2_CONFIGS``) or "x4" (``X4_CONFIGS``)."""
    from . import builders_upscale

    cache = {}

    def get(kind: str = "x2", config: str = "small"):
        if (kind, config) not in cache:
            save = builders_upscale.save_x2 if kind == "x2" else builders_upscale.save_x4
            cache[kind, config] = save(tmp_path_factory.mktemp(kind) / config, config)
        return cache[kind, config]

    return get
