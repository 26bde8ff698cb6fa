"""Model types by name: ``name -> ("module:ConfigClass", "module:ModelClass")``, imported on use.

One line per model. Nothing here imports torch: the config class of a type loads only its
``configuration_*.py`` (torch-free), the model class its ``modeling_*.py``. So ``defi --help``,
a checkpoint's type check and ``model_type_of`` cost no torch import, and ``checkpoint.py`` needs
no import of the model packages (which would import it back).
"""

from __future__ import annotations

import importlib
from typing import Any

MODEL_TYPES: dict[str, tuple[str, str]] = {
    "gidm": ("defi.training.gidm.configuration_gidm:GIDMConfig", "defi.training.gidm.modeling_gidm:GIDM"),
    "gfdm": ("defi.training.gfdm.configuration_gfdm:GFDMConfig", "defi.training.gfdm.modeling_gfdm:GFDM"),
    "policy": ("defi.training.policy.configuration_policy:PolicyConfig", "defi.training.policy.modeling_policy:DeFiPolicy"),
    "joint": ("defi.training.joint.configuration_joint:JointConfig", "defi.training.joint.modeling_joint:JointModel"),
}


def _resolve(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def check_model_type(name: str) -> str:
    """``name`` when registered, else ``ValueError`` listing the registered names."""
    if name not in MODEL_TYPES:
        raise ValueError(f"unknown model type {name!r}; registered: {', '.join(MODEL_TYPES)}")
    return name


def config_class(name: str) -> type:
    """The config dataclass of model type ``name`` (torch-free)."""
    return _resolve(MODEL_TYPES[check_model_type(name)][0])


def model_class(name: str) -> type:
    """The ``nn.Module`` class of model type ``name`` (imports torch)."""
    return _resolve(MODEL_TYPES[check_model_type(name)][1])


def config_class_name(name: str) -> str:
    """``GIDMConfig`` for ``gidm``: for messages, without importing anything."""
    return MODEL_TYPES[check_model_type(name)][0].rpartition(":")[2]


def model_type_of(config: Any) -> str:
    """The registered name whose config class ``config`` is an instance of."""
    for name in MODEL_TYPES:
        if isinstance(config, config_class(name)):
            return name
    raise ValueError(f"no registered model type for {type(config).__name__}; registered: {', '.join(MODEL_TYPES)}")
