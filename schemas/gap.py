"""The gap between two observations, in encoded frames or in seconds: one value type.

A training pair is (o_t, o_t+k). Users give k either in frames of the encoded clip (``--gap-frames
10``) or in seconds (``--gap-s 0.5``: k = max(1, round(0.5 * fps)) per clip, so clips encoded at
different rates see the same time step). ``Gap`` holds one of the two, validates it once, converts
it with ``frames(fps)`` and stores it as ``{"gap_s": ..., "gap_frames": ...}`` (one of them None),
the form run configs and checkpoints hold.
The recipe that trains a model writes its gap into every checkpoint it saves; a labeler reads it
back with ``Gap.from_dict`` (no search, no stamping afterwards). The policy's action horizon is the
same kind of value and uses the same type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

UNITS = ("frames", "seconds")


@dataclass(frozen=True)
class Gap:
    """``value`` in ``unit`` ("frames": an int >= 1; "seconds": a finite float > 0)."""

    value: float
    unit: str = "frames"

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"gap unit {self.unit!r}: unknown; valid: {', '.join(UNITS)}")
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"gap {v!r}: not a number")
        if self.unit == "frames":
            if float(v) != int(v) or int(v) < 1:
                raise ValueError(f"gap_frames={v!r}: must be a whole number of frames >= 1")
            object.__setattr__(self, "value", int(v))
        elif not (math.isfinite(v) and v > 0):
            raise ValueError(f"gap_s={v!r}: must be a finite number of seconds > 0")
        else:
            object.__setattr__(self, "value", float(v))

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def of_frames(cls, k: int) -> Gap:
        return cls(k, "frames")

    @classmethod
    def of_seconds(cls, s: float) -> Gap:
        return cls(s, "seconds")

    @classmethod
    def from_fields(cls, gap_s: float | None = None, gap_frames: int | None = None, default: Gap | None = None) -> Gap | None:
        """The gap two optional fields describe, by the one rule every command follows: give at
        most one (both is a ``ValueError``); neither gives ``default``."""
        if gap_s is not None and gap_frames is not None:
            raise ValueError(f"give gap_s or gap_frames, not both (got gap_s={gap_s!r}, gap_frames={gap_frames!r})")
        if gap_frames is not None:
            return cls.of_frames(gap_frames)
        if gap_s is not None:
            return cls.of_seconds(gap_s)
        return default

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, default: Gap | None = None) -> Gap | None:
        """Read ``{"gap_s": s}`` / ``{"gap_frames": k}`` (as written by ``to_dict``)."""
        d = d or {}
        return cls.from_fields(d.get("gap_s"), d.get("gap_frames"), default)

    # -- use ----------------------------------------------------------------------------------
    def frames(self, fps: float) -> int:
        """k in frames for a clip encoded at ``fps`` frames per second."""
        if self.unit == "frames":
            return int(self.value)
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps={fps!r}: a gap in seconds needs a positive frame rate")
        return max(1, round(self.value * float(fps)))

    def to_dict(self) -> dict[str, Any]:
        return {"gap_s": self.value if self.unit == "seconds" else None, "gap_frames": self.value if self.unit == "frames" else None}

    def label(self) -> str:
        """Short text for names and summaries: ``10 frames`` / ``0.5 s``."""
        return f"{self.value} frames" if self.unit == "frames" else f"{self.value:g} s"

    def suffix(self) -> str:
        """Name suffix: ``k10`` / ``g0.5s``."""
        return f"k{self.value}" if self.unit == "frames" else f"g{self.value:g}s"


DEFAULT_GAP = Gap.of_seconds(1.0)
