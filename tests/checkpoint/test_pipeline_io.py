"""Saving and loading whole pipelines: model_index.json, components, overrides, dtypes, bad input."""

import json

import pytest
import torch

from sfumato.checkpoint import CheckpointError
from sfumato.pipelines import DiffusionPipeline

from .. import tiny
from .test_model_io import same_tensors
from .toys import ToyModel, ToyPipeline, ToySettings, register


@pytest.fixture
def saved(tmp_path, monkeypatch):
    register(monkeypatch)
    pipe = ToyPipeline(first=ToyModel(width=3), second=ToyModel(width=5, depth=1), settings=ToySettings(steps=7))
    pipe.save_pretrained(tmp_path / "pipe")
    return pipe, tmp_path / "pipe"


def test_layout_matches_reference(saved):
    _, folder = saved
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "ToyPipeline"
    assert index["first"] == ["diffusers", "ToyModel"]
    assert index["settings"] == ["diffusers", "ToySettings"]
    assert index["extra"] == [None, None]
    assert (folder / "first" / "config.json").is_file()
    assert (folder / "first" / "diffusion_pytorch_model.safetensors").is_file()
    assert (folder / "settings" / "toy_config.json").is_file()
    assert not (folder / "extra").exists()


def test_round_trip(saved):
    pipe, folder = saved
    for loader in (ToyPipeline, DiffusionPipeline):
        loaded = loader.from_pretrained(folder)
        assert type(loaded) is ToyPipeline
        assert same_tensors(pipe.first, loaded.first) and same_tensors(pipe.second, loaded.second)
        assert loaded.settings.config.steps == 7
        assert loaded.extra is None
        assert list(loaded.components) == ["first", "second", "settings", "extra"]


def test_component_overrides(saved):
    _, folder = saved
    replacement = ToySettings(steps=1)
    extra = ToyModel()
    loaded = ToyPipeline.from_pretrained(folder, settings=replacement, extra=extra)
    assert loaded.settings is replacement and loaded.extra is extra
    assert loaded.config["extra"] == ("diffusers", "ToyModel")
    with pytest.raises(TypeError, match="unexpected keyword.*'nonsense'"):
        ToyPipeline.from_pretrained(folder, nonsense=1)


def test_per_component_dtype(saved):
    _, folder = saved
    loaded = ToyPipeline.from_pretrained(folder, torch_dtype={"first": torch.bfloat16, "default": torch.float16})
    assert loaded.first.dtype == torch.bfloat16 and loaded.second.dtype == torch.float16
    assert ToyPipeline.from_pretrained(folder, torch_dtype=torch.float16).first.dtype == torch.float16
    with pytest.raises(CheckpointError, match=r"torch_dtype\['first'\].*'int8'"):
        ToyPipeline.from_pretrained(folder, torch_dtype={"first": "int8"})


def test_variant_pipeline_falls_back_per_component(saved, tmp_path):
    pipe, _ = saved
    pipe.to(torch.float16).save_pretrained(tmp_path / "half", variant="fp16")
    assert (tmp_path / "half" / "first" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    loaded = ToyPipeline.from_pretrained(tmp_path / "half", variant="fp16", torch_dtype=torch.float16)
    assert same_tensors(pipe.first, loaded.first)


def test_to_moves_and_casts(saved):
    pipe, _ = saved
    pipe.to(torch.bfloat16)
    assert pipe.dtype == torch.bfloat16 and pipe.first.dtype == torch.bfloat16
    pipe.to("cpu", dtype=torch.float32)
    assert pipe.device.type == "cpu" and pipe.second.dtype == torch.float32
    with pytest.raises(TypeError):
        pipe.to(3)


def test_offload_is_harmless_without_accelerator(saved):
    pipe, _ = saved
    pipe.enable_model_cpu_offload()
    pipe.enable_xformers_memory_efficient_attention()
    assert pipe._execution_device.type == "cpu"
    assert pipe.first(torch.ones(1, 3)).shape == (1, 3)


def test_missing_model_index(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="model_index.json"):
        DiffusionPipeline.from_pretrained(tmp_path / "empty")


def test_unknown_class_name(saved):
    _, folder = saved
    index = json.loads((folder / "model_index.json").read_text())
    index["first"] = ["diffusers", "NoSuchModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="'first'.*'NoSuchModel'"):
        ToyPipeline.from_pretrained(folder)
    index["_class_name"] = "NoSuchPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="NoSuchPipeline"):
        DiffusionPipeline.from_pretrained(folder)


def test_missing_component_folder(saved):
    import shutil

    _, folder = saved
    shutil.rmtree(folder / "second")
    with pytest.raises(CheckpointError, match="second"):
        ToyPipeline.from_pretrained(folder)


def test_failed_pipeline_save_leaves_nothing(saved, tmp_path, monkeypatch):
    pipe, _ = saved

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ToySettings, "save_config", explode)
    with pytest.raises(OSError):
        pipe.save_pretrained(tmp_path / "broken")
    assert not (tmp_path / "broken").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_transformers_components_round_trip(tmp_path, monkeypatch):
    """transformers models and tokenizers load with their own from_pretrained, in the chosen dtype."""
    register(monkeypatch)
    tokenizer = tiny.clip_tokenizer(tmp_path / "tok")
    encoder = tiny.clip_text_model(len(tokenizer))

    class TextPipeline(DiffusionPipeline):
        def __init__(self, text_encoder, tokenizer):
            super().__init__()
            self.register_modules(text_encoder=text_encoder, tokenizer=tokenizer)

    monkeypatch.setitem(__import__("sfumato")._EXPORTS, "TextPipeline", __name__)
    globals()["TextPipeline"] = TextPipeline
    pipe = TextPipeline(encoder, tokenizer)
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "CLIPTextModelWithProjection"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    loaded = TextPipeline.from_pretrained(tmp_path / "pipe", torch_dtype=torch.bfloat16)
    assert loaded.text_encoder.dtype == torch.bfloat16
    ids = tokenizer(["a red circle"], padding="max_length", return_tensors="pt").input_ids
    assert torch.equal(loaded.tokenizer(["a red circle"], padding="max_length", return_tensors="pt").input_ids, ids)
    full = TextPipeline.from_pretrained(tmp_path / "pipe")
    with torch.no_grad():
        assert torch.equal(full.text_encoder(ids).text_embeds, encoder(ids).text_embeds)
