"""Reference-layout Kandinsky 3 folders, built once per session."""

import pytest

from . import builders


@pytest.fixture(scope="session")
def k3_folder(tmp_path_factory):
    """``k3_folder(config, variant=None)``: config in CONFIGS; ``variant="fp16"`` saves fp16 weights as that variant."""
    cache = {}

    def get(config: str = "small", variant: str | None = None):
        if (config, variant) not in cache:
            folder = tmp_path_factory.mktemp("kandinsky3") / f"{config}-{variant or 'fp32'}"
            cache[config, variant] = builders.save_pipeline(folder, builders.CONFIGS[config], variant=variant)
        return cache[config, variant]

    return get
