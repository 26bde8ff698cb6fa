"""``defi export lerobot``: generated Meta-World episodes, curated into a corpus, exported back to
LeRobot v3.0 and read with ``curate.lerobot.load_lerobot``: the episodes carry exactly the shard's
actions, one per decoded frame, in LeRobot's v3 layout."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from factories import moving_square, write_video

import defi.training.sim  # noqa: F401  (sets MUJOCO_GL before mujoco is first imported)

pytest.importorskip("metaworld")

from defi.curate.lerobot import load_lerobot
from defi.pipelines.config import from_dict
from defi.pipelines.curate import run_curate
from defi.pipelines.export import export_lerobot, main
from defi.pipelines.curate_config import CurateConfig
from defi.schemas.corpus import Corpus
from defi.schemas.shards import ShardReader
from defi.training.data import decode_frames

SQL = "SELECT key FROM clips WHERE kept AND has_actions ORDER BY key"


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory):
    from defi.training.sim import generate

    tmp = tmp_path_factory.mktemp("export")
    ds = tmp / "reach"
    generate(["reach-v3"], 2, ds, size=64, fps=20, max_steps=60, seed=0, progress=False)
    cfg = from_dict(
        CurateConfig,
        {
            "windows": {"clip_len_s": 1.0, "stride_s": 1.0, "min_clip_s": 0.5, "max_clip_s": 1.0},
            "encode": {"fps": 20, "short_side": 64},
            "use_dedup": False,
            "ray": {"num_cpus": 2},
        },
    )
    # an action-free video in the same corpus: selectable, but not exportable as an episode
    human = write_video(tmp / "human.mp4", moving_square(40, h=64, w=96), fps=20)
    root = str(tmp / "corpus")
    assert run_curate([str(ds), str(human)], root, cfg, progress=False)["status"] == "done"
    return root


def _shard_samples(root):
    c = Corpus.open(root)
    kept = c.query("SELECT key, shard FROM clips WHERE kept AND has_actions").to_pylist()
    urls = sorted({c.shard_url(k["shard"]) for k in kept})
    return {s.key: s for s in ShardReader(urls, keys={k["key"] for k in kept})}


def test_export_round_trips_through_load_lerobot(corpus_root, tmp_path):
    samples = _shard_samples(corpus_root)
    assert len(samples) >= 2
    out = tmp_path / "lerobot"
    s = export_lerobot(corpus_root, SQL, str(out), progress=False)
    assert s["episodes"] == len(samples) and s["skipped"] == {} and s["fps"] == 20
    assert s["camera"] == "corner"  # carried over from the generated dataset's camera

    eps = load_lerobot(out)
    assert len(eps) == len(samples)
    ep_rows = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    keys = [r["defi_key"] for r in sorted(ep_rows, key=lambda r: r["episode_index"])]
    assert sorted(keys) == sorted(samples)
    total = 0
    for ep, key in zip(eps, keys, strict=False):
        sample = samples[key]
        assert ep.timestamp_issues == []  # row count = frames in the mp4 span, steps of exactly 1/fps
        assert len(ep) == len(ep.actions) == sample.meta.num_frames
        np.testing.assert_array_equal(ep.actions, sample.actions)
        np.testing.assert_array_equal(ep.proprio, sample.proprio)
        assert ep.language == sample.lang and ep.language
        assert ep.camera == "corner" and ep.fps == 20.0
        total += len(ep)

    # The episode's frames in the exported mp4 look like the clip's frames (lossy re-encode).
    first = eps[0]
    import av

    with av.open(first.uri) as c:
        frames = [
            f.to_ndarray(format="rgb24") for f in c.decode(video=0) if first.from_s - 1e-6 <= float(f.pts * f.time_base) < first.to_s - 1e-6
        ]
    clip = decode_frames(samples[keys[0]].mp4)
    assert len(frames) == len(clip)
    assert np.abs(np.stack(frames).astype(int) - clip.astype(int)).mean() < 6

    # LeRobot v3 layout and metadata.
    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 20
    assert info["total_episodes"] == len(samples) and info["total_frames"] == total
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    feats = info["features"]
    assert feats["observation.images.corner"]["dtype"] == "video"
    assert feats["observation.images.corner"]["shape"] == [64, 64, 3]
    assert feats["action"] == {"dtype": "float32", "shape": [4], "names": None}
    assert feats["observation.state"]["shape"] == [4]
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert k in feats
    assert (out / "data/chunk-000/file-000.parquet").exists()
    assert (out / "videos/observation.images.corner/chunk-000/file-000.mp4").exists()
    tasks = pq.read_table(out / "meta/tasks.parquet").to_pandas()
    assert set(tasks.index) == {samples[k].lang for k in keys}
    stats = json.loads((out / "meta/stats.json").read_text())
    all_actions = np.concatenate([samples[k].actions for k in keys])
    np.testing.assert_allclose(stats["action"]["max"], all_actions.max(0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["mean"], all_actions.mean(0, dtype=np.float64), rtol=1e-6)
    # Stats of every feature LeRobot normalizes or indexes, camera included, with the quantiles pi05 needs;
    # the camera's come from the exported mp4 as it decodes (per channel, in [0, 1], shape [3, 1, 1]).
    assert set(stats) == set(feats)
    for f in feats:
        assert set(stats[f]) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
    assert np.shape(stats["observation.images.corner"]["mean"]) == (3, 1, 1)
    assert stats["index"]["count"] == [total]
    row0 = min(ep_rows, key=lambda r: r["episode_index"])
    px = np.stack(frames).reshape(-1, 3) / 255  # episode 0 has < 100 frames: LeRobot samples them all
    np.testing.assert_allclose(np.ravel(row0["stats/observation.images.corner/mean"]), px.mean(0), rtol=1e-9)
    np.testing.assert_allclose(np.ravel(row0["stats/observation.images.corner/std"]), px.std(0), rtol=1e-9)
    assert row0["stats/observation.images.corner/count"] == [len(frames)]
    np.testing.assert_allclose(row0["stats/action/min"], samples[keys[0]].actions.min(0), rtol=1e-6)
    assert not list(tmp_path.glob(".lerobot.tmp-*"))  # the temporary folder was renamed away


def test_clips_without_actions_are_skipped_and_counted(corpus_root, tmp_path):
    c = Corpus.open(corpus_root)
    n_free = c.query("SELECT count(*) AS n FROM clips WHERE kept AND NOT has_actions").to_pylist()[0]["n"]
    assert n_free >= 1
    s = export_lerobot(corpus_root, "SELECT key FROM clips WHERE kept", str(tmp_path / "all"), progress=False)
    assert s["skipped"] == {"no actions": n_free}
    assert s["episodes"] == len(_shard_samples(corpus_root)) == len(load_lerobot(tmp_path / "all"))
    with pytest.raises(ValueError, match="none of the 1 selected clips has actions"):
        key = c.query("SELECT key FROM clips WHERE kept AND NOT has_actions LIMIT 1").to_pylist()[0]["key"]
        export_lerobot(corpus_root, f"SELECT '{key}' AS key", str(tmp_path / "free"), progress=False)
    assert not (tmp_path / "free").exists()


def test_cli_exports_a_subset_and_counts_skips(corpus_root, tmp_path, capsys):
    samples = _shard_samples(corpus_root)
    one = sorted(samples)[0]
    out = tmp_path / "one"
    rc = main(
        [
            "lerobot",
            "--root",
            corpus_root,
            "--select",
            f"SELECT key FROM clips WHERE key = '{one}'",
            "--out",
            str(out),
            "--camera",
            "wrist",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert "wrote 1 episodes" in capsys.readouterr().out
    (ep,) = load_lerobot(out)
    assert ep.camera == "wrist"
    np.testing.assert_array_equal(ep.actions, samples[one].actions)

    # A non-empty --out, an empty selection and a missing corpus are one-line usage errors.
    assert main(["lerobot", "--root", corpus_root, "--select", SQL, "--out", str(out), "--no-progress"]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    rc = main(
        [
            "lerobot",
            "--root",
            corpus_root,
            "--select",
            "SELECT key FROM clips WHERE false",
            "--out",
            str(tmp_path / "none"),
            "--no-progress",
        ]
    )
    assert rc == 2 and "selection is empty" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    rc = main(["lerobot", "--root", str(tmp_path / "nope"), "--select", SQL, "--out", str(tmp_path / "x"), "--no-progress"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
