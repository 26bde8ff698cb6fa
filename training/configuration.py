"""What every model config (``GIDMConfig``, ``GFDMConfig``, ``PolicyConfig``, ``JointConfig``)
does the same way: to and from a plain dict (the checkpoint's config.json) and JSON, with the one
converter every run config uses too (``pipelines.config``: types coerced, every unknown key or bad
value named at once). Torch-free."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from ..pipelines import config

C = TypeVar("C", bound="ConfigDict")


class ConfigDict:
    """Mixin for a config dataclass: ``to_dict`` (tuples as lists, so it survives JSON),
    ``from_dict`` (an unknown field or a bad value is refused with a ``ConfigError`` naming the
    valid ones), ``to_json``, ``from_json``. Validation stays in the dataclass' ``__post_init__``."""

    def to_dict(self) -> dict[str, Any]:
        return config.to_dict(self)

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        return config.from_dict(cls, d, prefix=f"{cls.__name__}.")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        return cls.from_dict(json.loads(text))
