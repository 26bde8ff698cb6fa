"""GIDM: general inverse-dynamics model (latent action model). The configs and presets are here
(torch-free); the model is ``modeling_gidm.GIDM``."""

from .configuration_gidm import (
    BOTTLENECKS,
    FEATURE_ENCODERS,
    GIDM_PRESETS,
    INPUT_SPACES,
    GIDMConfig,
    gidm_config,
    gidm_keypoint,
    gidm_keypoint_rvq,
    gidm_small,
    gidm_tiny,
    gidm_univla,
)

__all__ = [
    "BOTTLENECKS",
    "FEATURE_ENCODERS",
    "GIDM_PRESETS",
    "INPUT_SPACES",
    "GIDMConfig",
    "gidm_config",
    "gidm_keypoint",
    "gidm_keypoint_rvq",
    "gidm_small",
    "gidm_tiny",
    "gidm_univla",
]
