"""What every curation operator shares.

An operator is a small dataclass: its fields are its parameters, ``name`` and ``version`` are
class constants naming it uniquely (logs, run records and the ``operators_json`` lineage column
tell operators apart by them). Its work is a pure function over decoded frames or a record, so
tests call it directly and the Ray adapter in ``defi.pipelines`` maps it onto Ray Data.

A *scorer* computes scores for every clip (kept or not: score once, filter later). When one of its
thresholds is set it also rejects, with a named reason; with thresholds left ``None`` it only
scores. Failures inside an operator become data (``ClipRecord.errors``), not exceptions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass
class Frames:
    """Decoded frames of one video span.

    ``frames``: uint8 [T, H, W, 3] RGB, upright (rotation applied).
    ``pts_s``: float64 [T], presentation time of each frame in seconds, from the stream.
    ``indices``: int64 [T], index of each frame in the source's decode order (0-based), so a
    sub-sampled decode still names source frames.
    """

    frames: np.ndarray
    pts_s: np.ndarray
    indices: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.frames)
        assert self.frames.ndim == 4 and self.frames.shape[-1] == 3, f"frames must be [T,H,W,3], got {self.frames.shape}"
        assert self.frames.dtype == np.uint8, f"frames must be uint8, got {self.frames.dtype}"
        assert len(self.pts_s) == n and len(self.indices) == n, "frames, pts_s and indices must have equal length"

    def __len__(self) -> int:
        return len(self.frames)

    def slice_time(self, start_s: float, end_s: float) -> "Frames":
        """Frames whose pts lies in [start_s, end_s)."""
        m = (self.pts_s >= start_s - 1e-6) & (self.pts_s < end_s - 1e-6)
        return Frames(self.frames[m], self.pts_s[m], self.indices[m])

    def slice_frames(self, start_frame: int, end_frame: int) -> "Frames":
        """Frames whose source index lies in [start_frame, end_frame)."""
        m = (self.indices >= start_frame) & (self.indices < end_frame)
        return Frames(self.frames[m], self.pts_s[m], self.indices[m])

    @staticmethod
    def concat(parts: list["Frames"]) -> "Frames":
        if not parts:
            return Frames(np.zeros((0, 1, 1, 3), np.uint8), np.zeros(0), np.zeros(0, np.int64))
        return Frames(
            np.concatenate([p.frames for p in parts]),
            np.concatenate([p.pts_s for p in parts]),
            np.concatenate([p.indices for p in parts]),
        )


@dataclass
class Operator:
    """Base of all operators: identity plus parameters, for lineage."""

    name: ClassVar[str] = "operator"
    version: ClassVar[str] = "1"

    def params(self) -> dict[str, Any]:
        return asdict(self)

    def lineage(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "params": self.params()}


@dataclass
class Scorer(Operator):
    """Scores a clip's frames; rejects when a threshold is set and crossed.

    Subclasses implement ``score(frames) -> dict[str, float]`` and ``reject_reason(scores)``.
    """

    def score(self, frames: Frames) -> dict[str, float]:
        raise NotImplementedError

    def reject_reason(self, scores: dict[str, float]) -> str | None:
        return None

    def __call__(self, frames: Frames) -> tuple[dict[str, float], str | None]:
        scores = self.score(frames)
        return scores, self.reject_reason(scores)
