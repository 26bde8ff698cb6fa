"""Tiny real videos made at test time with PyAV (H.264 unless asked otherwise).

Every generator yields uint8 RGB frames [H, W, 3]; ``write_video`` encodes them. Patterns are
chosen so tests can assert values: a static colour has no motion, a moving square has local
motion, a pan over a still image has camera motion only, and scenes built from different
patterns have cuts at known frames.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from collections.abc import Iterable, Iterator

import av
import numpy as np

from defi.curate.encode import fixed_allocations


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float = 24,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    container_format: str | None = None,
    pts_s: Iterable[float] | None = None,
    rotation: int | None = None,
    audio: bool = False,
) -> Path:
    """Encode frames to ``path``. ``pts_s`` gives explicit timestamps (variable frame rate);
    ``rotation`` stores a display-matrix rotation (degrees) in the container."""
    path = Path(path)
    frames = list(frames)
    h, w = frames[0].shape[:2]
    with fixed_allocations(), av.open(str(path), "w", format=container_format) as out:
        rate = Fraction(fps).limit_denominator(1001)
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "18"}
            stream.codec_context.thread_count = 1  # the same bytes for the same frames, run after run
        else:  # high quality, so codec artifacts at keyframes do not look like cuts
            stream.bit_rate = 4_000_000
        if rotation is not None:
            stream.set_display_rotation(rotation)  # FFmpeg no longer writes the "rotate" tag
        astream = out.add_stream("aac", rate=16000) if audio else None
        if pts_s is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
            pts_list = [int(round(t * 1000)) for t in pts_s]
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            if pts_s is not None:
                vf.pts = pts_list[i]
                vf.time_base = Fraction(1, 1000)
            for pkt in stream.encode(vf):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
        if astream is not None:
            n = int(16000 * len(frames) / fps)
            samples = (0.1 * np.sin(np.arange(n) / 10)).astype(np.float32)[None]
            af = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            af.sample_rate = 16000
            for pkt in astream.encode(af):
                out.mux(pkt)
            for pkt in astream.encode():
                out.mux(pkt)
    return path


def static_color(n: int, h: int = 64, w: int = 96, color=(40, 120, 200)) -> Iterator[np.ndarray]:
    for _ in range(n):
        yield np.full((h, w, 3), color, np.uint8)


def moving_square(
    n: int, h: int = 64, w: int = 96, size: int = 16, speed: int = 2, bg=(20, 20, 20), fg=(240, 200, 40)
) -> Iterator[np.ndarray]:
    """A square crossing a still background: local motion only."""
    for i in range(n):
        f = np.full((h, w, 3), bg, np.uint8)
        x = (i * speed) % max(1, w - size)
        y = (h - size) // 2
        f[y : y + size, x : x + size] = fg
        yield f


def textured_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A still, richly textured image (smoothed noise + bars) that flow and scene detectors can track."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    img = np.kron(base, np.ones((4, 4, 1), np.uint8))[:h, :w]
    return img


def pan(n: int, h: int = 64, w: int = 96, speed: int = 2, seed: int = 0) -> Iterator[np.ndarray]:
    """A camera panning right over a still textured scene: camera motion, no local motion."""
    big = textured_image(h, w + n * speed + 1, seed)
    for i in range(n):
        yield big[:, i * speed : i * speed + w].copy()


def scenes(lengths: list[int], h: int = 64, w: int = 96, seed: int = 0) -> Iterator[np.ndarray]:
    """Concatenated shots of different content; cuts at cumulative sums of ``lengths`` (frames).
    Each shot is a differently seeded texture with a small moving square, so shots differ sharply
    and each has some motion."""
    for s, n in enumerate(lengths):
        img = textured_image(h, w, seed + 17 * s)
        for i in range(n):
            f = img.copy()
            x = (i * 2) % (w - 12)
            f[10:22, x : x + 12] = 255
            yield f


def noise(n: int, h: int = 64, w: int = 96, seed: int = 0) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def smooth_texture(h: int, w: int, seed: int = 0, cell: int = 16) -> np.ndarray:
    """A still image with only low spatial frequencies (coarse noise, box-blurred over ``cell`` px),
    closer to natural footage than ``textured_image``: a pan over it changes few pixel values a
    lot, so histogram/HSV scene detectors should not see it as a cut."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (h // cell + 2, w // cell + 2, 3)).astype(np.float32)
    img = np.kron(coarse, np.ones((cell, cell, 1), np.float32))
    for axis in (0, 1):  # box blur of width ``cell`` along each axis (cumulative-sum trick)
        c = np.cumsum(img, axis=axis)
        c = np.concatenate([np.zeros_like(c.take([0], axis=axis)), c], axis=axis)
        n = img.shape[axis] - cell + 1
        img = (c.take(range(cell, cell + n), axis=axis) - c.take(range(0, n), axis=axis)) / cell
    return np.clip(img[:h, :w], 0, 255).astype(np.uint8)


def smooth_pan(n: int, h: int = 64, w: int = 96, speed: int = 2, seed: int = 0) -> Iterator[np.ndarray]:
    """A camera panning right over a still, smooth scene (``smooth_texture``): camera motion only."""
    big = smooth_texture(h, w + n * speed + 1, seed)
    for i in range(n):
        yield big[:, i * speed : i * speed + w].copy()


def square_transitions(
    n: int, size: int = 32, square: int = 8, max_shift: int = 4, seed: int = 0, texture: bool = True, centered: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Transitions (o_t, o_t+k, action) for latent-action tests: a bright square on a random
    smooth background, moved by a known integer action (dx, dy) in [-max_shift, max_shift] pixels.
    Returns float32 obs [n, 3, size, size] and next_obs in [0, 1], and actions [n, 2] float32
    (dx, dy) divided by max_shift (so in [-1, 1]). texture=False: a flat random background colour; centered=True: the square always starts in
    the centre (then o_t+k alone fixes the action; otherwise only the pair does)."""
    rng = np.random.default_rng(seed)
    obs = np.empty((n, 3, size, size), np.float32)
    nxt = np.empty_like(obs)
    act = rng.integers(-max_shift, max_shift + 1, (n, 2))
    for i in range(n):
        coarse = rng.uniform(0.0, 0.5, (3, size // 8 + 1, size // 8 + 1)).astype(np.float32)
        if not texture:
            coarse[:] = coarse[:, :1, :1]
        bg = np.kron(coarse, np.ones((1, 8, 8), np.float32))[:, :size, :size]
        color = rng.uniform(0.7, 1.0, 3).astype(np.float32)[:, None, None]
        lo, hi = max_shift, size - square - max_shift
        x, y = rng.integers(lo, hi + 1, 2)
        if centered:
            x = y = (size - square) // 2
        dx, dy = act[i]
        obs[i], nxt[i] = bg, bg
        obs[i][:, y : y + square, x : x + square] = color
        nxt[i][:, y + dy : y + dy + square, x + dx : x + dx + square] = color
    return obs, nxt, (act / max_shift).astype(np.float32)


# --- probe/decode fixtures (added for tests/curate/test_probe.py, test_decode.py) -------------


def write_rotated_video(path: str | Path, frames: Iterable[np.ndarray], rotation: int, fps: float = 24) -> Path:
    """Encode frames (as stored, not rotated) with a display-matrix rotation of ``rotation``
    degrees counter-clockwise (PyAV >= 18 ``set_display_rotation``; the legacy ``metadata["rotate"]``
    tag used by ``write_video`` is no longer written by FFmpeg). A player shows each frame turned
    counter-clockwise by ``rotation``, i.e. ``np.rot90(frame, rotation // 90)``."""
    path = Path(path)
    frames = list(frames)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18"}
        stream.set_display_rotation(rotation)
        for f in frames:
            for pkt in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    return path


def write_audio_only(path: str | Path, seconds: float = 1.0, rate: int = 16000) -> Path:
    """An AAC file with no video stream (container from the suffix, e.g. ``.m4a`` or ``.mp4``)."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        a = out.add_stream("aac", rate=rate)
        n = int(rate * seconds)
        frame = av.AudioFrame.from_ndarray((0.1 * np.sin(np.arange(n) / 10)).astype(np.float32)[None], format="fltp", layout="mono")
        frame.sample_rate = rate
        for pkt in a.encode(frame):
            out.mux(pkt)
        for pkt in a.encode():
            out.mux(pkt)
    return path


def write_image(path: str | Path, img: np.ndarray) -> Path:
    """A still image (format from the suffix: ``.png``, ``.jpg``)."""
    path = Path(path)
    av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").save(str(path))
    return path


def truncate_copy(src: str | Path, dst: str | Path, keep: float) -> Path:
    """Copy the first ``keep`` fraction (0..1) of ``src``'s bytes to ``dst``: a download cut short."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep)])
    return Path(dst)


def shard_writers(corpus, count: int = 2) -> list:
    """``count`` open WebDataset writers for ``ROOT/shards/shard-00000N.tar`` of a ``Corpus``."""
    import webdataset as wds

    corpus.fs.makedirs(corpus.path("shards"), exist_ok=True)
    return [wds.TarWriter(corpus.path("shards", f"shard-{s:06d}.tar")) for s in range(count)]


def write_clip_sample(
    writers: list,
    shard: int,
    key: str,
    mp4: bytes,
    n: int,
    fps: float,
    size: int,
    *,
    uri: str | None,
    members: dict | None = None,
    meta: dict | None = None,
    **record,
):
    """One kept clip of ``n`` frames (source frames 0..n, 0..n/fps s) as a shard sample
    (``mp4`` + its ``SampleMeta`` json + ``members`` such as ``actions.npy``) in
    ``writers[shard]``; returns its ``ClipRecord`` with the same ``uri`` (``record``: extra columns,
    e.g. scores)."""
    from defi.schemas.records import ClipRecord
    from defi.schemas.samples import SampleMeta

    m = SampleMeta(
        key=key,
        source_id=key[:16],
        uri=uri,
        start_frame=0,
        end_frame=n,
        start_s=0.0,
        end_s=n / fps,
        fps=fps,
        width=size,
        height=size,
        num_frames=n,
        **(meta or {}),
    )
    writers[shard].write({"__key__": key, "mp4": mp4, "json": m.to_json(), **(members or {})})
    return ClipRecord(
        key=key,
        source_id=key[:16],
        uri=uri,
        start_frame=0,
        end_frame=n,
        start_s=0.0,
        end_s=n / fps,
        shard=f"shard-{shard:06d}.tar",
        out_fps=fps,
        out_frames=n,
        out_width=size,
        out_height=size,
        **record,
    )


def square_windows(n: int, size: int = 16, square: int = 4, max_shift: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Windows (o_0, o_1, o_2) of a bright square on a flat random background, moved by two known
    integer actions in [-max_shift, max_shift] pixels from a random start position. Returns
    float32 frames [n, 3, 3, size, size] in [0, 1] and actions [n, 2, 2] float32 ((dx, dy) of
    each step, divided by max_shift)."""
    rng = np.random.default_rng(seed)
    frames = np.empty((n, 3, 3, size, size), np.float32)
    act = rng.integers(-max_shift, max_shift + 1, (n, 2, 2))
    for i in range(n):
        bg = np.broadcast_to(rng.uniform(0.0, 0.5, (3, 1, 1)).astype(np.float32), (3, size, size))
        color = rng.uniform(0.7, 1.0, 3).astype(np.float32)[:, None, None]
        x, y = rng.integers(2 * max_shift, size - square - 2 * max_shift + 1, 2)
        for j in range(3):
            frames[i, j] = bg
            frames[i, j][:, y : y + square, x : x + square] = color
            if j < 2:
                x, y = x + act[i, j, 0], y + act[i, j, 1]
    return frames, (act / max_shift).astype(np.float32)
