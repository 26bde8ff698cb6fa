"""Meta-World generation: real MuJoCo rollouts rendered headless, written as LeRobot v3.0, read back."""

from __future__ import annotations

import json
import subprocess
import sys

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from defi.curate.lerobot import load_lerobot
from defi.curate.robot import align_to_frames
from defi.training.sim import MetaWorldEnv, generate  # sets MUJOCO_GL before mujoco loads
from defi.training.sim.metaworld_env import episode_seed

pytest.importorskip("metaworld")

KW = dict(size=64, fps=20, max_steps=80, seed=3, progress=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("mw") / "ds"
    summary = generate(["reach-v3"], 2, out, workers=1, **KW)
    return out, summary


@pytest.fixture(scope="module")
def env():
    e = MetaWorldEnv("reach-v3", size=64)
    yield e
    e.close()


def decode(path):
    with av.open(str(path)) as c:
        return [(float(f.time), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def red_rows(img):
    """Row of every pixel of the (red) Sawyer arm."""
    im = img.astype(int)
    return np.nonzero((im[..., 0] > 100) & (im[..., 1] < 60) & (im[..., 2] < 60))[0]


def test_layout_is_lerobot_v3(dataset):
    root, summary = dataset
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 20
    assert info["total_episodes"] == 2 and info["total_frames"] == summary["frames"]
    f = info["features"]
    assert f["observation.images.corner"]["dtype"] == "video" and f["observation.images.corner"]["shape"] == [64, 64, 3]
    assert f["action"]["shape"] == [4] and f["observation.state"]["shape"] == [4]
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert k in f
    assert (
        info["video_path"].format(video_key="observation.images.corner", chunk_index=0, file_index=0)
        == "videos/observation.images.corner/chunk-000/file-000.mp4"
    )
    assert (root / "videos/observation.images.corner/chunk-000/file-000.mp4").exists()
    tasks = pq.read_table(root / "meta/tasks.parquet").to_pydict()
    assert tasks == {"task_index": [0], "task": ["reach the red goal"]}
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["episode_index"] for e in eps] == [0, 1]
    assert eps[0]["dataset_from_index"] == 0 and eps[1]["dataset_from_index"] == eps[0]["dataset_to_index"]
    assert eps[0]["videos/observation.images.corner/from_timestamp"] == 0.0
    assert eps[1]["videos/observation.images.corner/from_timestamp"] == pytest.approx(eps[0]["length"] / 20)
    # LeRobot's stats for every feature (videos and bookkeeping columns too), per episode and overall
    stats = json.loads((root / "meta/stats.json").read_text())
    assert set(stats) == set(f)
    assert {k for k in eps[0] if k.startswith("stats/observation.images.corner/")} == {
        f"stats/observation.images.corner/{s}" for s in stats["observation.images.corner"]
    }
    assert stats["next.success"]["max"] == [1.0] and stats["frame_index"]["count"] == [summary["frames"]]


def test_rows_frames_and_actions_line_up(dataset):
    root, _ = dataset
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    frames = decode(root / "videos/observation.images.corner/chunk-000/file-000.mp4")
    pts = np.array([t for t, _ in frames])
    assert len(frames) == data.num_rows == sum(e["length"] for e in eps)
    assert np.array_equal(data.column("index").to_numpy(), np.arange(data.num_rows))
    for e in eps:
        rows = data.filter(pa.array(data.column("episode_index").to_numpy() == e["episode_index"]))
        n = rows.num_rows
        assert n == e["length"] == e["dataset_to_index"] - e["dataset_from_index"]
        ts = rows.column("timestamp").to_numpy()
        assert np.all(np.diff(ts) > 0) and np.allclose(ts, np.arange(n) / 20, atol=1e-6)
        lo, hi = e["videos/observation.images.corner/from_timestamp"], e["videos/observation.images.corner/to_timestamp"]
        assert ((pts >= lo - 1e-6) & (pts < hi - 1e-6)).sum() == n  # one video frame per row
        act = np.stack(rows.column("action").to_numpy(zero_copy_only=False))
        assert act.shape == (n, 4) and np.abs(act).max() <= 1.0 and np.abs(act[:, :3]).max() > 0.1


def test_scripted_expert_succeeds(dataset):
    root, summary = dataset
    assert summary["episodes_succeeded"] == 2 and summary["success_rate"] == 1.0
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert all(e["success"] for e in eps)
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    for e in eps:
        ok = data.column("next.success").to_numpy(zero_copy_only=False)[e["dataset_from_index"] : e["dataset_to_index"]]
        # episode stops 10 steps after the first success, which is after step 0
        assert not ok[0] and ok[-1] and e["length"] < 80


def test_frames_are_upright(env, dataset):
    import mujoco

    obs = env.reset(0)
    raw = mujoco.Renderer(env.env.model, 64, 64)
    raw.update_scene(env.env.data, camera="corner")
    assert np.array_equal(obs["image"], np.rot90(raw.render(), 2))
    raw.close()
    # Semantics: raising the hand moves the arm up in the image (rows get smaller).
    env.reset(0)
    for _ in range(20):
        up, *_ = env.step(np.array([0, 0, 1, 0]))
    env.reset(0)
    for _ in range(20):
        down, *_ = env.step(np.array([0, 0, -1, 0]))
    assert up["proprio"][2] > down["proprio"][2] + 0.2
    assert red_rows(up["image"]).mean() < red_rows(down["image"]).mean() - 2
    assert red_rows(up["image"]).min() < red_rows(down["image"]).min()
    # The video holds what the env rendered: episode 0's first frame is the env's reset frame.
    root, _ = dataset
    first = decode(root / "videos/observation.images.corner/chunk-000/file-000.mp4")[0][1]
    ref = env.reset(int(episode_seed(3, "reach-v3", 0).spawn(3)[0].generate_state(1)[0]))["image"]
    err = np.abs(first.astype(int) - ref).mean()  # H.264 yuv420p at 64 px: a few levels
    assert err < 8 and np.abs(first.astype(int) - np.rot90(ref, 2)).mean() > 2 * err


def test_env_obs_and_step(env):
    obs = env.reset(1)
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["proprio"].dtype == np.float32 and np.allclose(obs["proprio"], obs["state"][:4])
    for _ in range(10):
        o2, reward, success, done = env.step(np.array([5.0, 0, 0, 0]))  # clipped to 1
    assert isinstance(reward, float) and not success and not done
    # +x actions (1 unit = 1 cm of mocap target per step, clipped) move the hand along +x only
    d = o2["proprio"][:3] - obs["proprio"][:3]
    assert 0.03 < d[0] < 0.1 and np.abs(d[1:]).max() < 0.02
    # reset(seed) reseeds: same seed, same goal; other seed, other goal
    g1 = env.reset(7)["state"][-3:]
    g2 = env.reset(8)["state"][-3:]
    assert np.array_equal(g1, env.reset(7)["state"][-3:]) and not np.allclose(g1, g2)
    with pytest.raises(ValueError, match="valid"):
        MetaWorldEnv("no-such-task-v3")


def test_load_lerobot_and_align(dataset):
    root, _ = dataset
    eps = load_lerobot(root)
    assert [e.episode_index for e in eps] == [0, 1]
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    all_actions = np.stack(data.column("action").to_numpy(zero_copy_only=False)).astype(np.float32)
    frames = decode(eps[1].uri)
    pts = np.array([t for t, _ in frames])
    for e in eps:
        assert e.timestamp_issues == [] and e.success and e.language == "reach the red goal"
        assert e.actions.shape == (len(e), 4) and e.proprio.shape == (len(e), 4)
    e = eps[1]
    in_ep = pts[(pts >= e.from_s - 1e-6) & (pts < e.to_s - 1e-6)]
    clip = in_ep[10:30]  # a clip: frames 10..29 of episode 1, on the file's clock
    al = align_to_frames(e, clip)
    lo = len(eps[0])
    assert np.array_equal(al.actions, all_actions[lo + 10 : lo + 30])
    assert al.max_error_s < 1e-4 and len(al.missed) == 0


def _frames_equal(a_root, b_root):
    a = decode(a_root / "videos/observation.images.corner/chunk-000/file-000.mp4")
    b = decode(b_root / "videos/observation.images.corner/chunk-000/file-000.mp4")
    return len(a) == len(b) and all(np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=False))


def test_action_free_has_videos_without_actions(dataset, tmp_path):
    root, _ = dataset
    out = tmp_path / "af"
    s = generate(["reach-v3"], 2, out, workers=1, action_free=True, **KW)
    assert s["episodes_written"] == 2
    info = json.loads((out / "meta/info.json").read_text())
    assert "action" not in info["features"] and "observation.state" not in info["features"]
    cols = pq.read_table(out / "data/chunk-000/file-000.parquet").column_names
    assert "action" not in cols and "observation.state" not in cols
    eps = load_lerobot(out)
    assert len(eps) == 2 and all(e.actions is None and e.proprio is None for e in eps)
    assert _frames_equal(root, out)  # same seed: the same videos as the action-labeled run


@pytest.mark.slow
def test_deterministic_across_spawn_workers(dataset, tmp_path):
    root, _ = dataset
    out = tmp_path / "w2"
    generate(["reach-v3"], 2, out, workers=2, **KW)
    a = pq.read_table(root / "data/chunk-000/file-000.parquet")
    b = pq.read_table(out / "data/chunk-000/file-000.parquet")
    assert a.equals(b)
    assert _frames_equal(root, out)


def test_first_frame_after_reset_does_not_depend_on_the_episode_before():
    """Frame 0 of an episode shows the scene as reset left it, not as the env's previous episode
    did (else an episode's first frame depends on which worker ran it)."""
    used, fresh = MetaWorldEnv("push-v3", size=64), MetaWorldEnv("push-v3", size=64)
    try:
        used.reset(seed=11)
        for _ in range(60):  # the expert moves the arm and the puck
            used.step(used.expert_action())
        after_other = used.reset(seed=12)["image"]
        first = fresh.reset(seed=12)
        assert np.array_equal(after_other, first["image"])
        assert np.array_equal(used.reset(seed=12)["state"], first["state"])
    finally:
        used.close()
        fresh.close()


def test_rendering_then_loading_triton_in_one_process():
    # A CPU GL context loads Mesa's LLVM; triton (imported by diffusers through torch._dynamo)
    # loaded after it crashed the process. A fresh interpreter: this one may have triton loaded.
    pytest.importorskip("triton")
    code = (
        "from defi.training.sim import MetaWorldEnv\n"
        "env = MetaWorldEnv('reach-v3', size=32)\n"
        "assert env.reset()['image'].shape == (32, 32, 3)\n"
        "env.close()\n"
        "import triton\n"
        "print('survived')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "survived" in run.stdout, f"exit {run.returncode}: {run.stderr[-2000:]}"


def test_declared_shapes_are_the_envs(env):
    """``MetaWorldEnvConfig`` declares what the env returns and takes: evaluation refuses policies
    from these numbers, so they must be the env's."""
    from defi.training.sim.envs import ENVS, MetaWorldEnvConfig

    assert ENVS["metaworld"] is MetaWorldEnvConfig
    obs = env.reset(1)
    assert env.env.action_space.shape == (MetaWorldEnvConfig.action_dim,)
    assert obs["proprio"].shape == (MetaWorldEnvConfig.state_dim,)
    assert "reach-v3" in MetaWorldEnvConfig.tasks()


def test_sim_generate_takes_env_and_its_defaults_from_the_registry(tmp_path, monkeypatch, capsys):
    """``defi sim generate --env NAME`` generates with ``ENVS[NAME]``: its frame size, camera and
    episode length when the flags are not given."""
    from defi.training.sim.cli import sim_generate_main
    from defi.training.sim.envs import ENVS, MetaWorldEnvConfig

    class SmallMetaWorld(MetaWorldEnvConfig):
        name = "mw-small"
        image_size = 32
        camera = "corner2"
        max_steps = 5

    monkeypatch.setitem(ENVS, SmallMetaWorld.name, SmallMetaWorld)
    out = tmp_path / "ds"
    rc = sim_generate_main(["--env", "mw-small", "--tasks", "reach-v3", "--episodes", "1", "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    cfg = json.loads((out / "meta" / "defi_generate.json").read_text())
    assert (cfg["size"], cfg["camera"], cfg["max_steps"]) == (32, "corner2", 5)
    videos = list(out.rglob("*.mp4"))
    assert videos and decode(videos[0])[0][1].shape == (32, 32, 3)
    assert len(pq.read_table(next(out.rglob("data/**/*.parquet")))) <= 5
