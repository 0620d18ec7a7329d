"""Tiny tokenizers and transformers encoders, built on the fly (nothing is downloaded)."""

import json
import string
from pathlib import Path

import torch


def clip_tokenizer(folder: Path, max_length: int = 77):
    """A real ``CLIPTokenizer`` over a character-level vocabulary (plus a few merges)."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(string.ascii_lowercase + string.digits + ".,!?'-")
    tokens = symbols + [s + "</w>" for s in symbols]
    merges = ["a n", "o n", "r e", "e d</w>", "i n", "c i"]
    tokens += [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    return tokenizer


def clip_text_model(vocab_size: int, hidden: int = 32, projection: int = 32, max_positions: int = 77, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, projection_dim=projection,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=max_positions,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )
    return CLIPTextModelWithProjection(config).eval()
