"""The DeFI policy: GFDM features -> projection -> GIDM encoder -> action head. See modeling_policy.py."""

from .configuration_policy import HEADS, INIT_VARIANTS, INITS, PRESETS, Init, PolicyConfig

__all__ = [
    "HEADS",
    "INITS",
    "INIT_VARIANTS",
    "Init",
    "PRESETS",
    "PolicyConfig",
    "DeFiPolicy",
    "FeatureProjection",
    "PerceiverResampler",
    "DiffusionHead",
    "num_parameters",
]
_MODELING = ("DeFiPolicy", "FeatureProjection", "PerceiverResampler", "DiffusionHead", "num_parameters", "parameter_counts")


def __getattr__(name: str):
    # the model names load modeling_policy (and torch) on first use: building the `defi` parser
    # reads only the configuration (INITS), and `defi curate` must not pay for importing torch
    if name in _MODELING:
        from . import modeling_policy

        return getattr(modeling_policy, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
