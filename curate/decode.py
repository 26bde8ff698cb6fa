"""Streaming, low-resolution decode of one video into ``Frames`` chunks.

Memory is bounded by ``chunk_frames`` x output frame size (plus FFmpeg's few reference frames),
never by the video's length: each frame is scaled down and converted to RGB by one reused
swscale context as it leaves the decoder, written into a [chunk_frames, H, W, 3] buffer, and the
buffer is yielded when full.

Timestamps: ``Frames.pts_s`` are the stream's presentation times in seconds, counted from the
stream's ``start_time`` (so the first frame of most files is at 0.0); ``start_s``/``end_s`` use the
same clock. Frame rate sub-sampling selects frames by these timestamps, never by index or nominal
fps, so variable-frame-rate video keeps its true (non-uniform) times.

Backend: PyAV; ``"auto"`` means PyAV. decord (``backend="decord"``) was measured with
``bench/decode.py`` (20 s 1280x720 30 fps H.264 to short side 128, 2 shared cores) and is not
faster: 2.3 ms CPU/frame against 1.7 for this path, and its peak RSS grows with length (+111 MiB
for 20 s, +153 MiB for 60 s; this path: +68 MiB for both). It also ignores rotation and fails on
some output widths, so it stays an explicit option for comparison only.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from typing import ClassVar
from collections.abc import Iterator

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from .base import Frames, Operator
from .probe import open_binary

BACKENDS = ("auto", "pyav", "decord")
# Packets demuxed past the start point when counting frame indices before a seek: covers the
# decoder's reordering delay (B-frames), which is a few frames, with a wide margin.
_REORDER_MARGIN_S = 2.0


class DecodeError(RuntimeError):
    """A video could not be decoded (not found, no video stream, corrupt data mid-way). Carries
    how many frames were produced before the failure, so the caller can record it as data."""

    def __init__(self, uri: str, detail: str, frames_done: int = 0):
        super().__init__(f"{uri}: {detail} (after {frames_done} frames)")
        self.uri, self.detail, self.frames_done = uri, detail, frames_done


def output_size(width: int, height: int, size: int | tuple[int, int] | None) -> tuple[int, int]:
    """Output (width, height) for an upright source of ``width`` x ``height`` pixels.

    ``None``: unchanged. ``int``: the short side becomes ``size`` px, aspect kept, both sides
    rounded to even numbers (codecs and pooling layers like even sizes). ``(w, h)``: exactly that.
    """
    if size is None:
        return width, height
    if isinstance(size, (tuple, list)):
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ValueError(f"size (w, h) must be positive, got {size}")
        return w, h
    s = int(size)
    if s <= 0:
        raise ValueError(f"size (short side px) must be positive, got {size}")
    s = _even(s)
    if width <= height:
        return s, _even(s * height / width)
    return _even(s * width / height), s


def _even(x: float) -> int:
    """Nearest even integer >= 2, halves rounded up (not to even, as ``round`` does)."""
    return max(2, int(x / 2 + 0.5) * 2)


class _NearestTick:
    """Streaming frame-rate sub-sampler. Ticks at ``t0 + k / fps`` (``t0`` = first frame's time);
    each tick takes the frame whose pts is nearest to it (ties go to the later frame); a frame
    nearest to several ticks is emitted once (no duplicates: gaps in VFR video stay gaps); ticks
    after the last frame are dropped. Needs one frame of look-ahead, held in ``prev``."""

    def __init__(self, fps: float):
        self.period = 1.0 / fps
        self.t0: float | None = None
        self.k = 0
        self.prev = None
        self.prev_t = 0.0
        self.prev_done = False

    def push(self, item, t: float) -> list:
        if self.t0 is None:
            self.t0, self.k = t, 1
            self.prev, self.prev_t, self.prev_done = item, t, True
            return [item]
        out = []
        cur_done = False
        while (tick := self.t0 + self.k * self.period) <= t + 1e-9:
            if tick - self.prev_t < t - tick:
                if not self.prev_done:
                    out.append(self.prev)
                    self.prev_done = True
            elif not cur_done:
                out.append(item)
                cur_done = True
            self.k += 1
        self.prev, self.prev_t, self.prev_done = item, t, cur_done
        return out

    def stop_at(self, t: float, end_s: float) -> list:
        """The frame at ``t`` is past ``end_s`` and is not taken: ticks before ``end_s`` that are
        nearer the held frame than ``t`` still take the held frame."""
        out = []
        if self.t0 is None:
            return out
        while (tick := self.t0 + self.k * self.period) < end_s - 1e-6 and tick <= t + 1e-9:
            if tick - self.prev_t < t - tick and not self.prev_done:
                out.append(self.prev)
                self.prev_done = True
            self.k += 1
        return out


class _Chunker:
    """Fills a [chunk, *frame shape] buffer; ``add`` returns a full ``Frames`` or ``None``."""

    def __init__(self, chunk_frames: int, layout: str = "rgb"):
        self.n, self.layout = chunk_frames, layout
        self.buf: np.ndarray | None = None
        self.pts = np.zeros(chunk_frames, np.float64)
        self.idx = np.zeros(chunk_frames, np.int64)
        self.i = 0

    def add(self, img: np.ndarray, t: float, index: int) -> Frames | None:
        if self.buf is None:
            # A fresh buffer per chunk: the consumer owns the yielded one (no copy-out).
            self.buf = np.empty((self.n, *img.shape), np.uint8)
        self.buf[self.i], self.pts[self.i], self.idx[self.i] = img, t, index
        self.i += 1
        return self.flush() if self.i == self.n else None

    def add_i420(self, frame, t: float, index: int) -> Frames | None:
        """``add`` for a yuv420p ``av.VideoFrame``: its planes are copied straight into the
        buffer (``to_ndarray`` would copy each plane, then join them: three copies, not one)."""
        if self.buf is None:
            self.buf = np.empty((self.n, frame.height * 3 // 2, frame.width), np.uint8)
        i420_into(frame, self.buf[self.i])
        self.pts[self.i], self.idx[self.i] = t, index
        self.i += 1
        return self.flush() if self.i == self.n else None

    def flush(self) -> Frames | None:
        if self.i == 0:
            return None
        frames = self.buf if self.i == self.n else self.buf[: self.i].copy()  # short: free the rest
        out = Frames(frames, self.pts[: self.i].copy(), self.idx[: self.i].copy(), self.layout)
        self.buf, self.i = None, 0
        return out


def i420_into(frame, out: np.ndarray) -> None:
    """Copy a yuv420p frame's Y, U and V planes (their padding dropped) into ``out``
    [H * 3 / 2, W], packed one after the other: the bytes of ``frame.to_ndarray()``."""
    flat = out.reshape(-1)
    pos = 0
    for plane in frame.planes:
        pw, ph = plane.width, plane.height
        src = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:ph, :pw]
        flat[pos : pos + pw * ph].reshape(ph, pw)[...] = src
        pos += pw * ph


def decode(
    path: str | os.PathLike,
    *,
    fps: float | None = None,
    size: int | tuple[int, int] | None = None,
    start_s: float = 0.0,
    end_s: float | None = None,
    chunk_frames: int = 256,
    backend: str = "auto",
    interpolation: str = "AREA",
    skip_loop_filter: str = "auto",
    pix_fmt: str = "rgb24",
    threads: int = 0,
) -> Iterator[Frames]:
    """Decode ``path`` (local path or fsspec URL) into chunks of at most ``chunk_frames`` frames.

    ``fps``: output frames per second, chosen by timestamp (see ``_NearestTick``); ``None`` keeps
    every frame; a rate above the source's keeps every frame once. ``size``: see ``output_size``
    (applied to the upright picture). ``start_s``/``end_s``: keep frames with
    ``start_s <= pts_s < end_s`` (seconds, stream clock). Frames are upright: the display-matrix
    rotation is applied. ``Frames.indices`` are 0-based source frame numbers in presentation
    order, also after a seek. ``interpolation``: swscale filter used to scale down; ``"AREA"``
    averages the source pixels under each output pixel (no aliasing at large factors) and
    measured cheaper than ``"BILINEAR"`` here.

    ``skip_loop_filter``: ``"auto"`` skips the codec's in-loop deblocking filter (FFmpeg's
    ``skip_loop_filter=all``, plus ``flags2=+fast``) when the output has at most 1/16 of the
    source's pixels (4x smaller per side): block-edge artifacts are then averaged away by the
    downscale. Skipping is not free: reference frames stay unfiltered, so the difference grows
    within a GOP and with the source's compression. Measured against the filtered decode at the
    same size: a 720p x264 pan (CRF 23) at 128 px, PSNR >= 48 dB (mean 53) for 18% less CPU
    per frame (``bench/decode.py``); a 384x256 pan at 64 px, 46 dB at CRF 23 and 38 dB at CRF 30;
    at 2x per side (128 px) 43 and 35 dB, which is why ``"auto"`` waits for 4x.
    ``"always"``/``"never"`` force it (``"always"`` for throughput where small drift is fine).

    ``pix_fmt``: ``"rgb24"`` yields RGB ``Frames``; ``"yuv420p"`` yields ``layout="i420"`` frames
    (PyAV backend only): the scaled picture stays in the decoder's colour space, which skips the
    YUV->RGB conversion (measured: 720p -> 456x256 costs 0.26 ms/frame of CPU scaled to yuv420p
    against 0.77 ms to rgb24) and halves the bytes held. Both sides are rounded down to even
    numbers (4:2:0 needs them even), also for ``size=None``.

    ``threads``: decoder threads (PyAV backend); 0 lets FFmpeg choose (frame and slice threads, as
    many as cores). With one video per core already (a pool of workers), 1 costs less CPU per
    frame: frame threading spent ~30-40% more CPU on a 720p60 H.264 file (0.87-1.03 s against
    1.37-1.40 s) for no gain when every core is busy. The decoded pictures are the same.

    A file cut short decodes up to where its data ends, without error (``probe`` reports it as
    ``truncated``).

    Raises ``ValueError`` for bad arguments and ``DecodeError`` when the file cannot be decoded
    (the generator has then yielded every chunk completed before the failure).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    if end_s is not None and end_s <= start_s:
        raise ValueError(f"end_s ({end_s}) must be > start_s ({start_s})")
    output_size(2, 2, size)  # validate now: a bad size is a config error, not a DecodeError
    if pix_fmt not in PIX_FMTS:
        raise ValueError(f"pix_fmt must be one of {PIX_FMTS}, got {pix_fmt!r}")
    if backend == "decord" and pix_fmt != "rgb24":
        raise ValueError("backend='decord' decodes to rgb24 only")
    if backend == "decord":
        yield from _decode_decord(path, fps=fps, size=size, start_s=start_s, end_s=end_s, chunk_frames=chunk_frames)
        return
    if skip_loop_filter not in SKIP_LOOP_FILTER:
        raise ValueError(f"skip_loop_filter must be one of {SKIP_LOOP_FILTER}, got {skip_loop_filter!r}")
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0: FFmpeg's choice), got {threads}")
    yield from _decode_pyav(path, fps, size, start_s, end_s, chunk_frames, interpolation, skip_loop_filter, pix_fmt, threads)


SKIP_LOOP_FILTER = ("auto", "always", "never")
PIX_FMTS = ("rgb24", "yuv420p")


def _skips_loop_filter(mode: str, width: int, height: int, size) -> bool:
    """Whether to skip deblocking: see ``decode``. Width/height are the coded (pre-rotation)
    size; the rule compares pixel counts, so rotation does not matter."""
    if mode != "auto":
        return mode == "always"
    if size is None or not width or not height:
        return False
    ow, oh = output_size(width, height, size)
    return 16 * ow * oh <= width * height


def _decode_pyav(
    path, fps, size, start_s, end_s, chunk_frames, interpolation, skip_loop_filter: str = "auto", pix_fmt: str = "rgb24", threads: int = 0
) -> Iterator[Frames]:
    uri = os.fspath(path)
    done = 0
    try:
        with open_binary(uri) as (target, _size), av.open(target, "r") as container:
            if not container.streams.video:
                raise DecodeError(uri, "no video stream")
            v = container.streams.video[0]
            if threads == 1:
                v.codec_context.thread_count = 1  # no decoder threads (see ``decode``)
            else:
                v.thread_type = "AUTO"  # frame + slice threads: the decode, not the scale, dominates
                if threads:
                    v.codec_context.thread_count = threads
            cc = v.codec_context
            if _skips_loop_filter(skip_loop_filter, cc.width, cc.height, size):
                cc.options = {**cc.options, "skip_loop_filter": "all", "flags2": "+fast"}  # before the first decode
            tb = v.time_base
            tb_num, tb_den = tb.numerator, tb.denominator  # int arithmetic: float(Fraction) without Fractions
            t_origin = v.start_time or 0
            rate = v.guessed_rate or v.average_rate or 25
            index_of = _seek(container, v, start_s) if start_s > 0 else None

            selector = _NearestTick(fps) if fps else None
            chunker = _Chunker(chunk_frames, "i420" if pix_fmt == "yuv420p" else "rgb")
            reformatter = VideoReformatter()
            geometry = None  # (pre-rotation w, h, quarter turns), fixed by the first frame
            index: int | None = None
            last_t = None
            for frame in container.decode(v):
                if frame.pts is not None:
                    t = (frame.pts - t_origin) * tb_num / tb_den  # correctly rounded, as float(Fraction) is
                else:  # no timestamp: continue the previous one at the nominal rate
                    t = (last_t + 1 / float(rate)) if last_t is not None else 0.0
                if index is None:
                    index = index_of(t) if index_of else 0
                else:
                    index += 1
                last_t = t
                if t < start_s - 1e-6:
                    continue
                if end_s is not None and t >= end_s - 1e-6:
                    picks = selector.stop_at(t, end_s) if selector else []
                    stop = True
                else:
                    picks = selector.push((frame, t, index), t) if selector else [(frame, t, index)]
                    stop = False
                for fr, ft, fi in picks:
                    if geometry is None:
                        geometry = _geometry(fr, size, even=pix_fmt == "yuv420p")
                    if pix_fmt == "yuv420p" and not geometry[2]:  # upright yuv420p: planes straight into the chunk
                        small = reformatter.reformat(
                            fr, width=geometry[0], height=geometry[1], format="yuv420p", interpolation=interpolation, threads=1
                        )
                        full = chunker.add_i420(small, ft, fi)
                    else:
                        full = chunker.add(_convert(fr, geometry, interpolation, reformatter, pix_fmt), ft, fi)
                    if full is not None:
                        done += len(full)
                        yield full
                if stop:
                    break
            tail = chunker.flush()
            if tail is not None:
                yield tail
    except DecodeError:
        raise
    except (av.FFmpegError, OSError, EOFError, ValueError) as e:
        raise DecodeError(uri, f"{type(e).__name__}: {e}", done) from e


def _geometry(frame, size, even: bool = False) -> tuple[int, int, int]:
    """(width, height) to scale the *stored* picture to, and the quarter turns (counter-clockwise)
    that make it upright, so that after turning it has the requested upright size. ``even``: round
    both sides down to even numbers (4:2:0 output)."""
    quarter = (int(round(frame.rotation / 90)) % 4) if frame.rotation else 0
    w, h = frame.width, frame.height
    if quarter % 2:
        w, h = h, w  # upright dims
    ow, oh = output_size(w, h, size)
    if even:
        ow, oh = max(2, ow // 2 * 2), max(2, oh // 2 * 2)
    return (oh, ow, quarter) if quarter % 2 else (ow, oh, quarter)


def _convert(frame, geometry, interpolation, reformatter: VideoReformatter, pix_fmt: str) -> np.ndarray:
    if pix_fmt == "rgb24":
        return _to_rgb(frame, geometry, interpolation, reformatter)
    w, h, quarter = geometry
    img = reformatter.reformat(frame, width=w, height=h, format="yuv420p", interpolation=interpolation, threads=1).to_ndarray()
    return rot90_i420(img, quarter) if quarter else img


def rot90_i420(img: np.ndarray, k: int) -> np.ndarray:
    """Turn one I420 frame [H*3/2, W] by ``k`` quarter turns counter-clockwise, plane by plane.
    The planes are split by element offsets, not rows: with H % 4 == 2 a chroma plane ends
    mid-row of the packed array."""
    h, w = img.shape[0] // 3 * 2, img.shape[1]
    flat = np.ascontiguousarray(img).reshape(-1)
    n, c = h * w, h * w // 4
    planes = (flat[:n].reshape(h, w), flat[n : n + c].reshape(h // 2, w // 2), flat[n + c :].reshape(h // 2, w // 2))
    y, u, v = (np.rot90(p, k) for p in planes)
    oh, ow = y.shape
    return np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(oh * 3 // 2, ow)


def _to_rgb(frame, geometry, interpolation, reformatter: VideoReformatter) -> np.ndarray:
    w, h, quarter = geometry
    # One reformatter per decode: its swscale context is built once and reused. The per-frame
    # ``frame.to_ndarray(width=, height=)`` builds a new one for every frame: decode + convert
    # measured 2.6 ms CPU/frame that way against 1.7 ms here (720p -> 228x128, bench/decode.py).
    # threads=1: the decoder's threads already fill the cores (threads=0/2 measured no better).
    img = reformatter.reformat(frame, width=w, height=h, format="rgb24", interpolation=interpolation, threads=1).to_ndarray()
    # Display matrix rotation is counter-clockwise (FFmpeg's av_display_rotation_get); np.rot90
    # with k>0 turns an [H, W] image counter-clockwise as displayed.
    return np.rot90(img, quarter) if quarter else img


def _seek(container, v, start_s: float):
    """Seek to the keyframe at or before ``start_s``; return a function mapping the first decoded
    frame's time to its source index. The index is the number of frames with an earlier pts,
    counted by demuxing (no decode) packets from the start up to ``start_s`` plus a reorder
    margin: cheap next to decoding, and exact also for VFR video."""
    tb = v.time_base
    origin = v.start_time or 0
    limit = origin + (start_s + _REORDER_MARGIN_S) / tb
    pts: list[int] = []
    for pkt in container.demux(v):
        if pkt.pts is not None and pkt.size:
            pts.append(pkt.pts)
        if pkt.dts is not None and pkt.dts > limit:
            break
    pts.sort()
    container.seek(origin + int(start_s / tb), stream=v, backward=True)

    def index_of(t: float) -> int:
        return bisect.bisect_left(pts, origin + round(t / tb))

    return index_of


def _decode_decord(path, *, fps, size, start_s, end_s, chunk_frames) -> Iterator[Frames]:
    """decord reader, for comparison only (``bench/decode.py``). Reads ``chunk_frames`` indices at
    a time with ``get_batch``; timestamps from ``get_frame_timestamp``. Ignores rotation, and
    decord's CPU reader is known to grow memory on long/4K videos (dmlc/decord #208, #197, #157),
    so ``auto`` never picks it."""
    import decord

    uri = os.fspath(path)
    try:
        probe_vr = decord.VideoReader(uri, num_threads=0)
        h0, w0 = probe_vr[0].shape[:2] if len(probe_vr) else (0, 0)
        del probe_vr
        ow, oh = output_size(w0, h0, size)
        vr = decord.VideoReader(uri, width=ow, height=oh, num_threads=0)
        n = len(vr)
        ts = vr.get_frame_timestamp(np.arange(n))[:, 0].astype(np.float64)
    except Exception as e:  # decord raises its own DECORDError
        raise DecodeError(uri, f"decord: {e}") from e
    keep = np.nonzero((ts >= start_s - 1e-6) & ((ts < end_s - 1e-6) if end_s is not None else True))[0]
    if fps:
        sel = _NearestTick(fps)
        keep = np.array([i for k in keep for i in sel.push(int(k), float(ts[k]))], np.int64)
    for a in range(0, len(keep), chunk_frames):
        idx = keep[a : a + chunk_frames]
        try:
            batch = vr.get_batch(list(idx)).asnumpy()
        except Exception as e:  # e.g. decord 0.6 fails on some output widths (48 px)
            raise DecodeError(uri, f"decord: {e}", a) from e
        yield Frames(np.ascontiguousarray(batch, dtype=np.uint8), ts[idx], idx.astype(np.int64))


def decode_all(path: str | os.PathLike, **kwargs) -> Frames:
    """All frames of ``decode(path, **kwargs)`` in one ``Frames`` (for short clips only: memory
    grows with length)."""
    return Frames.concat(list(decode(path, **kwargs)))


@dataclass
class Decode(Operator):
    """Operator: stream a video as low-res ``Frames`` chunks; fields as in ``decode``
    (``fps`` frames/s, ``size`` short side px or (w, h), ``start_s``/``end_s`` seconds)."""

    name: ClassVar[str] = "decode"
    version: ClassVar[str] = "3"  # 2: skip_loop_filter="auto"; 3: pix_fmt

    fps: float | None = None
    size: int | tuple[int, int] | None = None
    start_s: float = 0.0
    end_s: float | None = None
    chunk_frames: int = 256
    backend: str = "auto"
    interpolation: str = "AREA"
    skip_loop_filter: str = "auto"
    pix_fmt: str = "rgb24"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"Decode.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"Decode.fps must be > 0 frames/s, got {self.fps}")
        if self.chunk_frames < 1:
            raise ValueError(f"Decode.chunk_frames must be >= 1, got {self.chunk_frames}")
        if isinstance(self.size, list):
            self.size = tuple(self.size)

    def __call__(self, path: str | os.PathLike) -> Iterator[Frames]:
        return decode(path, **self.params())

    def all(self, path: str | os.PathLike) -> Frames:
        return decode_all(path, **self.params())
