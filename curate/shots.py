"""Shot (scene) boundary detection on decoded low-res frames, with PySceneDetect's detectors.

We feed frames we already decoded to a PySceneDetect detector through its frame-level API
(``process_frame``) instead of letting PySceneDetect open the file again: the video is decoded
once, in chunks, and the same frames serve shots, motion and blur.

Cut precision. A cut is reported at the first *analysis* frame of the new shot. When the analysis
frames are every ``k``-th source frame (e.g. 8 fps from a 30 fps source, k ~ 4), the true cut lies
between the previous analysis frame and this one, so the reported ``start_frame`` is late by 0 to
``k - 1`` source frames (up to one analysis interval in seconds). Decode at the full frame rate
(k = 1) for frame-exact cuts, or trim clip starts by one analysis interval downstream.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar

import cv2
import numpy as np
from scenedetect.common import FrameTimecode
from scenedetect.detectors import AdaptiveDetector, ContentDetector

from defi.schemas.records import Span

from .base import Frames, Operator

DETECTORS = ("adaptive", "content")

# The timecodes we hand PySceneDetect count analysis frames (0, 1, 2, ...); the rate attached to
# them is nominal, because we disable PySceneDetect's own minimum scene length (it counts frames or
# seconds at that nominal rate, and would drop a cut) and mark short shots ourselves on the real
# timestamps.
_NOMINAL_FPS = 1000.0


@dataclass(frozen=True)
class Shot(Span):
    """One shot, half-open: source frames ``[start_frame, end_frame)``, time ``[start_s, end_s)``.

    Frame numbers are source frame indices (``Frames.indices``), times are stream pts in seconds.
    ``end_frame``/``end_s`` are those of the first frame of the next shot, or the end of the video.
    """

    index: int
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    reject_reason: str | None = None  # "too_short": shorter than ``Shots.min_shot_s`` (still a shot)


@dataclass
class Shots(Operator):
    """Split a video into shots.

    ``detector``: ``"adaptive"`` (PySceneDetect AdaptiveDetector: a frame's content change against
    the rolling mean of its neighbours; robust to fast camera motion) or ``"content"``
    (ContentDetector: a fixed threshold on the HSV content change between consecutive frames).
    ``adaptive_threshold``, ``min_content_val``, ``window_width``: AdaptiveDetector parameters
    (``window_width`` in analysis frames; a cut is known ``window_width`` frames after it happens).
    ``content_threshold``: ContentDetector threshold. ContentDetector over-cuts fast pans over fine
    texture (measured: 2 px/frame over 4 px noise blocks scores ~31 every frame, above the default
    27); AdaptiveDetector does not, which is why it is the default.
    ``luma_only``: compare brightness only (both detectors).
    ``min_shot_s``: seconds; a shot shorter than this is marked ``reject_reason="too_short"`` (the
    windows make it one rejected clip). A detected cut always splits, whatever the length of the
    piece it leaves: merging a short piece into its neighbour would put a cut inside a kept clip.

    Call on all frames at once (``Shots()(frames)``) or stream chunks through ``.stream()``. A cut
    in the last frames is found too: ``finish`` pads the detector with copies of the last frame
    (the adaptive detector only judges a frame once ``window_width`` frames follow it). ``context``:
    frames just before ``frames`` (the end of the previous analysis segment), pushed first so a cut
    in the first frames is judged against what came before; no shot starts inside them.
    """

    name: ClassVar[str] = "shots"
    version: ClassVar[str] = "1"

    detector: str = field(
        default="adaptive",
        metadata={
            "help": "adaptive (PySceneDetect AdaptiveDetector, robust to fast camera motion) | content (ContentDetector: fixed threshold)"
        },
    )
    adaptive_threshold: float = field(
        default=3.0,
        metadata={"help": "AdaptiveDetector: cut where a frame's content change exceeds this multiple of its neighbours' rolling mean"},
    )
    min_content_val: float = field(
        default=15.0, metadata={"help": "AdaptiveDetector: a cut also needs at least this raw content change (HSV, 0-255 scale)"}
    )
    window_width: int = field(
        default=2,
        metadata={
            "help": "AdaptiveDetector: neighbours on each side in the rolling mean, analysis frames (a cut is known this many frames late)"
        },
    )
    content_threshold: float = field(
        default=27.0, metadata={"help": "ContentDetector: cut where the HSV content change between consecutive frames exceeds this"}
    )
    luma_only: bool = field(default=False, metadata={"help": "compare brightness only, not hue and saturation (both detectors)"})
    min_shot_s: float = field(
        default=0.5, metadata={"help": "a shot shorter than this many seconds becomes one clip rejected as too_short"}
    )

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"detector={self.detector!r}; valid: {', '.join(DETECTORS)}")
        if self.min_shot_s < 0:
            raise ValueError(f"min_shot_s must be >= 0 seconds, got {self.min_shot_s}")
        if self.window_width < 1:
            raise ValueError(f"window_width must be >= 1 frame, got {self.window_width}")

    def detector_instance(self, fed: bool = False):
        """A fresh PySceneDetect detector with our parameters (its own min length disabled).
        ``fed``: one that takes each frame's score from its ``scores`` queue (see ``HSVScores``)."""
        if self.detector == "adaptive":
            return (_FedAdaptive if fed else AdaptiveDetector)(
                adaptive_threshold=self.adaptive_threshold,
                min_scene_len=0,
                window_width=self.window_width,
                min_content_val=self.min_content_val,
                luma_only=self.luma_only,
            )
        return (_FedContent if fed else ContentDetector)(threshold=self.content_threshold, min_scene_len=0, luma_only=self.luma_only)

    def stream(self, context: Frames | None = None) -> ShotDetector:
        """A streaming detector: ``push`` chunks, then ``finish``."""
        return ShotDetector(self, context)

    def __call__(
        self, frames: Frames, end_frame: int | None = None, end_s: float | None = None, context: Frames | None = None
    ) -> list[Shot]:
        det = ShotDetector(self, context)
        det.push(frames)
        return det.finish(end_frame=end_frame, end_s=end_s)


class HSVScores:
    """ContentDetector's frame score, many frames at a time: the mean absolute change of hue,
    saturation and value from the previous frame (``_mean_pixel_distance`` of each HSV plane),
    weighted by the detector's component weights. The same integer sums and the same float
    operations in the same order as ``ContentDetector._calculate_frame_score``, so the same
    scores (a test compares them), without its per-frame conversions and copies (one HSV
    conversion and one vectorised difference per block of frames: about 3x less CPU per frame).
    Only for detectors without the edge component (its Canny pass is per frame)."""

    BLOCK = 64  # frames converted at once (about 6 MB of HSV at 128 px)

    def __init__(self, weights):
        self.weights = tuple(float(w) for w in weights)
        self.denom = sum(abs(w) for w in self.weights)
        self.last: np.ndarray | None = None  # HSV of the previous frame

    def __call__(self, rgb: np.ndarray) -> list[float]:
        """Scores of RGB frames [T, H, W, 3] (uint8), continuing from the frames of earlier calls
        (the first frame ever scores 0.0, as in PySceneDetect)."""
        out: list[float] = []
        for i in range(0, len(rgb), self.BLOCK):
            out += self._block(np.ascontiguousarray(rgb[i : i + self.BLOCK]))
        return out

    def _block(self, rgb: np.ndarray) -> list[float]:
        t, h, w = rgb.shape[:3]
        # HSV is per pixel: one conversion of the frames stacked into one tall image; RGB2HSV is
        # OpenCV's BGR2HSV with the other channel order (the same code, the same values)
        hsv = cv2.cvtColor(rgb.reshape(t * h, w, 3), cv2.COLOR_RGB2HSV).reshape(t, h, w, 3)
        prev, out = self.last, []
        num_pixels = float(h * w)
        for cur in hsv:
            if prev is None:
                out.append(0.0)
            else:
                # |a - b| of uint8 planes fits uint8; the per-plane sums are exact integers
                dh, ds, dv, _ = cv2.sumElems(cv2.absdiff(cur, prev))
                components = (dh / num_pixels, ds / num_pixels, dv / num_pixels, 0.0)
                out.append(sum(c * wt for c, wt in zip(components, self.weights, strict=True)) / self.denom)
            prev = cur
        self.last = None if prev is None else prev.copy()
        return out


class _Fed:
    """A PySceneDetect detector that takes each frame's score from ``scores`` (filled by the
    caller with ``HSVScores``) instead of converting the frame itself."""

    scores: deque

    def _calculate_frame_score(self, timecode, frame_img) -> float:  # noqa: ARG002 - PySceneDetect's signature
        return self.scores.popleft()


class _FedAdaptive(_Fed, AdaptiveDetector):
    pass


class _FedContent(_Fed, ContentDetector):
    pass


class ShotDetector:
    """Streaming shot detection: ``push`` decode chunks in order, then ``finish`` returns shots.

    Memory: keeps only the source index and pts of each analysis frame (16 bytes a frame, about
    1.4 MB for two hours at 12 fps), never the frames.

    Frame scores are computed in blocks (``HSVScores``) and fed to the detector, unless its edge
    component is weighted (then the detector converts each frame itself, as PySceneDetect does).
    """

    def __init__(self, params: Shots, context: Frames | None = None):
        self.params = params
        plain = params.detector_instance()
        self._batched = plain._weights.delta_edges == 0.0
        self._det = params.detector_instance(fed=True) if self._batched else plain
        if self._batched:
            self._det.scores = deque()
            self._hsv = HSVScores(self._det._weights)
        self._indices: list[int] = []
        self._pts: list[float] = []
        self._cuts: list[int] = []  # detector ordinals where a new shot starts
        self._pushed = 0  # detector ordinals used (context frames first)
        self._offset = 0  # ordinal of the first real frame
        self._last_bgr: np.ndarray | None = None
        if context is not None and len(context):
            self._feed_all(context.frames)
            self._offset = self._pushed

    def _feed(self, img: np.ndarray) -> None:
        bgr = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
        for tc in self._det.process_frame(FrameTimecode(self._pushed, fps=_NOMINAL_FPS), bgr):
            self._cuts.append(tc.frame_num)
        self._pushed += 1
        self._last_bgr = bgr

    def _feed_all(self, frames: np.ndarray) -> None:
        if not self._batched:
            for img in frames:
                self._feed(img)
            return
        self._det.scores.extend(self._hsv(frames))
        for _ in range(len(frames)):
            for tc in self._det.process_frame(FrameTimecode(self._pushed, fps=_NOMINAL_FPS), None):
                self._cuts.append(tc.frame_num)
            self._pushed += 1

    def _feed_last_again(self) -> None:
        """A copy of the last frame (no content change: score 0 against it)."""
        if self._batched:
            self._det.scores.append(0.0)  # what HSVScores gives a frame equal to the previous one
            frame = None
        else:
            frame = self._last_bgr
        for tc in self._det.process_frame(FrameTimecode(self._pushed, fps=_NOMINAL_FPS), frame):
            self._cuts.append(tc.frame_num)
        self._pushed += 1

    def push(self, chunk: Frames) -> None:
        """Feed the next decoded chunk (frames in presentation order, after the previous chunk)."""
        if not len(chunk):
            return
        self._indices += [int(i) for i in chunk.indices]
        self._pts += [float(t) for t in chunk.pts_s]
        self._feed_all(chunk.frames)

    def finish(self, end_frame: int | None = None, end_s: float | None = None) -> list[Shot]:
        """Shots covering every pushed frame.

        ``end_frame``/``end_s``: the end of the video (source frame count, duration in seconds),
        when the caller knows it (from the probe). Otherwise the last frame's index and pts plus
        one median step of the pushed frames: exact at full rate and constant fps, an estimate
        when the analysis frames are sub-sampled.
        """
        n = len(self._indices)
        if n == 0:
            return []
        # copies of the last frame let the detector judge the last real frames (no content change
        # among the copies, so they add no cut of their own; any cut reported on them is dropped)
        for _ in range(self.params.window_width + 1):
            self._feed_last_again()
        for tc in self._det.post_process(FrameTimecode(self._pushed - 1, fps=_NOMINAL_FPS)):
            self._cuts.append(tc.frame_num)
        idx = np.asarray(self._indices, np.int64)
        pts = np.asarray(self._pts, np.float64)
        if end_frame is None:
            end_frame = int(idx[-1] + (np.median(np.diff(idx)) if n > 1 else 1))
        if end_s is None:
            end_s = float(pts[-1] + (np.median(np.diff(pts)) if n > 1 else 0.0))
        cuts = sorted({c - self._offset for c in self._cuts if 0 < c - self._offset < n})
        bounds = [0, *cuts]
        shots = []
        for i, start in enumerate(bounds):
            last = i + 1 == len(bounds)
            stop_frame = end_frame if last else int(idx[bounds[i + 1]])
            stop_s = end_s if last else float(pts[bounds[i + 1]])
            short = stop_s - float(pts[start]) < self.params.min_shot_s - 1e-9
            shots.append(Shot(i, int(idx[start]), stop_frame, float(pts[start]), stop_s, "too_short" if short else None))
        return shots
