"""Tiny models and pipelines used to test the checkpoint and pipeline machinery on its own."""

import torch
from torch import nn

import sfumato
from sfumato.checkpoint import ConfigMixin, ModelMixin, register_to_config
from sfumato.pipelines import DiffusionPipeline


class ToyModel(ModelMixin):
    @register_to_config
    def __init__(self, width: int = 4, depth: int = 2):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.register_buffer("scale", torch.ones(width))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x * self.scale


class ToySettings(ConfigMixin):
    config_name = "toy_config.json"

    @register_to_config
    def __init__(self, steps: int = 3, name: str = "toy"):
        pass


class ToyPipeline(DiffusionPipeline):
    def __init__(self, first: ToyModel, second: ToyModel, settings: ToySettings, extra: ToyModel | None = None):
        super().__init__()
        self.register_modules(first=first, second=second, settings=settings, extra=extra)


def register(monkeypatch):
    """Make the toy classes resolvable from model_index.json, as real sfumato classes are."""
    for cls in (ToyModel, ToySettings, ToyPipeline):
        monkeypatch.setitem(sfumato._EXPORTS, cls.__name__, __name__)
