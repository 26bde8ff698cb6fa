"""Re-encode kept clips to H.264 MP4 at a target frame rate and size (PyAV, libx264, yuv420p).

Clips are re-encoded, never stream-copied: a stream copy can only cut at keyframes, and a clip must
hold exactly the frames of its [start_s, end_s) window. Output frames are chosen by timestamp: for
each output tick ``t_i = start_s + i / fps`` (while ``t_i < end_s``) the source frame whose
presentation time is nearest to ``t_i`` is taken, among the source frames inside the window. This
handles variable-frame-rate sources and any fps ratio (down- or up-sampling) the same way.

Times are stream presentation times in seconds (``frame.pts * time_base``), the same clock as
``Frames.pts_s``. Output MP4s carry ``+faststart`` (the ``moov`` index first) so a reader can start
playing/decoding a shard member without reading it to the end.

Failures (unreadable source, empty window) come back as ``EncodeResult.error``, never raised.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, ClassVar
from collections.abc import Iterator

import numpy as np

from .base import Frames, Operator

_EPS = 1e-6  # seconds; absorbs float error in pts * time_base and in tick arithmetic


@dataclass
class EncodeResult:
    """What an encode produced. ``pts_s``: for each output frame, the presentation time (seconds)
    of the source frame it was taken from. ``bytes``: size of the encoded MP4. ``error``: short
    reason when nothing (valid) was written; the other fields are then zero/empty."""

    num_frames: int = 0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    bytes: int = 0
    pts_s: list[float] = field(default_factory=list)
    error: str | None = None
    error_detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def even_size(width: int, height: int, short_side: int | None, upscale: bool = False) -> tuple[int, int]:
    """Output (width, height): the short side scaled to ``short_side`` keeping the aspect ratio
    (never enlarged unless ``upscale``), each rounded down to an even number (yuv420p needs even
    dimensions; down, so an unscaled odd source is never enlarged), at least 2."""
    scale = 1.0
    if short_side is not None:
        s = short_side / min(width, height)
        if s < 1.0 or upscale:
            scale = s

    def ev(x: float) -> int:
        return max(2, int(x + 1e-6) // 2 * 2)

    return ev(width * scale), ev(height * scale)


def select_ticks(
    times: Iterator[tuple[float, Any]],
    start_s: float,
    end_s: float,
    fps: float,
    max_frames: int | None = None,
    last_duration_s: float | None = None,
) -> Iterator[tuple[float, Any]]:
    """Nearest-timestamp resampling, streaming: consumes ``(t, item)`` in increasing ``t`` and yields
    ``(t, item)`` once per output tick ``start_s + i/fps`` (``i`` while the tick is ``< end_s`` and
    ``i < max_frames``). Only items with ``start_s <= t < end_s`` are candidates; a tie goes to the
    earlier item. Ticks after the last candidate are filled only while they fall inside that
    candidate's display interval (``last_duration_s``, or the median spacing seen), so a window
    running past the end of the video does not repeat the last frame."""
    i = 0
    n_max = max_frames if max_frames is not None else float("inf")

    def tick(k: int) -> float:
        return start_s + k / fps

    prev: tuple[float, Any] | None = None
    gaps: list[float] = []
    for t, item in times:
        if t < start_s - _EPS:
            continue
        if t >= end_s - _EPS or i >= n_max:
            break
        while i < n_max and tick(i) < end_s - _EPS and t > tick(i) + _EPS:
            tk = tick(i)
            if prev is None or (t - tk) < (tk - prev[0]) - _EPS:
                yield t, item
            else:
                yield prev
            i += 1
        if prev is not None:
            gaps.append(t - prev[0])
        prev = (t, item)
    if prev is None:
        return
    dur = last_duration_s if last_duration_s else (float(np.median(gaps)) if gaps else 1.0 / fps)
    while i < n_max and tick(i) < end_s - _EPS and tick(i) < prev[0] + dur - _EPS:
        yield prev
        i += 1


_M_PERTURB = -6  # glibc mallopt: fill each new allocation with a fixed byte
_PERTURB_BYTE = 0x5A
_perturb_lock = threading.Lock()
_perturb_users = 0  # open writers (a program may encode from several threads): the fill is off when none is
_libc: Any = None


def _mallopt_perturb(byte: int) -> None:
    """glibc only (elsewhere a no-op): ``mallopt(M_PERTURB, byte)``; 0 turns it off."""
    global _libc
    if _libc is None:
        import ctypes
        import ctypes.util

        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
            _libc.mallopt  # noqa: B018 - raises AttributeError where libc has no mallopt
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.mallopt(_M_PERTURB, byte)


def _perturb(on: bool) -> None:
    global _perturb_users
    with _perturb_lock:
        _perturb_users += 1 if on else -1
        if (on and _perturb_users == 1) or (not on and _perturb_users == 0):
            _mallopt_perturb(_PERTURB_BYTE if on else 0)


@contextlib.contextmanager
def fixed_allocations() -> Iterator[None]:
    """While open, glibc fills every new allocation with one fixed byte (see ``_Writer``): an
    x264 encode made inside depends on its pixels and settings alone, not on what the process
    freed before. For encoders other than ``encode_clip``'s, e.g. test videos."""
    _perturb(True)
    try:
        yield
    finally:
        _perturb(False)


class _Writer:
    """An H.264 MP4 writer taking ``av.VideoFrame``s already at the output size.

    libavformat's ``+faststart`` moves the ``moov`` atom in a second pass that reopens the output
    *by file name*, so it cannot work on a Python file object: for file-like outputs the MP4 is
    written to a temporary file and copied into ``out`` on ``close``."""

    def __init__(self, out: str | Path | BinaryIO, fps: float, width: int, height: int, crf: int, preset: str):
        import av

        self.rate = Fraction(fps).limit_denominator(1001)
        self.out = out
        self.tmp: str | None = None
        if isinstance(out, (str, Path)):
            path = str(out)
        else:
            fd, self.tmp = tempfile.mkstemp(suffix=".mp4", prefix="defi-encode-")
            os.close(fd)
            path = self.tmp
        self.container = av.open(path, "w", format="mp4", options={"movflags": "+faststart"})
        self.stream = self.container.add_stream("libx264", rate=self.rate)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.stream.options = {"crf": str(crf), "preset": preset}
        # one encoder thread, whatever the machine: libx264's output depends on its thread count
        # (frame threads change rate-control and lookahead decisions), and its default follows the
        # CPUs this process may use, so a clip re-encoded by a resumed run, another --workers or
        # another machine would differ in bytes. Runs parallelise across videos instead.
        self.stream.codec_context.thread_count = 1
        self.stream.codec_context.thread_type = "NONE"
        # libx264 reads some memory it allocated before writing it, so without this the bytes of
        # a clip would depend on what the process freed before (another --workers, a resumed run,
        # another order of videos). While a writer is open, glibc fills every new allocation with
        # one fixed byte, which makes those reads, and the encode, a function of the pixels alone
        # (off again once the last open writer closes or aborts).
        _perturb(True)
        self._perturbing = True
        self.width, self.height = width, height
        self.n = 0

    def write(self, frame) -> None:
        frame.pts = self.n
        frame.time_base = 1 / self.rate
        for pkt in self.stream.encode(frame):
            self.container.mux(pkt)
        self.n += 1

    def close(self) -> int:
        """Flush and finish; returns the size in bytes of the MP4 written."""
        try:
            for pkt in self.stream.encode():
                self.container.mux(pkt)
            self.container.close()
            if self.tmp is None:
                return os.path.getsize(self.out)
            with open(self.tmp, "rb") as f:
                size = 0
                while chunk := f.read(1 << 20):
                    self.out.write(chunk)
                    size += len(chunk)
            return size
        finally:
            self._cleanup()

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:
            pass
        self._cleanup()

    def _cleanup(self) -> None:
        if self._perturbing:
            self._perturbing = False
            _perturb(False)
        if self.tmp is not None and os.path.exists(self.tmp):
            os.unlink(self.tmp)


def _upright(frame, rotation: int):
    """Apply the display-matrix rotation (degrees counter-clockwise, as ``VideoFrame.rotation``
    reports it) so output frames are upright like ``Frames``; a no-op for unrotated video."""
    import av

    k = int(round(rotation / 90.0)) % 4
    if k == 0:
        return frame
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24"), k)), format="rgb24")


def encode_clip(
    src_path: str | Path,
    start_s: float,
    end_s: float,
    out: str | Path | BinaryIO,
    *,
    fps: float,
    short_side: int | None = None,
    crf: int = 23,
    preset: str = "veryfast",
    max_frames: int | None = None,
    upscale: bool = False,
) -> EncodeResult:
    """Cut [start_s, end_s) (stream seconds) out of ``src_path``, resample to ``fps`` by nearest
    timestamp, resize so the short side is ``short_side`` pixels (aspect kept, even dimensions,
    never enlarged unless ``upscale``; ``None`` keeps the size) and encode H.264 MP4 to ``out``
    (a path or a writable, seekable binary file object such as ``BytesIO``).

    Decoding seeks to the keyframe at or before ``start_s`` and drops the frames before it.
    ``max_frames`` caps the number of output frames. Returns an ``EncodeResult``; problems are
    reported in ``EncodeResult.error`` (``open_failed``, ``no_video_stream``, ``empty_window``,
    ``no_frames_in_window``, ``decode_failed``, ``encode_failed``).
    """
    import av

    if not fps or fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if end_s <= start_s:
        return EncodeResult(error="empty_window", error_detail=f"end_s {end_s} <= start_s {start_s}")
    try:
        container = av.open(str(src_path))
    except Exception as e:  # unreadable or missing file: data, not an exception
        return EncodeResult(error="open_failed", error_detail=f"{type(e).__name__}: {e}"[:500])
    writer: _Writer | None = None
    pts: list[float] = []
    stage = "decode_failed"
    try:
        if not container.streams.video:
            return EncodeResult(error="no_video_stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads: decode is the bulk of the cost
        tb = stream.time_base
        first_s = float(stream.start_time * tb) if stream.start_time is not None else 0.0
        if start_s > first_s + _EPS:
            # backward=True: land on the keyframe at or before start_s, then decode forward.
            container.seek(int(start_s / tb), stream=stream, backward=True, any_frame=False)
        rate = stream.average_rate or stream.guessed_rate
        last_dur = None
        if rate:
            last_dur = 1.0 / float(rate)

        def timed() -> Iterator[tuple[float, Any]]:
            for fr in container.decode(stream):
                if fr.pts is None:
                    continue
                yield float(fr.pts * fr.time_base), fr

        for t, fr in select_ticks(timed(), start_s, end_s, fps, max_frames, last_dur):
            fr = _upright(fr, getattr(fr, "rotation", 0) or 0)
            if writer is None:
                stage = "encode_failed"
                w, h = even_size(fr.width, fr.height, short_side, upscale)
                writer = _Writer(out, fps, w, h, crf, preset)
            stage = "decode_failed"
            small = fr.reformat(width=writer.width, height=writer.height, format="yuv420p", interpolation="AREA")
            stage = "encode_failed"
            writer.write(small)
            pts.append(t)
            stage = "decode_failed"
        if writer is None:
            return EncodeResult(error="no_frames_in_window", error_detail=f"[{start_s}, {end_s}) s")
        stage = "encode_failed"
        size = writer.close()
        return EncodeResult(num_frames=writer.n, fps=float(writer.rate), width=writer.width, height=writer.height, bytes=size, pts_s=pts)
    except Exception as e:
        if writer is not None:
            writer.abort()
        return EncodeResult(error=stage, error_detail=f"{type(e).__name__}: {e}"[:500])
    finally:
        container.close()


def encode_frames(
    frames: Frames | np.ndarray,
    fps: float,
    out: str | Path | BinaryIO,
    *,
    short_side: int | None = None,
    crf: int = 23,
    preset: str = "veryfast",
    upscale: bool = False,
) -> EncodeResult:
    """Encode already-decoded uint8 frames as H.264 MP4 at ``fps``, every frame once, resized like
    ``encode_clip``: RGB [T, H, W, 3] (robot episodes, tests), or ``Frames`` in either layout
    (``i420`` frames of the output size go to the encoder as they are, with no conversion).
    ``pts_s`` of the result are the ``Frames.pts_s`` given, or ``i / fps`` for a bare array."""
    import av

    if not fps or fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    fmt = "rgb24"
    if isinstance(frames, Frames):
        arr, pts = frames.frames, [float(t) for t in frames.pts_s]
        if frames.layout == "i420":
            fmt = "yuv420p"
    else:
        arr = np.asarray(frames)
        pts = [i / fps for i in range(len(arr))]
    if fmt == "rgb24" and (arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8):
        raise ValueError(f"frames must be uint8 [T,H,W,3], got {arr.dtype} {arr.shape}")
    if len(arr) == 0:
        return EncodeResult(error="no_frames")
    w, h = frames.size if fmt == "yuv420p" else (arr.shape[2], arr.shape[1])
    ow, oh = even_size(w, h, short_side, upscale)
    writer = None
    try:
        writer = _Writer(out, fps, ow, oh, crf, preset)
        for img in arr:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format=fmt)
            if fmt != "yuv420p" or (w, h) != (ow, oh):
                vf = vf.reformat(width=ow, height=oh, format="yuv420p", interpolation="AREA")
            writer.write(vf)
        size = writer.close()
    except Exception as e:
        if writer is not None:
            writer.abort()
        return EncodeResult(error="encode_failed", error_detail=f"{type(e).__name__}: {e}"[:500])
    return EncodeResult(num_frames=len(arr), fps=float(writer.rate), width=ow, height=oh, bytes=size, pts_s=pts)


@dataclass
class ClipEncoder(Operator):
    """Operator form of ``encode_clip`` (its fields are the encode parameters)."""

    name: ClassVar[str] = "encode"
    version: ClassVar[str] = "1"

    fps: float = field(
        default=10.0, metadata={"help": "frame rate of the encoded clips, frames per second (frames picked by nearest timestamp)"}
    )
    short_side: int | None = field(
        default=256, metadata={"help": "short side of the encoded clips, px, aspect kept (none: the source size)"}
    )
    crf: int = field(default=23, metadata={"help": "H.264 constant rate factor: lower is better quality and larger files (0-51)"})
    preset: str = field(
        default="veryfast", metadata={"help": "x264 speed preset (ultrafast ... veryslow): slower gives smaller files at the same quality"}
    )
    max_frames: int | None = field(default=None, metadata={"help": "cap on the frames encoded per clip (none: every frame of the window)"})
    upscale: bool = field(default=False, metadata={"help": "enlarge sources smaller than short_side (otherwise they keep their size)"})

    def __post_init__(self) -> None:
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.short_side is not None and self.short_side < 2:
            raise ValueError(f"short_side must be >= 2 or None, got {self.short_side}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in [0, 51] (libx264), got {self.crf}")

    def __call__(self, src_path: str | Path, start_s: float, end_s: float, out: str | Path | BinaryIO) -> EncodeResult:
        return encode_clip(
            src_path,
            start_s,
            end_s,
            out,
            fps=self.fps,
            short_side=self.short_side,
            crf=self.crf,
            preset=self.preset,
            max_frames=self.max_frames,
            upscale=self.upscale,
        )

    @staticmethod
    def update_record(record, result: EncodeResult) -> None:
        """Fill a ``ClipRecord``'s ``out_*`` columns, or record the failure and reject the clip
        with reason ``encode_failed`` (detail under ``errors["encode"]``)."""
        if result.ok:
            record.out_fps, record.out_width, record.out_height = result.fps, result.width, result.height
            record.out_frames, record.out_bytes = result.num_frames, result.bytes
        else:
            record.errors["encode"] = result.error if not result.error_detail else f"{result.error}: {result.error_detail}"
            record.reject("encode_failed")
