"""LeRobot stats: ``meta/stats.json`` and the per-episode ``stats/<feature>/<stat>`` columns hold every
key with the shape LeRobot's loader and normalization read (v3.0 layout), and their values are what
numpy gives on the same data: the written parquet rows and the frames the written mp4 decodes to.

LeRobot is not a dependency: the layout is checked the way ``lerobot.datasets`` reads it
(``load_stats``: ``np.atleast_1d(np.array(v))`` per stat; ``dataset_tools``: ``pd.read_parquet`` of
``meta/episodes``), the normalization the way ``NormalizerProcessorStep`` applies it."""

from __future__ import annotations

import json

import av
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from factories import moving_square

from defi.curate import lerobot as ls
from defi.curate.lerobot import EpisodeBuffer, LeRobotV3Writer

FPS = 10
LENGTHS = (12, 1, 130)  # one episode of a single row, one long enough to be sampled (> 100 frames)
STATS = {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
QS = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
FEATURES = {
    "action": {"dtype": "float32", "shape": [3], "names": ["x", "y", "z"]},
    "observation.state": {"dtype": "float32", "shape": [2], "names": None},
    "next.reward": {"dtype": "float32", "shape": [1], "names": None},
    "next.success": {"dtype": "bool", "shape": [1], "names": None},
}
IMG = "observation.images.front"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats") / "ds"
    rng = np.random.default_rng(0)
    # tiny video files: the long episode starts a second mp4, so stats come from two files
    w = LeRobotV3Writer(root, FPS, FEATURES, {"front": (32, 48)}, video_files_size_in_mb=0.002)
    for e, n in enumerate(LENGTHS):
        frames = np.stack(list(moving_square(n, 32, 48, size=8)))
        frames[..., 2] = rng.integers(0, 256, frames.shape[:3])  # a channel with a wide spread
        w.add_episode(
            EpisodeBuffer(
                {"front": frames},
                {
                    "action": rng.normal(e, 1 + e, (n, 3)),
                    "observation.state": rng.uniform(-1, 1, (n, 2)),
                    "next.reward": rng.exponential(1, n),
                    "next.success": np.arange(n) > n // 2,
                },
                task=f"task {e % 2}",
            )
        )
    w.close()
    return root


def _episodes(root):
    return pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()


def _rows(root):
    return pd.read_parquet(root / "data/chunk-000/file-000.parquet").sort_values("index")


def _column(rows, key):
    v = rows[key].to_numpy()
    return np.stack(v).astype(np.float64) if v.dtype == object else v.astype(np.float64)


def _decoded(root, ep):
    """The episode's frames as the written mp4 decodes to them (PyAV rgb24), found by time."""
    info = json.loads((root / "meta/info.json").read_text())
    path = root / info["video_path"].format(
        video_key=IMG, chunk_index=ep[f"videos/{IMG}/chunk_index"], file_index=ep[f"videos/{IMG}/file_index"]
    )
    lo, hi = ep[f"videos/{IMG}/from_timestamp"], ep[f"videos/{IMG}/to_timestamp"]
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0) if lo - 1e-6 <= f.time < hi - 1e-6]
    return np.stack(frames)


def _flat(cell):
    """A pandas cell of nested lists (object arrays of arrays for images [3, 1, 1]) as a flat array,
    as LeRobot's ``dataset_tools`` unpacks it."""
    if isinstance(cell, (np.ndarray, list)) and len(cell) and isinstance(cell[0], (np.ndarray, list)):
        return np.concatenate([_flat(c) for c in cell])
    return np.asarray(cell, np.float64).ravel()


def _sampled(n):
    """LeRobot's frame sample: all frames up to 99, else max(100, n**0.75) evenly spaced."""
    num = n if n < 100 else max(100, int(n**0.75))
    return np.round(np.linspace(0, n - 1, num)).astype(int)


def _check_quantiles(stats, x, axis_values):
    """Each quantile q of each dimension is within one histogram bin of a value with a fraction q of
    the data at or below it: #(x < v - bin) <= q n <= #(x <= v + bin)."""
    for key, q in QS.items():
        for d, v in enumerate(np.ravel(stats[key])):
            col = axis_values(x, d)
            n = len(col)
            if n < 2:
                assert v == pytest.approx(col.mean())
                continue
            width = (col.max() - col.min() + 2e-10) / ls.HISTOGRAM_BINS
            assert (col < v - width - 1e-12).sum() <= q * n <= (col <= v + width + 1e-12).sum(), (key, d, v)
            assert col.min() <= v <= col.max()


def test_every_key_and_shape_lerobot_reads(dataset):
    info = json.loads((dataset / "meta/info.json").read_text())
    stats = json.loads((dataset / "meta/stats.json").read_text())
    # Stats for every feature LeRobot computes them for: all but strings, videos and index columns included.
    feats = {k for k, f in info["features"].items() if f["dtype"] != "string"}
    assert set(stats) == feats == {*FEATURES, IMG, "timestamp", "frame_index", "episode_index", "index", "task_index"}
    loaded = {f: {k: np.atleast_1d(np.array(v)) for k, v in s.items()} for f, s in stats.items()}  # = load_stats
    for f, s in loaded.items():
        assert set(s) == STATS, f
        want = (3, 1, 1) if info["features"][f]["dtype"] == "video" else tuple(info["features"][f]["shape"])
        for k, v in s.items():
            assert v.shape == ((1,) if k == "count" else want), (f, k, v.shape)
            assert np.issubdtype(v.dtype, np.integer if k == "count" else np.floating) and np.isfinite(v).all()
    assert loaded["index"]["count"][0] == sum(LENGTHS) == info["total_frames"]

    # Per-episode columns, read back as LeRobot's dataset tools read them (pandas) and flattened to arrays.
    df = pd.read_parquet(dataset / "meta/episodes/chunk-000/file-000.parquet")
    assert {c for c in df.columns if c.startswith("stats/")} == {f"stats/{f}/{k}" for f in feats for k in STATS}
    for _, row in df.iterrows():
        for f in feats:
            for k in STATS:
                v = _flat(row[f"stats/{f}/{k}"])
                assert v.size == (1 if k == "count" else loaded[f][k].size), (f, k)
        assert row["stats/index/count"][0] == row["length"]

    # Normalization as LeRobot applies it broadcasts against batches: images [B, 3, H, W] and vectors [B, D].
    img = np.random.default_rng(1).random((2, 3, 32, 48))
    z = (img - loaded[IMG]["mean"]) / (loaded[IMG]["std"] + 1e-8)  # MEAN_STD (ACT's images)
    assert z.shape == img.shape
    a = np.stack([loaded["action"]["q01"], loaded["action"]["q99"]])  # QUANTILES (pi05): q01 -> -1, q99 -> 1
    qn = 2 * (a - loaded["action"]["q01"]) / (loaded["action"]["q99"] - loaded["action"]["q01"]) - 1
    np.testing.assert_allclose(qn, [[-1] * 3, [1] * 3])
    q10n = loaded["observation.state"]["q90"] - loaded["observation.state"]["q10"]  # QUANTILE10
    assert q10n.shape == (2,) and (q10n > 0).all()


def test_numeric_stats_match_numpy_per_episode_and_overall(dataset):
    rows, eps = _rows(dataset), _episodes(dataset)
    stats = json.loads((dataset / "meta/stats.json").read_text())
    for f in [*FEATURES, "timestamp", "frame_index", "episode_index", "index", "task_index"]:
        per_ep = []
        for ep in eps:
            x = _column(rows[(rows["index"] >= ep["dataset_from_index"]) & (rows["index"] < ep["dataset_to_index"])], f)
            s = {k: np.array(ep[f"stats/{f}/{k}"]) for k in STATS}
            np.testing.assert_allclose(s["min"], np.atleast_1d(x.min(0)), err_msg=f)
            np.testing.assert_allclose(s["max"], np.atleast_1d(x.max(0)), err_msg=f)
            np.testing.assert_allclose(s["mean"], np.atleast_1d(x.mean(0)), rtol=1e-9, atol=1e-12, err_msg=f)
            np.testing.assert_allclose(s["std"], np.atleast_1d(x.std(0)), rtol=1e-9, atol=1e-12, err_msg=f)
            assert s["count"].tolist() == [len(x)]
            _check_quantiles(s, x, lambda x, d: x[:, d] if x.ndim == 2 else x)
            per_ep.append(s)
        x = _column(rows, f)
        g = {k: np.array(v) for k, v in stats[f].items()}
        np.testing.assert_allclose(g["min"], np.atleast_1d(x.min(0)), err_msg=f)
        np.testing.assert_allclose(g["max"], np.atleast_1d(x.max(0)), err_msg=f)
        np.testing.assert_allclose(g["mean"], np.atleast_1d(x.mean(0)), rtol=1e-9, atol=1e-12, err_msg=f)
        np.testing.assert_allclose(g["std"], np.atleast_1d(x.std(0)), rtol=1e-9, atol=1e-12, err_msg=f)
        assert g["count"].tolist() == [len(x)]
        counts = np.array([s["count"][0] for s in per_ep], np.float64)[:, None]
        for k in QS:  # LeRobot <= 0.6.1: the episodes' quantiles weighted by their row counts
            np.testing.assert_allclose(g[k], (np.stack([s[k] for s in per_ep]) * counts).sum(0) / counts.sum(), err_msg=f)


def test_image_stats_match_numpy_on_decoded_frames(dataset):
    eps = _episodes(dataset)
    assert len({ep[f"videos/{IMG}/file_index"] for ep in eps}) == 2  # stats were read from two mp4s
    stats = json.loads((dataset / "meta/stats.json").read_text())
    sampled = []
    for ep in eps:
        frames = _decoded(dataset, ep)
        assert len(frames) == ep["length"]
        idx = _sampled(len(frames))
        assert len(idx) == min(len(frames), 100)
        px = frames[idx].reshape(-1, 3).astype(np.float64) / 255  # [pixels, channel] in [0, 1]
        sampled.append(px)
        s = {k: np.array(ep[f"stats/{IMG}/{k}"]) for k in STATS}
        assert s["count"].tolist() == [len(idx)]
        for k, fn in (("min", np.min), ("max", np.max), ("mean", np.mean), ("std", np.std)):
            assert s[k].shape == (3, 1, 1)
            np.testing.assert_allclose(s[k].ravel(), fn(px, 0), rtol=1e-9, atol=1e-12, err_msg=k)
        _check_quantiles(s, px, lambda x, d: x[:, d])
    px = np.concatenate(sampled)
    g = {k: np.array(v) for k, v in stats[IMG].items()}
    assert g["count"].tolist() == [sum(min(n, 100) for n in LENGTHS)]
    for k, fn in (("min", np.min), ("max", np.max), ("mean", np.mean), ("std", np.std)):
        np.testing.assert_allclose(g[k].ravel(), fn(px, 0), rtol=1e-9, atol=1e-12, err_msg=k)
    q = np.stack([g[k] for k in ("min", *QS, "max")])
    assert (np.diff(q, axis=0) >= 0).all() and (q[-1] - q[0] > 0.1).all()  # ordered, and the channels vary


def test_sampling_downsampling_and_quantiles_against_numpy():
    assert ls.sample_frame_indices(50).tolist() == list(range(50))
    idx = ls.sample_frame_indices(130)
    assert len(idx) == 100 and idx[0] == 0 and idx[-1] == 129 and len(set(idx.tolist())) == 100
    assert len(ls.sample_frame_indices(20000)) == int(20000**0.75)
    assert len(ls.sample_frame_indices(10**7)) == 10_000
    assert ls.downsample(np.zeros((299, 200, 3), np.uint8)).shape == (299, 200, 3)
    assert ls.downsample(np.zeros((304, 320, 3), np.uint8)).shape == (152, 160, 3)  # step int(320 / 150) = 2
    assert ls.downsample(np.zeros((200, 640, 3), np.uint8)).shape == (50, 160, 3)  # step 4

    # Large frames are strided before their pixels are counted.
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (3, 304, 320, 3), dtype=np.uint8)
    s = ls.image_stats(frames)
    px = frames[:, ::2, ::2].reshape(-1, 3) / 255
    np.testing.assert_allclose(s["mean"].ravel(), px.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s["std"].ravel(), px.std(0), rtol=1e-12)
    assert s["count"].tolist() == [3]

    # Histogram quantiles of a large sample sit within two bins of numpy's.
    x = rng.normal(size=(20000, 2))
    s = ls.vector_stats(x)
    for k, q in QS.items():
        np.testing.assert_allclose(s[k], np.quantile(x, q, axis=0), atol=2 * (x.max() - x.min()) / ls.HISTOGRAM_BINS)
    # A single row: every quantile is the row, the std 0 (LeRobot's rule below two samples).
    one = ls.vector_stats(np.array([[1.5, -2.0]]))
    assert one["q01"].tolist() == one["q99"].tolist() == [1.5, -2.0] and one["std"].tolist() == [0, 0]
