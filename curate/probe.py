"""Probe one input video: what it is (container, codec, size, rotation, rates, duration, frames,
audio) or, when it cannot be used, a short reason why. Never raises on a bad file.

Reasons (``SourceRecord.error``), checked in this order:

- ``not_found``: the path or URL does not exist.
- ``empty_file``: zero bytes.
- ``truncated``: an MP4/MOV whose top-level boxes run past the end of the file (typical of a
  download or copy cut short, where the ``moov`` index is lost), or a readable file whose last
  packets end well before the duration its header announces (see ``_tail_end_s``).
- ``unreadable_container``: FFmpeg cannot open it (random bytes, a text file renamed ``.mp4``).
- ``no_video_stream``: it opens but holds no video (audio-only, subtitles).
- ``undecodable``: it has a video stream but not one frame decodes from its start.
- ``single_image``: a still image (PNG, JPEG, ...) or a one-frame video.
- ``too_few_frames``: fewer than ``min_frames`` frames.
- ``probe_failed``: anything else (a bug or an odd file); ``error_detail`` holds the message.

Facts are still filled where known (e.g. a ``too_few_frames`` record has its size and duration),
so the index can explain every rejected input.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import struct
from dataclasses import dataclass, field
from typing import IO, ClassVar
from collections.abc import Iterator

import av
import numpy as np

from defi.schemas.records import SourceRecord

from .base import Operator

HASH_CHUNK = 1 << 20  # 1 MiB read from each end of a file by content_hash
_MAX_DETAIL = 500  # characters of a library message kept in error_detail
# Containers FFmpeg opens for a lone picture: a still image, never a video.
_IMAGE_FORMATS = ("image2", "_pipe")


# ---------------------------------------------------------------------------------------------
# Opening local paths and fsspec URLs


def _is_local(uri: str | os.PathLike) -> bool:
    s = os.fspath(uri)
    return "://" not in s or s.startswith("file://")


def _local_path(uri: str | os.PathLike) -> str:
    s = os.fspath(uri)
    return s[len("file://") :] if s.startswith("file://") else s


@contextlib.contextmanager
def open_binary(uri: str | os.PathLike) -> Iterator[tuple[str | IO[bytes], int]]:
    """Yield ``(target, size_bytes)`` where ``target`` is what ``av.open`` takes: the plain path
    for a local file (FFmpeg reads it directly, fastest), else a seekable fsspec file object.
    Raises ``FileNotFoundError`` when the input does not exist."""
    if _is_local(uri):
        path = _local_path(uri)
        if not os.path.isfile(path):
            raise FileNotFoundError(path)
        yield path, os.path.getsize(path)
        return
    import fsspec  # only for remote URLs; local files never pay the import

    fs, fspath = fsspec.core.url_to_fs(os.fspath(uri))
    if not fs.isfile(fspath):
        raise FileNotFoundError(os.fspath(uri))
    size = int(fs.size(fspath))
    with fs.open(fspath, "rb") as f:
        yield f, size


# ---------------------------------------------------------------------------------------------
# Content hash


def content_hash(path_or_fileobj: str | os.PathLike | IO[bytes]) -> str:
    """Fast content hash of a file: BLAKE2b (16-byte digest, 32 hex chars) over the file size as
    8 little-endian bytes, then its first 1 MiB, then its last 1 MiB (``bytes[max(0, size-1MiB):]``;
    the two regions overlap for files under 2 MiB). Reads at most 2 MiB whatever the file size, so
    it is cheap on object storage; two files differing only in their middle collide, which is
    acceptable for video (any re-encode changes the head). Takes a local path, an fsspec URL or a
    seekable binary file object (its position is restored)."""
    if isinstance(path_or_fileobj, (str, os.PathLike)):
        with open_binary(path_or_fileobj) as (target, size):
            if isinstance(target, str):
                with open(target, "rb") as f:
                    return _hash_fileobj(f, size)
            return _hash_fileobj(target, size)
    f = path_or_fileobj
    pos = f.tell()
    try:
        size = f.seek(0, io.SEEK_END)
        return _hash_fileobj(f, size)
    finally:
        f.seek(pos)


def _hash_fileobj(f: IO[bytes], size: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(struct.pack("<Q", size))
    f.seek(0)
    h.update(f.read(HASH_CHUNK))
    f.seek(max(0, size - HASH_CHUNK))
    h.update(f.read(HASH_CHUNK))
    return h.hexdigest()


def uri_hash(uri: str | os.PathLike) -> str:
    """Stand-in ``source_id`` for an input whose bytes cannot be read (``not_found``): BLAKE2b of
    ``"uri:" + uri``, so it is stable per URI and cannot equal a content hash by construction."""
    return hashlib.blake2b(b"uri:" + os.fspath(uri).encode(), digest_size=16).hexdigest()


# ---------------------------------------------------------------------------------------------
# Truncation evidence


def mp4_box_overrun(f: IO[bytes], size: int, max_boxes: int = 4096) -> str | None:
    """For an ISO-BMFF file (MP4/MOV; starts with an ``ftyp`` box), walk the top-level boxes and
    return a description of the first one that runs past end-of-file, else ``None``. A cut
    download keeps its header boxes but loses the tail of ``mdat`` and, usually, ``moov``."""
    f.seek(0)
    head = f.read(8)
    if len(head) < 8 or head[4:8] != b"ftyp":
        return None
    off = 0
    for _ in range(max_boxes):
        if off >= size:
            return None
        f.seek(off)
        hdr = f.read(16)
        if len(hdr) < 8:
            return f"box header at byte {off} cut by end of file ({size} bytes)"
        box_size, box_type = struct.unpack(">I4s", hdr[:8])
        if box_size == 1:  # 64-bit size follows the type
            if len(hdr) < 16:
                return f"box header at byte {off} cut by end of file ({size} bytes)"
            box_size = struct.unpack(">Q", hdr[8:16])[0]
        elif box_size == 0:  # box extends to end of file: cannot overrun
            return None
        if box_size < 8:
            return None  # not a sane box; leave the verdict to FFmpeg
        if off + box_size > size:
            name = box_type.decode("latin-1")
            return f"'{name}' box at byte {off} needs {box_size} bytes, file ends at {size}"
        off += box_size
    return None


def _overrun(target: str | IO[bytes], size: int) -> str | None:
    try:
        if isinstance(target, str):
            with open(target, "rb") as f:
                return mp4_box_overrun(f, size)
        return mp4_box_overrun(target, size)
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------
# Probe


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:_MAX_DETAIL]


def _container_name(fmt_name: str, uri: str) -> str:
    """FFmpeg names demuxers by family ("mov,mp4,m4a,3gp,3g2,mj2"); keep the member matching the
    file's extension when there is one, else the first, so the column is easy to query."""
    names = fmt_name.split(",")
    ext = os.path.splitext(uri.split("?")[0])[1].lstrip(".").lower()
    return ext if ext in names else names[0]


def is_vfr_pts(pts: list[int] | np.ndarray, tolerance: float = 0.1) -> bool | None:
    """Variable frame rate from presentation timestamps (stream ticks, any order): sort them, take
    the deltas between neighbours, and flag VFR when any delta differs from the median delta by
    more than ``tolerance`` x median plus one tick (one tick absorbs the rounding of e.g. 30000/1001
    fps into a 1/1000 time base: deltas 33, 34, 33). ``None`` with fewer than 3 deltas."""
    p = np.unique(np.asarray(pts, dtype=np.int64))  # sorted; B-frame reordering undone
    if len(p) < 4:
        return None
    d = np.diff(p)
    med = float(np.median(d))
    return bool(np.any(np.abs(d - med) > tolerance * med + 1))


def _tail_end_s(container, stream, expected_s: float, tail_s: float) -> tuple[float | None, str | None]:
    """Demux (no decode: cheap even for 4K) the packets of the last ``tail_s`` seconds and return
    the end time (pts + duration, seconds from stream start) of the last one, or ``None`` if none
    could be read, plus the library error met on the way, if any. A file cut short ends early."""
    tb = stream.time_base
    start = stream.start_time or 0
    target = start + int(max(0.0, expected_s - tail_s) / tb)
    last: float | None = None
    err = None
    try:
        container.seek(target, stream=stream, backward=True)
        for pkt in container.demux(stream):
            if pkt.pts is None or pkt.size == 0:
                continue
            end = float((pkt.pts - start + (pkt.duration or 0)) * tb)
            last = end if last is None else max(last, end)
    except (av.FFmpegError, OSError, EOFError) as e:
        err = _short(e)
    return last, err


def probe(
    uri_or_path: str | os.PathLike,
    *,
    kind: str | None = None,
    dataset: str | None = None,
    min_frames: int = 8,
    vfr_packets: int = 120,
    vfr_tolerance: float = 0.1,
    check_tail: bool = True,
    tail_s: float = 2.0,
    run_id: str | None = None,
) -> SourceRecord:
    """Probe one video (local path or fsspec URL) into a ``SourceRecord``; never raises.

    Reads the header, the first ``vfr_packets`` video packets (to decode the first frame, read the
    rotation from its display matrix and judge VFR from their pts, see ``is_vfr_pts``) and, when
    ``check_tail``, the packets of the last ``tail_s`` seconds (to catch a file cut short: its last
    packet must end within ``max(0.5 s, 3 frames)`` of the announced duration).

    Units: ``duration_s`` seconds; ``fps_avg`` = num_frames / duration_s; ``fps_real`` = FFmpeg's
    guessed rate (r_frame_rate unless the average rate is more plausible); ``rotation`` degrees
    counter-clockwise as stored in the display matrix (what ``VideoFrame.rotation`` reads; rotate
    the decoded picture by it to show it upright); ``width``/``height`` upright (after rotation).
    ``num_frames`` is the container's count when it has one (``num_frames_exact``), else counted
    by demuxing when the duration is unknown, else round(duration_s x fps_real).
    """
    uri = os.fspath(uri_or_path)
    rec = SourceRecord(source_id=uri_hash(uri), uri=uri, kind=kind, dataset=dataset, run_id=run_id)
    try:
        with open_binary(uri) as (target, size):
            rec.size_bytes = size
            rec.source_id = content_hash(target)
            if size == 0:
                return _fail(rec, "empty_file", "0 bytes")
            _probe_open(rec, target, size, min_frames, vfr_packets, vfr_tolerance, check_tail, tail_s)
    except FileNotFoundError as e:
        return _fail(rec, "not_found", _short(e))
    except Exception as e:  # never escape: an odd file must become a row, not kill the batch
        return _fail(rec, "probe_failed", _short(e))
    return rec


def _fail(rec: SourceRecord, reason: str, detail: str | None) -> SourceRecord:
    rec.error, rec.error_detail = reason, detail
    return rec


def _probe_open(rec, target, size, min_frames, vfr_packets, vfr_tolerance, check_tail, tail_s) -> None:
    if not isinstance(target, str):
        target.seek(0)
    try:
        container = av.open(target, "r")
    except (av.FFmpegError, OSError, ValueError) as e:
        overrun = _overrun(target, size)
        if overrun:
            _fail(rec, "truncated", f"{overrun}; {_short(e)}")
        else:
            _fail(rec, "unreadable_container", _short(e))
        return
    with container:
        rec.container = _container_name(container.format.name, rec.uri)
        rec.has_audio = len(container.streams.audio) > 0
        if not container.streams.video:
            _fail(rec, "no_video_stream", f"streams: {[s.type for s in container.streams]}")
            return
        v = container.streams.video[0]
        rec.codec = v.codec_context.name
        tb = v.time_base
        rate = v.guessed_rate or v.base_rate or v.average_rate
        rec.fps_real = float(rate) if rate else None
        if v.duration is not None and tb is not None:
            rec.duration_s = float(v.duration * tb)
        elif container.duration is not None:
            rec.duration_s = container.duration / av.time_base

        # First packets: decode the first frame (size, rotation, decodability) and keep their pts.
        pts: list[int] = []
        first = None
        decode_err = None
        try:
            for pkt in container.demux(v):
                if pkt.pts is not None and pkt.size:
                    pts.append(pkt.pts)
                if first is None:
                    try:
                        frames = v.decode(pkt)
                    except av.FFmpegError as e:  # a bad first packet may be followed by good ones
                        decode_err = _short(e)
                        frames = []
                    if frames:
                        first = frames[0]
                if first is not None and len(pts) >= vfr_packets:
                    break
        except (av.FFmpegError, OSError, EOFError) as e:
            decode_err = _short(e)
        if first is None:
            overrun = _overrun(target, size)
            if overrun:
                _fail(rec, "truncated", f"{overrun}; {decode_err}")
            else:
                _fail(rec, "undecodable", decode_err or "no frame decoded")
            return
        # Normalised to (-180, 180]: FFmpeg reads a half turn back as -180 or 180.
        rec.rotation = -((int(round(-first.rotation)) + 180) % 360 - 180)
        w, h = first.width, first.height
        if rec.rotation % 180 != 0:
            w, h = h, w
        rec.width, rec.height = w, h
        rec.is_vfr = is_vfr_pts(pts, vfr_tolerance)

        is_image = any(k in container.format.name for k in _IMAGE_FORMATS)
        if v.frames and v.frames > 0:
            rec.num_frames, rec.num_frames_exact = int(v.frames), True
        elif is_image or rec.duration_s is None:
            rec.num_frames, rec.num_frames_exact = _count_packets(container, v), True
        else:
            rec.num_frames = int(round(rec.duration_s * rec.fps_real)) if rec.fps_real else None
            rec.num_frames_exact = False
        if rec.duration_s and rec.num_frames:
            rec.fps_avg = rec.num_frames / rec.duration_s

        if is_image or rec.num_frames == 1:
            _fail(rec, "single_image", f"{container.format.name}, {rec.num_frames} frame(s)")
            return
        if rec.num_frames is not None and rec.num_frames < min_frames:
            _fail(rec, "too_few_frames", f"{rec.num_frames} < min_frames={min_frames}")
            return

        overrun = _overrun(target, size)
        if overrun:
            _fail(rec, "truncated", overrun)
            return
        if check_tail and rec.duration_s:
            last, err = _tail_end_s(container, v, rec.duration_s, tail_s)
            frame_s = 1.0 / rec.fps_real if rec.fps_real else 0.04
            slack = max(0.5, 3 * frame_s)
            if last is None or last < rec.duration_s - slack:
                got = "no packet" if last is None else f"last packet ends at {last:.3f}s"
                detail = f"header says {rec.duration_s:.3f}s, {got}" + (f"; {err}" if err else "")
                _fail(rec, "truncated", detail)
                return


def _count_packets(container, stream) -> int:
    """Exact frame count by demuxing from the start (no decode): for containers without a count
    or duration (raw streams, images)."""
    container.seek(0)
    n = 0
    try:
        for pkt in container.demux(stream):
            if pkt.size:
                n += 1
    except (av.FFmpegError, OSError, EOFError):
        pass
    return n


@dataclass
class Probe(Operator):
    """Operator: probe one input (path or fsspec URL) into a ``SourceRecord``; see ``probe``.

    ``min_frames``: fewer frames than this -> ``too_few_frames``. ``check_tail``/``tail_s``:
    demux the last ``tail_s`` seconds to catch truncated files."""

    name: ClassVar[str] = "probe"
    version: ClassVar[str] = "1"

    min_frames: int = field(default=8, metadata={"help": "fewer frames than this rejects the video as too_few_frames"})
    vfr_packets: int = field(
        default=120,
        metadata={
            "help": "video packets read at the start to decode the first frame and judge a variable frame rate from their timestamps"
        },
    )
    vfr_tolerance: float = field(
        default=0.1,
        metadata={"help": "flag a variable frame rate when a frame step differs from the median step by more than this fraction of it"},
    )
    check_tail: bool = field(
        default=True,
        metadata={"help": "demux the last tail_s seconds to catch a truncated file (its packets must reach the announced duration)"},
    )
    tail_s: float = field(default=2.0, metadata={"help": "seconds at the end of the file demuxed by check_tail"})

    def __post_init__(self) -> None:
        if self.min_frames < 1:
            raise ValueError(f"Probe.min_frames must be >= 1, got {self.min_frames}")
        if self.vfr_packets < 4:
            raise ValueError(f"Probe.vfr_packets must be >= 4, got {self.vfr_packets}")
        if self.tail_s <= 0:
            raise ValueError(f"Probe.tail_s must be > 0 seconds, got {self.tail_s}")

    def __call__(
        self, uri_or_path: str | os.PathLike, *, kind: str | None = None, dataset: str | None = None, run_id: str | None = None
    ) -> SourceRecord:
        return probe(uri_or_path, kind=kind, dataset=dataset, run_id=run_id, **self.params())
