"""One writer per root: a live holder refuses the next writer with one line naming it; a
SIGKILLed holder, or one whose heartbeat is old, does not block; the same on an fsspec store."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from factories import moving_square, scenes, write_video

from defi.pipelines.curate import run_curate
from defi.pipelines.lock import LOCK_FILE, LockHeld, WriterLock
from defi.pipelines.curate_config import CurateConfig
from defi.schemas.corpus import Corpus

DEFI = str(Path(sys.executable).with_name("defi"))

HOLD = textwrap.dedent("""
    import sys, time
    from defi.schemas.corpus import Corpus
    from defi.pipelines.lock import WriterLock
    lock = WriterLock(Corpus.create(sys.argv[1]), "curate", "holder-run", heartbeat_s=0.2).acquire()
    print("held", flush=True)
    time.sleep(600)
""")


def _holder(root: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_live_holder_refuses_curate_index_and_lock(tmp_path):
    root = tmp_path / "c"
    p = _holder(root)
    try:
        held = json.loads((root / LOCK_FILE).read_text())
        assert held["pid"] == p.pid and held["run_id"] == "holder-run"
        empty = tmp_path / "empty"
        empty.mkdir()
        with pytest.raises(LockHeld, match=f"run holder-run \\(pid {p.pid} on {socket.gethostname()}"):
            run_curate([str(empty)], str(root), CurateConfig(), progress=False)
        r = subprocess.run([DEFI, "index", str(root)], capture_output=True, text=True)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert f"pid {p.pid}" in r.stderr and "defi curate" in r.stderr
        assert not (root / "index.duckdb").exists() and not (root / "runs").exists()
        # the heartbeat moves while the holder lives
        t0 = held["heartbeat_at"]
        time.sleep(0.6)
        assert json.loads((root / LOCK_FILE).read_text())["heartbeat_at"] > t0
    finally:
        p.kill()
        p.wait()


def test_sigkilled_holder_does_not_block(tmp_path):
    root = tmp_path / "c"
    p = _holder(root)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert (root / LOCK_FILE).exists()  # left behind by the killed run
    r = subprocess.run([DEFI, "index", str(root)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (root / "index.duckdb").exists() and not (root / LOCK_FILE).exists()
    # and in-process: the stale holder is recorded
    p = _holder(root)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    with WriterLock(Corpus.open(str(root)), "index", "r2") as lock:
        assert lock.took_over["pid"] == p.pid and "is gone" in lock.took_over["stale_because"]


def test_other_host_holder_goes_stale_by_heartbeat(tmp_path):
    c = Corpus.create(str(tmp_path / "c"))
    rec = {"command": "label", "run_id": "far", "host": "another-host", "pid": 1, "token": "t", "heartbeat_at": time.time()}
    (tmp_path / "c" / LOCK_FILE).write_text(json.dumps(rec))
    with pytest.raises(LockHeld, match="defi label` run far \\(pid 1 on another-host"):
        WriterLock(c, "curate", "me", stale_s=60).acquire()
    rec["heartbeat_at"] = time.time() - 120
    (tmp_path / "c" / LOCK_FILE).write_text(json.dumps(rec))
    lock = WriterLock(c, "curate", "me", stale_s=60).acquire()
    try:
        assert "heartbeat is 120 s old" in lock.took_over["stale_because"]
        assert json.loads((tmp_path / "c" / LOCK_FILE).read_text())["run_id"] == "me"
    finally:
        lock.release()
    assert not (tmp_path / "c" / LOCK_FILE).exists()


def test_object_store_lock():
    """The same protocol on an fsspec object store (memory://: no rename, no exclusive create)."""
    import fsspec

    c = Corpus.create("memory://bucket/lockcorpus")
    a = WriterLock(c, "curate", "a", settle_s=0.01, heartbeat_s=0.05).acquire()
    try:
        with pytest.raises(LockHeld, match="run a "):
            WriterLock(c, "label", "b", settle_s=0.01).acquire()
    finally:
        a.release()
    assert not c.fs.exists(c.path(LOCK_FILE))
    # a holder on another host that stopped beating is taken over
    c.fs.pipe_file(
        c.path(LOCK_FILE),
        json.dumps({"host": "elsewhere", "pid": 7, "run_id": "old", "token": "x", "heartbeat_at": time.time() - 1000}).encode(),
    )
    with WriterLock(c, "curate", "c", settle_s=0.01, stale_s=300) as lock:
        assert lock.took_over["run_id"] == "old"
        assert json.loads(c.fs.cat_file(c.path(LOCK_FILE)))["run_id"] == "c"
    fsspec.filesystem("memory").rm("/bucket/lockcorpus", recursive=True)


@pytest.mark.slow
def test_two_concurrent_curate_runs(tmp_path):
    """Two `defi curate` runs started together on one root: one is refused with a line naming the
    other (or, if they did not overlap, both finish); every kept clip's sample is in its shard."""
    import webdataset as wds

    inputs = tmp_path / "in"
    inputs.mkdir()
    write_video(inputs / "a.mp4", scenes([30, 30], h=64, w=96, seed=1), fps=24)
    write_video(inputs / "b.mp4", moving_square(40), fps=24)
    root = tmp_path / "c"
    cmd = [
        DEFI,
        "curate",
        str(inputs),
        "--root",
        str(root),
        "--no-progress",
        "--ray.num_cpus",
        "1",
        "--windows.min_clip_s",
        "0.5",
        "--shots.min_shot_s",
        "0.5",
    ]
    ps = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in ps]
    codes = sorted(p.returncode for p in ps)
    assert codes in ([0, 0], [0, 2]), outs
    if codes == [0, 2]:
        err = next(o[1] for p, o in zip(ps, outs, strict=True) if p.returncode == 2)
        assert "is being written by `defi curate`" in err and len(err.strip().splitlines()) == 1, err
    c = Corpus.open(str(root))
    kept = c.query("SELECT key, shard FROM clips WHERE kept").to_pylist()
    assert kept
    for shard in {r["shard"] for r in kept}:
        keys = {s["__key__"] for s in wds.WebDataset(c.shard_url(shard), shardshuffle=False)}
        assert {r["key"] for r in kept if r["shard"] == shard} <= keys
    assert not (root / LOCK_FILE).exists()


def test_label_is_refused_while_another_run_writes(tmp_path):
    import torch

    from defi.pipelines.label import LabelConfig, run_label
    from defi.training.checkpoint import save_checkpoint
    from defi.training.gidm.modeling_gidm import GIDM
    from defi.training.gidm import gidm_tiny

    torch.manual_seed(0)
    cfg = gidm_tiny(image_size=32, patch_size=8, model_dim=32, num_heads=2, enc_depth=1, dec_depth=1)
    ckpt = str(save_checkpoint(tmp_path / "ckpt", GIDM(cfg), cfg, step=1))
    root = tmp_path / "c"
    p = _holder(root)
    try:
        with pytest.raises(LockHeld, match=f"pid {p.pid}"):
            run_label(str(root), ckpt, cfg=LabelConfig(runner="local"), progress=False)
        assert not (root / "labels").exists() and not (root / "runs").exists()
    finally:
        p.kill()
        p.wait()
    from defi.schemas.selection import SelectionError

    # the holder is gone: the lock is taken, and the run gets as far as its (empty) selection
    with pytest.raises(SelectionError, match="selection is empty"):
        run_label(str(root), ckpt, cfg=LabelConfig(runner="local"), progress=False)
    assert not (root / LOCK_FILE).exists()
