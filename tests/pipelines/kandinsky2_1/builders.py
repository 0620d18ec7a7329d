"""Tiny Kandinsky 2.1 checkpoints, built with the reference library and saved in its layout.

A 2.1 decoder folder holds a multilingual text encoder (``MultilingualCLIP``: XLM-RoBERTa +
projection) with its XLM-RoBERTa tokenizer, a UNet conditioned on text and image
(``text_image_proj`` / ``text_image``), a DDIM scheduler and a MoVQ. The prior folder is
laid out as 2.2's (CLIP text and image towers, ``PriorTransformer``, ``UnCLIPScheduler``),
saved as a ``KandinskyPriorPipeline``.

Widths must agree across the two: the UNet's ``cross_attention_dim`` is the width of the
image embeddings (the prior's ``embedding_dim``) and of the pooled text embedding (the text
encoder's ``numDims``). Decoder and prior configs of the same name fit together.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

from ..kandinsky2_2 import builders as v22
from ..kandinsky2_2.builders import _randomize_zero_init, load_both, movq  # noqa: F401  (load_both: same for 2.1)

# image_embed_dim: the prior's embedding_dim (and the UNet's cross_attention_dim); text_dim: XLM-RoBERTa width
DECODER_CONFIGS = {
    "small": dict(block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=4, image_embed_dim=32,
                  text_dim=40, text_heads=4, movq_blocks=(32, 64), movq_groups=8),
    "wide": dict(block_out_channels=(32, 32, 64), layers_per_block=2, attention_head_dim=8, image_embed_dim=24,
                 text_dim=48, text_heads=6, movq_blocks=(32, 32, 64), movq_groups=8),
}
PRIOR_CONFIGS = v22.PRIOR_CONFIGS
assert all(DECODER_CONFIGS[name]["image_embed_dim"] == PRIOR_CONFIGS[name]["embed_dim"] for name in DECODER_CONFIGS)

# the 2.1 pipelines pad prompts to 77 tokens; XLM-RoBERTa positions start after the padding index (1)
TEXT_POSITIONS = 77 + 2

# the released kandinsky-2-1 scheduler/scheduler_config.json (the reference's 2.1 tests use the same)
DDIM_CONFIG = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                   clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
                   thresholding=False)

# words that get one token each (the rest is spelled out by characters, so nothing maps to <unk>)
WORDS = ("a an the of and with in on at by for from to is red blue green yellow black white orange purple cat "
         "dog horse bird fox house tree city sky sea forest mountain flower portrait photo painting picture "
         "beautiful old young small big dark light night day sunset fantasy cinematic lighting detailed high "
         "quality low bad blurry 4k 8k art style oil watercolor alien cheeseburger creature eating itself "
         "claymation moody").split()


def xlm_roberta_tokenizer(model_max_length: int = 512):
    """A real ``XLMRobertaTokenizer`` (a SentencePiece-style Unigram model) over a tiny vocabulary.

    Special tokens sit where XLM-RoBERTa has them (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2,
    ``<unk>`` 3, ``<mask>`` last). Common prompt words are single pieces; every ASCII
    character is a piece with and without the word-start marker, so English prompts
    never fall back to ``<unk>``.
    """
    from transformers import XLMRobertaTokenizer

    characters = string.ascii_letters + string.digits + string.punctuation
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + word, -3.0 - index / 100) for index, word in enumerate(WORDS)]
    vocab += [("\u2581", -6.0)] + [("\u2581" + c, -8.0) for c in characters] + [(c, -9.0) for c in characters]
    vocab.append(("<mask>", 0.0))
    return XLMRobertaTokenizer(vocab=vocab, model_max_length=model_max_length)


def text_encoder(config: dict, vocab_size: int, seed: int = 3):
    """The reference's ``MultilingualCLIP``, tiny, every weight random."""
    from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig, MultilingualCLIP

    torch.manual_seed(seed)
    model = MultilingualCLIP(MCLIPConfig(
        transformerDimSize=config["text_dim"], imageDimSize=config["image_embed_dim"],
        hidden_size=config["text_dim"], intermediate_size=config["text_dim"] * 2,
        num_attention_heads=config["text_heads"], num_hidden_layers=2, vocab_size=vocab_size,
        max_position_embeddings=TEXT_POSITIONS, type_vocab_size=1, layer_norm_eps=1e-5,
        pad_token_id=1, bos_token_id=0, eos_token_id=2,
    ))
    _randomize_zero_init(model, seed)
    return model.eval()


def unet(config: dict, kind: str = "text2img", seed: int = 0):
    from diffusers import UNet2DConditionModel

    blocks = config["block_out_channels"]
    levels = len(blocks)
    torch.manual_seed(seed)
    model = UNet2DConditionModel(
        in_channels={"text2img": 4, "inpaint": 9}[kind], out_channels=8,
        addition_embed_type="text_image", encoder_hid_dim_type="text_image_proj",
        encoder_hid_dim=config["text_dim"], cross_attention_dim=config["image_embed_dim"],
        down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("SimpleCrossAttnUpBlock2D",) * (levels - 1) + ("ResnetUpsampleBlock2D",),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=blocks,
        layers_per_block=config["layers_per_block"], attention_head_dim=config["attention_head_dim"],
        resnet_time_scale_shift="scale_shift", class_embed_type=None, norm_num_groups=8,
    )
    _randomize_zero_init(model, seed)
    return model.eval()


def ddim():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**DDIM_CONFIG)


def save_decoder(folder: Path, config: dict, kind: str = "text2img") -> Path:
    """Save a reference 2.1 decoder pipeline: ``KandinskyPipeline`` (text2img, also img2img) or the inpaint one."""
    import diffusers

    cls = {"text2img": diffusers.KandinskyPipeline, "inpaint": diffusers.KandinskyInpaintPipeline}[kind]
    tokenizer = xlm_roberta_tokenizer()
    pipe = cls(text_encoder=text_encoder(config, len(tokenizer)), tokenizer=tokenizer, unet=unet(config, kind),
               scheduler=ddim(), movq=movq(config))
    pipe.save_pretrained(folder)
    return folder


def save_prior(folder: Path, config: dict, seed: int = 2) -> Path:
    """Save a reference ``KandinskyPriorPipeline``: the 2.2 prior's components (2.1's prior has the same parts)."""
    import diffusers

    folder = Path(folder)
    staging = v22.save_prior(folder.parent / f"{folder.name}-v22", config, seed=seed)
    parts = diffusers.KandinskyV22PriorPipeline.from_pretrained(staging).components
    diffusers.KandinskyPriorPipeline(**parts).save_pretrained(folder)
    return folder


def save_combined(folder: Path, decoder_folder: Path, prior_folder: Path) -> Path:
    """A decoder folder whose model card names its prior, as the hub repos do (what combined pipelines load)."""
    import shutil

    shutil.copytree(decoder_folder, folder)
    (Path(folder) / "README.md").write_text(f"---\nprior:\n- {prior_folder}\n---\n# decoder\n")
    return Path(folder)
