"""``DataContract``: what a training run's data looked like, saved with every checkpoint it writes.

A model only reads clips correctly the way it was trained on them: the frame side, the gap k
between o_t and o_t+k, the context frames, and for a policy the action chunk, the action rows per
encoded frame and the action statistics. The recipe that trains a model writes this record into
each checkpoint (``state.json`` ``extra["data"]``); the labeler, the policy builder and evaluation
read it back with ``DataContract.from_dict`` and never re-default or recompute a value it holds.

Layout (``to_dict``): ``{"version": 1, "image_size": px, "gap_s": s | None, "gap_frames": k |
None, ...}`` with the fields below that are set. Checkpoints written before the record existed hold
the same keys without ``version`` (plus ``size``, always equal to ``image_size``); ``from_dict``
reads them unchanged and refuses a newer version in one line naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from .gap import Gap

CONTRACT_VERSION = 1


@dataclass(frozen=True)
class DataContract:
    """The data facts of a trained model (units in each field's comment).

    image_size: side of the square frames the model reads, px (the model config's image_size).
    gap: o_t -> o_t+k of the training pairs (GIDM, GFDM; the policy's future gap when it has one).
    context_frames / future_frames: frames the model reads / predicts (GFDM, policy).
    horizon: actions per predicted chunk (policy).
    frame_stride: recorded action rows per encoded frame (policy; 2 for a 20 Hz robot at 10 fps).
    action_mean / action_std: per-dimension statistics the policy normalises actions with.
    text / text_model_id: the ``TextModelConfig`` fields and id the instructions were embedded with.
    """

    image_size: int | None = None
    gap: Gap | None = None
    context_frames: int | None = None
    future_frames: int | None = None
    horizon: int | None = None
    frame_stride: int | None = None
    action_mean: tuple[float, ...] | None = None
    action_std: tuple[float, ...] | None = None
    text: dict[str, Any] | None = None
    text_model_id: str | None = None

    def __post_init__(self) -> None:
        errors = []
        s = self.image_size
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 8):
            errors.append(f"image_size={self.image_size!r}: must be a whole number of px >= 8")
        if self.gap is not None and not isinstance(self.gap, Gap):
            errors.append(f"gap={self.gap!r}: must be a Gap")
        for name in ("context_frames", "future_frames", "horizon", "frame_stride"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                errors.append(f"{name}={v!r}: must be a whole number >= 1")
        for name in ("action_mean", "action_std"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, tuple(float(x) for x in v))
                if not all(math.isfinite(x) for x in getattr(self, name)):
                    errors.append(f"{name}: must be finite numbers")
        if (self.action_mean is None) != (self.action_std is None):
            errors.append("action_mean and action_std come together")
        elif self.action_mean is not None and len(self.action_mean) != len(self.action_std):
            errors.append(f"action_mean has {len(self.action_mean)} dimensions, action_std {len(self.action_std)}")
        elif self.action_std is not None and min(self.action_std, default=1.0) <= 0:
            errors.append("action_std must be > 0")
        if errors:
            raise ValueError("invalid DataContract: " + "; ".join(errors))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": CONTRACT_VERSION}
        if self.gap is not None:
            out.update(self.gap.to_dict())
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name != "gap" and v is not None:
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataContract:
        """Read ``to_dict``'s layout, or the version-less one of older checkpoints. ``ValueError``
        (one line) for a newer version, an unknown key or a bad value."""
        d = dict(d)
        version = d.pop("version", None)
        if version is not None and version != CONTRACT_VERSION:
            raise ValueError(f"data contract version {version!r}: this code reads version {CONTRACT_VERSION} (and older, unversioned ones)")
        size = d.pop("size", None)  # older checkpoints: always equal to image_size
        if "image_size" not in d and size is not None:
            d["image_size"] = size
        elif size is not None and size != d["image_size"]:
            raise ValueError(f"data contract: size={size} disagrees with image_size={d['image_size']}")
        gap_s, gap_frames = d.pop("gap_s", None), d.pop("gap_frames", None)
        valid = {f.name for f in fields(cls)} - {"gap"}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"data contract: unknown key(s) {unknown}; valid: {', '.join(sorted(valid | {'gap_s', 'gap_frames'}))}")
        return cls(gap=Gap.from_fields(gap_s, gap_frames), **d)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> DataContract | None:
        """The contract in a loaded checkpoint's ``state`` (``extra["data"]``); None for a
        checkpoint saved without one (a model saved outside the ``defi train`` commands)."""
        data = (state.get("extra") or {}).get("data")
        return cls.from_dict(data) if data else None
