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


LAYOUTS = ("rgb", "i420")


@dataclass
class Frames:
    """Decoded frames of one video span.

    ``frames``: uint8, upright (rotation applied), in one of two layouts (``layout``):
    ``"rgb"`` (what every operator takes): [T, H, W, 3] RGB.
    ``"i420"`` (what the curate pipeline holds between decode and encode: half the bytes, and no
    colour conversion for frames that are only re-encoded): [T, H * 3 // 2, W], each frame planar
    YUV 4:2:0 as FFmpeg's ``yuv420p`` (the H x W luma plane, then the H/2 x W/2 U and V planes,
    packed one after the other: with H % 4 == 2 a chroma plane ends mid-row), BT.601 limited
    range; H and W are even. ``to_rgb`` converts.
    ``pts_s``: float64 [T], presentation time of each frame in seconds, from the stream.
    ``indices``: int64 [T], index of each frame in the source's decode order (0-based), so a
    sub-sampled decode still names source frames.
    """

    frames: np.ndarray
    pts_s: np.ndarray
    indices: np.ndarray
    layout: str = "rgb"

    def __post_init__(self) -> None:
        n = len(self.frames)
        # input checks raise (not assert: they must hold under python -O too)
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.layout == "rgb":
            if not (self.frames.ndim == 4 and self.frames.shape[-1] == 3):
                raise ValueError(f"frames must be [T,H,W,3], got {self.frames.shape}")
        # H * 3 / 2 rows is a multiple of 3 exactly when H is even
        elif not (self.frames.ndim == 3 and self.frames.shape[1] % 3 == 0 and self.frames.shape[2] % 2 == 0):
            raise ValueError(f"i420 frames must be [T,H*3/2,W] with H, W even, got {self.frames.shape}")
        if self.frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8, got {self.frames.dtype}")
        if len(self.pts_s) != n or len(self.indices) != n:
            raise ValueError("frames, pts_s and indices must have equal length")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the pictures."""
        if self.layout == "rgb":
            return int(self.frames.shape[2]), int(self.frames.shape[1])
        return int(self.frames.shape[2]), int(self.frames.shape[1] // 3 * 2)

    def _with(self, m) -> Frames:
        return Frames(self.frames[m], self.pts_s[m], self.indices[m], self.layout)

    def _between(self, values: np.ndarray, lo: float, hi: float) -> Frames:
        """Frames whose ``values`` lie in [lo, hi): a view (no copy of the pictures) when the
        values increase, as pts and indices of decoded frames do; else a masked copy."""
        if len(values) < 2 or bool(np.all(values[1:] > values[:-1])):
            a, b = np.searchsorted(values, [lo, hi], side="left")
            b = max(a, b)
            return Frames(self.frames[a:b], self.pts_s[a:b], self.indices[a:b], self.layout)
        return self._with((values >= lo) & (values < hi))

    def slice_time(self, start_s: float, end_s: float) -> Frames:
        """Frames whose pts lies in [start_s, end_s)."""
        return self._between(self.pts_s, start_s - 1e-6, end_s - 1e-6)

    def slice_frames(self, start_frame: int, end_frame: int) -> Frames:
        """Frames whose source index lies in [start_frame, end_frame)."""
        return self._between(self.indices, start_frame, end_frame)

    def take(self, positions) -> Frames:
        """The frames at these positions (0-based, into this ``Frames``)."""
        return self._with(np.asarray(positions, np.int64))

    def to_rgb(self, short_side: int | None = None) -> Frames:
        """RGB frames (a no-op for RGB input without ``short_side``); ``short_side``: also scale
        down (area-averaged, never up) so the short side is at most that many pixels."""
        import cv2

        w, h = self.size
        scale = 1.0 if short_side is None else min(1.0, short_side / min(w, h))
        out_size = (max(2, round(w * scale)), max(2, round(h * scale)))
        if self.layout == "rgb" and scale == 1.0:
            return self
        out = np.empty((len(self), out_size[1], out_size[0], 3), np.uint8)
        for i, f in enumerate(self.frames):  # written in place (dst=): no per-frame copies
            if scale == 1.0:
                cv2.cvtColor(f, cv2.COLOR_YUV2RGB_I420, dst=out[i])
            else:
                rgb = cv2.cvtColor(f, cv2.COLOR_YUV2RGB_I420) if self.layout == "i420" else f
                cv2.resize(rgb, out_size, dst=out[i], interpolation=cv2.INTER_AREA)
        return Frames(out, self.pts_s, self.indices)

    @staticmethod
    def concat(parts: list[Frames]) -> Frames:
        if not parts:
            return Frames(np.zeros((0, 1, 1, 3), np.uint8), np.zeros(0), np.zeros(0, np.int64))
        layouts = {p.layout for p in parts}
        if len(layouts) != 1:
            raise ValueError(f"cannot concatenate frames of layouts {sorted(layouts)}")
        return Frames(
            np.concatenate([p.frames for p in parts]),
            np.concatenate([p.pts_s for p in parts]),
            np.concatenate([p.indices for p in parts]),
            parts[0].layout,
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

    Subclasses implement ``score(frames) -> dict[str, float]`` and ``reject_reason(scores)``,
    and declare in ``columns`` the scores that have a column of their own in ``clips``
    (``schemas.tables.SCORE_COLUMNS``); any other score lands in ``extra_scores``.
    Every numeric parameter (thresholds ``min_*``/``max_*`` included) must be a finite number
    >= 0 or None: a NaN threshold would compare false and silently filter nothing.
    """

    columns: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        import math
        from dataclasses import fields

        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"{self.name}.{f.name} must be a finite number >= 0 (or None to score only), got {v!r}")

    def score(self, frames: Frames) -> dict[str, float]:
        raise NotImplementedError

    def reject_reason(self, scores: dict[str, float]) -> str | None:  # noqa: ARG002 (score-only default)
        return None

    def __call__(self, frames: Frames) -> tuple[dict[str, float], str | None]:
        scores = self.score(frames)
        return scores, self.reject_reason(scores)
