"""LeRobot v3.0 datasets, read and written in one place (no lerobot import needed): the layout,
``LeRobotV3Writer`` (used by ``defi sim generate`` and ``defi export lerobot``), the feature
statistics it writes, and ``load_lerobot`` (used by ``defi curate`` on a dataset folder).

Layout, as LeRobot's own writer lays it out (``lerobot/datasets/utils.py``: ``DEFAULT_DATA_PATH``,
``DEFAULT_VIDEO_PATH``, ``DEFAULT_EPISODES_PATH``, ``create_empty_dataset_info``)::

    ROOT/meta/info.json                                  codebase_version "v3.0", fps, features, path templates
    ROOT/meta/tasks.parquet                              pandas frame: index = task text, column task_index
    ROOT/meta/stats.json                                 stats of every feature (see "Statistics")
    ROOT/meta/episodes/chunk-000/file-000.parquet        one row per episode (lengths, tasks, file refs, offsets,
                                                         ``stats/<feature>/<stat>`` of the episode)
    ROOT/data/chunk-000/file-000.parquet                 one row per frame
    ROOT/videos/<video_key>/chunk-000/file-000.mp4       episodes concatenated, one after the other

v3 concatenates episodes into shared files: an episode's frames live in video file
(``videos/<key>/chunk_index``, ``videos/<key>/file_index``) between ``videos/<key>/from_timestamp``
and ``videos/<key>/to_timestamp`` (seconds), and in the data file between rows
``dataset_from_index`` and ``dataset_to_index`` (global ``index``, end exclusive). LeRobot's loader
decodes a frame at ``from_timestamp + timestamp``; we write exactly that: frame ``i`` of an episode
that starts at file frame ``s`` has pts ``(s + i) / fps`` in a stream whose time base is ``1/fps``.
A new file starts when the current one passes its size budget (``*_files_size_in_mb``), as
LeRobot does; ``chunks_size`` files make a chunk.

Episodes must be appended in ``episode_index`` order; the writer is single-process (workers produce
episodes, the parent writes them), so files are written once, in order, and never patched.

Stats (below, "Statistics": min, max, mean, std, count, q01..q99 per feature, per
episode and for the dataset, as LeRobot computes them): numeric columns from the values written;
camera images from the written mp4s, decoded once at ``close`` (only the sampled frames are
converted to RGB), so they describe the frames a LeRobot policy will be fed.

Reading: ``load_lerobot`` gives every (episode, camera) as a ``curate.robot.RobotEpisode`` (the
rows, timestamps, instruction, and the episode's span of the shared video file).

Statistics. Feature statistics the way LeRobot writes them: ``meta/stats.json`` and the per-episode
``stats/<feature>/<stat>`` columns of ``meta/episodes``.

What LeRobot (``lerobot/datasets/compute_stats.py``, releases 0.4.x to 0.6.1) records, and what
this module reproduces without importing it:

- **Per episode, per feature** (every feature but strings: ``action``, ``observation.*``, the
  camera videos and the bookkeeping columns ``timestamp``, ``frame_index``, ``episode_index``,
  ``index``, ``task_index``): ``min``, ``max``, ``mean``, ``std`` (population, ddof 0), ``count``
  (rows, shape ``[1]``) and the quantiles ``q01``, ``q10``, ``q50``, ``q90``, ``q99``. A vector
  feature ``[N, D]`` gives stats of shape ``[D]``; a scalar column ``[N]`` gives shape ``[1]``.
- **Quantiles** come from a 5000-bin histogram per dimension spanning ``[min - 1e-10,
  max + 1e-10]``: the first bin whose cumulative count reaches ``q * count``, linearly
  interpolated inside that bin (the value is the lower edge when that bin is the first one). So a
  quantile is within one bin width, ``(max - min) / 5000``, of the data's quantile. With fewer than
  two rows every quantile is the mean. (defi clips a quantile to ``[min, max]``; LeRobot's can sit
  1e-10 outside.)
- **Images** (``video`` features): the episode's frames at ``sample_frame_indices`` (all frames up
  to 99, then ``max(100, N**0.75)`` evenly spaced ones, at most 10 000), each strided down when
  its larger side is 300 px or more (``downsample``), as uint8 RGB; stats per channel over every
  sampled pixel, divided by 255, shape ``[3, 1, 1]``; ``count`` = frames sampled. LeRobot reads
  them from the frames it is about to encode; defi reads them from the frames the written mp4
  decodes to (PyAV ``rgb24``, LeRobot's ``pyav`` video backend), i.e. what a policy will see.
- **The dataset** (``stats.json``): the episodes' stats merged by ``aggregate``: min of mins, max of
  maxes, count-weighted mean, the pooled std (parallel variance formula), the sum of counts, and
  each quantile as the count-weighted mean of the episodes' quantiles (LeRobot's rule up to 0.6.1;
  its main branch after 0.6.1 keeps the lowest / highest episode value instead).

Arithmetic is float64 throughout (LeRobot sums in float32 for float32 features and images, and
takes ``std`` as ``sqrt(E[x^2] - E[x]^2)``); the definitions are the same, the values agree to
float32 rounding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .robot import RobotEpisode, check_timestamps, video_frame_times

CODEBASE_VERSION = "v3.0"
CHUNK_FILE_PATTERN = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE_PATTERN + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE_PATTERN + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE_PATTERN + ".parquet"
DEFAULT_CHUNK_SIZE = 1000  # files per chunk folder (LeRobot's DEFAULT_CHUNK_SIZE)
DEFAULT_DATA_FILE_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 500

# Columns every LeRobot frame row has (LeRobot's DEFAULT_FEATURES).
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)
STAT_KEYS = ("min", "max", "mean", "std", "count", *QUANTILE_KEYS)
HISTOGRAM_BINS = 5000
EDGE_PAD = 1e-10  # LeRobot widens the histogram range by this much on each side

Stats = dict[str, np.ndarray]


def _quantile_from_histogram(hist: np.ndarray, edges: np.ndarray, count: float, q: float) -> float:
    """The value below which a fraction ``q`` of ``count`` samples lie, read off one histogram."""
    cum = np.cumsum(hist)
    target = q * count
    i = int(np.searchsorted(cum, target))  # first bin whose cumulative count reaches the target
    if i == 0:
        return float(edges[0])
    if i >= len(cum):
        return float(edges[-1])
    below = cum[i - 1]
    inside = cum[i] - below
    if inside == 0:
        return float(edges[i])
    return float(edges[i] + (target - below) / inside * (edges[i + 1] - edges[i]))


def _histogram_quantiles(values: np.ndarray, weights: np.ndarray | None, lo: float, hi: float, n: float) -> list[float]:
    """``QUANTILES`` of ``values`` (with ``weights``: how often each occurs; ``n`` in all, >= 2)
    from their histogram over ``[lo, hi]``, clipped to that range (the padded first edge would
    otherwise put a quantile 1e-10 below the minimum)."""
    edges = np.linspace(lo - EDGE_PAD, hi + EDGE_PAD, HISTOGRAM_BINS + 1)
    hist = np.histogram(values, bins=edges, weights=weights)[0]
    return [min(max(_quantile_from_histogram(hist, edges, n, q), lo), hi) for q in QUANTILES]


def vector_stats(values: np.ndarray) -> Stats:
    """Stats of one episode's column: ``values`` [N] (stats shape [1]) or [N, D] (shape [D]);
    booleans and integers count as numbers. More dimensions are flattened to [N, D] and the
    stats reshaped to ``values.shape[1:]``."""
    x = np.asarray(values)
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"stats need at least one row, got shape {x.shape}")
    shape = (1,) if x.ndim == 1 else x.shape[1:]
    x = x.reshape(len(x), -1).astype(np.float64)
    n = len(x)
    out: Stats = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([n])}
    if n < 2:
        qs = np.repeat(out["mean"][None], len(QUANTILES), 0)
    else:  # [Q, D]
        qs = np.array([_histogram_quantiles(x[:, d], None, out["min"][d], out["max"][d], n) for d in range(x.shape[1])]).T
    out.update(zip(QUANTILE_KEYS, qs, strict=True))
    return {k: v if k == "count" else v.reshape(shape) for k, v in out.items()}


def sample_frame_indices(n: int) -> np.ndarray:
    """Which of an episode's ``n`` frames image stats are taken from (LeRobot's ``sample_indices``)."""
    if n <= 0:
        return np.zeros(0, np.int64)
    num = max(min(n, 100), min(int(n**0.75), 10_000))
    return np.round(np.linspace(0, n - 1, num)).astype(np.int64)


def downsample(frame: np.ndarray) -> np.ndarray:
    """A [H, W, C] frame strided down to about 150 px on its larger side when that side is 300 px
    or more (LeRobot's ``auto_downsample_height_width``), else unchanged."""
    h, w = frame.shape[:2]
    if max(h, w) < 300:
        return frame
    step = int(w / 150) if w > h else int(h / 150)
    return frame[::step, ::step]


class ImageStatsAccumulator:
    """Per-channel pixel-value counts of uint8 [H, W, C] frames, added one at a time; ``stats()``
    turns them into an image feature's stats (exact over the pixels seen, in [0, 1])."""

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None  # [C, 256] int64
        self.frames = 0

    def add(self, frame: np.ndarray) -> None:
        if frame.dtype != np.uint8 or frame.ndim != 3:
            raise ValueError(f"expected a uint8 [H, W, C] frame, got {frame.dtype} {frame.shape}")
        c = frame.shape[2]
        counts = np.stack([np.bincount(frame[..., i].ravel(), minlength=256) for i in range(c)])
        self.counts = counts if self.counts is None else self.counts + counts
        self.frames += 1

    def stats(self) -> Stats:
        if self.counts is None:
            raise ValueError("no frames were added")
        values = np.arange(256, dtype=np.float64)
        per_channel: dict[str, list[float]] = {k: [] for k in STAT_KEYS if k != "count"}
        for counts in self.counts:
            n = counts.sum()
            seen = np.flatnonzero(counts)
            lo, hi = values[seen[0]], values[seen[-1]]
            mean = (counts * values).sum() / n
            per_channel["min"].append(lo)
            per_channel["max"].append(hi)
            per_channel["mean"].append(mean)
            per_channel["std"].append(np.sqrt((counts * (values - mean) ** 2).sum() / n))
            # the histogram of the 256 values weighted by their counts = the histogram of the pixels
            qs = _histogram_quantiles(values, counts, lo, hi, n) if n >= 2 else [mean] * len(QUANTILES)
            for key, q in zip(QUANTILE_KEYS, qs, strict=True):
                per_channel[key].append(q)
        out: Stats = {k: (np.array(v) / 255.0).reshape(-1, 1, 1) for k, v in per_channel.items()}
        out["count"] = np.array([self.frames])
        return {k: out[k] for k in STAT_KEYS}


def image_stats(frames: Iterable[np.ndarray]) -> Stats:
    """Stats of an image feature over one episode's frames (uint8 [N, H, W, 3] or an iterable of
    [H, W, 3]), sampled and downsampled as LeRobot does."""
    frames = list(frames)
    acc = ImageStatsAccumulator()
    for i in sample_frame_indices(len(frames)):
        acc.add(downsample(np.asarray(frames[i])))
    return acc.stats()


def video_episode_stats(path: str | Path, spans: list[tuple[int, int]], fps: float) -> list[Stats]:
    """Image stats of the episodes stored one after another in the mp4 ``path``: ``spans`` holds each
    episode's (first frame in the file, frame count). Frames are decoded with PyAV as ``rgb24`` and
    placed by their time (frame ``round(t * fps)``), as LeRobot's loader finds them; only sampled
    frames are converted to RGB. Raises ``RuntimeError`` when a sampled frame is not in the file."""
    import av

    want: dict[int, int] = {}
    for i, (start, n) in enumerate(spans):
        for j in sample_frame_indices(n):
            want[start + int(j)] = i
    accs = [ImageStatsAccumulator() for _ in spans]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            i = want.pop(round(float(frame.time) * fps), None)
            if i is not None:
                accs[i].add(downsample(frame.to_ndarray(format="rgb24")))
    if want:
        raise RuntimeError(f"{path}: {len(want)} sampled frames not found (first: frame {min(want)})")
    return [a.stats() for a in accs]


def aggregate(stats_list: list[dict[str, Stats]]) -> dict[str, Stats]:
    """Merge per-episode stats into dataset stats (feature -> stats), as LeRobot's
    ``aggregate_stats`` does up to 0.6.1: see the module docstring."""
    out: dict[str, Stats] = {}
    for feat in dict.fromkeys(k for s in stats_list for k in s):
        parts = [s[feat] for s in stats_list if feat in s]
        counts = np.array([float(p["count"][0]) for p in parts])
        total = counts.sum()
        w = counts.reshape(-1, *([1] * parts[0]["mean"].ndim))
        means = np.stack([p["mean"] for p in parts])
        mean = (means * w).sum(0) / total
        var = ((np.stack([p["std"] for p in parts]) ** 2 + (means - mean) ** 2) * w).sum(0) / total
        agg: Stats = {
            "min": np.stack([p["min"] for p in parts]).min(0),
            "max": np.stack([p["max"] for p in parts]).max(0),
            "mean": mean,
            "std": np.sqrt(var),
            "count": np.array([int(total)]),
        }
        for key in QUANTILE_KEYS:
            agg[key] = (np.stack([p[key] for p in parts]) * w).sum(0) / total
        out[feat] = agg
    return out


def to_json(stats: dict[str, Stats]) -> dict[str, dict[str, list]]:
    """``stats.json`` content: nested lists (images [3, 1, 1]), counts as integers."""
    return {feat: {k: (v.astype(np.int64) if k == "count" else v).tolist() for k, v in s.items()} for feat, s in stats.items()}


def episode_columns(stats: dict[str, Stats]) -> dict[str, list]:
    """One episode's stats as the ``stats/<feature>/<stat>`` columns LeRobot adds to its row in
    ``meta/episodes``."""
    return {f"stats/{feat}/{k}": v for feat, s in to_json(stats).items() for k, v in s.items()}


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
@dataclass
class EpisodeBuffer:
    """One finished episode, ready to write.

    ``frames``: camera key (e.g. ``"corner"``) -> uint8 [N, H, W, 3], upright RGB.
    ``columns``: feature name (e.g. ``"action"``) -> array [N, ...]; every array has N rows.
    ``task``: the language instruction; ``extra``: per-episode scalars added to the episode row
    (e.g. ``success``; LeRobot's loader ignores columns it does not know).
    """

    frames: dict[str, np.ndarray]
    columns: dict[str, np.ndarray]
    task: str
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.frames.values())))


def _next_chunk_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file == chunks_size - 1 else (chunk, file + 1)


def _arrow_column(values: np.ndarray, dtype: str):
    import pyarrow as pa

    values = np.asarray(values)
    if values.ndim == 1:
        return pa.array(values.astype(dtype))
    flat = pa.array(values.reshape(len(values), -1).astype(dtype).ravel())
    return pa.FixedSizeListArray.from_arrays(flat, int(np.prod(values.shape[1:])))


class _VideoFile:
    """One mp4 being appended to: H.264, yuv420p, time base 1/fps, pts = frame number in file."""

    def __init__(self, path: Path, fps: int, width: int, height: int, crf: int, gop: int):
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.container = av.open(str(path), "w")
        self.stream = self.container.add_stream("libx264", rate=Fraction(fps))
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        # Small GOP so any episode inside a long file is cheap to seek to (LeRobot uses g=2);
        # no B-frames keeps packet order = presentation order.
        self.stream.options = {"preset": "veryfast", "crf": str(crf), "g": str(gop), "bf": "0"}
        self.stream.codec_context.time_base = Fraction(1, fps)
        self.n_frames = 0
        self.bytes_written = 0

    def append(self, frames: np.ndarray) -> None:
        import av

        for f in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts = self.n_frames
            self.n_frames += 1
            for pkt in self.stream.encode(vf):
                self.bytes_written += pkt.size
                self.container.mux(pkt)

    def close(self) -> None:
        for pkt in self.stream.encode():
            self.container.mux(pkt)
        self.container.close()


class LeRobotV3Writer:
    """Appends episodes to a LeRobot v3.0 dataset at ``root`` (which must not hold one already).

    ``features``: the non-default, non-video features, e.g.
    ``{"action": {"dtype": "float32", "shape": [4], "names": [...]}}``; ``cameras``: camera keys
    (written as ``observation.images.<camera>`` video features) with their frame size.
    """

    def __init__(
        self,
        root: str | Path,
        fps: int,
        features: dict[str, dict[str, Any]],
        cameras: dict[str, tuple[int, int]],
        robot_type: str | None = None,
        crf: int = 20,
        gop: int = 2,
        chunks_size: int = DEFAULT_CHUNK_SIZE,
        data_files_size_in_mb: float = DEFAULT_DATA_FILE_SIZE_IN_MB,
        video_files_size_in_mb: float = DEFAULT_VIDEO_FILE_SIZE_IN_MB,
    ):
        self.root = Path(root)
        if (self.root / "meta" / "info.json").exists():
            raise FileExistsError(f"{self.root} already holds a LeRobot dataset (meta/info.json)")
        assert int(fps) == fps and fps > 0, f"fps must be a positive integer, got {fps}"
        self.fps, self.crf, self.gop = int(fps), crf, gop
        self.chunks_size = chunks_size
        self.data_budget = data_files_size_in_mb * 2**20
        self.video_budget = video_files_size_in_mb * 2**20
        self.features = dict(features)
        self.cameras = dict(cameras)
        self.video_keys = [f"observation.images.{c}" for c in cameras]
        self.robot_type = robot_type
        self.tasks: dict[str, int] = {}
        self.episode_rows: list[dict[str, Any]] = []
        self.total_frames = 0
        # Data file being filled: row batches, its (chunk, file) and its approximate size.
        self._data_cf = (0, 0)
        self._data_tables: list = []
        self._data_bytes = 0
        self._videos: dict[str, _VideoFile] = {}
        self._video_cf: dict[str, tuple[int, int]] = {k: (0, 0) for k in self.video_keys}
        self._episode_stats: list[dict[str, Stats]] = []  # per episode: feature -> stats
        # per video key: (episode index, mp4 path, first frame in the file, frames) of each episode
        self._video_spans: dict[str, list[tuple[int, Path, int, int]]] = {k: [] for k in self.video_keys}

    # -- writing ---------------------------------------------------------------------------
    def add_episode(self, ep: EpisodeBuffer) -> int:
        """Append one episode; returns its ``episode_index``."""
        import pyarrow as pa

        n = len(ep)
        assert n > 0, "an episode needs at least one frame"
        for k, v in ep.columns.items():
            assert k in self.features, f"column {k!r} is not a declared feature ({sorted(self.features)})"
            assert len(v) == n, f"column {k!r} has {len(v)} rows, frames have {n}"
        assert set(ep.frames) == set(self.cameras), f"frames for {sorted(ep.frames)}, expected {sorted(self.cameras)}"
        ep_index = len(self.episode_rows)
        task_index = self.tasks.setdefault(ep.task, len(self.tasks))

        values: dict[str, Any] = {
            "timestamp": np.arange(n) / self.fps,
            "frame_index": np.arange(n),
            "episode_index": np.full(n, ep_index),
            "index": self.total_frames + np.arange(n),
            "task_index": np.full(n, task_index),
        }
        values.update((k, ep.columns[k]) for k in self.features)
        dtypes = {k: ft["dtype"] for k, ft in {**DEFAULT_FEATURES, **self.features}.items()}
        cols = {k: _arrow_column(v, dtypes[k]) for k, v in values.items()}
        # Stats of the values as written (cast to the feature's dtype); strings have none.
        self._episode_stats.append({k: vector_stats(np.asarray(v).astype(dtypes[k])) for k, v in values.items() if dtypes[k] != "string"})
        table = pa.table(cols)
        if self._data_tables and self._data_bytes + table.nbytes > self.data_budget:
            self._flush_data()
            self._data_cf = _next_chunk_file(*self._data_cf, self.chunks_size)
        self._data_tables.append(table)
        self._data_bytes += table.nbytes

        row: dict[str, Any] = {
            "episode_index": ep_index,
            "tasks": [ep.task],
            "length": n,
            "data/chunk_index": self._data_cf[0],
            "data/file_index": self._data_cf[1],
            "dataset_from_index": self.total_frames,
            "dataset_to_index": self.total_frames + n,
        }
        for cam, key in zip(self.cameras, self.video_keys, strict=True):
            frames = ep.frames[cam]
            h, w = self.cameras[cam]
            assert frames.shape[1:] == (h, w, 3) and frames.dtype == np.uint8, (
                f"camera {cam}: expected uint8 [N,{h},{w},3], got {frames.dtype} {frames.shape}"
            )
            video = self._videos.get(key)
            if video is not None and video.bytes_written > self.video_budget:
                video.close()
                self._video_cf[key] = _next_chunk_file(*self._video_cf[key], self.chunks_size)
                video = None
            if video is None:
                c, f = self._video_cf[key]
                path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=c, file_index=f)
                video = self._videos[key] = _VideoFile(path, self.fps, w, h, self.crf, self.gop)
            start = video.n_frames
            video.append(frames)
            self._video_spans[key].append((ep_index, video.path, start, n))
            row[f"videos/{key}/chunk_index"] = self._video_cf[key][0]
            row[f"videos/{key}/file_index"] = self._video_cf[key][1]
            row[f"videos/{key}/from_timestamp"] = start / self.fps
            row[f"videos/{key}/to_timestamp"] = (start + n) / self.fps
        row["meta/episodes/chunk_index"] = 0
        row["meta/episodes/file_index"] = 0
        row.update(ep.extra)
        self.episode_rows.append(row)
        self.total_frames += n
        return ep_index

    def _flush_data(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._data_tables:
            return
        path = self.root / DATA_PATH.format(chunk_index=self._data_cf[0], file_index=self._data_cf[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(self._data_tables), path)
        self._data_tables, self._data_bytes = [], 0

    def close(self) -> dict[str, Any]:
        """Finish files and write the metadata; returns info.json's content."""
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._flush_data()
        for v in self._videos.values():
            v.close()
        self._add_video_stats()
        for row, stats in zip(self.episode_rows, self._episode_stats, strict=True):
            row.update(episode_columns(stats))
        meta = self.root / "meta"
        (meta / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
        if self.episode_rows:
            pq.write_table(pa.Table.from_pylist(self.episode_rows), self.root / EPISODES_PATH.format(chunk_index=0, file_index=0))
        # LeRobot reads tasks with pandas and takes the task text from the frame's index
        # (``tasks.iloc[i].name``), so write it the same way.
        tasks = pd.DataFrame({"task_index": list(self.tasks.values())}, index=pd.Index(list(self.tasks), name="task"))
        tasks.to_parquet(meta / "tasks.parquet")

        features: dict[str, Any] = {}
        for cam, key in zip(self.cameras, self.video_keys, strict=True):
            h, w = self.cameras[cam]
            features[key] = {
                "dtype": "video",
                "shape": [h, w, 3],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": h,
                    "video.width": w,
                    "video.codec": "h264",
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "video.fps": self.fps,
                    "video.channels": 3,
                    "has_audio": False,
                },
            }
        features.update(self.features)
        features.update(DEFAULT_FEATURES)
        n_eps = len(self.episode_rows)
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": n_eps,
            "total_frames": self.total_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.data_budget / 2**20,
            "video_files_size_in_mb": self.video_budget / 2**20,
            "fps": self.fps,
            "splits": {"train": f"0:{n_eps}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.video_keys else None,
            "features": features,
        }
        stats = to_json(aggregate(self._episode_stats))
        _write_json(meta / "stats.json", stats)
        _write_json(meta / "info.json", info)  # last: its presence marks a finished dataset
        return info

    def _add_video_stats(self) -> None:
        """Image stats of every episode, from its frames in the finished mp4s (one decode per file)."""
        for key, spans in self._video_spans.items():
            for path in dict.fromkeys(p for _, p, _, _ in spans):
                mine = [s for s in spans if s[1] == path]
                stats = video_episode_stats(path, [(start, n) for _, _, start, n in mine], self.fps)
                for (ep_index, *_), st in zip(mine, stats, strict=True):
                    self._episode_stats[ep_index][key] = st


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=4))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def _column(table, name: str, dtype) -> np.ndarray:
    """A parquet column as a numpy array; list columns become [N, D]."""
    import pyarrow as pa

    col = table.column(name).combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy(zero_copy_only=False).astype(dtype).reshape(len(col), col.type.list_size)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        return np.stack([np.asarray(v, dtype) for v in col.to_pylist()]) if len(col) else np.zeros((0, 0), dtype)
    return col.to_numpy(zero_copy_only=False).astype(dtype)


def _read_tasks(root: Path) -> dict[int, str]:
    import pyarrow.parquet as pq

    t = pq.read_table(root / "meta" / "tasks.parquet")
    names = t.column_names
    # LeRobot writes a pandas frame whose index is the task text ("task" when named, else
    # "__index_level_0__"); some converters write a plain "task" column.
    text_col = next((c for c in ("task", "__index_level_0__") if c in names), None)
    if text_col is None or "task_index" not in names:
        return {}
    return dict(zip(t.column("task_index").to_pylist(), t.column(text_col).to_pylist(), strict=False))


def load_lerobot(
    root: str | Path,
    cameras: list[str] | None = None,
    check_video: bool = True,
    state_key: str = "observation.state",
    action_key: str = "action",
) -> list[RobotEpisode]:
    """Every (episode, camera) of a LeRobot v3.0 dataset at ``root``.

    ``cameras``: camera names (``corner`` for ``observation.images.corner``), default all video
    features. ``check_video``: count each episode's frames in its mp4 (packet pts, no decoding)
    and report a mismatch with the row count. Missing action/state columns give ``None``
    (action-free datasets). Raises ``ValueError`` for a dataset that is not v3.0.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    info = json.loads((root / "meta" / "info.json").read_text())
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise ValueError(f"{root}: codebase_version {version!r} is not v3.x (convert v2.x datasets with LeRobot first)")
    fps = float(info["fps"])
    feats = info["features"]
    video_keys = [k for k, f in feats.items() if f.get("dtype") == "video"]
    if cameras is not None:
        wanted = {f"observation.images.{c}" if not c.startswith("observation.") else c for c in cameras}
        unknown = wanted - set(video_keys)
        if unknown:
            raise ValueError(f"cameras {sorted(unknown)} not in dataset; valid: {video_keys}")
        video_keys = [k for k in video_keys if k in wanted]
    tasks = _read_tasks(root)

    ep_files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    episodes = pa.concat_tables([pq.read_table(p) for p in ep_files]).to_pylist() if ep_files else []
    data_cache: dict[tuple[int, int], object] = {}
    frame_cache: dict[Path, np.ndarray] = {}
    out: list[RobotEpisode] = []
    for ep in sorted(episodes, key=lambda r: r["episode_index"]):
        cf = (int(ep["data/chunk_index"]), int(ep["data/file_index"]))
        if cf not in data_cache:
            data_cache[cf] = pq.read_table(root / info["data_path"].format(chunk_index=cf[0], file_index=cf[1]))
        table = data_cache[cf]
        idx = table.column("index").to_numpy()
        lo, hi = int(ep["dataset_from_index"]), int(ep["dataset_to_index"])
        rows = table.filter(pa.array((idx >= lo) & (idx < hi)))
        order = np.argsort(rows.column("frame_index").to_numpy(), kind="stable")
        rows = rows.take(pa.array(order))
        ts = _column(rows, "timestamp", np.float64)
        actions = _column(rows, action_key, np.float32) if action_key in rows.column_names else None
        proprio = _column(rows, state_key, np.float32) if state_key in rows.column_names else None
        ep_tasks = ep.get("tasks") or []
        if not ep_tasks and "task_index" in rows.column_names and len(rows):
            ep_tasks = [tasks.get(int(rows.column("task_index")[0].as_py()), "")]
        language = "; ".join(str(t) for t in ep_tasks)
        success = ep.get("success")
        base_issues = []
        if len(rows) != int(ep["length"]):
            base_issues.append(f"row count: episode length {ep['length']}, data has {len(rows)} rows")
        for key in video_keys:
            vpath = root / info["video_path"].format(
                video_key=key, chunk_index=int(ep[f"videos/{key}/chunk_index"]), file_index=int(ep[f"videos/{key}/file_index"])
            )
            from_s = float(ep.get(f"videos/{key}/from_timestamp") or 0.0)
            to_s = ep.get(f"videos/{key}/to_timestamp")
            to_s = None if to_s is None else float(to_s)
            n_video = None
            issues = list(base_issues)
            if check_video:
                if not vpath.exists():
                    issues.append(f"missing video: {vpath.name}")
                else:
                    if vpath not in frame_cache:
                        frame_cache[vpath] = video_frame_times(vpath)
                    pts = frame_cache[vpath]
                    eps = 1e-6
                    n_video = int(((pts >= from_s - eps) & (pts < (np.inf if to_s is None else to_s) - eps)).sum())
            issues += check_timestamps(ts, fps, n_video)
            out.append(
                RobotEpisode(
                    uri=str(vpath),
                    camera=key.removeprefix("observation.images."),
                    episode_index=int(ep["episode_index"]),
                    fps=fps,
                    timestamps=ts,
                    actions=actions,
                    proprio=proprio,
                    language=language,
                    success=None if success is None else bool(success),
                    from_s=from_s,
                    to_s=to_s,
                    timestamp_issues=issues,
                    video_frames=n_video,
                )
            )
    return out
