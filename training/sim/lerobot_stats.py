"""Feature statistics the way LeRobot writes them: ``meta/stats.json`` and the per-episode
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

from collections.abc import Iterable
from pathlib import Path

import numpy as np

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
