"""Write robot episodes as a LeRobot v3.0 dataset (no lerobot import needed).

Layout, as LeRobot's own writer lays it out (``lerobot/datasets/utils.py``: ``DEFAULT_DATA_PATH``,
``DEFAULT_VIDEO_PATH``, ``DEFAULT_EPISODES_PATH``, ``create_empty_dataset_info``)::

    ROOT/meta/info.json                                  codebase_version "v3.0", fps, features, path templates
    ROOT/meta/tasks.parquet                              pandas frame: index = task text, column task_index
    ROOT/meta/stats.json                                 stats of every feature (``lerobot_stats``)
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

Stats (``defi.training.sim.lerobot_stats``: min, max, mean, std, count, q01..q99 per feature, per
episode and for the dataset, as LeRobot computes them): numeric columns from the values written;
camera images from the written mp4s, decoded once at ``close`` (only the sampled frames are
converted to RGB), so they describe the frames a LeRobot policy will be fed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from . import lerobot_stats

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
        self._episode_stats: list[dict[str, lerobot_stats.Stats]] = []  # per episode: feature -> stats
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
        self._episode_stats.append(
            {k: lerobot_stats.vector_stats(np.asarray(v).astype(dtypes[k])) for k, v in values.items() if dtypes[k] != "string"}
        )
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
            row.update(lerobot_stats.episode_columns(stats))
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
        stats = lerobot_stats.to_json(lerobot_stats.aggregate(self._episode_stats))
        _write_json(meta / "stats.json", stats)
        _write_json(meta / "info.json", info)  # last: its presence marks a finished dataset
        return info

    def _add_video_stats(self) -> None:
        """Image stats of every episode, from its frames in the finished mp4s (one decode per file)."""
        for key, spans in self._video_spans.items():
            for path in dict.fromkeys(p for _, p, _, _ in spans):
                mine = [s for s in spans if s[1] == path]
                stats = lerobot_stats.video_episode_stats(path, [(start, n) for _, _, start, n in mine], self.fps)
                for (ep_index, *_), st in zip(mine, stats, strict=True):
                    self._episode_stats[ep_index][key] = st


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=4))
    os.replace(tmp, path)
