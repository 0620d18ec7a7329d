"""CLIP's text and vision towers, read from transformers' folders without importing transformers.

Importing transformers' CLIP costs seconds (about 3.5 s on a slow 2-core
host, more than the built-in model needs to make a picture), so loading with
``fast_start=True`` reads the CLIP parts of a checkpoint with these modules
instead. They are the same networks with the same parameter names and the
same operations in the same order as transformers 5 (scaled-dot-product
attention, causal for text), so their outputs are equal to transformers' bit
for bit on the same machine; ``tests/models/test_clip.py`` checks that.

Only what the pipelines use is here: the towers (``CLIPTextModel``,
``CLIPTextModelWithProjection``, ``CLIPVisionModel``,
``CLIPVisionModelWithProjection``) called with ids or pixels, an optional
padding mask and ``output_hidden_states``. :func:`load` returns ``None`` for
anything else (another activation, an ``attn_implementation`` other than
SDPA, weights that do not match), and the caller loads transformers' class.

    tokens -> embeddings -> pre-norm encoder layers -> final norm -> states
                                                          | the end-of-text token's state
                                                          v
                                                   text_projection -> text_embeds
    pixels -> patches + class token -> pre-norm -> encoder -> class token -> post-norm
                                                          -> visual_projection -> image_embeds
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint.config import FrozenDict
from ..checkpoint.derived import mark_source
from ..checkpoint.errors import CheckpointError
from ..checkpoint.weights import find_weights, read_state_dict, with_variant, write_state_dict
from ..nn.embeddings import lookup_table
from ..outputs import BaseOutput


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# config.hidden_act -> the function transformers applies for it
ACTIVATIONS = {"quick_gelu": _quick_gelu, "gelu": F.gelu, "gelu_pytorch_tanh": _gelu_tanh}

# transformers' defaults for the fields a CLIP config may leave out
_TEXT_DEFAULTS = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "projection_dim": 512,
                  "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
                  "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 49406,
                  "eos_token_id": 49407}
_VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "projection_dim": 512, "num_hidden_layers": 12,
                    "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
                    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}


@dataclass
class TowerOutput(BaseOutput):
    """``CLIPTextModel`` / ``CLIPVisionModel``: every token's state and the pooled one (end token, class token)."""

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None  # the embeddings and every layer's output


@dataclass
class TextEmbedsOutput(BaseOutput):
    """``CLIPTextModelWithProjection``: the projected end token first, then the token states."""

    text_embeds: torch.Tensor
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class ImageEmbedsOutput(BaseOutput):
    """``CLIPVisionModelWithProjection``: the projected class token first, then the patch states."""

    image_embeds: torch.Tensor
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


class CLIPAttention(nn.Module):
    def __init__(self, config: FrozenDict):
        super().__init__()
        width = config.hidden_size
        self.heads = config.num_attention_heads
        self.scale = (width // self.heads) ** -0.5
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        batch, tokens, _ = hidden_states.shape
        split = (batch, tokens, self.heads, -1)
        query = self.q_proj(hidden_states).view(split).transpose(1, 2)
        key = self.k_proj(hidden_states).view(split).transpose(1, 2)
        value = self.v_proj(hidden_states).view(split).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=self.scale,
                                             is_causal=causal and mask is None and tokens > 1)
        out = out.reshape(batch, self.heads, tokens, -1).transpose(1, 2).contiguous()
        return self.out_proj(out.reshape(batch, tokens, -1).contiguous())


class CLIPMLP(nn.Module):
    def __init__(self, config: FrozenDict):
        super().__init__()
        self.activation = ACTIVATIONS[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(hidden_states)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, config: FrozenDict):
        super().__init__()
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(self.layer_norm1(hidden_states), mask, causal)
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class CLIPEncoder(nn.Module):
    def __init__(self, config: FrozenDict):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The last layer's states and every layer's input and output (the embeddings first)."""
        states = [hidden_states]
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask, causal)
            states.append(hidden_states)
        return hidden_states, states


class _Tower(nn.Module):
    """What the four towers share: a config, a dtype, loading and saving in transformers' layout."""

    model_type = ""
    defaults: dict[str, Any] = {}
    # the folder format names transformers' class of the same name
    _reference_library = "transformers"

    def __init__(self, config: dict):
        super().__init__()
        self.config = FrozenDict({**self.defaults, **config})

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @classmethod
    def supports(cls, config: dict) -> bool:
        merged = {**cls.defaults, **config}
        return (config.get("model_type", cls.model_type) == cls.model_type
                and merged.get("hidden_act") in ACTIVATIONS
                and merged.get("_attn_implementation", merged.get("attn_implementation")) in (None, "sdpa")
                and merged["hidden_size"] % merged["num_attention_heads"] == 0)

    def _load_state(self, state: dict[str, torch.Tensor]) -> bool:
        """Take a checkpoint's tensors, under this tower's names or transformers 4's; False if they do not fit."""
        own = self.state_dict()
        renamed = {}
        for name, tensor in state.items():
            if name.endswith("position_ids"):  # a buffer older transformers saved; it is always arange
                continue
            name = name if name in own else self._older_name(name)
            if name not in own or own[name].shape != tensor.shape or not tensor.is_floating_point():
                return False
            renamed[name] = tensor
        if renamed.keys() != own.keys():
            return False
        self.load_state_dict(renamed, assign=True)
        return True

    def _older_name(self, name: str) -> str:
        return name

    def save_pretrained(self, save_directory: str | Path, safe_serialization: bool = True, variant: str | None = None,
                        max_shard_size: int | str = "10GB", **_: Any) -> None:
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(dict(self.config), indent=2, sort_keys=True) + "\n",
                                            encoding="utf-8")
        write_state_dict(self.state_dict(), folder, variant, safe_serialization, max_shard_size,
                         stem="model" if safe_serialization else "pytorch_model")


class CLIPTextModel(_Tower):
    """transformers' ``CLIPTextModel``: token states (``last_hidden_state``) and the end token's (``pooler_output``)."""

    model_type = "clip_text_model"
    defaults = _TEXT_DEFAULTS

    def __init__(self, config: dict):
        super().__init__(config)
        config = self.config
        self.embeddings = _TextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def _older_name(self, name: str) -> str:
        return name.removeprefix("text_model.")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, return_dict: bool = True) -> Any:
        ids = input_ids.view(-1, input_ids.shape[-1])
        hidden_states = self.embeddings(ids)
        hidden_states, states = self.encoder(hidden_states, _causal_padding_mask(attention_mask, ids.shape),
                                             causal=True)
        hidden_states = self.final_layer_norm(hidden_states)
        rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
        ids = ids.to(dtype=torch.int, device=hidden_states.device)
        if self.config.eos_token_id == 2:  # configs from before transformers knew the end token: the highest id
            ends = ids.argmax(dim=-1)
        else:
            ends = (ids == self.config.eos_token_id).int().argmax(dim=-1)
        output = TowerOutput(last_hidden_state=hidden_states, pooler_output=hidden_states[rows, ends],
                             hidden_states=tuple(states) if output_hidden_states else None)
        return output if return_dict else output.to_tuple()


class CLIPTextModelWithProjection(_Tower):
    """transformers' ``CLIPTextModelWithProjection``: ``text_embeds`` (the projected end token) and the states."""

    model_type = "clip_text_model"
    defaults = _TEXT_DEFAULTS

    def __init__(self, config: dict):
        super().__init__(config)
        self.text_model = CLIPTextModel(dict(self.config))
        self.text_projection = nn.Linear(self.config.hidden_size, self.config.projection_dim, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, return_dict: bool = True) -> Any:
        text = self.text_model(input_ids, attention_mask, output_hidden_states)
        output = TextEmbedsOutput(self.text_projection(text.pooler_output), text.last_hidden_state, text.hidden_states)
        return output if return_dict else output.to_tuple()


class CLIPVisionModel(_Tower):
    """transformers' ``CLIPVisionModel``: patch states and the normed class token (``pooler_output``)."""

    model_type = "clip_vision_model"
    defaults = _VISION_DEFAULTS

    def __init__(self, config: dict):
        super().__init__(config)
        config = self.config
        self.embeddings = _VisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = CLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def _older_name(self, name: str) -> str:
        return name.removeprefix("vision_model.")

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                return_dict: bool = True) -> Any:
        hidden_states = self.pre_layrnorm(self.embeddings(pixel_values))
        hidden_states, states = self.encoder(hidden_states)
        output = TowerOutput(last_hidden_state=hidden_states, pooler_output=self.post_layernorm(hidden_states[:, 0, :]),
                             hidden_states=tuple(states) if output_hidden_states else None)
        return output if return_dict else output.to_tuple()


class CLIPVisionModelWithProjection(_Tower):
    """transformers' ``CLIPVisionModelWithProjection``: ``image_embeds`` (the projected class token) and the states."""

    model_type = "clip_vision_model"
    defaults = _VISION_DEFAULTS

    def __init__(self, config: dict):
        super().__init__(config)
        self.vision_model = CLIPVisionModel(dict(self.config))
        self.visual_projection = nn.Linear(self.config.hidden_size, self.config.projection_dim, bias=False)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                return_dict: bool = True) -> Any:
        vision = self.vision_model(pixel_values, output_hidden_states)
        output = ImageEmbedsOutput(self.visual_projection(vision.pooler_output), vision.last_hidden_state,
                                   vision.hidden_states)
        return output if return_dict else output.to_tuple()


class _TextEmbeddings(nn.Module):
    def __init__(self, config: FrozenDict):
        super().__init__()
        self.token_embedding = lookup_table(config.vocab_size, config.hidden_size)
        self.position_embedding = lookup_table(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        tokens = input_ids.shape[-1]
        if tokens > self.position_embedding.num_embeddings:
            raise ValueError(f"input_ids has {tokens} tokens; this text encoder reads at most "
                             f"{self.position_embedding.num_embeddings}")
        positions = torch.arange(tokens, device=input_ids.device).unsqueeze(0)
        return self.token_embedding(input_ids) + self.position_embedding(positions)


class _VisionEmbeddings(nn.Module):
    def __init__(self, config: FrozenDict):
        super().__init__()
        width, self.image_size = config.hidden_size, config.image_size
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.patch_embedding = nn.Conv2d(config.num_channels, width, kernel_size=config.patch_size,
                                         stride=config.patch_size, bias=False)
        self.position_embedding = lookup_table((config.image_size // config.patch_size) ** 2 + 1, width)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = pixel_values.shape
        if (height, width) != (self.image_size, self.image_size):
            raise ValueError(f"pixel_values are {height}x{width}; this image encoder reads "
                             f"{self.image_size}x{self.image_size}")
        patches = self.patch_embedding(pixel_values.to(dtype=self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)
        embeddings = torch.cat([self.class_embedding.expand(batch, 1, -1), patches], dim=1)
        positions = torch.arange(self.position_embedding.num_embeddings, device=pixel_values.device).unsqueeze(0)
        return embeddings + self.position_embedding(positions)


def _causal_padding_mask(attention_mask: torch.Tensor | None, shape: torch.Size) -> torch.Tensor | None:
    """``None`` (SDPA's own causal mask) when nothing is padded, else causal and padding as one boolean mask."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    tokens = shape[-1]
    keep = attention_mask.to(dtype=torch.bool).view(-1, 1, 1, tokens)
    positions = torch.arange(tokens, device=attention_mask.device)
    causal = positions.view(1, 1, tokens, 1) >= positions.view(1, 1, 1, tokens)
    return (causal & keep).expand(shape[0], 1, tokens, tokens)


TOWERS = {klass.__name__: klass for klass in (CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionModel,
                                              CLIPVisionModelWithProjection)}


def load(class_name: str, folder: Path, dtype: torch.dtype | None, variant: str | None = None,
         use_safetensors: bool | None = None) -> _Tower | None:
    """transformers' ``class_name`` from ``folder`` as our tower, or ``None`` if it is not one we can read exactly."""
    klass = TOWERS.get(class_name)
    config_file = folder / "config.json"
    if klass is None or not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or not klass.supports(config):
        return None
    files = _weight_files(folder, variant, use_safetensors)
    if files is None:
        return None
    with torch.device("meta"):
        model = klass(config)
    try:
        state = read_state_dict(files, dtype=dtype or torch.float32)
    except CheckpointError:
        return None  # transformers says what is wrong with the file
    if not model._load_state(state):
        return None
    return mark_source(model.eval(), [config_file, *files])


def _weight_files(folder: Path, variant: str | None, use_safetensors: bool | None) -> list[Path] | None:
    for stem, allowed in (("model", use_safetensors is not False), ("pytorch_model", use_safetensors is not True)):
        if not allowed:
            continue
        ext = "safetensors" if stem == "model" else "bin"
        if (folder / with_variant(f"{stem}.{ext}", variant)).is_file() or \
                (folder / with_variant(f"{stem}.{ext}.index.json", variant)).is_file():
            try:
                return find_weights(folder, variant, use_safetensors=ext == "safetensors", stem=stem)
            except CheckpointError:
                return None
    return None


__all__ = ["CLIPTextModel", "CLIPTextModelWithProjection", "CLIPVisionModel", "CLIPVisionModelWithProjection",
           "ImageEmbedsOutput", "TextEmbedsOutput", "TowerOutput", "load"]
