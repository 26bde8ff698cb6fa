"""Clips inside shots: pure arithmetic from shot spans to clip spans.

Rules (seconds, all of a shot's duration ``D = end_s - start_s``):
- ``D < min_clip_s``, or the shot carries a ``reject_reason`` (``Shots`` marks a shot shorter
  than its ``min_shot_s`` ``too_short``): one clip spanning the shot, rejected with that reason.
- ``D <= max_clip_s`` (or ``max_clip_s`` is None): one clip spanning the whole shot.
- otherwise windows of ``clip_len_s`` starting every ``stride_s`` from the shot start, as many as
  fit whole; the *remainder* is the window at the next stride position cut off at the shot end
  (shorter than ``clip_len_s``). It is kept when it lasts at least ``min_clip_s``, else returned
  rejected ``too_short`` (so the index accounts for every second of every shot, with
  ``stride_s == clip_len_s``). No remainder when the next stride position is at or past the end.

Times become frames through the *source* frame timestamps: a clip boundary at time ``t`` is the
first source frame whose pts is ``>= t`` (to within ``1 us``), and the clip's ``start_s``/``end_s``
are then the pts of those frames, so frames and seconds always agree. Give ``pts_s`` = the pts of
every full-rate source frame, indexed by source frame index (exact for variable frame rate). Without
it, the shot is taken as constant frame rate: frames are spread evenly over ``[start_s, end_s)``.
Analysis-rate (sub-sampled) pts are *not* a valid ``pts_s``: they would snap clips to analysis frames.
A span that holds no source frame after snapping (a remainder shorter than one frame) is dropped.
The ``min_clip_s`` check uses the unsnapped seconds; snapped spans differ from them by < 1 frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from defi.schemas.records import Span

from .base import Operator

_EPS_S = 1e-6  # seconds; float noise tolerance, so an exact multiple of the stride counts as exact


@dataclass(frozen=True)
class Clip(Span):
    """A candidate clip: source frames ``[start_frame, end_frame)``, time ``[start_s, end_s)``.

    ``clip_index`` counts clips within the whole video (rejected ones included), in time order.
    ``reject_reason`` is None for a candidate, ``"too_short"`` for a span the rules reject.
    """

    shot_index: int
    clip_index: int
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    reject_reason: str | None = None


def window_spans(
    duration_s: float, clip_len_s: float, stride_s: float, min_clip_s: float, max_clip_s: float | None
) -> list[tuple[float, float, str | None]]:
    """Clip spans ``(start, end, reject_reason)`` in seconds *relative to the shot start*."""
    if duration_s < min_clip_s - _EPS_S:
        return [(0.0, duration_s, "too_short")]
    if max_clip_s is None or duration_s <= max_clip_s + _EPS_S:
        return [(0.0, duration_s, None)]
    # Number of whole windows: starts k*stride with k*stride + clip_len <= D.
    n_full = int(math.floor((duration_s - clip_len_s + _EPS_S) / stride_s)) + 1
    spans: list[tuple[float, float, str | None]] = [(k * stride_s, k * stride_s + clip_len_s, None) for k in range(n_full)]
    rest_start = n_full * stride_s
    if rest_start < duration_s - _EPS_S:
        rest = duration_s - rest_start
        spans.append((rest_start, duration_s, None if rest >= min_clip_s - _EPS_S else "too_short"))
    return spans


@dataclass
class Windows(Operator):
    """Cut shots into clips (see the module docstring for the rules).

    ``clip_len_s``: window length, seconds. ``stride_s``: seconds between window starts
    (``== clip_len_s``: back to back; smaller: overlapping; larger: gaps). ``min_clip_s``: shortest
    clip kept, seconds. ``max_clip_s``: a shot up to this long stays one clip; None never splits.
    """

    name: ClassVar[str] = "windows"
    version: ClassVar[str] = "1"

    clip_len_s: float = field(default=4.0, metadata={"help": "length of each window cut from a long shot, seconds"})
    stride_s: float = field(
        default=4.0, metadata={"help": "seconds between window starts (equal to clip_len_s: back to back; smaller: overlapping)"}
    )
    min_clip_s: float = field(default=1.0, metadata={"help": "shortest clip kept, seconds (a shorter remainder is dropped)"})
    max_clip_s: float | None = field(
        default=8.0, metadata={"help": "a shot up to this many seconds stays one clip; longer ones are windowed (none: never split)"}
    )

    def __post_init__(self) -> None:
        bad = []
        if not self.clip_len_s > 0:
            bad.append(f"clip_len_s={self.clip_len_s} must be > 0")
        if not self.stride_s > 0:
            bad.append(f"stride_s={self.stride_s} must be > 0")
        if self.min_clip_s < 0 or self.min_clip_s > self.clip_len_s:
            bad.append(f"min_clip_s={self.min_clip_s} must be in [0, clip_len_s={self.clip_len_s}]")
        if self.max_clip_s is not None and self.max_clip_s < self.clip_len_s:
            bad.append(f"max_clip_s={self.max_clip_s} must be >= clip_len_s={self.clip_len_s}")
        if bad:
            raise ValueError("Windows: " + "; ".join(bad))

    def __call__(self, shots, pts_s: np.ndarray | None = None) -> list[Clip]:
        """Clips of every shot, in time order.

        ``shots``: objects with ``index, start_frame, end_frame, start_s, end_s`` (``Shot``).
        ``pts_s``: optional float [N], pts in seconds of every full-rate source frame, by index.
        """
        clips: list[Clip] = []
        for shot in shots:
            spans = window_spans(shot.end_s - shot.start_s, self.clip_len_s, self.stride_s, self.min_clip_s, self.max_clip_s)
            if getattr(shot, "reject_reason", None):  # a shot the detector marked (too_short): one rejected clip
                spans = [(0.0, shot.end_s - shot.start_s, shot.reject_reason)]
            for start, end, reason in spans:
                f0 = _frame_at(shot, shot.start_s + start, pts_s)
                f1 = _frame_at(shot, shot.start_s + end, pts_s)
                if f1 <= f0:  # a sub-frame remainder (e.g. 12.012 s at 29.97 fps) holds no frame
                    continue
                clips.append(Clip(shot.index, len(clips), f0, f1, _time_of(shot, f0, pts_s), _time_of(shot, f1, pts_s), reason))
        return clips


def _frame_at(shot, t: float, pts_s: np.ndarray | None) -> int:
    """First source frame of ``shot`` whose pts is >= t; ``shot.end_frame`` past its last frame."""
    if t >= shot.end_s - _EPS_S:
        return int(shot.end_frame)
    if pts_s is not None:
        lo, hi = int(shot.start_frame), int(shot.end_frame)
        return lo + int(np.searchsorted(pts_s[lo:hi], t - _EPS_S, side="left"))
    # Constant frame rate inside the shot: frame i starts at start_s + (i - start_frame) / fps.
    fps = shot.num_frames / (shot.end_s - shot.start_s) if shot.end_s > shot.start_s else 0.0
    return min(int(shot.end_frame), int(shot.start_frame) + math.ceil((t - shot.start_s) * fps - 1e-6))


def _time_of(shot, frame: int, pts_s: np.ndarray | None) -> float:
    if frame >= shot.end_frame:
        return float(shot.end_s)
    if pts_s is not None:
        return float(pts_s[frame])
    fps = shot.num_frames / (shot.end_s - shot.start_s)
    return float(shot.start_s + (frame - shot.start_frame) / fps)
