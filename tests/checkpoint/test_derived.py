"""Values derived from a checkpoint alone (the 2.2 prior's zero-picture embedding), kept in memory and on disk:
reused only while they would come out bit for bit the same."""

import os

import pytest
import torch

import sfumato
from sfumato.checkpoint import derived
from tests.pipelines.kandinsky2_2 import builders as k22


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SFUMATO_CACHE_DIR", str(tmp_path / "cache"))
    derived.clear_memory()
    yield tmp_path / "cache" / "derived"
    derived.clear_memory()


@pytest.fixture(scope="module")
def prior_folder(tmp_path_factory):
    return k22.save_prior(tmp_path_factory.mktemp("derived") / "prior", k22.PRIOR_CONFIGS["small"])


def _direct(encoder) -> torch.Tensor:
    size = encoder.config.image_size
    return encoder(torch.zeros(1, 3, size, size, dtype=encoder.dtype))["image_embeds"]


def _forbid(encoder, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the image encoder ran")

    monkeypatch.setattr(type(encoder), "forward", refuse)


@pytest.mark.parametrize("fast_start", [False, True], ids=["transformers-encoder", "own-encoder"])
def test_zero_embedding_is_computed_once_and_then_read_from_disk(prior_folder, cache, monkeypatch, fast_start):
    pipe = sfumato.KandinskyV22PriorPipeline.from_pretrained(prior_folder, fast_start=fast_start)
    with torch.no_grad():
        expected = _direct(pipe.image_encoder)
        first = pipe.get_zero_embed(3)
    assert first.shape == (3, expected.shape[1]) and torch.equal(first, expected.repeat(3, 1))
    assert len(list(cache.glob("*.safetensors"))) == 1
    first.add_(1)  # the caller's copy: the kept value is untouched

    derived.clear_memory()  # a new process: the value comes from the file, the encoder does not run
    again = sfumato.KandinskyV22PriorPipeline.from_pretrained(prior_folder, fast_start=fast_start)
    _forbid(again.image_encoder, monkeypatch)
    assert torch.equal(again.get_zero_embed(2), expected.repeat(2, 1))
    assert torch.equal(again.get_zero_embed(1), expected)  # from memory now


def test_prior_pictures_embeddings_with_the_kept_value_equal_those_without(prior_folder, cache, monkeypatch):
    arguments = dict(prompt=["a red circle", "a green square"], num_inference_steps=2)
    monkeypatch.setenv("SFUMATO_CACHE_DIR", "off")
    pipe = sfumato.KandinskyV22PriorPipeline.from_pretrained(prior_folder, fast_start=True)
    plain = pipe(generator=torch.Generator().manual_seed(1), **arguments)
    assert not cache.exists()  # off: memory only
    derived.clear_memory()
    monkeypatch.setenv("SFUMATO_CACHE_DIR", str(cache.parent))
    pipe(generator=torch.Generator().manual_seed(1), **arguments)  # computes and writes
    derived.clear_memory()
    kept = sfumato.KandinskyV22PriorPipeline.from_pretrained(prior_folder, fast_start=True)
    _forbid(kept.image_encoder, monkeypatch)
    out = kept(generator=torch.Generator().manual_seed(1), **arguments)
    assert torch.equal(out.image_embeds, plain.image_embeds)
    assert torch.equal(out.negative_image_embeds, plain.negative_image_embeds)


def test_weights_changed_in_place_replaced_or_hooked_compute_again(prior_folder, cache):
    pipe = sfumato.KandinskyV22PriorPipeline.from_pretrained(prior_folder, fast_start=True)
    encoder = pipe.image_encoder
    with torch.no_grad():
        before = pipe.get_zero_embed()
        projection = encoder.visual_projection.weight
        projection.mul_(2)  # in place: the version counter moves
        changed = pipe.get_zero_embed()
        assert torch.equal(changed, _direct(encoder)) and not torch.allclose(changed, before)
        encoder.visual_projection.weight = torch.nn.Parameter(projection / 4)  # another tensor
        assert torch.equal(pipe.get_zero_embed(), _direct(encoder))
        hooked = sfumato.KandinskyV22PriorPipeline.from_pretrained(prior_folder, fast_start=True)
        hooked.image_encoder.register_forward_hook(lambda module, args, output: {"image_embeds": output[
            "image_embeds"] + 1})
        assert torch.allclose(hooked.get_zero_embed(), before + 1)
        converted = sfumato.KandinskyV22PriorPipeline.from_pretrained(prior_folder, fast_start=True)
        converted.image_encoder.to(torch.float64)
        result = converted.get_zero_embed()
        assert result.dtype == torch.float64 and torch.equal(result, _direct(converted.image_encoder))
    assert len(list(cache.glob("*.safetensors"))) == 1  # only the value of the encoder as loaded was kept


def test_a_rewritten_checkpoint_gets_its_own_value(tmp_path, cache):
    folder = k22.save_prior(tmp_path / "prior", k22.PRIOR_CONFIGS["small"])
    with torch.no_grad():
        first = sfumato.KandinskyV22PriorPipeline.from_pretrained(folder, fast_start=True).get_zero_embed()
        pipe = sfumato.KandinskyV22PriorPipeline.from_pretrained(folder, fast_start=True)
        for parameter in pipe.image_encoder.parameters():
            parameter.add_(0.01)
        pipe.image_encoder.save_pretrained(folder / "image_encoder")  # same size, new contents
        derived.clear_memory()
        reloaded = sfumato.KandinskyV22PriorPipeline.from_pretrained(folder, fast_start=True)
        second = reloaded.get_zero_embed()
    assert torch.equal(second, _direct(reloaded.image_encoder)) and not torch.equal(first, second)


def test_an_unreadable_file_is_computed_again_and_replaced(prior_folder, cache):
    pipe = sfumato.KandinskyV22PriorPipeline.from_pretrained(prior_folder, fast_start=True)
    with torch.no_grad():
        expected = pipe.get_zero_embed()
        (path,) = cache.glob("*.safetensors")
        path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
        derived.clear_memory()
        assert torch.equal(pipe.get_zero_embed(), expected)
    assert path.stat().st_size > 100 and not [p for p in os.listdir(cache) if p.startswith(".writing-")]


def test_the_fast_mode_layers_keep_their_own_value(prior_folder, cache, monkeypatch):
    pipe = sfumato.KandinskyV22PriorPipeline.from_pretrained(prior_folder, fast_start=True)
    with torch.no_grad():
        plain = pipe.get_zero_embed()
        from sfumato.nn import onednn_linear

        if not onednn_linear.available():
            pytest.skip("this PyTorch has no oneDNN linear layer")
        onednn_linear.use_onednn_linears(pipe.image_encoder)
        fast = pipe.get_zero_embed()
        assert torch.equal(fast, _direct(pipe.image_encoder))
        assert len(list(cache.glob("*.safetensors"))) == 2  # one per kind of layers
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
        onednn_linear.stop_onednn_linears(pipe.image_encoder)
        _forbid(pipe.image_encoder, monkeypatch)
        assert torch.equal(pipe.get_zero_embed(), plain)


def test_a_read_only_cache_folder_still_gives_the_value(prior_folder, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("SFUMATO_CACHE_DIR", str(blocker))
    derived.clear_memory()
    pipe = sfumato.KandinskyV22PriorPipeline.from_pretrained(prior_folder, fast_start=True)
    with torch.no_grad():
        assert torch.equal(pipe.get_zero_embed(), _direct(pipe.image_encoder))
    derived.clear_memory()


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SFUMATO_CACHE_DIR", "off")
    assert derived.cache_folder() is None
    monkeypatch.setenv("SFUMATO_CACHE_DIR", str(tmp_path))
    assert derived.cache_folder() == tmp_path
    monkeypatch.delenv("SFUMATO_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert derived.cache_folder() == tmp_path / "xdg" / "sfumato"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setattr(derived.Path, "home", classmethod(lambda cls: (_ for _ in ()).throw(RuntimeError("no home"))))
    assert derived.cache_folder() is None
