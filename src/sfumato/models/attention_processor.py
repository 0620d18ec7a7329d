"""The reference's ``models.attention_processor`` import path, for user code such as::

    from sfumato.models.attention_processor import AttnAddedKVProcessor2_0
    pipe.unet.set_attn_processor(AttnAddedKVProcessor2_0())

The layer and processors themselves live in ``sfumato.nn.attention``.
"""

from ..nn.attention import (  # noqa: F401
    ADDED_KV_ATTENTION_PROCESSORS,
    CROSS_ATTENTION_PROCESSORS,
    Attention,
    AttnAddedKVProcessor,
    AttnAddedKVProcessor2_0,
    AttnProcessor,
    AttnProcessor2_0,
    XFormersAttnAddedKVProcessor,
    XFormersAttnProcessor,
)
from ..nn.norms import SpatialNorm  # noqa: F401

__all__ = [
    "ADDED_KV_ATTENTION_PROCESSORS", "CROSS_ATTENTION_PROCESSORS", "Attention", "AttnAddedKVProcessor",
    "AttnAddedKVProcessor2_0", "AttnProcessor", "AttnProcessor2_0", "SpatialNorm", "XFormersAttnAddedKVProcessor",
    "XFormersAttnProcessor",
]
