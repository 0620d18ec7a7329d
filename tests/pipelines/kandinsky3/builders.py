"""Tiny Kandinsky 3 checkpoints, built with the reference library and saved in its layout.

A Kandinsky 3 folder holds a T5 tokenizer and encoder (Flan-UL2's encoder in the
released model), a ``Kandinsky3UNet``, a DDPM scheduler and a MoVQ. The T5
tokenizer is a real ``T5Tokenizer`` (a Unigram model) over a tiny vocabulary made
here, so nothing is downloaded. The MoVQs downsample 8x like the released one:
the reference sizes its latents for an 8x MoVQ whatever the folder holds.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

from ..kandinsky2_1.builders import WORDS
from ..kandinsky2_2 import builders as v22
from ..kandinsky2_2.builders import _randomize_zero_init, load_both  # noqa: F401  (load_both: same for 3)

CONFIGS = {
    # two UNet levels, attention at the inner level (and at both on the way up, as the reference builds it)
    "small": dict(unet=dict(block_out_channels=(32, 64), layers_per_block=2, groups=4, attention_head_dim=8,
                            time_embedding_dim=16, cross_attention_dim=16),
                  text=dict(d_model=24, d_kv=8, d_ff=48, num_layers=2, num_heads=3),
                  movq_blocks=(32, 32, 32, 32), movq_groups=8, beta_schedule="linear"),
    # four levels as released: no attention at the outermost level either way; three layers per level
    "deep": dict(unet=dict(block_out_channels=(16, 16, 32, 32), layers_per_block=3, groups=4, attention_head_dim=8,
                           time_embedding_dim=16, cross_attention_dim=24),
                 text=dict(d_model=16, d_kv=4, d_ff=40, num_layers=3, num_heads=4),
                 movq_blocks=(32, 32, 32, 32), movq_groups=8, beta_schedule="squaredcos_cap_v2"),
}


def t5_tokenizer():
    """A real ``T5Tokenizer`` over a tiny vocabulary, T5's special tokens where T5 has them.

    ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2; common prompt words are single pieces and every
    ASCII character is a piece with and without the word-start marker, so English prompts
    never fall back to ``<unk>``.
    """
    from transformers import T5Tokenizer

    characters = string.ascii_letters + string.digits + string.punctuation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + word, -3.0 - index / 100) for index, word in enumerate(WORDS)]
    vocab += [("\u2581", -6.0)] + [("\u2581" + c, -8.0) for c in characters] + [(c, -9.0) for c in characters]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def text_encoder(config: dict, vocab_size: int, seed: int = 3):
    """A tiny ``T5EncoderModel`` (gated-SiLU feed-forward, as Flan-UL2), every weight random."""
    from transformers import T5Config, T5EncoderModel

    text = config["text"]
    torch.manual_seed(seed)
    model = T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=text["d_model"], d_kv=text["d_kv"], d_ff=text["d_ff"],
        num_layers=text["num_layers"], num_heads=text["num_heads"], relative_attention_num_buckets=8,
        relative_attention_max_distance=32, dropout_rate=0.0, feed_forward_proj="gated-silu",
        is_encoder_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))
    _randomize_zero_init(model, seed)
    return model.eval()


def unet(config: dict, seed: int = 0):
    """The reference's ``Kandinsky3UNet``, tiny; its time-conditioned norms start at zero, so all are randomised."""
    from diffusers import Kandinsky3UNet

    torch.manual_seed(seed)
    model = Kandinsky3UNet(in_channels=4, encoder_hid_dim=config["text"]["d_model"], **config["unet"])
    _randomize_zero_init(model, seed)
    return model.eval()


def movq(config: dict, seed: int = 1):
    """2.2's tiny MoVQ, its output layer turned down: random latents would otherwise decode to pictures
    mostly clipped to 0 or 1, where differences hide."""
    model = v22.movq(config, seed)
    with torch.no_grad():
        model.decoder.conv_out.weight.mul_(0.2)
        model.decoder.conv_out.bias.mul_(0.2)
    return model


def ddpm(config: dict):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule=config["beta_schedule"], beta_start=0.00085,
                         beta_end=0.012, clip_sample=False, steps_offset=1, prediction_type="epsilon",
                         thresholding=False, variance_type="fixed_small")


def reference_pipeline(config: dict):
    import diffusers

    tokenizer = t5_tokenizer()
    return diffusers.Kandinsky3Pipeline(tokenizer=tokenizer, text_encoder=text_encoder(config, len(tokenizer)),
                                        unet=unet(config), scheduler=ddpm(config), movq=movq(config))


def save_pipeline(folder: Path, config: dict, variant: str | None = None) -> Path:
    """Save a reference ``Kandinsky3Pipeline`` folder; ``variant="fp16"`` saves fp16 weights as that variant."""
    pipe = reference_pipeline(config)
    if variant == "fp16":
        pipe.to(torch.float16)
    pipe.save_pretrained(folder, variant=variant)
    return Path(folder)
