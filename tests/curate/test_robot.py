"""Robot episodes: LeRobot v3.0 and mp4+npz reading, timestamp checks, action alignment.

Real H.264 made at test time; the LeRobot dataset is written by defi's writer (no simulator)."""

from __future__ import annotations

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from factories import moving_square, write_video

from defi.curate.lerobot import EpisodeBuffer, LeRobotV3Writer, load_lerobot
from defi.curate.robot import align_to_frames, check_timestamps, load_npz_episode

FPS = 10


def decoded_pts(path):
    with av.open(str(path)) as c:
        return np.array([float(f.time) for f in c.decode(video=0)])


def make_lerobot(root, lengths=(12, 17), action_free=False):
    feats = (
        {}
        if action_free
        else {
            "action": {"dtype": "float32", "shape": [3], "names": ["a", "b", "c"]},
            "observation.state": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
        }
    )
    w = LeRobotV3Writer(root, FPS, feats, {"front": (32, 48)})
    acts = []
    for e, n in enumerate(lengths):
        frames = np.stack(list(moving_square(n, 32, 48, size=8)))
        # action row i = (episode, i, i/2): every row is distinct and checkable
        a = np.stack([np.full(n, e), np.arange(n), np.arange(n) / 2], 1).astype(np.float32)
        acts.append(a)
        cols = {} if action_free else {"action": a, "observation.state": a[:, 1:]}
        w.add_episode(EpisodeBuffer({"front": frames}, cols, task=f"task {e % 2}", extra={"success": e == 0}))
    w.close()
    return acts


def test_lerobot_round_trip_and_alignment(tmp_path):
    acts = make_lerobot(tmp_path / "ds")
    eps = load_lerobot(tmp_path / "ds")
    assert [(e.episode_index, e.camera, len(e)) for e in eps] == [(0, "front", 12), (1, "front", 17)]
    assert [e.language for e in eps] == ["task 0", "task 1"] and [e.success for e in eps] == [True, False]
    assert eps[0].uri == eps[1].uri  # v3: both episodes in one mp4
    assert eps[1].from_s == pytest.approx(1.2) and eps[1].to_s == pytest.approx(2.9)
    assert all(e.timestamp_issues == [] for e in eps)
    assert np.array_equal(eps[1].actions, acts[1]) and np.array_equal(eps[1].proprio, acts[1][:, 1:])
    # A clip of episode 1, frames 4..10, pts on the file's clock as a decoder gives them.
    pts = decoded_pts(eps[1].uri)
    clip = pts[12 + 4 : 12 + 11]
    al = align_to_frames(eps[1], clip)
    assert np.array_equal(al.actions, acts[1][4:11]) and np.array_equal(al.proprio, acts[1][4:11, 1:])
    assert al.max_error_s < 1e-3 and len(al.missed) == 0


def test_align_reports_misses_instead_of_guessing(tmp_path):
    make_lerobot(tmp_path / "ds")
    ep = load_lerobot(tmp_path / "ds")[0]  # rows at 0.0 .. 1.1 s
    al = align_to_frames(ep, np.array([0.0, 0.52, 1.1, 1.5, -0.3]))
    assert list(al.missed) == [3, 4]
    assert np.isnan(al.actions[3:]).all() and np.array_equal(al.actions[:3, 1], [0, 5, 11])
    assert al.max_error_s == pytest.approx(0.02, abs=1e-6)  # 0.52 s -> row 5 (0.5 s)


def test_action_free_lerobot(tmp_path):
    make_lerobot(tmp_path / "ds", action_free=True)
    eps = load_lerobot(tmp_path / "ds")
    assert len(eps) == 2 and all(e.actions is None and e.proprio is None for e in eps)
    al = align_to_frames(eps[0], np.array([0.0, 0.1]))
    assert al.actions is None and len(al.missed) == 0


def test_lerobot_jitter_and_frame_count_reported(tmp_path):
    root = tmp_path / "ds"
    make_lerobot(root)
    path = root / "data/chunk-000/file-000.parquet"
    t = pq.read_table(path)
    ts = t.column("timestamp").to_numpy().copy()
    ts[3] += 0.07  # episode 0, row 3: 70 ms late at 10 fps (half a frame is 50 ms)
    t = t.set_column(t.column_names.index("timestamp"), "timestamp", pa.array(ts))
    pq.write_table(t, path)
    ep_path = root / "meta/episodes/chunk-000/file-000.parquet"
    eps_t = pq.read_table(ep_path).to_pylist()
    eps_t[1]["videos/observation.images.front/to_timestamp"] -= 0.3  # claims 3 frames fewer
    pq.write_table(pa.Table.from_pylist(eps_t), ep_path)
    e0, e1 = load_lerobot(root)
    assert any(i.startswith("jitter") for i in e0.timestamp_issues)
    assert any(i.startswith("frame count: video has 14 frames, episode has 17") for i in e1.timestamp_issues)


def test_npz_episode_loads_and_aligns(tmp_path):
    mp4 = write_video(tmp_path / "episode.mp4", moving_square(20), fps=FPS)
    actions = np.arange(40, dtype=np.float32).reshape(20, 2)
    np.savez(tmp_path / "episode.npz", actions=actions, proprio=actions * 2, language="stack the cups")
    ep = load_npz_episode(mp4)
    assert ep.fps == FPS and len(ep) == 20 and ep.language == "stack the cups" and ep.timestamp_issues == []
    pts = decoded_pts(mp4)
    al = align_to_frames(ep, pts[5:9])
    assert np.array_equal(al.actions, actions[5:9]) and np.array_equal(al.proprio, actions[5:9] * 2)


def test_npz_jittery_and_offset_timestamps_reported(tmp_path):
    mp4 = write_video(tmp_path / "ep.mp4", moving_square(20), fps=FPS)
    ts = 1700000000.0 + np.arange(20) / FPS  # wall-clock seconds
    ts[10:] += 0.08  # a hiccup: rows 10.. arrive 80 ms late
    np.savez(tmp_path / "ep.npz", actions=np.zeros((20, 4), np.float32), timestamps=ts)
    ep = load_npz_episode(mp4)
    kinds = [i.split(":")[0] for i in ep.timestamp_issues]
    assert "clock offset" in kinds and "jitter" in kinds
    assert ep.timestamps[0] == pytest.approx(0.0)  # rebased onto the video clock, not resampled
    assert ep.timestamps[10] - ep.timestamps[9] == pytest.approx(0.18)


def test_check_timestamps():
    assert check_timestamps(np.arange(10) / 30, 30, 10) == []
    issues = check_timestamps(np.array([0.0, 0.1, 0.05, 0.15]), 10, 5)
    assert issues[0].startswith("non-monotonic: 1 steps") and issues[-1].startswith("frame count")
    assert check_timestamps(np.array([]), 10) == ["no rows"]
