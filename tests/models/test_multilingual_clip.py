"""MultilingualCLIP (Kandinsky 2.1's text encoder): parity with the reference, folders both ways, full-size layout."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
import torch
from diffusers.pipelines.kandinsky import text_encoder as reference_module

import sfumato.models
from sfumato.checkpoint.registry import reference_library, resolve_class
from sfumato.models.multilingual_clip import MCLIPConfig, MultilingualCLIP

TOLERANCE = 1e-5

# the released text_encoder/config.json (M-CLIP XLM-Roberta-Large-Vit-L-14): both spellings of the widths
KANDINSKY_21_TEXT_ENCODER = {
    "architectures": ["MultilingualCLIP"], "attention_probs_dropout_prob": 0.1, "bos_token_id": 0,
    "eos_token_id": 2, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 1024, "imageDimSize": 768,
    "initializer_range": 0.02, "intermediate_size": 4096, "layer_norm_eps": 1e-05, "max_position_embeddings": 514,
    "modelBase": "xlm-roberta-large", "model_type": "M-CLIP", "numDims": 768, "num_attention_heads": 16,
    "num_hidden_layers": 24, "pad_token_id": 1, "position_embedding_type": "absolute", "transformerDimSize": 1024,
    "transformerDimensions": 1024, "type_vocab_size": 1, "use_cache": True, "vocab_size": 250002,
}

# tiny: the text width (40) differs from the projection width (24), so a swapped dimension shows
TINY = dict(transformerDimSize=40, imageDimSize=24, hidden_size=40, intermediate_size=56, num_attention_heads=4,
            num_hidden_layers=2, vocab_size=64, max_position_embeddings=24, type_vocab_size=1, layer_norm_eps=1e-5)


def make_pair(config: dict = TINY, seed: int = 0):
    """The reference's encoder with every weight random (none zero or one) and ours with the same weights."""
    reference = reference_module.MultilingualCLIP(reference_module.MCLIPConfig(**config)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    ours = MultilingualCLIP(MCLIPConfig(**config)).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def make_inputs(lengths=(11, 8, 5), vocab: int = 64, seed: int = 1):
    """Token ids framed by <s> ... </s> and right-padded with <pad> (id 1) to the longest, as the tokenizer gives."""
    generator = torch.Generator().manual_seed(seed)
    tokens = max(lengths)
    input_ids = torch.randint(4, vocab, (len(lengths), tokens), generator=generator)
    attention_mask = torch.ones(len(lengths), tokens, dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, 0], input_ids[row, length - 1] = 0, 2
        input_ids[row, length:], attention_mask[row, length:] = 1, 0
    return input_ids, attention_mask


def max_diff(reference, ours, input_ids, attention_mask) -> tuple[float, float]:
    with torch.no_grad():
        expected = reference(input_ids=input_ids, attention_mask=attention_mask)
        got = ours(input_ids=input_ids, attention_mask=attention_mask)
    assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in expected]
    return tuple((g - e).abs().max().item() for g, e in zip(got, expected))


def test_outputs_match_reference():
    reference, ours = make_pair()
    input_ids, attention_mask = make_inputs()  # padded rows: the mean must skip the padding
    pooled, hidden = max_diff(reference, ours, input_ids, attention_mask)
    assert pooled <= TOLERANCE and hidden <= TOLERANCE
    with torch.no_grad():
        text_embeds, hidden_states = ours(input_ids, attention_mask)
    assert text_embeds.shape == (3, 24) and hidden_states.shape == (3, 11, 40)


def test_padding_does_not_change_the_pooled_embedding():
    _, ours = make_pair()
    input_ids, attention_mask = make_inputs(lengths=(6,))
    padded_ids = torch.cat([input_ids, torch.ones(1, 5, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([attention_mask, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    with torch.no_grad():
        short, _ = ours(input_ids, attention_mask)
        long, _ = ours(padded_ids, padded_mask)
        unmasked, _ = ours(input_ids)  # no mask: every token counts
    assert (short - long).abs().max() <= TOLERANCE
    assert torch.equal(unmasked, short)


def test_reference_folder_loads_in_ours_and_ours_loads_in_reference(tmp_path):
    reference, _ = make_pair(seed=3)
    inputs = make_inputs()
    reference.save_pretrained(tmp_path / "theirs")
    ours = MultilingualCLIP.from_pretrained(tmp_path / "theirs").eval()
    assert isinstance(ours.config, MCLIPConfig)
    assert (ours.config.transformerDimensions, ours.config.numDims) == (40, 24)
    assert max(max_diff(reference, ours, *inputs)) <= TOLERANCE

    ours.save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["model_type"] == "M-CLIP" and saved["architectures"] == ["MultilingualCLIP"]
    assert (saved["transformerDimensions"], saved["numDims"]) == (40, 24)
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["config.json", "model.safetensors"]
    reloaded = reference_module.MultilingualCLIP.from_pretrained(tmp_path / "ours").eval()
    assert type(reloaded.config) is reference_module.MCLIPConfig
    assert max(max_diff(reloaded, ours, *inputs)) <= TOLERANCE


def test_config_names_follow_the_reference():
    # constructor names, stored names, and a released config.json that has both (the stored ones win)
    for kwargs in ({"transformerDimSize": 40, "imageDimSize": 24}, {"transformerDimensions": 40, "numDims": 24},
                   {"transformerDimSize": 8, "imageDimSize": 8, "transformerDimensions": 40, "numDims": 24}):
        ours, theirs = MCLIPConfig(**kwargs), reference_module.MCLIPConfig(**kwargs)
        assert (ours.transformerDimensions, ours.numDims) == (theirs.transformerDimensions, theirs.numDims) == (40, 24)
    released = MCLIPConfig.from_dict(KANDINSKY_21_TEXT_ENCODER)
    assert (released.transformerDimensions, released.numDims, released.hidden_size) == (1024, 768, 1024)
    defaults = MCLIPConfig()
    assert (defaults.transformerDimensions, defaults.numDims) == (1024, 768)
    assert MCLIPConfig.model_type == reference_module.MCLIPConfig.model_type == "M-CLIP"


def test_full_size_layout_matches_reference():
    config = {k: v for k, v in KANDINSKY_21_TEXT_ENCODER.items() if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        reference = reference_module.MultilingualCLIP(reference_module.MCLIPConfig(**config))
        ours = MultilingualCLIP(MCLIPConfig(**config))
    expected = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    got = {key: tuple(value.shape) for key, value in ours.state_dict().items()}
    assert got == expected
    assert list(got) == list(expected)
    assert got["transformer.embeddings.word_embeddings.weight"] == (250002, 1024)
    assert got["transformer.embeddings.position_embeddings.weight"] == (514, 1024)
    assert got["LinearTransformation.weight"] == (768, 1024)
    assert sum(1 for key in got if key.endswith("attention.self.query.weight")) == 24


def test_bad_input_is_named():
    _, ours = make_pair()
    input_ids, attention_mask = make_inputs()
    with pytest.raises(ValueError, match="input_ids must have shape"):
        ours(input_ids[0], attention_mask[0])
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        ours(input_ids, attention_mask[:, :4])


def test_model_index_entry_resolves_to_ours():
    assert resolve_class("kandinsky", "MultilingualCLIP") is MultilingualCLIP
    assert resolve_class("diffusers", "MultilingualCLIP") is MultilingualCLIP
    assert reference_library("MultilingualCLIP") == "kandinsky"
    assert reference_library("UNet2DConditionModel") == "diffusers"


def test_pipeline_writes_the_references_entry():
    from sfumato.pipelines.base import _library_and_class

    _, ours = make_pair()
    assert _library_and_class(ours) == ("kandinsky", "MultilingualCLIP")


def test_import_is_lazy():
    code = ("import sys, sfumato\n"
            "assert 'transformers' not in sys.modules and 'sfumato.models.multilingual_clip' not in sys.modules\n"
            "assert 'MultilingualCLIP' in sfumato.__all__ and 'MCLIPConfig' in sfumato.__all__\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_module_needs_no_diffusers(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # any ``import diffusers`` now fails
    # import it afresh; monkeypatch puts the first module back afterwards
    monkeypatch.delitem(sys.modules, "sfumato.models.multilingual_clip", raising=False)
    monkeypatch.delattr(sfumato.models, "multilingual_clip", raising=False)
    module = importlib.import_module("sfumato.models.multilingual_clip")
    assert module.MultilingualCLIP is not MultilingualCLIP  # really imported afresh
    assert module.MCLIPConfig.model_type == "M-CLIP"
