"""GFDM: general forward dynamics model (future prediction from o_t and the instruction). See
modeling_gfdm.py; instruction embeddings and their corpus cache in text.py."""

from .configuration_gfdm import BACKBONES, GFDM_SIZES, OBJECTIVES, GFDMConfig, gfdm_config, gfdm_svd, gfdm_tiny
from .loading import load_text_config
from .modeling_gfdm import GFDM, GFDMFeatures, changed_mask, num_parameters, psnr
from .text import TextEncoder, TextModelConfig, build_tiny_text_tower, cached_embeddings, embed_instructions, text_hash, text_model_id

__all__ = [
    "BACKBONES",
    "GFDM_SIZES",
    "OBJECTIVES",
    "GFDMConfig",
    "gfdm_config",
    "gfdm_svd",
    "gfdm_tiny",
    "load_text_config",
    "GFDM",
    "GFDMFeatures",
    "changed_mask",
    "num_parameters",
    "psnr",
    "TextEncoder",
    "TextModelConfig",
    "build_tiny_text_tower",
    "cached_embeddings",
    "embed_instructions",
    "text_hash",
    "text_model_id",
]
