"""CLIP's tokenizer on the tokenizers library, read from transformers' folders without importing transformers.

The companion of :mod:`sfumato.models.clip` for ``fast_start=True`` loading.
It builds the tokenizer transformers 5's ``CLIPTokenizer`` builds (byte-level
BPE with ``</w>`` word ends; NFC, whitespace folding and lower case; CLIP's
word-splitting pattern; ``<|startoftext|> ... <|endoftext|>`` around each
text) from the folder's vocabulary and merges, and answers the calls the
pipelines make: ``tokenizer(texts, padding=..., max_length=..., truncation=...,
return_tensors="pt")``, ``decode`` and the special tokens. Its ids are equal to
transformers' (``tests/models/test_clip.py``). :func:`load` returns ``None`` for
a folder with settings it does not know, and the caller loads transformers'.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..outputs import BaseOutput

# CLIP's word pattern: its special tokens, English contractions, runs of letters, single digits, other symbols
_WORDS = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_END_OF_WORD = "</w>"
_SPECIAL = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>"}
# tokenizer_config.json keys that do not change what the calls above return
_HARMLESS = {"add_prefix_space", "clean_up_tokenization_spaces", "errors", "do_lower_case", "backend",
             "tokenizer_class", "added_tokens_decoder", "model_max_length", "model_input_names", "name_or_path",
             "processor_class", "extra_special_tokens", "additional_special_tokens", "auto_map", "padding_side",
             "truncation_side", "_commit_hash", "split_special_tokens", "is_local",
             "special_tokens_map_file"} | set(_SPECIAL)
_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


@dataclass
class Encoding(BaseOutput):
    """transformers' ``BatchEncoding`` as far as the pipelines read it: by attribute or key."""

    input_ids: Any
    attention_mask: Any = None


class CLIPTokenizer:
    """transformers' ``CLIPTokenizer``: texts -> token ids, padded and cut as asked."""

    # the folder format names transformers' class of the same name
    _reference_library = "transformers"

    def __init__(self, backend: Any, special: dict[str, str], model_max_length: int, folder: Path):
        self._backend = backend
        self._folder = folder
        self.model_max_length = model_max_length
        for name, token in special.items():
            setattr(self, name, token)
            setattr(self, f"{name}_id", backend.token_to_id(token))

    def __len__(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=False)

    def __call__(self, text: str | list[str], padding: bool | str = False, truncation: bool | str | None = None,
                 max_length: int | None = None, return_tensors: str | None = None,
                 return_attention_mask: bool | None = None, add_special_tokens: bool = True) -> Encoding:
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError(f"text must be a string or a list of strings, got {text!r:.80}")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be None or 'pt', got {return_tensors!r}")
        length = max_length if max_length is not None else self.model_max_length
        backend = self._backend
        if truncation in (True, "longest_first", "only_first"):
            backend.enable_truncation(length)
        else:
            backend.no_truncation()
        if padding == "max_length":
            backend.enable_padding(length=length, pad_id=self.pad_token_id, pad_token=self.pad_token)
        elif padding in (True, "longest"):
            backend.enable_padding(pad_id=self.pad_token_id, pad_token=self.pad_token)
        else:
            backend.no_padding()
        encodings = backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        ids = [e.ids for e in encodings]
        masks = [e.attention_mask for e in encodings]
        if return_tensors == "pt":
            if len({len(row) for row in ids}) > 1:
                raise ValueError("texts of different lengths cannot make one tensor; pass padding='longest'")
            ids, masks = torch.tensor(ids, dtype=torch.long), torch.tensor(masks, dtype=torch.long)
        elif single:
            ids, masks = ids[0], masks[0]
        return Encoding(input_ids=ids, attention_mask=None if return_attention_mask is False else masks)

    def decode(self, token_ids: Any, skip_special_tokens: bool = False, **_: Any) -> str:
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.tolist()
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        text = self._backend.decode(list(token_ids), skip_special_tokens=skip_special_tokens)
        return text.replace(_END_OF_WORD, " ").strip()

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False, **kwargs: Any) -> list[str]:
        return [self.decode(ids, skip_special_tokens=skip_special_tokens, **kwargs) for ids in sequences]

    def save_pretrained(self, save_directory: str | Path, **_: Any) -> None:
        """The folder it was read from, file for file (transformers reads it back as its ``CLIPTokenizer``)."""
        target = Path(save_directory)
        target.mkdir(parents=True, exist_ok=True)
        for name in _FILES:
            if (self._folder / name).is_file():
                shutil.copyfile(self._folder / name, target / name)


def load(folder: Path) -> CLIPTokenizer | None:
    """The ``CLIPTokenizer`` saved in ``folder``, or ``None`` where transformers should read it."""
    try:
        config = _json(folder / "tokenizer_config.json")
        map_file = folder / "special_tokens_map.json"
        special_map = _json(map_file) if map_file.is_file() else {}
        vocab_merges = _vocab_and_merges(folder)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if vocab_merges is None or not isinstance(config, dict) or set(config) - _HARMLESS:
        return None
    if config.get("tokenizer_class", "CLIPTokenizer") not in ("CLIPTokenizer", "CLIPTokenizerFast") \
            or config.get("padding_side", "right") != "right" or config.get("truncation_side", "right") != "right" \
            or config.get("additional_special_tokens") or config.get("extra_special_tokens") \
            or not isinstance(config.get("model_max_length"), int):
        return None
    special = {}
    for name, default in _SPECIAL.items():
        tokens = {_content(source[name]) for source in (config, special_map) if source.get(name) is not None}
        if len(tokens) > 1 or None in tokens:  # which file wins is transformers' business
            return None
        special[name] = tokens.pop() if tokens else default
    vocab, merges = vocab_merges
    if any(token not in vocab for token in special.values()):
        return None
    backend = _backend(vocab, merges, special)
    if not _added_tokens_agree(folder, config, backend):
        return None
    return CLIPTokenizer(backend, special, config["model_max_length"], folder)


def _backend(vocab: dict[str, int], merges: list[tuple[str, str]], special: dict[str, str]) -> Any:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    backend = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                            end_of_word_suffix=_END_OF_WORD, fuse_unk=False, unk_token=special["unk_token"]))
    backend.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                               normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_WORDS), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                for token in dict.fromkeys(special.values())])
    eos, bos = special["eos_token"], special["bos_token"]
    backend.post_processor = processors.RobertaProcessing((eos, vocab[eos]), (bos, vocab[bos]), False, False)
    return backend


def _vocab_and_merges(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]]] | None:
    if (folder / "tokenizer.json").is_file():
        model = _json(folder / "tokenizer.json")["model"]
        if model.get("type") != "BPE" or model.get("end_of_word_suffix") != _END_OF_WORD:
            return None
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        return dict(model["vocab"]), merges  # type: ignore[return-value]
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
        return dict(_json(folder / "vocab.json")), merges  # type: ignore[return-value]
    return None


def _added_tokens_agree(folder: Path, config: dict, backend: Any) -> bool:
    """Tokens the folder adds beyond the special ones are transformers' to handle; the special ones must sit
    at the ids the folder gives them."""
    added: dict[str, int] = {}
    for token_id, token in (config.get("added_tokens_decoder") or {}).items():
        added[_content(token)] = int(token_id)
    if (folder / "tokenizer.json").is_file():
        for token in _json(folder / "tokenizer.json").get("added_tokens") or []:
            added[token["content"]] = int(token["id"])
    return all(backend.token_to_id(token) == token_id for token, token_id in added.items())


def _content(token: Any) -> str | None:
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else None


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


__all__ = ["CLIPTokenizer", "Encoding", "load"]
