"""Kandinsky 2.1's text encoder: M-CLIP, an XLM-RoBERTa whose mean-pooled output is projected into CLIP space.

The network is the M-CLIP "XLM-Roberta-Large-Vit-L-14" text tower: a
multilingual XLM-RoBERTa encoder (from transformers) followed by one linear
layer that maps the masked mean of its last hidden states onto the CLIP
ViT-L/14 image-embedding space:

    input_ids, attention_mask -> XLM-RoBERTa -> hidden states (batch, tokens, transformerDimensions)
                                                  |  masked mean over tokens
                                                  v
                                  LinearTransformation -> pooled embedding (batch, numDims)

``forward`` returns ``(pooled embedding, hidden states)``: the Kandinsky 2.1
UNet reads the pooled embedding as ``text_embeds`` and the hidden states as
``encoder_hidden_states``.

It is a transformers ``PreTrainedModel``, as in the reference, so a
``text_encoder`` folder (``config.json`` + ``model.safetensors``) is read and
written by transformers: the config's ``model_type`` (``"M-CLIP"``) and field
names (``transformerDimensions`` / ``numDims``, given as ``transformerDimSize``
/ ``imageDimSize``) and the state-dict keys (``transformer.*``,
``LinearTransformation.*``) are the reference's, so folders move both ways.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel, XLMRobertaConfig, XLMRobertaModel


class MCLIPConfig(XLMRobertaConfig):
    """An ``XLMRobertaConfig`` plus the two widths of the projection.

    ``transformerDimSize`` (the encoder's hidden width) and ``imageDimSize`` (the
    CLIP embedding width) are stored as ``transformerDimensions`` and ``numDims``,
    the names saved in ``config.json``. A saved config carries the stored names,
    and they win over the constructor names when both are present.
    """

    model_type = "M-CLIP"

    def __init__(self, transformerDimSize: int = 1024, imageDimSize: int = 768, **kwargs):  # noqa: N803
        kwargs.setdefault("transformerDimensions", transformerDimSize)
        kwargs.setdefault("numDims", imageDimSize)
        super().__init__(**kwargs)


class MultilingualCLIP(PreTrainedModel):
    """XLM-RoBERTa text encoder + linear projection of its masked-mean output (M-CLIP).

    ``model(input_ids, attention_mask)`` -> ``(text_embeds, hidden_states)``:
    ``text_embeds`` is ``(batch, numDims)``, ``hidden_states`` is
    ``(batch, tokens, hidden_size)``.
    """

    config_class = MCLIPConfig

    def __init__(self, config: MCLIPConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.transformer = XLMRobertaModel(config)
        self.LinearTransformation = nn.Linear(config.transformerDimensions, config.numDims)  # noqa: N815
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, tokens), got {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(attention_mask.shape)}")
        hidden_states = self.transformer(input_ids=input_ids, attention_mask=attention_mask)[0]
        return self.LinearTransformation(masked_mean(hidden_states, attention_mask)), hidden_states


def masked_mean(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens the mask keeps: ``(batch, tokens, width)``, ``(batch, tokens)`` -> ``(batch, width)``."""
    weights = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1)
