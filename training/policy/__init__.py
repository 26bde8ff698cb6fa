"""The DeFI policy: GFDM features -> projection -> GIDM encoder -> action head. See modeling_policy.py."""

from .configuration_policy import HEADS, INITS, PolicyConfig
from .modeling_policy import DeFiPolicy, FeatureProjection, num_parameters

__all__ = ["HEADS", "INITS", "PolicyConfig", "DeFiPolicy", "FeatureProjection", "num_parameters"]
