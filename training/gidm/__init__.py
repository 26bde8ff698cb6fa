"""GIDM: general inverse-dynamics model (latent action model). See modeling_gidm.py."""

from .configuration_gidm import (
    BOTTLENECKS,
    FEATURE_ENCODERS,
    GIDM_SIZES,
    INPUT_SPACES,
    GIDMConfig,
    gidm_config,
    gidm_keypoint,
    gidm_keypoint_rvq,
    gidm_small,
    gidm_tiny,
    gidm_univla,
)
from .modeling_gidm import GIDM, FrozenFeatureExtractor, build_feature_extractor, code_stats

__all__ = [
    "BOTTLENECKS",
    "FEATURE_ENCODERS",
    "GIDM_SIZES",
    "INPUT_SPACES",
    "GIDMConfig",
    "gidm_config",
    "gidm_keypoint",
    "gidm_keypoint_rvq",
    "gidm_small",
    "gidm_tiny",
    "gidm_univla",
    "GIDM",
    "FrozenFeatureExtractor",
    "build_feature_extractor",
    "code_stats",
]
