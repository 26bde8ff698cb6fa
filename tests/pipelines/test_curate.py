"""`defi curate` end to end on a folder of generated videos plus bad files: real Ray, real
H.264/MPEG-4/VP9, real tar shards, real DuckDB."""

import io
import json
import os
import random
import signal
import subprocess
import sys
import time

import av
import numpy as np
import pytest
import webdataset as wds
from factories import moving_square, pan, scenes, static_color, truncate_copy, write_audio_only, write_video

from defi.pipelines.config import from_dict
from defi.pipelines.curate import run_curate
from defi.pipelines.curate_config import CurateConfig
from defi.schemas.corpus import Corpus

# shot lengths (frames) per generated video; one clip per shot with the windows below
VIDEOS = {
    "a_three_shots.mp4": dict(frames=lambda: scenes([36, 60, 30], h=72, w=128, seed=1), fps=24, shots=3),
    "b_two_shots_25fps.mp4": dict(frames=lambda: scenes([50, 40], h=96, w=96, seed=2), fps=25, shots=2),
    "c_square_30fps.mp4": dict(frames=lambda: moving_square(40, h=64, w=96), fps=30, shots=1),
    "d_pan.mp4": dict(frames=lambda: pan(48, h=64, w=112, seed=3), fps=24, shots=1),
    "e_mpeg4.mkv": dict(frames=lambda: scenes([40, 40], h=80, w=120, seed=4), fps=20, shots=2, codec="mpeg4"),
    "f_vp9.webm": dict(frames=lambda: moving_square(40, h=64, w=96), fps=20, shots=1, codec="libvpx-vp9"),
    "g_static.mp4": dict(frames=lambda: static_color(48), fps=24, shots=1),
    "h_noise_small.mp4": dict(frames=lambda: scenes([30, 30, 30, 30], h=64, w=80, seed=5), fps=30, shots=4),
}

CFG = {
    "windows": {"clip_len_s": 10, "stride_s": 10, "max_clip_s": None, "min_clip_s": 0.5},
    "shots": {"min_shot_s": 0.5},
    "encode": {"fps": 8, "short_side": 48},
    "black": {"max_black_frac": 0.5},
    "motion": {"min_frame_diff": 0.2},
    "ray": {"num_cpus": 2},
}


def make_inputs(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name, v in VIDEOS.items():
        write_video(folder / name, v["frames"](), fps=v["fps"], codec=v.get("codec", "libx264"))
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "random.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    (folder / "text.mp4").write_text("not a video at all\n" * 50)
    write_audio_only(folder / "audio_only.mp4")
    truncate_copy(folder / "a_three_shots.mp4", folder / "truncated.mp4", keep=0.5)
    write_video(folder / "three_frames.mp4", moving_square(3), fps=24)
    return folder


BAD = {
    "zero.mp4": "empty_file",
    "random.mp4": "unreadable_container",
    "text.mp4": "unreadable_container",
    "audio_only.mp4": "no_video_stream",
    "truncated.mp4": "truncated",
    "three_frames.mp4": "too_few_frames",
}


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    inputs = make_inputs(tmp_path_factory.mktemp("inputs"))
    root = str(tmp_path_factory.mktemp("corpus"))
    rec = run_curate([str(inputs)], root, from_dict(CurateConfig, CFG), progress=False)
    return inputs, root, rec


def test_every_input_has_a_source_row_and_bad_files_their_reason(curated):
    inputs, root, rec = curated
    c = Corpus.open(root)
    rows = {os.path.basename(r["uri"]): r for r in c.query("SELECT uri, error, width, height, fps_avg FROM sources").to_pylist()}
    assert set(rows) == set(VIDEOS) | set(BAD)
    for name, reason in BAD.items():
        assert rows[name]["error"] == reason, (name, rows[name])
    for name in VIDEOS:
        assert rows[name]["error"] is None, (name, rows[name])
    assert rows["b_two_shots_25fps.mp4"]["fps_avg"] == pytest.approx(25, rel=0.01)
    assert rec["status"] == "done" and rec["counts"]["videos"] == len(VIDEOS) + len(BAD)
    assert sum(rec["source_errors"].values()) == len(BAD)


def test_clip_counts_match_shot_structure(curated):
    inputs, root, rec = curated
    c = Corpus.open(root)
    got = {os.path.basename(r["uri"]): r["n"] for r in c.query("SELECT uri, count(*) AS n FROM clips GROUP BY 1").to_pylist()}
    assert got == {name: v["shots"] for name, v in VIDEOS.items()}
    # the cut times of the three-shot video are the known ones
    cuts = c.query("SELECT start_frame, end_frame FROM clips WHERE uri LIKE '%a_three_shots.mp4' ORDER BY 1").to_pylist()
    assert [(r["start_frame"], r["end_frame"]) for r in cuts] == [(0, 36), (36, 96), (96, 126)]
    # the static colour video is rejected by a frame filter; the moving ones are kept
    reasons = {os.path.basename(r["uri"]): r["reject_reason"] for r in c.query("SELECT uri, reject_reason FROM clips").to_pylist()}
    assert reasons["g_static.mp4"] in ("black_frames", "low_motion")
    assert reasons["c_square_30fps.mp4"] is None and reasons["f_vp9.webm"] is None


def test_shards_decode_and_agree_with_the_index(curated):
    inputs, root, rec = curated
    c = Corpus.open(root)
    kept = {r["key"]: r for r in c.query("SELECT key, shard, out_frames, out_width, out_height, out_fps FROM clips WHERE kept").to_pylist()}
    shards = c.query("SELECT shard, num_samples FROM shards").to_pylist()
    assert sum(s["num_samples"] for s in shards) == len(kept) > 0
    seen = {}
    for s in shards:
        for sample in wds.WebDataset(c.shard_url(s["shard"]), shardshuffle=False):
            key = sample["__key__"]
            meta = json.loads(sample["json"])
            with av.open(io.BytesIO(sample["mp4"])) as f:
                frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
            seen[key] = (s["shard"], len(frames), frames[0].shape)
            assert meta["key"] == key and meta["num_frames"] == len(frames)
    assert set(seen) == set(kept)
    for key, (shard, n, shape) in seen.items():
        r = kept[key]
        assert shard == r["shard"] and n == r["out_frames"]
        assert shape == (r["out_height"], r["out_width"], 3) and min(shape[:2]) == 48
    # `defi query` (the CLI) agrees
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "defi.pipelines.cli",
            "query",
            "SELECT count(*) AS n FROM clips WHERE kept",
            "--root",
            root,
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out)["n"] == len(seen)


def test_rerun_skips_everything_and_writes_nothing(curated):
    inputs, root, rec = curated
    c = Corpus.open(root)
    before = sorted(os.listdir(os.path.join(root, "clips"))), sorted(os.listdir(os.path.join(root, "shards")))
    assert any(f.endswith(".tar") for f in before[1]) and any(f.endswith(".parquet") for f in before[1])
    rec2 = run_curate([str(inputs)], root, from_dict(CurateConfig, CFG), progress=False)
    assert rec2["counts"]["skipped_done"] == len(VIDEOS) + len(BAD) and rec2["counts"].get("videos", 0) == 0
    after = sorted(os.listdir(os.path.join(root, "clips"))), sorted(os.listdir(os.path.join(root, "shards")))
    assert before == after
    assert c.query("SELECT count(*) - count(DISTINCT key) AS dups FROM clips").to_pylist() == [{"dups": 0}]


def test_run_record(curated):
    inputs, root, rec = curated
    saved = json.loads(open(os.path.join(root, "runs", rec["run_id"] + ".json")).read())
    assert saved["status"] == "done" and saved["config"]["encode"]["fps"] == 8
    assert saved["counts"]["kept"] + sum(saved["reject_reasons"].values()) == saved["counts"]["clips"]
    assert saved["hours_in"] > saved["hours_out"] > 0 and saved["nodes"]
    assert {"decode", "shots", "score", "encode", "probe"} <= set(saved["timings_s"])
    # input frames of the readable videos, and the window the workers spent on them
    assert saved["frames_in"] == sum(len(list(v["frames"]())) for v in VIDEOS.values())
    assert 0 < saved["processing_window_s"] < saved["wall_s"]
    # the local Ray's temp dir (made fresh for the run) is gone with it
    assert saved["ray"]["temp_dir"] and not os.path.exists(saved["ray"]["temp_dir"])


def _kill_and_resume(inputs, root, seed, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "defi.pipelines.cli",
        "curate",
        str(inputs),
        "--root",
        root,
        "--no-progress",
        "--config",
        str(tmp_path / "cfg.json"),
        "--shards.videos_per_unit",
        "1",
    ]
    (tmp_path / "cfg.json").write_text(json.dumps(CFG))
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # kill mid-run: after the first unit committed, at a random moment of the rest
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if os.path.isdir(os.path.join(root, "sources")) and os.listdir(os.path.join(root, "sources")):
            break
        time.sleep(0.05)
    time.sleep(random.Random(seed).uniform(0, 0.6))
    assert p.poll() is None, "the run finished before it could be killed"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    units_at_kill = len([f for f in os.listdir(os.path.join(root, "sources")) if f.startswith("part-")])
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return units_at_kill


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_sigkill_and_resume_gives_the_same_clips(curated, tmp_path, seed):
    inputs, root, rec = curated
    killed_root = str(tmp_path / "killed")
    units_at_kill = _kill_and_resume(inputs, killed_root, seed, tmp_path)
    assert units_at_kill >= 1  # killed after at least one commit, while the process was still running
    ref = Corpus.open(root).query("SELECT key FROM clips WHERE kept ORDER BY key").column("key").to_pylist()
    c = Corpus.open(killed_root)
    got = c.query("SELECT key FROM clips WHERE kept ORDER BY key").column("key").to_pylist()
    assert got == ref
    assert c.query("SELECT count(*) - count(DISTINCT key) AS d FROM clips").to_pylist() == [{"d": 0}]
    assert c.query("SELECT count(*) - count(DISTINCT uri) AS d FROM sources").to_pylist() == [{"d": 0}]
    on_disk = {f for f in os.listdir(os.path.join(killed_root, "shards")) if not f.endswith(".parquet")}
    assert on_disk == set(c.query("SELECT shard FROM shards").column("shard").to_pylist())  # no orphan
    assert on_disk == set(c.query("SELECT DISTINCT shard FROM clips WHERE kept").column("shard").to_pylist())


def test_yuv420p_and_rgb24_hold_give_the_same_clips(tmp_path):
    """The pipeline's default yuv420p hold (no RGB conversion of re-encoded frames) cuts, scores
    and keeps exactly as the RGB hold does, and the clip pixels agree."""
    from defi.pipelines.sources import SourceSpec
    from defi.pipelines.curate_video import VideoDone, process_source

    inputs = tmp_path / "in"
    inputs.mkdir()
    out = {}
    for name in ("a_three_shots.mp4", "d_pan.mp4", "h_noise_small.mp4"):
        v = VIDEOS[name]
        write_video(inputs / name, v["frames"](), fps=v["fps"])
        for fmt in ("yuv420p", "rgb24"):
            cfg = from_dict(CurateConfig, {**CFG, "analysis": {"pix_fmt": fmt}})
            items = [it for it in process_source(SourceSpec(uri=str(inputs / name)), cfg) if not isinstance(it, VideoDone)]
            out[name, fmt] = items
        yuv, rgb = out[name, "yuv420p"], out[name, "rgb24"]
        assert len(yuv) == len(rgb) == v["shots"]
        for a, b in zip(yuv, rgb, strict=False):
            ra, rb = a.record, b.record
            assert (ra.start_frame, ra.end_frame, ra.kept, ra.reject_reason) == (rb.start_frame, rb.end_frame, rb.kept, rb.reject_reason)
            assert ra.key != rb.key  # the hold format is a key parameter: clip bytes differ slightly
            for score in ("frame_diff", "motion_mean", "camera_motion", "blur"):
                assert getattr(ra, score) == pytest.approx(getattr(rb, score), rel=0.1, abs=0.05), score
            if ra.kept:
                fa = [f.to_ndarray(format="rgb24") for f in av.open(io.BytesIO(a.members["mp4"])).decode(video=0)]
                fb = [f.to_ndarray(format="rgb24") for f in av.open(io.BytesIO(b.members["mp4"])).decode(video=0)]
                # same luma; chroma of these random-colour blocks differs more (both end as 4:2:0,
                # filtered in a different order), so only brightness is compared
                luma = [np.stack(f).astype(float) @ [0.299, 0.587, 0.114] for f in (fa, fb)]
                assert len(fa) == len(fb) and np.abs(luma[0] - luma[1]).mean() < 4
