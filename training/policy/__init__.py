"""The DeFI policy: GFDM features -> projection -> GIDM encoder -> action head. The config is here
(torch-free); the model is ``modeling_policy.DeFiPolicy``."""

from .configuration_policy import HEADS, INIT_VARIANTS, INITS, PRESETS, Init, PolicyConfig

__all__ = ["HEADS", "INITS", "INIT_VARIANTS", "Init", "PRESETS", "PolicyConfig"]
