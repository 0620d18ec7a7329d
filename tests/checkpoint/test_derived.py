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


# --------------------------------------------------------------------------- converted weights (cached_tensors)


@pytest.fixture()
def movq_folder(tmp_path):
    """A tiny MoVQ written in the reference layout (by the reference), loaded through the real loading code by
    each test."""
    k22.movq(k22.DECODER_CONFIGS["small"]).save_pretrained(tmp_path / "movq")
    return tmp_path / "movq"


def _halves(model):
    """A spec and maker: every floating tensor in bf16 and the 4-d ones doubled, to be kept."""
    tensors = dict(model.named_parameters())
    spec = {key: (torch.bfloat16, tuple(t.shape)) for key, t in tensors.items()}
    calls = []

    def make(key):
        calls.append(key)
        return tensors[key].detach().to(torch.bfloat16)

    return spec, make, calls


def test_converted_weights_are_written_once_then_mapped_from_disk(movq_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("SFUMATO_CACHE_DIR", str(tmp_path / "cache"))
    model = sfumato.VQModel.from_pretrained(movq_folder)
    spec, make, calls = _halves(model)
    first = derived.cached_tensors(model, "halves", spec, make)
    assert sorted(calls) == sorted(spec) and first.keys() == spec.keys()
    assert all(torch.equal(first[key], p.detach().to(torch.bfloat16)) for key, p in model.named_parameters())
    (kept,) = (tmp_path / "cache" / "weights").glob("*.safetensors")
    assert not [p for p in kept.parent.iterdir() if p.name.startswith(".writing-")]

    again = sfumato.VQModel.from_pretrained(movq_folder)  # a new process: read, nothing made
    spec, make, calls = _halves(again)
    second = derived.cached_tensors(again, "halves", spec, make)
    assert calls == [] and all(torch.equal(first[key], second[key]) for key in spec)
    # mapped from the file, not copied: every tensor's memory lies in a mapping of the kept file
    if os.path.exists("/proc/self/maps"):
        with open("/proc/self/maps") as maps:
            ranges = [tuple(int(n, 16) for n in line.split()[0].split("-")) for line in maps
                      if line.rstrip().endswith(str(kept.resolve()))]
        assert ranges and all(any(low <= t.data_ptr() < high for low, high in ranges) for t in second.values())
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:  # the thread count is not part of a weights key
        assert derived.cached_tensors(again, "halves", spec, make) is not None and calls == []
    finally:
        torch.set_num_threads(threads)


def test_converted_weights_are_none_where_they_cannot_be_kept(movq_folder, tmp_path, monkeypatch):
    model = sfumato.VQModel.from_pretrained(movq_folder)
    spec, make, calls = _halves(model)
    monkeypatch.setenv("SFUMATO_CACHE_DIR", "off")
    assert derived.cached_tensors(model, "halves", spec, make) is None
    monkeypatch.setenv("SFUMATO_CACHE_DIR", str(tmp_path / "cache"))
    unloaded = sfumato.VQModel.from_config(sfumato.VQModel.load_config(movq_folder))  # not made from files
    assert derived.cached_tensors(unloaded, "halves", *_halves(unloaded)[:2]) is None
    with torch.no_grad():
        changed = sfumato.VQModel.from_pretrained(movq_folder)
        next(changed.parameters()).mul_(2)
    assert derived.cached_tensors(changed, "halves", *_halves(changed)[:2]) is None
    monkeypatch.setattr(derived, "MIN_FREE_BYTES", 1 << 60)  # a disk with too little room left
    assert derived.cached_tensors(model, "halves", spec, make) is None
    assert calls == [] and not list((tmp_path / "cache").rglob("*.safetensors"))


def test_a_failed_write_leaves_no_file(movq_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("SFUMATO_CACHE_DIR", str(tmp_path / "cache"))
    model = sfumato.VQModel.from_pretrained(movq_folder)
    spec, make, _ = _halves(model)
    last = list(spec)[-1]

    def failing(key):
        if key == last:
            raise OSError(28, "No space left on device")
        return make(key)

    assert derived.cached_tensors(model, "halves", spec, failing) is None
    folder = tmp_path / "cache" / "weights"
    assert folder.is_dir() and list(folder.iterdir()) == []

    def wrong(key):
        return make(key).float()

    with pytest.raises(ValueError, match="announced"):
        derived.cached_tensors(model, "halves", spec, wrong)
    assert list(folder.iterdir()) == []


def test_a_kept_file_that_does_not_match_is_made_again(movq_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("SFUMATO_CACHE_DIR", str(tmp_path / "cache"))
    model = sfumato.VQModel.from_pretrained(movq_folder)
    spec, make, calls = _halves(model)
    derived.cached_tensors(model, "halves", spec, make)
    (kept,) = (tmp_path / "cache" / "weights").glob("*.safetensors")
    for broken in (b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}", kept.read_bytes()[:-2]):
        kept.write_bytes(broken)
        calls.clear()
        value = derived.cached_tensors(model, "halves", spec, make)
        assert sorted(calls) == sorted(spec) and all(torch.equal(value[k], make(k)) for k in spec)
    # the same name with another spec (what a newer sfumato would keep): made again, the file replaced
    other = {key: (torch.float32, shape) for key, (_, shape) in spec.items()}
    value = derived.cached_tensors(model, "halves", other, lambda key: make(key).float())
    assert all(value[k].dtype == torch.float32 for k in other)
    assert len(list(kept.parent.glob("*.safetensors"))) == 1


def test_a_newer_version_of_the_files_replaces_the_kept_weights(movq_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("SFUMATO_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "weights"
    model = sfumato.VQModel.from_pretrained(movq_folder)
    derived.cached_tensors(model, "halves", *_halves(model)[:2])
    derived.cached_tensors(model, "other", *_halves(model)[:2])  # another name: kept beside it
    assert len(list(folder.glob("*.safetensors"))) == 2
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)
    model.save_pretrained(movq_folder)  # the same files, new contents
    newer = sfumato.VQModel.from_pretrained(movq_folder)
    spec, make, calls = _halves(newer)
    value = derived.cached_tensors(newer, "halves", spec, make)
    assert sorted(calls) == sorted(spec)
    assert all(torch.equal(value[key], p.detach().to(torch.bfloat16)) for key, p in newer.named_parameters())
    assert len(list(folder.glob("*.safetensors"))) == 2  # the old "halves" gone, "other" still there


def test_seldom_used_tensors_are_kept_last_in_a_plain_safetensors_file(movq_folder, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from sfumato.checkpoint.weights import _safetensors_header

    monkeypatch.setenv("SFUMATO_CACHE_DIR", str(tmp_path / "cache"))
    model = sfumato.VQModel.from_pretrained(movq_folder)
    spec, make, _ = _halves(model)
    spec["scale"] = (torch.float32, (3,))  # one of each element size, the narrow one often used
    spec["count"] = (torch.int8, (5,))
    extra = {"scale": torch.tensor([1.0, 2.0, 3.0]), "count": torch.arange(5, dtype=torch.int8)}
    seldom = [key for key in spec if key.endswith("conv.weight")]
    assert 0 < len(seldom) < len(spec) - 2
    value = derived.cached_tensors(model, "halves", spec, lambda key: extra[key] if key in extra else make(key),
                                   seldom)
    (kept,) = (tmp_path / "cache" / "weights").glob("*.safetensors")
    header, _ = _safetensors_header(kept)
    starts = {key: info["data_offsets"][0] for key, info in header.items()}
    assert max(starts[key] for key in spec if key not in seldom) < min(starts[key] for key in seldom)
    assert all(starts[key] % spec[key][0].itemsize == 0 for key in spec)
    plain = load_file(str(kept))  # any safetensors reader reads it; the filler is one more tensor
    assert set(plain) - set(spec) <= {"__padding__"}
    assert all(torch.equal(plain[key], value[key]) for key in spec)
    assert torch.equal(value["scale"], extra["scale"]) and torch.equal(value["count"], extra["count"])


def test_attention_as_bf16_products_has_its_own_key(movq_folder):
    model = sfumato.VQModel.from_pretrained(movq_folder)
    layers = [m for m in model.modules() if hasattr(type(m), "products_attention")]
    assert layers
    plain = derived._key(model, "value")
    assert plain is not None
    layers[0].products_attention = True  # what the fast mode sets: another rounding, another key
    assert derived._key(model, "value") not in (None, plain)
    del layers[0].products_attention
    assert derived._key(model, "value") == plain
