"""The shapes of the built-in demo model: a Kandinsky 2.2 small enough to train on a laptop CPU.

Every part of the real Kandinsky 2.2 is here, in the same classes, config
fields and checkpoint layout, only narrower and shallower, for 64 x 64
pictures of the procedural data set (:mod:`sfumato.demo.data`):

===================  ==============================================  ============================  ==========
component            class                                           role                          parameters
===================  ==============================================  ============================  ==========
``movq``             :class:`sfumato.VQModel` (spatial norm)         64 x 64 RGB <-> 4 x 8 x 8     0.87 M
``movq`` inpaint     same, three levels, no attention                64 x 64 RGB <-> 4 x 16 x 16   0.71 M
``text_encoder``     ``transformers.CLIPTextModelWithProjection``    caption -> tokens + vector    0.16 M
``tokenizer``        ``transformers.CLIPTokenizer``                  one token per caption word
``image_encoder``    ``transformers.CLIPVisionModelWithProjection``  picture -> CLIP vector        0.17 M
``image_processor``  ``transformers.CLIPImageProcessor``             PIL -> CLIP pixels
``prior``            :class:`sfumato.PriorTransformer`               text -> image embedding       0.49 M
``unet`` decoder     :class:`sfumato.UNet2DConditionModel`           image embedding -> latents    2.15 M
``unet`` inpaint     same, ``in_channels=9``, on 16 x 16 latents     + kept picture and mask       2.15 M
``unet`` control     same, ``addition_embed_type="image_hint"``      + a silhouette hint           2.51 M
===================  ==============================================  ============================  ==========

The functions here only *build* untrained parts (``build_untrained``); the
training lives in :mod:`sfumato.demo.train`. Sizes were chosen so that all four
shipped pipeline folders fit in about 20 MB as fp16 and the whole training
runs in under an hour on two CPU cores (19.4 MiB of weights as shipped; the times are in
:mod:`sfumato.demo.train`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .data import COLOURS, SHAPES

#: Side of the pictures the demo model makes, in pixels.
IMAGE_SIZE = 64
#: The MoVQ downsamples 8x like the real one, so latents are 4 x 8 x 8 and the
#: ControlNet hint network (which always downsamples 8x) takes the 64 x 64 hint.
LATENT_CHANNELS = 4
LATENT_SIZE = IMAGE_SIZE // 8
#: The inpainting folder's MoVQ downsamples only 4x (4 x 16 x 16 latents). The
#: 2.2 inpainting pipeline regenerates every latent pixel the mask touches and
#: one more around it (``prepare_mask``), and the MoVQ decodes each latent into
#: a patch of this side: at 8x that repaints up to 16 kept pixels beside the
#: mask, at 4x up to 8, and the kept region decodes from four times as many
#: kept latents.
INPAINT_DOWNSAMPLING = 4
INPAINT_LATENT_SIZE = IMAGE_SIZE // INPAINT_DOWNSAMPLING
#: Width of CLIP embeddings. The 2.2 prior reads the text encoder's hidden
#: states, its pooled projection and the image embedding at one width, so the
#: text encoder's hidden size, both projections and the prior's
#: ``embedding_dim`` are all this.
EMBED_DIM = 64
#: Tokens per prompt (the tokenizer's ``model_max_length`` and the prior's
#: ``num_embeddings``): a caption is 7 words plus start and end tokens; the
#: rest leaves room for other phrasings.
MAX_TOKENS = 20
#: The words of the data set's captions, each one token. Other words still
#: tokenize, letter by letter.
CAPTION_WORDS: tuple[str, ...] = ("a", "an", "on", "background", *COLOURS, *SHAPES)

# OpenAI CLIP's pixel statistics, which every Kandinsky image processor uses.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

PARTS: tuple[str, ...] = (
    "movq", "inpaint_movq", "text_encoder", "image_encoder", "prior", "decoder_unet", "inpaint_unet", "controlnet_unet",
)


# --------------------------------------------------------------------------- configs


def movq_config(downsampling: int = 8) -> dict[str, Any]:
    """The MoVQ (``VQModel``) config, spatial norm in the decoder; ``downsampling`` is 8 or 4.

    8: four levels, attention at the lowest (the text-to-image and ControlNet
    folders). 4: three levels and no attention anywhere (the inpainting
    folder), so that a latent reaches only the pixels near it and a repainted
    region changes the kept one as little as the convolutions allow.

    Widths are multiples of 32 because the reference's ``SpatialNorm`` always
    uses 32 groups, whatever ``norm_num_groups`` says; with other widths the
    folder would load in sfumato but not in diffusers.
    """
    if downsampling == 8:
        levels = {
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
            "up_block_types": ["AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
            "block_out_channels": [32, 32, 32, 64],
        }
    elif downsampling == 4:
        levels = {
            "down_block_types": ["DownEncoderBlock2D"] * 3,
            "up_block_types": ["UpDecoderBlock2D"] * 3,
            "block_out_channels": [32, 32, 64],
            "mid_block_add_attention": False,
        }
    else:
        raise ValueError(f"downsampling must be 8 or 4, got {downsampling!r}")
    return {
        "in_channels": 3,
        "out_channels": 3,
        **levels,
        "layers_per_block": 1,
        "act_fn": "silu",
        "latent_channels": LATENT_CHANNELS,
        "vq_embed_dim": LATENT_CHANNELS,
        "num_vq_embeddings": 256,
        "norm_num_groups": 32,
        "norm_type": "spatial",
        "sample_size": IMAGE_SIZE,
        "scaling_factor": 1.0,
    }


def unet_config(kind: str = "decoder") -> dict[str, Any]:
    """The decoder UNet config in the 2.2 layout; ``kind`` is ``decoder``, ``inpaint`` or ``controlnet``.

    Like the real decoder it predicts noise and a learned variance
    (``out_channels=8``): the reference pipelines split the output in two
    whenever they guide, so a 4-channel UNet would fail there.
    """
    _check_kind(kind)
    config = {
        "sample_size": LATENT_SIZE,
        "in_channels": LATENT_CHANNELS,
        "out_channels": 2 * LATENT_CHANNELS,
        "down_block_types": ["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
        "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
        "up_block_types": ["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
        "block_out_channels": [64, 96],
        "layers_per_block": 1,
        "norm_num_groups": 32,
        "attention_head_dim": 32,
        "cross_attention_dim": 64,
        "encoder_hid_dim": EMBED_DIM,
        "encoder_hid_dim_type": "image_proj",
        "addition_embed_type": "image",
        "resnet_time_scale_shift": "scale_shift",
        "time_embedding_dim": 128,
        "act_fn": "silu",
    }
    if kind == "inpaint":
        # noisy latents + the kept picture's latents + the keep mask, as KandinskyV22InpaintPipeline feeds it,
        # in the 4x MoVQ's latent space
        config["in_channels"] = 2 * LATENT_CHANNELS + 1
        config["sample_size"] = INPAINT_LATENT_SIZE
    elif kind == "controlnet":
        # the hint network turns the 64 x 64 hint into 4 channels at latent size, concatenated to the latents
        config["in_channels"] = 2 * LATENT_CHANNELS
        config["addition_embed_type"] = "image_hint"
    return config


def prior_config() -> dict[str, Any]:
    """The ``PriorTransformer`` config: the 2.2 prior's fields, at width :data:`EMBED_DIM`."""
    return {
        "num_attention_heads": 4,
        "attention_head_dim": 24,
        "num_layers": 4,
        "embedding_dim": EMBED_DIM,
        "num_embeddings": MAX_TOKENS,
        "additional_embeddings": 4,
        "dropout": 0.0,
        "time_embed_act_fn": "silu",
        "norm_in_type": None,
        "embedding_proj_norm_type": None,
        "encoder_hid_proj_type": "linear",
        "added_emb_type": "prd",
    }


def text_encoder_config(vocab_size: int, bos_token_id: int, eos_token_id: int):
    """``CLIPTextConfig`` of the text encoder (pooled at the end token, projected to :data:`EMBED_DIM`)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=EMBED_DIM, intermediate_size=4 * EMBED_DIM, projection_dim=EMBED_DIM,
        num_hidden_layers=3, num_attention_heads=2, max_position_embeddings=MAX_TOKENS, hidden_act="quick_gelu",
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=eos_token_id,
    )


def image_encoder_config():
    """``CLIPVisionConfig`` of the image encoder: a ViT over 8 x 8 patches of the 64 x 64 picture."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=64, intermediate_size=256, projection_dim=EMBED_DIM, num_hidden_layers=3, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=8, hidden_act="quick_gelu",
    )


def decoder_scheduler_config() -> dict[str, Any]:
    """``DDPMScheduler`` config of the decoders: trained with it, and shipped in their folders.

    The noise schedule is the real 2.2 decoder's. (A cosine schedule would end
    at alpha_bar ~ 2e-9, where turning a predicted noise into a picture divides
    by sqrt(alpha_bar): any error of the UNet would be magnified 20000 times in
    the first sampling step.) Sampling uses the learned variance
    (``learned_range``), which gave cleaner shapes at 25 steps than DDIM did;
    ``trailing`` spacing starts every run at the last, noisiest step.
    """
    return {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.00085, "beta_end": 0.012,
            "prediction_type": "epsilon", "clip_sample": False, "variance_type": "learned_range",
            "timestep_spacing": "trailing"}


def prior_scheduler_config() -> dict[str, Any]:
    """``UnCLIPScheduler`` config of the prior: predicts the clean (normalised) image embedding."""
    return {"num_train_timesteps": 1000, "variance_type": "fixed_small_log", "clip_sample": True,
            "clip_sample_range": 10.0, "prediction_type": "sample", "beta_schedule": "squaredcos_cap_v2"}


# --------------------------------------------------------------------------- builders


def build_tokenizer(folder: str | Path):
    """Write a word-level CLIP BPE vocabulary to ``folder`` and load it as a real ``CLIPTokenizer``.

    The vocabulary holds every lowercase letter, digit and a little
    punctuation (so any prompt tokenizes) plus merges that join each caption
    word into one token. The files are the standard ``vocab.json`` and
    ``merges.txt``; ``save_pretrained`` adds the rest.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    merges: list[tuple[str, str]] = []
    for word in CAPTION_WORDS:
        # BPE applies the best-ranked merge first, so one word's merges can
        # split another ("r e" of "red" inside "green"). Adding, for each word,
        # the merge of its first two pieces as the worst-ranked merge until it is
        # one piece keeps every earlier word whole (its merges all outrank it).
        while len(pieces := _bpe(word, merges)) > 1:
            merges.append((pieces[0], pieces[1]))
            tokens.append(pieces[0] + pieces[1])
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=0), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(pair) for pair in merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_TOKENS)
    for word in CAPTION_WORDS:
        pieces = tokenizer.tokenize(word)
        if pieces != [word + "</w>"]:  # a merge order that splits a word would weaken the text encoder
            raise RuntimeError(f"the demo vocabulary splits {word!r} into {pieces}")
    return tokenizer


def _bpe(word: str, merges: list[tuple[str, str]]) -> list[str]:
    """The pieces CLIP's BPE splits ``word`` into with ``merges`` (earlier = better ranked)."""
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [(ranks.get(pair, len(ranks)), index) for index, pair in enumerate(zip(pieces, pieces[1:]))]
        rank, index = min(pairs)
        if rank == len(ranks):
            break
        pieces[index: index + 2] = [pieces[index] + pieces[index + 1]]
    return pieces


def build_image_processor():
    """The ``CLIPImageProcessor``: 64 x 64, bicubic, OpenAI CLIP normalisation (as Kandinsky's)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": IMAGE_SIZE}, resample=3, do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True,
    )


def build_untrained(part: str, seed: int = 0, tokenizer=None) -> torch.nn.Module:
    """A freshly initialised ``part`` (one of :data:`PARTS`), the same for the same ``seed``.

    ``text_encoder`` needs the ``tokenizer`` (from :func:`build_tokenizer`)
    for its vocabulary size and special tokens.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}; got {part!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    torch.manual_seed(seed)
    if part == "movq":
        from ..models.vq_model import VQModel

        return VQModel(**movq_config())
    if part == "inpaint_movq":
        from ..models.vq_model import VQModel

        return VQModel(**movq_config(INPAINT_DOWNSAMPLING))
    if part == "prior":
        from ..models.prior_transformer import PriorTransformer

        prior = PriorTransformer(**prior_config())
        # The reference initialises these to zeros, which would make the
        # untrained prior's outputs all equal; training overwrites them with
        # the CLIP image-embedding statistics.
        with torch.no_grad():
            prior.clip_std.fill_(1.0)
        return prior
    if part.endswith("_unet"):
        from ..models.unet_2d_condition import UNet2DConditionModel

        return UNet2DConditionModel(**unet_config(part[: -len("_unet")]))
    if part == "text_encoder":
        from transformers import CLIPTextModelWithProjection

        if tokenizer is None:
            raise ValueError("tokenizer must be given to build the text_encoder (its vocabulary sets the sizes), got None")
        config = text_encoder_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
        return CLIPTextModelWithProjection(config)
    from transformers import CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(image_encoder_config())


def initialise_from_decoder(unet: torch.nn.Module, decoder: torch.nn.Module) -> torch.nn.Module:
    """Copy a trained text-to-image decoder into an inpaint or ControlNet UNet of the same widths.

    Everything with the same name and shape is copied. ``conv_in`` gets the
    decoder's weights for the latent channels and zeros for the extra ones
    (masked-picture latents and mask, or hint features), so the new UNet
    starts out exactly as the decoder and learns to use its extra inputs.
    Parts the decoder lacks (the hint network) keep their fresh initialisation.
    """
    source = decoder.state_dict()
    target = unet.state_dict()
    for name, tensor in target.items():
        if name in source and source[name].shape == tensor.shape:
            target[name] = source[name].clone()
    weight = torch.zeros_like(target["conv_in.weight"])
    weight[:, : source["conv_in.weight"].shape[1]] = source["conv_in.weight"]
    target["conv_in.weight"] = weight
    unet.load_state_dict(target)
    return unet


def parameter_count(module: torch.nn.Module) -> int:
    """Number of parameters of ``module`` (buffers not counted)."""
    return sum(parameter.numel() for parameter in module.parameters())


def _check_kind(kind: str) -> None:
    kinds = ("decoder", "inpaint", "controlnet")
    if kind not in kinds:
        raise ValueError(f"kind must be one of {', '.join(kinds)}; got {kind!r}")


__all__ = [
    "CAPTION_WORDS",
    "EMBED_DIM",
    "IMAGE_SIZE",
    "INPAINT_DOWNSAMPLING",
    "INPAINT_LATENT_SIZE",
    "LATENT_CHANNELS",
    "LATENT_SIZE",
    "MAX_TOKENS",
    "PARTS",
    "build_image_processor",
    "decoder_scheduler_config",
    "build_tokenizer",
    "build_untrained",
    "image_encoder_config",
    "initialise_from_decoder",
    "movq_config",
    "parameter_count",
    "prior_config",
    "prior_scheduler_config",
    "text_encoder_config",
    "unet_config",
]
