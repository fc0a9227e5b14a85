"""Building blocks shared by difflab's networks."""

from difflab.nn.attention import SpatialAttention, multihead_attention
from difflab.nn.blocks import Downsample, ResBlock, Upsample, zero_init
from difflab.nn.embeddings import TimestepEmbedding, timestep_embedding

__all__ = ["Downsample", "ResBlock", "SpatialAttention", "TimestepEmbedding", "Upsample", "multihead_attention",
           "timestep_embedding", "zero_init"]
