"""sfumato.models.clip / clip_tokenizer (fast_start's CLIP parts) against transformers' own classes, bit for bit."""

import json
import random
import shutil

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from sfumato.models import clip, clip_tokenizer
from tests.tiny import clip_tokenizer as tiny_clip_tokenizer


def _text_config(**changes):
    settings = dict(vocab_size=50, hidden_size=32, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                    max_position_embeddings=16, projection_dim=24, bos_token_id=48, eos_token_id=49, pad_token_id=49)
    return transformers.CLIPTextConfig(**{**settings, **changes})


def _vision_config(**changes):
    settings = dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                    patch_size=8, projection_dim=24)
    return transformers.CLIPVisionConfig(**{**settings, **changes})


def _saved(tmp_path, class_name, config, seed=0):
    torch.manual_seed(seed)
    getattr(transformers, class_name)(config).save_pretrained(tmp_path)
    return tmp_path


def _assert_same_outputs(reference, own):
    names = [name for name, value in reference.items() if value is not None]
    assert [name for name, value in own.items() if value is not None] == names
    for name in names:
        expected, got = reference[name], own[name]
        if name == "hidden_states":
            assert len(got) == len(expected)
            pairs = list(zip(expected, got))
        else:
            pairs = [(expected, got)]
        for want, have in pairs:
            assert have.dtype == want.dtype and have.shape == want.shape
            assert torch.equal(have, want), f"{name}: max difference {(have - want).abs().max()}"
    assert torch.equal(own[0], reference[0])


def _ids():
    """Three prompts: padded after 6 and 10 tokens, and one without padding; start and end tokens where a
    tokenizer puts them."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 48, (3, 16), generator=generator)
    ids[:, 0] = 48
    ids[0, 5:], ids[1, 9:], ids[2, -1] = 49, 49, 49
    mask = (torch.arange(16) <= torch.tensor([5, 9, 15])[:, None]).long()
    return ids, mask


@pytest.mark.parametrize("class_name", ["CLIPTextModel", "CLIPTextModelWithProjection"])
@pytest.mark.parametrize("settings", [dict(hidden_act="quick_gelu"), dict(hidden_act="gelu"),
                                      dict(eos_token_id=2), dict(hidden_act="gelu_pytorch_tanh")],
                         ids=["quick_gelu", "gelu", "legacy-eos", "gelu-tanh"])
def test_text_towers_equal_transformers(tmp_path, class_name, settings):
    folder = _saved(tmp_path, class_name, _text_config(**settings))
    reference = getattr(transformers, class_name).from_pretrained(folder, dtype=torch.float32).eval()
    own = clip.load(class_name, folder, torch.float32)
    assert isinstance(own, clip.TOWERS[class_name])
    ids, mask = _ids()
    with torch.no_grad():
        for arguments in ({}, {"attention_mask": mask}, {"attention_mask": torch.ones_like(mask)},
                          {"output_hidden_states": True}, {"attention_mask": mask, "output_hidden_states": True}):
            _assert_same_outputs(reference(ids, **arguments), own(ids, **arguments))


@pytest.mark.parametrize("class_name", ["CLIPVisionModel", "CLIPVisionModelWithProjection"])
@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_vision_towers_equal_transformers(tmp_path, class_name, hidden_act):
    folder = _saved(tmp_path, class_name, _vision_config(hidden_act=hidden_act))
    reference = getattr(transformers, class_name).from_pretrained(folder, dtype=torch.float32).eval()
    own = clip.load(class_name, folder, torch.float32)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for arguments in ({}, {"output_hidden_states": True}):
            _assert_same_outputs(reference(pixels, **arguments), own(pixels, **arguments))
    with pytest.raises(ValueError, match="pixel_values are 16x16; this image encoder reads 32x32"):
        own(torch.zeros(1, 3, 16, 16))


def test_bf16_weights_give_transformers_bf16_numbers(tmp_path):
    folder = _saved(tmp_path, "CLIPTextModelWithProjection", _text_config())
    reference = transformers.CLIPTextModelWithProjection.from_pretrained(folder, dtype=torch.bfloat16).eval()
    own = clip.load("CLIPTextModelWithProjection", folder, torch.bfloat16)
    assert own.dtype == torch.bfloat16
    ids, mask = _ids()
    with torch.no_grad():
        _assert_same_outputs(reference(ids, attention_mask=mask), own(ids, attention_mask=mask))


def test_transformers_4_names_and_position_ids_load(tmp_path):
    """Stable Diffusion 1.5's text_encoder was saved by transformers 4: keys under text_model., with position_ids."""
    folder = _saved(tmp_path, "CLIPTextModel", _text_config())
    state = load_file(folder / "model.safetensors")
    older = {f"text_model.{name}": tensor for name, tensor in state.items()}
    older["text_model.embeddings.position_ids"] = torch.arange(16).unsqueeze(0)
    save_file(older, folder / "model.safetensors")
    reference = transformers.CLIPTextModel.from_pretrained(folder, dtype=torch.float32).eval()
    own = clip.load("CLIPTextModel", folder, None)
    ids, _ = _ids()
    with torch.no_grad():
        _assert_same_outputs(reference(ids), own(ids))


def test_pickle_weights_load_and_save_round_trip(tmp_path):
    folder = _saved(tmp_path / "a", "CLIPVisionModelWithProjection", _vision_config())
    reference = transformers.CLIPVisionModelWithProjection.from_pretrained(folder).eval()
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    own = clip.load("CLIPVisionModelWithProjection", folder, None)
    assert own is not None
    own.save_pretrained(tmp_path / "b")
    again = transformers.CLIPVisionModelWithProjection.from_pretrained(tmp_path / "b").eval()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(pixels).image_embeds, reference(pixels).image_embeds)


@pytest.mark.parametrize("change", ["relu activation", "eager attention", "unknown weight", "missing weight",
                                    "other model type", "no weights"])
def test_folders_it_cannot_read_exactly_are_left_to_transformers(tmp_path, change):
    folder = _saved(tmp_path, "CLIPTextModel", _text_config())
    config = json.loads((folder / "config.json").read_text())
    state = load_file(folder / "model.safetensors")
    if change == "relu activation":
        config["hidden_act"] = "relu"
    elif change == "eager attention":
        config["_attn_implementation"] = "eager"
    elif change == "unknown weight":
        state["extra.weight"] = torch.zeros(2)
    elif change == "missing weight":
        state.pop("final_layer_norm.bias")
    elif change == "other model type":
        config["model_type"] = "siglip_text_model"
    (folder / "config.json").write_text(json.dumps(config))
    save_file(state, folder / "model.safetensors")
    if change == "no weights":
        (folder / "model.safetensors").unlink()
    assert clip.load("CLIPTextModel", folder, None) is None
    assert clip.load("T5EncoderModel", folder, None) is None


# --------------------------------------------------------------------------- tokenizer

_TEXTS = ["a red circle on a blue background", "A  RED\tcircle!!  ", "", "  ", "héllo wörld café ñ 東京 😀",
          "<|startoftext|> x <|endoftext|> y", "it's they're we've I'm you'll he'd", "123 4567 3.14 -- ,,, ???",
          "a " * 40, "word" * 30, "red, green; blue: yellow.", "e\u0301 NFC", "x\n\ny"]


def _texts():
    generator = random.Random(0)
    alphabet = "abc XYZ.,!?'\t\n0123é😀-<>|"
    return _TEXTS + ["".join(generator.choice(alphabet) for _ in range(generator.randint(0, 60))) for _ in range(60)]


def _assert_same_tokens(folder):
    reference = transformers.CLIPTokenizer.from_pretrained(str(folder))
    own = clip_tokenizer.load(folder)
    assert own is not None
    texts = _texts()
    calls = [dict(padding="max_length", max_length=reference.model_max_length, truncation=True, return_tensors="pt"),
             dict(padding="max_length", max_length=7, truncation=True, return_tensors="pt"),
             dict(padding="longest", return_tensors="pt"), dict(add_special_tokens=False), dict()]
    for arguments in calls:
        expected, got = reference(texts, **arguments), own(texts, **arguments)
        for name in ("input_ids", "attention_mask"):
            if arguments.get("return_tensors"):
                assert torch.equal(got[name], expected[name]), (arguments, name)
            else:
                assert got[name] == expected[name], (arguments, name)
        assert own(texts[0], **arguments).input_ids == expected.input_ids[0] if not arguments.get("return_tensors") \
            else torch.equal(own(texts[0], **arguments).input_ids, reference(texts[0], **arguments).input_ids)
    for row in reference(texts, padding="longest", return_tensors="pt").input_ids:
        for skip in (True, False):
            expected = reference.decode(row[2:12], skip_special_tokens=skip)
            assert own.decode(row[2:12], skip_special_tokens=skip) == expected
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "pad_token", "model_max_length"):
        assert getattr(own, name) == getattr(reference, name), name
    assert len(own) == len(reference)
    return own


def test_builtin_model_tokenizer_equals_transformers():
    from sfumato.demo import builtin_model

    _assert_same_tokens(builtin_model("prior") / "tokenizer")


def _older_folder(tmp_path, pad_token):
    """A tokenizer folder as transformers 4 wrote Stable Diffusion's: vocab.json, merges.txt, two token files."""
    tiny_clip_tokenizer(tmp_path / "raw", max_length=16)
    folder = tmp_path / "older"
    folder.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tmp_path / "raw" / name, folder)
    added = {"__type": "AddedToken", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    config = {"add_prefix_space": False, "bos_token": {**added, "content": "<|startoftext|>"}, "do_lower_case": True,
              "eos_token": {**added, "content": "<|endoftext|>"}, "errors": "replace", "model_max_length": 16,
              "name_or_path": "openai/clip-vit-large-patch14", "pad_token": pad_token,
              "special_tokens_map_file": "./special_tokens_map.json", "tokenizer_class": "CLIPTokenizer",
              "unk_token": {**added, "content": "<|endoftext|>"}}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad_token,
               "unk_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    return folder


@pytest.mark.parametrize("pad_token", ["<|endoftext|>", "!"], ids=["sd15", "sdxl-second-tokenizer"])
def test_older_tokenizer_folders_equal_transformers(tmp_path, pad_token):
    own = _assert_same_tokens(_older_folder(tmp_path, pad_token))
    own.save_pretrained(tmp_path / "copy")
    _assert_same_tokens(tmp_path / "copy")


def test_saved_tokenizer_folder_equals_transformers(tmp_path):
    tiny_clip_tokenizer(tmp_path / "raw", max_length=12).save_pretrained(tmp_path / "saved")
    _assert_same_tokens(tmp_path / "saved")


@pytest.mark.parametrize("change", ["left padding", "unknown setting", "no length", "two pad tokens", "added word"])
def test_tokenizer_folders_it_does_not_know_are_left_to_transformers(tmp_path, change):
    folder = _older_folder(tmp_path, "<|endoftext|>")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    if change == "left padding":
        config["padding_side"] = "left"
    elif change == "unknown setting":
        config["strip_accents"] = True
    elif change == "no length":
        config.pop("model_max_length")
    elif change == "two pad tokens":
        config["pad_token"] = "!"
    elif change == "added word":
        config["added_tokens_decoder"] = {"900": {"content": "<cat-toy>", "special": False}}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert clip_tokenizer.load(folder) is None


def test_tokenizer_names_bad_arguments(tmp_path):
    own = clip_tokenizer.load(_older_folder(tmp_path, "<|endoftext|>"))
    with pytest.raises(TypeError, match="text must be a string or a list of strings"):
        own([1, 2])
    with pytest.raises(ValueError, match="return_tensors must be None or 'pt', got 'np'"):
        own("a", return_tensors="np")
    with pytest.raises(ValueError, match="padding='longest'"):
        own(["a", "a b c"], return_tensors="pt")
