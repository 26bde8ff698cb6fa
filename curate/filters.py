"""Frame-based scorers: duration, resolution, motion, camera motion, blur, black/flat frames.

Each scorer is a ``Scorer`` dataclass: its thresholds default to None (score only); set one and
``reject_reason`` names the failed check. Each declares in ``columns`` the scores with a
``clips`` column of their own (``schemas.tables.SCORE_COLUMNS``); others (``duration_s``,
``short_side``) land in ``ClipRecord.extra_scores``.

Bounded cost. Frame-based scorers work on grayscale frames resized so the short side is at most
``analysis_short_side`` pixels (default 128; never upscaled), and on at most ``max_pairs`` pairs of
consecutive frames (or ``max_frames`` frames) sampled evenly over the clip. So a clip's cost does
not grow with its length or resolution.

Units. Motion scores are pixels per frame interval *at the analysis resolution*, where a frame
interval is the step between consecutive frames handed in (the decoded frames at the output
fps in the curate pipeline). A 2 px/frame motion on a 64 px-high video therefore scores 2; the same motion on a 256 px
source scores 2 * 128/256 = 1 (the frame is shrunk to 128): scores measure motion relative to the
frame size, so sources of different resolutions compare. Sources compare in time only when
decoded at the same frame rate.

Too few frames to score (0 or 1 frames for a pair-based score) gives ``None`` scores and no
rejection: the ``Duration`` scorer is the one that rejects clips that are too short.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import cv2
import numpy as np

from .base import Frames, Scorer

# Farneback parameters (OpenCV's documented example values; pyramid of 3 levels suits 64-128 px
# frames: the coarsest level, 16-32 px, still tracks a few pixels of motion per frame).
_FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def analysis_gray(frames: np.ndarray, short_side: int) -> np.ndarray:
    """uint8 RGB [T,H,W,3] -> uint8 gray [T,h,w] with min(h, w) <= short_side (area-averaged)."""
    t, h, w = frames.shape[:3]
    scale = min(1.0, short_side / min(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = []
    for f in frames:
        g = cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY)
        out.append(g if scale == 1.0 else cv2.resize(g, size, interpolation=cv2.INTER_AREA))
    return np.stack(out) if out else np.zeros((0, size[1], size[0]), np.uint8)


def sample_evenly(n: int, k: int) -> np.ndarray:
    """Up to ``k`` distinct indices in [0, n), spread evenly, first and last included."""
    if n <= 0:
        return np.zeros(0, np.int64)
    return np.unique(np.round(np.linspace(0, n - 1, min(n, k))).astype(np.int64))


def sampled_pairs(frames: Frames, short_side: int, max_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Gray analysis-size frames ``(a, b)`` [P,h,w]: ``b[i]`` is the frame right after ``a[i]``."""
    starts = sample_evenly(len(frames) - 1, max_pairs)
    if len(starts) == 0:
        return np.zeros((0, 1, 1), np.uint8), np.zeros((0, 1, 1), np.uint8)
    # Resize only the frames used: pairs share no work unless max_pairs >= T-1.
    used = np.unique(np.concatenate([starts, starts + 1]))
    gray = dict(zip(used.tolist(), analysis_gray(frames.frames[used], short_side), strict=False))
    return np.stack([gray[i] for i in starts]), np.stack([gray[i + 1] for i in starts])


def farneback(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense optical flow from gray ``a`` to ``b``: float32 [h, w, 2], pixels (dx, dy)."""
    return cv2.calcOpticalFlowFarneback(a, b, None, **_FARNEBACK)


class _FlowCache:
    """The flow of the last clip scored, so ``Motion`` then ``CameraMotion`` on the same ``Frames``
    compute Farneback once (it is ~90% of their cost). One entry; it holds a reference to the
    frames array, so an identity match (``is``) cannot be a recycled id. Frames mutated in place
    between two scorers would be served stale flow; operators never mutate their input."""

    def __init__(self) -> None:
        # (key, value) in one attribute: a single reference swap, so a concurrent reader never
        # pairs one clip's key with another clip's flow.
        self._entry: tuple[tuple, tuple[np.ndarray, np.ndarray, list[np.ndarray]]] | None = None

    def get(self, frames: Frames, short_side: int, max_pairs: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """``(a, b, flows)``: gray frame pairs (analysis size) and the flow from each ``a`` to ``b``."""
        key = (frames.frames, short_side, max_pairs)
        entry = self._entry
        if entry is not None and entry[0][0] is key[0] and entry[0][1:] == key[1:]:
            return entry[1]
        a, b = sampled_pairs(frames, short_side, max_pairs)
        value = (a, b, [farneback(x, y) for x, y in zip(a, b, strict=False)])
        self._entry = (key, value)
        return value


_flow_cache = _FlowCache()


def _inner(x: np.ndarray, margin: int) -> np.ndarray:
    """Drop a border: flow is unreliable where content enters or leaves the frame."""
    h, w = x.shape[:2]
    if h > 4 * margin and w > 4 * margin:
        return x[margin : h - margin, margin : w - margin]
    return x


def _over(value: float | None, threshold: float | None) -> bool:
    return value is not None and threshold is not None and value > threshold


def _under(value: float | None, threshold: float | None) -> bool:
    return value is not None and threshold is not None and value < threshold


def _frame_duration_s(pts_s: np.ndarray) -> float:
    return float(np.median(np.diff(pts_s))) if len(pts_s) > 1 else 0.0


@dataclass
class Duration(Scorer):
    """Clip duration in seconds, ``duration_s``; rejects ``too_short`` / ``too_long``.

    Scores a span (anything with ``start_s``/``end_s``: ``Clip``, ``ClipRecord``) exactly, or
    ``Frames`` as last pts - first pts + one median frame step.
    """

    name: ClassVar[str] = "duration"
    version: ClassVar[str] = "1"

    min_s: float | None = field(
        default=None, metadata={"help": "reject clips shorter than this many seconds as too_short (none: score only)"}
    )
    max_s: float | None = field(
        default=None, metadata={"help": "reject clips longer than this many seconds as too_long (none: score only)"}
    )

    def score(self, frames: Any) -> dict[str, float]:
        if hasattr(frames, "start_s") and hasattr(frames, "end_s"):
            return {"duration_s": float(frames.end_s - frames.start_s)}
        pts = np.asarray(frames.pts_s, np.float64)
        if len(pts) == 0:
            return {"duration_s": 0.0}
        return {"duration_s": float(pts[-1] - pts[0] + _frame_duration_s(pts))}

    def reject_reason(self, scores: dict[str, float]) -> str | None:
        d = scores.get("duration_s")
        if _under(d, self.min_s):
            return "too_short"
        if _over(d, self.max_s):
            return "too_long"
        return None


@dataclass
class Resolution(Scorer):
    """Short side of the picture in pixels, ``short_side``; rejects ``low_resolution``.

    Scores the *source* size when given anything with ``width``/``height`` (``SourceRecord``,
    ``ClipRecord``): analysis frames are downscaled and say nothing about the source. Given
    ``Frames`` it scores their size, right only for frames decoded at full resolution.
    """

    name: ClassVar[str] = "resolution"
    version: ClassVar[str] = "1"

    min_short_side: int | None = field(
        default=None, metadata={"help": "reject sources whose short side is below this many pixels as low_resolution (none: score only)"}
    )

    def score(self, frames: Any) -> dict[str, float]:
        if hasattr(frames, "width") and hasattr(frames, "height"):
            if frames.width is None or frames.height is None:
                return {"short_side": None}  # type: ignore[dict-item]
            return {"short_side": float(min(frames.width, frames.height))}
        return {"short_side": float(min(frames.frames.shape[1:3]))}

    def reject_reason(self, scores: dict[str, float]) -> str | None:
        return "low_resolution" if _under(scores.get("short_side"), self.min_short_side) else None


@dataclass
class Motion(Scorer):
    """How much the picture moves, from Farneback optical flow on gray analysis-size frames.

    ``motion_mean``: mean flow magnitude (px/frame at analysis size, see the module docstring)
    over all pixels of the sampled pairs. ``motion_p90``: 90th percentile of the per-pixel
    magnitudes pooled over the sampled pairs (a small moving object shows here before the mean).
    ``frame_diff``: mean absolute difference of consecutive gray frames, 0-255 (cheap, no flow).
    Rejects ``low_motion`` when ``motion_mean < min_motion_mean`` or ``frame_diff < min_frame_diff``.
    """

    name: ClassVar[str] = "motion"
    columns: ClassVar[tuple[str, ...]] = ("motion_mean", "motion_p90", "frame_diff")
    version: ClassVar[str] = "1"

    min_motion_mean: float | None = field(
        default=None,
        metadata={
            "help": "reject clips whose mean optical-flow magnitude is below this, px/frame at analysis size, as low_motion (none: off)"
        },
    )
    min_frame_diff: float | None = field(
        default=None,
        metadata={
            "help": "reject clips whose mean absolute difference of consecutive gray frames (0-255) is below this as low_motion (none: off)"
        },
    )
    analysis_short_side: int = field(
        default=128, metadata={"help": "frames are shrunk to this short side, px, before scoring (scores compare only at one size)"}
    )
    max_pairs: int = field(default=8, metadata={"help": "pairs of consecutive frames sampled evenly per clip for the optical flow"})
    border_px: int = field(
        default=2, metadata={"help": "pixels dropped at each edge of the flow, where content enters or leaves the frame"}
    )

    def score(self, frames: Frames) -> dict[str, float]:
        a, b, flows = _flow_cache.get(frames, self.analysis_short_side, self.max_pairs)
        if len(a) == 0:
            return {"motion_mean": None, "motion_p90": None, "frame_diff": None}  # type: ignore[dict-item]
        pooled = np.concatenate([_inner(np.linalg.norm(f, axis=-1), self.border_px).ravel() for f in flows])
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()
        return {"motion_mean": float(pooled.mean()), "motion_p90": float(np.percentile(pooled, 90)), "frame_diff": float(diff)}

    def reject_reason(self, scores: dict[str, float]) -> str | None:
        if _under(scores.get("motion_mean"), self.min_motion_mean) or _under(scores.get("frame_diff"), self.min_frame_diff):
            return "low_motion"
        return None


def split_global_motion(flow: np.ndarray, mask: np.ndarray | None = None, grid_step: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Split a flow field into a global (camera) part and the local residual.

    The camera part is a similarity transform (rotation, uniform scale, translation) fitted with
    RANSAC to flow vectors on a grid (``cv2.estimateAffinePartial2D``): a camera pan, zoom or roll
    over a far scene moves the whole picture by one such transform, while independently moving
    objects are outliers. ``mask`` (bool [h, w]) restricts the fit to pixels whose flow is reliable
    (textured); it is ignored when it leaves fewer than 16 grid points.
    Returns float32 [h, w, 2] fields ``(global_flow, residual)``.
    """
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    sel = np.zeros((h, w), bool)
    sel[::grid_step, ::grid_step] = True
    if mask is not None and (sel & mask).sum() >= 16:
        sel &= mask
    src = np.stack([xs[sel], ys[sel]], -1)
    dst = src + flow[sel]
    m, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=1.0)
    if m is None:  # degenerate (e.g. too few points): call it all local
        return np.zeros_like(flow), flow
    pts = np.stack([xs, ys], -1)
    glob = pts @ m[:, :2].T + m[:, 2] - pts
    return glob.astype(np.float32), (flow - glob).astype(np.float32)


@dataclass
class CameraMotion(Scorer):
    """Camera motion vs motion in the scene, from the same flow as ``Motion``.

    Per sampled pair, a global similarity transform is fitted to the flow (``split_global_motion``).
    ``camera_motion``: mean magnitude of the global flow (px/frame at analysis size); ``local_motion``:
    the ``local_percentile`` (default 99th) percentile of the residual magnitude. A high percentile,
    because a moving hand or object may cover 1% of the frame and would vanish in a mean or a p90
    (measured: a 20 px square on 320x240 moving 4 px/frame scores p90 0.14, p99 2.1; a pan over a
    still texture scores p99 0.05). Both averaged over the pairs.
    Local motion counts only pixels where the first frame of a pair has texture: pixels whose structure-tensor
    minimum eigenvalue (``cv2.cornerMinEigenVal``, 5 px block) exceeds ``min_texture``; in flat or
    smooth regions Farneback underestimates motion (aperture problem) and a pan over a smooth scene
    would otherwise show as local motion. A pair with no textured pixel scores 0 local motion.
    Rejects ``camera_motion`` when ``camera_motion > max_camera_motion`` and ``local_motion`` is
    below ``min_local_motion`` (a moving camera over a still scene: no action to learn); with
    ``min_local_motion`` None any camera motion above the threshold rejects.
    """

    name: ClassVar[str] = "camera_motion"
    columns: ClassVar[tuple[str, ...]] = ("camera_motion", "local_motion")
    version: ClassVar[str] = "1"

    max_camera_motion: float | None = field(
        default=None,
        metadata={
            "help": "reject clips whose global (camera) flow exceeds this, px/frame at analysis size, unless local motion is high (none: off)"
        },
    )
    min_local_motion: float | None = field(
        default=None,
        metadata={
            "help": "a clip over max_camera_motion is kept when its local motion reaches this, px/frame (none: any camera motion over it rejects)"
        },
    )
    analysis_short_side: int = field(
        default=128, metadata={"help": "frames are shrunk to this short side, px, before scoring (scores compare only at one size)"}
    )
    max_pairs: int = field(default=8, metadata={"help": "pairs of consecutive frames sampled evenly per clip for the optical flow"})
    border_px: int = field(
        default=4, metadata={"help": "pixels dropped at each edge of the flow, where content enters or leaves the frame"}
    )
    local_percentile: float = field(
        default=99.0,
        metadata={
            "help": "percentile of the residual (non-camera) flow magnitude taken as local motion, so a small moving hand still counts"
        },
    )
    min_texture: float = field(
        default=1e-3,
        metadata={
            "help": "local motion counts only pixels whose structure-tensor minimum eigenvalue exceeds this (flow is unreliable on flat areas)"
        },
    )

    def score(self, frames: Frames) -> dict[str, float]:
        a, _, flows = _flow_cache.get(frames, self.analysis_short_side, self.max_pairs)
        if len(a) == 0:
            return {"camera_motion": None, "local_motion": None}  # type: ignore[dict-item]
        cam, loc = [], []
        for x, flow in zip(a, flows, strict=False):
            textured = cv2.cornerMinEigenVal(x, 5, 3) > self.min_texture
            # Fit the camera on all grid points, not only textured ones: with a flat background the
            # textured pixels are the moving object's edges, and the fit would call it the camera.
            glob, res = split_global_motion(flow)
            cam.append(float(np.linalg.norm(_inner(glob, self.border_px), axis=-1).mean()))
            res_mag = _inner(np.linalg.norm(res, axis=-1), self.border_px)[_inner(textured, self.border_px)]
            loc.append(float(np.percentile(res_mag, self.local_percentile)) if res_mag.size else 0.0)
        return {"camera_motion": float(np.mean(cam)), "local_motion": float(np.mean(loc))}

    def reject_reason(self, scores: dict[str, float]) -> str | None:
        if not _over(scores.get("camera_motion"), self.max_camera_motion):
            return None
        if self.min_local_motion is None or _under(scores.get("local_motion"), self.min_local_motion):
            return "camera_motion"
        return None


@dataclass
class Blur(Scorer):
    """Sharpness as the variance of the Laplacian of gray frames, ``blur`` (higher = sharper).

    Mean over up to ``max_frames`` frames sampled evenly, at analysis size (downscaling sharpens,
    so compare scores only at one ``analysis_short_side``). Rejects ``blurry`` below ``min_blur``.
    """

    name: ClassVar[str] = "blur"
    columns: ClassVar[tuple[str, ...]] = ("blur",)
    version: ClassVar[str] = "1"

    min_blur: float | None = field(
        default=None, metadata={"help": "reject clips whose Laplacian variance (sharpness) is below this as blurry (none: score only)"}
    )
    analysis_short_side: int = field(
        default=128, metadata={"help": "frames are shrunk to this short side, px, before scoring (scores compare only at one size)"}
    )
    max_frames: int = field(default=8, metadata={"help": "frames sampled evenly per clip for this score"})

    def score(self, frames: Frames) -> dict[str, float]:
        idx = sample_evenly(len(frames), self.max_frames)
        if len(idx) == 0:
            return {"blur": None}  # type: ignore[dict-item]
        gray = analysis_gray(frames.frames[idx], self.analysis_short_side)
        return {"blur": float(np.mean([cv2.Laplacian(g, cv2.CV_64F).var() for g in gray]))}

    def reject_reason(self, scores: dict[str, float]) -> str | None:
        return "blurry" if _under(scores.get("blur"), self.min_blur) else None


@dataclass
class BlackFrames(Scorer):
    """Fraction of frames that are black or flat, ``black_frac`` in [0, 1].

    A sampled frame counts when its gray mean is below ``dark_mean`` (black, fades) or its gray
    standard deviation is below ``flat_std`` (one flat colour: title cards, test patterns, a lens
    cap), both on 0-255. Rejects ``black_frames`` when ``black_frac > max_black_frac``.
    """

    name: ClassVar[str] = "black_frames"
    columns: ClassVar[tuple[str, ...]] = ("black_frac",)
    version: ClassVar[str] = "1"

    max_black_frac: float | None = field(
        default=None, metadata={"help": "reject clips whose fraction of black or flat frames exceeds this, 0-1 (none: score only)"}
    )
    dark_mean: float = field(default=16.0, metadata={"help": "a frame whose gray mean is below this (0-255) counts as black"})
    flat_std: float = field(default=4.0, metadata={"help": "a frame whose gray standard deviation is below this (0-255) counts as flat"})
    analysis_short_side: int = field(
        default=128, metadata={"help": "frames are shrunk to this short side, px, before scoring (scores compare only at one size)"}
    )
    max_frames: int = field(default=16, metadata={"help": "frames sampled evenly per clip for this score"})

    def score(self, frames: Frames) -> dict[str, float]:
        idx = sample_evenly(len(frames), self.max_frames)
        if len(idx) == 0:
            return {"black_frac": None}  # type: ignore[dict-item]
        gray = analysis_gray(frames.frames[idx], self.analysis_short_side).astype(np.float32)
        dark = (gray.mean(axis=(1, 2)) < self.dark_mean) | (gray.std(axis=(1, 2)) < self.flat_std)
        return {"black_frac": float(dark.mean())}

    def reject_reason(self, scores: dict[str, float]) -> str | None:
        return "black_frames" if _over(scores.get("black_frac"), self.max_black_frac) else None
