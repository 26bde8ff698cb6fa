"""GFDM: general forward dynamics model (future prediction from o_t and the instruction). The
configs and presets are here (torch-free); the model is ``modeling_gfdm.GFDM``, instruction
embeddings and their corpus cache are in ``text``."""

from .configuration_gfdm import BACKBONES, GFDM_PRESETS, OBJECTIVES, GFDMConfig, gfdm_config, gfdm_svd, gfdm_tiny
from .configuration_text import TextModelConfig, text_model_id

__all__ = [
    "BACKBONES",
    "GFDM_PRESETS",
    "OBJECTIVES",
    "GFDMConfig",
    "gfdm_config",
    "gfdm_svd",
    "gfdm_tiny",
    "TextModelConfig",
    "text_model_id",
]
