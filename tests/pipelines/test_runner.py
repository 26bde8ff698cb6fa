"""The runner (pipelines/runner.py): its backend rule, the local process pool (streaming, order,
failures), and curate + label giving the same corpus on the local backend and on a real Ray."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch
import webdataset as wds
from factories import moving_square, scenes, write_video
from runner_stages import die_on, fail_on, slow_first, threads

from defi.pipelines.cli import main as cli_main
from defi.pipelines.config import ConfigError, from_dict
from defi.pipelines.curate import run_curate
from defi.pipelines.curate_config import CurateConfig
from defi.pipelines.label import LabelConfig, run_label
from defi.pipelines.ray_adapter import RayConfig
from defi.pipelines.runner import LOCAL_MAX_TASKS, Runner, RunnerError, Stage, local_stream, pick_backend
from defi.schemas.corpus import Corpus, label_view_name
from defi.training.checkpoint import save_checkpoint
from defi.training.gidm.modeling_gidm import GIDM
from defi.training.gidm import gidm_tiny

CFG = {
    "windows": {"clip_len_s": 10, "stride_s": 10, "max_clip_s": None, "min_clip_s": 0.5},
    "shots": {"min_shot_s": 0.5},
    "encode": {"fps": 8, "short_side": 32},
    "motion": {"min_frame_diff": 0.2},
}


# ----------------------------------------------------------------------------------------------
# the rule
# ----------------------------------------------------------------------------------------------
def test_pick_backend(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    none = RayConfig()
    assert pick_backend("ray", none, 1) == ("ray", "--runner ray")
    assert pick_backend("local", RayConfig(address="ray://x:10001"), 10**6) == ("local", "--runner local")
    backend, why = pick_backend("auto", none, 3)
    assert backend == "local" and "3 tasks" in why
    assert pick_backend("auto", none, LOCAL_MAX_TASKS)[0] == "local"
    assert pick_backend("auto", none, LOCAL_MAX_TASKS + 1)[0] == "ray"
    for ray_cfg, said in [
        (RayConfig(address="10.0.0.1:6379"), "address"),
        (RayConfig(num_cpus=2), "num_cpus"),
        (RayConfig(temp_dir="/t"), "temp_dir"),
    ]:
        backend, why = pick_backend("auto", ray_cfg, 1)
        assert backend == "ray" and said in why
    assert pick_backend("auto", none, 1, [Stage("label", object, actors=2)]) == ("ray", "auto: stage label asks for 2 actors")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert pick_backend("auto", none, 1)[0] == "ray"
    with pytest.raises(ValueError, match="valid: auto, local, ray"):
        pick_backend("spark", none, 1)


def test_runner_fields_are_validated():
    with pytest.raises(ConfigError, match="runner='spark'"):
        from_dict(CurateConfig, {"runner": "spark"})
    with pytest.raises(ConfigError, match="workers=0"):
        from_dict(CurateConfig, {"workers": 0})
    assert LabelConfig().runner == "auto"


def test_cli_runner_flag(capsys, tmp_path):
    with pytest.raises(SystemExit):
        cli_main(["curate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--runner STR where the work runs: local (a process pool on this machine, no Ray)" in out
    assert "--workers INT processes of the local runner" in out
    assert cli_main(["curate", str(tmp_path), "--root", str(tmp_path / "c"), "--runner", "spark"]) == 2
    assert "valid: auto, local, ray" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# the local backend
# ----------------------------------------------------------------------------------------------
def _explode(item: int, n: int):
    for j in range(n):
        yield (item, j, os.getpid())


def _tag(out: tuple, tag: str):
    yield (*out, tag)


class _Batcher:
    """An actor stage: records the size of each batch and the process it runs in."""

    def __init__(self, scale: int):
        self.scale = scale

    def __call__(self, batch: list) -> list:
        return [(*x, len(batch), os.getpid(), self.scale) for x in batch]


def test_local_stream_fuses_task_stages_in_workers_and_batches_actors_in_the_driver():
    stages = [
        Stage("explode", _explode, (3,), cpus=1),
        Stage("tag", _tag, ("t",), cpus=1),
        Stage("batch", _Batcher, (7,), actors=1, batch_size=4),
    ]
    out = list(local_stream(list(range(5)), stages, workers=2))
    assert sorted((i, j) for i, j, *_ in out) == [(i, j) for i in range(5) for j in range(3)]
    assert {tag for *_, tag, _, _, _ in out} == {"t"}
    workers = {pid for _, _, pid, *_ in out}
    assert os.getpid() not in workers and 1 <= len(workers) <= 2  # task stages ran in worker processes
    assert {x[5] for x in out} == {os.getpid()} and {x[6] for x in out} == {7}  # the actor in the driver
    assert [x[4] for x in out] == [4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 3, 3, 3]
    for i in range(5):  # one item's outputs keep the order its stage yields them
        assert [j for k, j, *_ in out if k == i] == [0, 1, 2]


def _fail_on(item: int, bad: int):
    if item == bad:
        raise ValueError(f"item {item} is bad")
    yield item


def _die_on(item: int, bad: int):
    if item == bad:
        os._exit(3)
    yield item


def test_local_stream_reports_a_failing_stage_and_a_dead_worker():
    with pytest.raises(RunnerError, match=r"(?s)stage fail failed on item 2.*ValueError: item 2 is bad"):
        list(local_stream(list(range(4)), [Stage("fail", _fail_on, (2,))], workers=2))
    with pytest.raises(RunnerError, match=r"died \(exit code 3\)"):
        list(local_stream(list(range(4)), [Stage("die", _die_on, (1,))], workers=2))
    assert list(local_stream([], [Stage("fail", _fail_on, (0,))], workers=2)) == []


def test_ordered_yields_item_by_item_though_items_finish_out_of_order():
    """Forked (cheap) and spawned: early items sleep longest, so later ones finish first; ordered
    output is still item 0's, then item 1's ...; unordered holds the same outputs."""
    want = [(i, j) for i in range(6) for j in range(2)]
    for start in ("fork", "spawn"):
        out = list(local_stream(list(range(6)), [Stage("slow", slow_first, (2, 0.03))], workers=3, start=start, ordered=True))
        assert [(i, j) for i, j, _ in out] == want, start
        assert os.getpid() not in {pid for *_, pid in out}
    out = list(local_stream(list(range(6)), [Stage("slow", slow_first, (2, 0.03))], workers=3))
    assert sorted((i, j) for i, j, _ in out) == want


def test_spawned_workers_through_the_runner():
    with Runner("local", RayConfig(), workers=2, start="spawn") as r:
        assert r.info["start"] == "spawn"
        out = list(r.stream(list(range(4)), [Stage("threads", threads, cpus=1)], ordered=True))
    assert [x[0] for x in out] == [0, 1, 2, 3]
    pids = {x[1] for x in out}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert {x[2] for x in out} == {"1"}  # limit_threads ran in the spawned worker
    assert {x[3] for x in out} == {os.getpid()}  # its parent is the driver (die_with_parent's)


def test_fork_stays_the_default():
    r = Runner("local", RayConfig(), workers=2)
    assert r.start == "fork"
    with r:
        assert "start" not in r.info
        # a closure does not pickle: only a forked worker can run it
        out = list(r.stream([1, 2, 3], [Stage("closure", lambda x: iter([x * 10]))]))
    assert sorted(out) == [10, 20, 30]
    with pytest.raises(ValueError, match="start='forkserver'"):
        Runner("local", RayConfig(), start="forkserver")
    with pytest.raises(NotImplementedError, match="ordered=True"):
        next(Runner("ray", RayConfig()).stream([1], [Stage("t", _tag, ("t",))], ordered=True))


def test_spawned_workers_report_a_failing_stage_a_dead_worker_and_an_unpicklable_stage(monkeypatch):
    with pytest.raises(RunnerError, match=r"(?s)stage fail failed on item 2.*ValueError: item 2 is bad"):
        list(local_stream(list(range(4)), [Stage("fail", fail_on, (2,))], workers=2, start="spawn", ordered=True))
    with pytest.raises(RunnerError, match=r"died \(exit code 5\)"):
        list(local_stream(list(range(4)), [Stage("die", die_on, (1,))], workers=2, start="spawn", ordered=True))
    with pytest.raises(RunnerError, match="stage closure cannot go to a spawned worker"):
        list(local_stream([1, 2], [Stage("closure", lambda x: iter([x]))], workers=2, start="spawn"))
    # pickled by reference, but its module exists in the driver only
    mod = types.ModuleType("defi_driver_only")
    exec("def same(x):\n    yield x\n", mod.__dict__)
    monkeypatch.setitem(sys.modules, "defi_driver_only", mod)
    with pytest.raises(RunnerError, match=r"(?s)a worker could not load stage driver-only.*No module named 'defi_driver_only'"):
        list(local_stream([1, 2], [Stage("driver-only", mod.same)], workers=2, start="spawn"))


_KILLED_DRIVER = """
import os, sys, time
sys.path.insert(0, {tests!r})
from defi.pipelines.runner import Stage, local_stream
from runner_stages import slow_first
for _, _, pid in local_stream(list(range(4)), [Stage("slow", slow_first, (100, 0.05))], workers=2, start="spawn"):
    print(pid, flush=True)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (not yet reaped by init) is dead
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_spawned_workers_die_with_a_killed_driver():
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    driver = subprocess.Popen([sys.executable, "-c", _KILLED_DRIVER.format(tests=tests)], stdout=subprocess.PIPE, text=True)
    pids: set[int] = set()
    try:
        while len(pids) < 2:  # both workers have started and armed die_with_parent
            line = driver.stdout.readline()
            assert line, "the driver ended early"
            pids.add(int(line))
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    deadline = time.time() + 10
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


# ----------------------------------------------------------------------------------------------
# curate and label: the same corpus from both backends
# ----------------------------------------------------------------------------------------------
def make_inputs(folder):
    folder.mkdir(parents=True, exist_ok=True)
    write_video(folder / "a.mp4", scenes([36, 60, 30], h=72, w=128, seed=1), fps=24)
    write_video(folder / "b.mp4", moving_square(40, h=64, w=96), fps=30)
    write_video(folder / "c.mp4", scenes([30, 30], h=64, w=80, seed=5), fps=20)
    (folder / "junk.mp4").write_bytes(b"not a video" * 100)
    return folder


def test_curate_auto_runs_locally_and_says_why(tmp_path):
    inputs = make_inputs(tmp_path / "in")
    rec = run_curate([str(inputs)], str(tmp_path / "c"), from_dict(CurateConfig, CFG), progress=False)
    assert rec["status"] == "done" and rec["runner"]["backend"] == "local" and rec["runner"]["why"].startswith("auto:")
    assert "ray" not in rec and "ray_start" not in rec["timings_s"]
    assert rec["counts"]["videos"] == 4 and rec["source_errors"] == {"unreadable_container": 1}
    assert list(rec["nodes"]) == [rec["runner"]["node"]] and rec["nodes"][rec["runner"]["node"]] == 4


def _corpus_facts(root: str) -> dict:
    c = Corpus.open(root)
    clips = c.query(
        "SELECT key, source_id, start_frame, end_frame, start_s, end_s, kept, reject_reason, out_frames, motion_mean "
        "FROM clips ORDER BY key"
    ).to_pylist()
    sources = c.query("SELECT uri, source_id, error, num_frames FROM sources ORDER BY uri").to_pylist()
    samples = {}
    for shard in c.query("SELECT shard FROM shards").column("shard").to_pylist():
        for s in wds.WebDataset(c.shard_url(shard), shardshuffle=False):
            samples[s["__key__"]] = (s["mp4"], s["json"])
    return {"clips": clips, "sources": sources, "samples": samples}


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The same inputs curated by each backend: {backend: (root, run record)}."""
    inputs = make_inputs(tmp_path_factory.mktemp("in"))
    out = {}
    for backend in ("local", "ray"):
        root = str(tmp_path_factory.mktemp(f"corpus-{backend}"))
        cfg = from_dict(CurateConfig, {**CFG, "runner": backend, "ray": {"num_cpus": 2} if backend == "ray" else {}})
        out[backend] = (root, run_curate([str(inputs)], root, cfg, progress=False))
    return out


@pytest.mark.slow  # a real local Ray: ~15-40 s on 2 cores
def test_curate_gives_the_same_corpus_on_both_backends(both):
    (lroot, lrec), (rroot, rrec) = both["local"], both["ray"]
    assert lrec["runner"]["backend"] == "local" and rrec["runner"]["backend"] == "ray" and rrec["ray"]["cpus"] == 2
    for k in ("counts", "source_errors", "reject_reasons", "frames_in"):
        assert lrec[k] == rrec[k], k
    local, ray = _corpus_facts(lroot), _corpus_facts(rroot)
    assert local["sources"] == ray["sources"]
    assert [c["key"] for c in local["clips"]] == [c["key"] for c in ray["clips"]] and len(local["clips"]) == 6
    assert local["clips"] == ray["clips"]  # spans, times, scores, reasons: the same code on the same frames
    assert local["samples"].keys() == ray["samples"].keys() and local["samples"]
    for key, (mp4, meta) in local["samples"].items():
        assert meta == ray["samples"][key][1]
        assert mp4 == ray["samples"][key][0], key  # the same encoder on the same frames: the same bytes


@pytest.mark.slow  # Ray workers import torch: ~25 s or more on 2 cores
def test_label_gives_the_same_rows_on_both_backends(both, tmp_path):
    torch.manual_seed(0)
    gcfg = gidm_tiny(image_size=32, patch_size=8, model_dim=32, num_heads=2, enc_depth=1, dec_depth=1, bottleneck="vq", codebook_size=4)
    ckpt = str(save_checkpoint(tmp_path / "ckpt", GIDM(gcfg), gcfg, step=1))
    rows = {}
    for backend in ("local", "ray"):
        root = str(tmp_path / backend)
        shutil.copytree(both["local"][0], root)  # one corpus, labeled twice
        cfg = LabelConfig(
            runner=backend,
            clips_per_batch=2,
            batch_size=8,
            clips_per_unit=2,
            ray=RayConfig(num_cpus=2) if backend == "ray" else RayConfig(),
        )
        rec = run_label(root, ckpt, cfg=cfg, progress=False)
        assert rec["status"] == "done" and rec["runner"]["backend"] == backend and rec["counts"]["labeled"] > 0
        name = rec["labeler"]["name"]
        rows[backend] = {r["key"]: r for r in Corpus.open(root).query(f"SELECT * FROM {label_view_name(name)}").to_pylist()}
    assert rows["local"].keys() == rows["ray"].keys() and rows["local"]
    for key, r in rows["local"].items():
        other = rows["ray"][key]
        assert (r["codes"], r["num_steps"]) == (other["codes"], other["num_steps"]), key
        if r["norm_mean"] is not None:
            assert r["norm_mean"] == pytest.approx(other["norm_mean"], rel=1e-5)
            np.testing.assert_allclose(r["mean_vector"], other["mean_vector"], rtol=1e-5, atol=1e-6)


def _blur_sum(seed: int):
    import cv2

    img = np.random.default_rng(seed).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    yield (seed, int(cv2.GaussianBlur(img, (9, 9), 0).sum()), cv2.getNumThreads())


def test_forked_workers_use_opencv_after_the_driver_did():
    """The driver's OpenCV pool is busy before the fork (as after curating in process); the
    workers get a one-thread pool without reconfiguring the parent's (which could hang them),
    compute what the driver computes, and the driver keeps its own setting."""
    import cv2

    before = cv2.getNumThreads()
    big = np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    for _ in range(5):
        cv2.GaussianBlur(big, (9, 9), 0)
    want = {s: v for s, v, _ in (next(_blur_sum(s)) for s in range(6))}
    for _ in range(2):
        out = list(local_stream(list(range(6)), [Stage("blur", _blur_sum, cpus=1)], workers=2))
        assert {s: v for s, v, _ in out} == want and {n for *_, n in out} == {1}
    assert cv2.getNumThreads() == before
