"""Saving and loading single components: round trips, variants, shards, dtypes, and bad input."""

import json

import pytest
import torch

from sfumato.checkpoint import CheckpointError, ModelMixin

from .toys import ToyModel


def same_tensors(a: ModelMixin, b: ModelMixin) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_is_exact(tmp_path):
    model = ToyModel(width=5, depth=3)
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["_class_name"] == "ToyModel"
    loaded = ToyModel.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    assert same_tensors(model, loaded)
    assert not loaded.training


def test_variant_and_dtype(tmp_path):
    model = ToyModel()
    model.to(torch.float16).save_pretrained(tmp_path / "m", variant="fp16")
    assert (tmp_path / "m" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    half = ToyModel.from_pretrained(tmp_path / "m", variant="fp16", torch_dtype=torch.float16)
    assert half.dtype == torch.float16 and same_tensors(model, half)
    # the reference loads in float32 unless told otherwise
    assert ToyModel.from_pretrained(tmp_path / "m", variant="fp16").dtype == torch.float32
    with pytest.raises(CheckpointError, match="pass variant="):
        ToyModel.from_pretrained(tmp_path / "m")


def test_sharded_round_trip(tmp_path):
    model = ToyModel(width=16, depth=4)
    model.save_pretrained(tmp_path / "m", max_shard_size=1200)
    names = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert "diffusion_pytorch_model.safetensors.index.json" in names
    assert sum("-of-" in n for n in names) > 1
    assert same_tensors(model, ToyModel.from_pretrained(tmp_path / "m"))


def test_pickle_weights_load_with_weights_only(tmp_path, monkeypatch):
    model = ToyModel()
    model.save_pretrained(tmp_path / "m", safe_serialization=False)
    seen = {}
    original = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert same_tensors(model, ToyModel.from_pretrained(tmp_path / "m"))
    assert seen.get("weights_only") is True


def test_safetensors_preferred_over_bin(tmp_path):
    model = ToyModel()
    model.save_pretrained(tmp_path / "m")
    other = ToyModel()
    torch.save(other.state_dict(), tmp_path / "m" / "diffusion_pytorch_model.bin")
    assert same_tensors(model, ToyModel.from_pretrained(tmp_path / "m"))
    assert same_tensors(other, ToyModel.from_pretrained(tmp_path / "m", use_safetensors=False))


def test_missing_config(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        ToyModel.from_pretrained(tmp_path / "m")


def test_missing_weights(tmp_path):
    ToyModel().save_config(tmp_path / "m")
    with pytest.raises(CheckpointError, match="no weights"):
        ToyModel.from_pretrained(tmp_path / "m")


def test_truncated_safetensors(tmp_path):
    ToyModel().save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-20])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ToyModel.from_pretrained(tmp_path / "m")


def test_garbage_safetensors(tmp_path):
    ToyModel().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a tensor file at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ToyModel.from_pretrained(tmp_path / "m")


def test_missing_and_unexpected_keys_are_named(tmp_path):
    ToyModel(depth=2).save_pretrained(tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    data = json.loads(config.read_text())
    data["depth"] = 3
    config.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"missing key.*layers\.2\.weight"):
        ToyModel.from_pretrained(tmp_path / "m")
    data["depth"] = 1
    config.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"unexpected key.*layers\.1\."):
        ToyModel.from_pretrained(tmp_path / "m")


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    ToyModel(width=4).save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match=r"weight 'scale' in .* has shape \(4,\), but ToyModel expects \(6,\)"):
        ToyModel.from_pretrained(tmp_path / "m", width=6)


def test_unknown_dtype(tmp_path):
    ToyModel().save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="torch_dtype.*'float17'"):
        ToyModel.from_pretrained(tmp_path / "m", torch_dtype="float17")
    with pytest.raises(CheckpointError, match="torch_dtype"):
        ToyModel.from_pretrained(tmp_path / "m", torch_dtype=torch.int64)


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    model = ToyModel()
    model.save_pretrained(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", explode)
    with pytest.raises(OSError, match="disk full"):
        ToyModel(width=4).save_pretrained(tmp_path / "m")
    with pytest.raises(OSError):
        ToyModel().save_pretrained(tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging folders left


def test_offline_hub_id_error_names_id(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"'someorg/somemodel'.*local folder|folder path"):
        ToyModel.from_pretrained("someorg/somemodel")


def test_path_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        ToyModel.from_pretrained(tmp_path / "f")


def test_loading_builds_on_meta_without_double_memory(tmp_path, monkeypatch):
    ToyModel().save_pretrained(tmp_path / "m")
    inits = []
    original = torch.nn.Linear.reset_parameters

    def spy(self):
        inits.append(self.weight.device.type)
        return original(self)

    monkeypatch.setattr(torch.nn.Linear, "reset_parameters", spy)
    model = ToyModel.from_pretrained(tmp_path / "m")
    assert set(inits) == {"meta"}  # no random init on real memory
    assert all(not p.is_meta for p in model.parameters())
