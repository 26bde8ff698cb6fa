"""What every model config (``GIDMConfig``, ``GFDMConfig``, ``PolicyConfig``) does the same way:
to and from a plain dict (the checkpoint's config.json) and JSON. Torch-free."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

C = TypeVar("C", bound="ConfigDict")


class ConfigDict:
    """Mixin for a config dataclass: ``to_dict`` (tuples as lists, so it survives JSON),
    ``from_dict`` (an unknown field is refused, naming the valid ones), ``to_json``,
    ``from_json``. Validation stays in the dataclass' ``__post_init__``."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; valid: {', '.join(sorted(valid))}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        return cls.from_dict(json.loads(text))
