"""Building blocks shared by sfumato's networks: attention, resnet blocks, embeddings, norms, resampling.

Constructor keywords and parameter names follow the reference library, so a network
assembled from these blocks loads the reference's checkpoints unchanged.
"""

from .activations import GEGLU, GELU, ApproximateGELU, get_activation
from .attention import (
    Attention,
    AttnAddedKVProcessor,
    AttnAddedKVProcessor2_0,
    AttnProcessor,
    AttnProcessor2_0,
    attn_processors,
    set_attn_processor,
    set_default_attn_processor,
)
from .embeddings import (
    GaussianFourierProjection,
    ImageHintTimeEmbedding,
    ImageProjection,
    ImageTimeEmbedding,
    TextImageProjection,
    TextImageTimeEmbedding,
    TimestepEmbedding,
    Timesteps,
    timestep_embedding,
)
from .norms import AdaGroupNorm, SpatialNorm
from .resnet import ResnetBlock2D, ResnetBlockCondNorm2D
from .sampling import Downsample2D, Upsample2D
from .transformer import BasicTransformerBlock, FeedForward, Transformer2DModel, Transformer2DModelOutput

__all__ = [
    "AdaGroupNorm", "ApproximateGELU", "Attention", "AttnAddedKVProcessor", "AttnAddedKVProcessor2_0",
    "AttnProcessor", "AttnProcessor2_0", "BasicTransformerBlock", "Downsample2D", "FeedForward", "GEGLU", "GELU", "GaussianFourierProjection",
    "ImageHintTimeEmbedding", "ImageProjection", "ImageTimeEmbedding", "ResnetBlock2D", "ResnetBlockCondNorm2D",
    "SpatialNorm", "TextImageProjection", "TextImageTimeEmbedding", "TimestepEmbedding", "Timesteps",
    "Transformer2DModel", "Transformer2DModelOutput",
    "Upsample2D", "attn_processors", "get_activation", "set_attn_processor", "set_default_attn_processor",
    "timestep_embedding",
]
