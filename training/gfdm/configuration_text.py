"""``TextModelConfig``: which open_clip text tower embeds instructions (see text.py). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TextModelConfig", "text_model_id"]


@dataclass
class TextModelConfig:
    """Which open_clip text tower embeds instructions."""

    name: str = field(default="tiny", metadata={"help": "open_clip model name (e.g. ViT-B-32), or 'tiny' for a random 64-wide test tower"})
    pretrained: str | None = field(default=None, metadata={"help": "open_clip pretrained tag or local weights file (none: random weights)"})
    seed: int = field(default=0, metadata={"help": "seed of a random tower (tiny, or no pretrained)"})
    width: int = field(default=64, metadata={"help": "tiny tower: width = embedding dim"})
    layers: int = field(default=1, metadata={"help": "tiny tower: transformer layers"})
    device: str = field(default="cpu", metadata={"help": "device that encodes the texts"})

    def __post_init__(self) -> None:
        errors = []
        if not self.name:
            errors.append("name='': give an open_clip model name or 'tiny'")
        if self.width < 8 or self.width % 8:
            errors.append(f"width={self.width!r}: must be a multiple of 8, >= 8")
        if self.layers < 1:
            errors.append(f"layers={self.layers!r}: must be >= 1")
        if errors:
            raise ValueError("invalid TextModelConfig: " + "; ".join(errors))


def text_model_id(cfg: TextModelConfig) -> str:
    """The cache key of a text model: a random tower names its shape and seed, a pretrained one its
    weights (tag, or a local file's name)."""
    if cfg.name == "tiny":
        return f"open_clip:tiny-random:w{cfg.width}-l{cfg.layers}-seed{cfg.seed}"
    if cfg.pretrained is None:
        return f"open_clip:{cfg.name}:random-seed{cfg.seed}"
    return f"open_clip:{cfg.name}:{Path(cfg.pretrained).name}"
