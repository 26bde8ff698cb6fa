"""GFDM: general forward dynamics model (future prediction from o_t and the instruction). See
modeling_gfdm.py; instruction embeddings and their corpus cache in text.py."""

from .configuration_gfdm import BACKBONES, GFDM_SIZES, OBJECTIVES, GFDMConfig, gfdm_config, gfdm_svd, gfdm_tiny
from .loading import load_gfdm, load_text_config, resolve_checkpoint_dir
from .modeling_gfdm import GFDM, GFDMFeatures, changed_mask, num_parameters, psnr
from .text import (
    LANGUAGE_MODES,
    TextEncoder,
    TextModelConfig,
    build_tiny_text_tower,
    cached_embeddings,
    embed_instructions,
    pick_language,
    text_hash,
    text_model_id,
)

__all__ = [
    "BACKBONES",
    "GFDM_SIZES",
    "OBJECTIVES",
    "GFDMConfig",
    "gfdm_config",
    "gfdm_svd",
    "gfdm_tiny",
    "load_gfdm",
    "load_text_config",
    "resolve_checkpoint_dir",
    "GFDM",
    "GFDMFeatures",
    "changed_mask",
    "num_parameters",
    "psnr",
    "LANGUAGE_MODES",
    "TextEncoder",
    "TextModelConfig",
    "build_tiny_text_tower",
    "cached_embeddings",
    "embed_instructions",
    "pick_language",
    "text_hash",
    "text_model_id",
]
