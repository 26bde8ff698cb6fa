"""A hostile user against a real corpus (`defi curate` of tiny generated videos, through the CLI
entry point): a renamed or deleted part is never deleted by `--repair` but moved to quarantine and
rebuilt, `defi check` names what no source explains, garbage parts are one line naming the file,
an npz sidecar's instruction reaches every table and shard, and encoding does not depend on how
the run was scheduled."""

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from factories import moving_square, pan, scenes, write_video

from defi.schemas.corpus import Corpus

DEFI = str(Path(sys.executable).with_name("defi"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
FLAGS = ["--no-progress", "--runner", "local", "--shards.videos_per_unit", "2", "--encode.short_side", "48"]
INSTRUCTION = "pick up the red cube"


def _defi(*args):
    return subprocess.run([DEFI, *args], capture_output=True, text=True, env=ENV)


def _one_line_exit_2(p, *needles):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    for n in needles:
        assert n in p.stderr, p.stderr


def _make_inputs(d: Path) -> Path:
    d.mkdir(parents=True)
    write_video(d / "a.mp4", scenes([20, 20], h=64, w=96, seed=1), fps=10)
    write_video(d / "b.mp4", moving_square(30, h=64, w=96), fps=10)
    write_video(d / "c.mp4", pan(30, h=64, w=96, seed=3), fps=10)
    write_video(d / "r.mp4", moving_square(30, h=64, w=96, speed=3, size=12), fps=10)
    actions = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    np.savez(d / "r.npz", actions=actions, language=np.array(INSTRUCTION))
    return d


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    inputs = _make_inputs(base / "in")
    root = base / "R"
    p = _defi("curate", str(inputs), "--root", str(root), *FLAGS)
    assert p.returncode == 0, p.stderr
    return inputs, root


def _copy(made, tmp_path) -> tuple[Path, Path]:
    inputs, root = made
    shutil.copytree(root, tmp_path / "R")
    return inputs, tmp_path / "R"


def _hashes(root: Path) -> dict[str, str]:
    """sha256 -> path of every data file (runs/ and locks change on every command)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.relative_to(root).parts[0] in ("runs", "pending") and not p.name.startswith(".lock"):
            out[hashlib.sha256(p.read_bytes()).hexdigest()] = str(p.relative_to(root))
    return out


def _keys(root: Path) -> list[str]:
    return Corpus.open(str(root)).query("SELECT key FROM clips ORDER BY key").column("key").to_pylist()


def _unit_with_clips(root: Path) -> str:
    return sorted((root / "clips").glob("part-*.parquet"))[0].name


def test_renamed_sources_part_is_quarantined_reported_and_rebuilt(made, tmp_path):
    inputs, root = _copy(made, tmp_path)
    keys, before = _keys(root), _hashes(root)
    part = _unit_with_clips(root)
    os.rename(root / "sources" / part, root / "sources" / "part-renamed.parquet")
    # check names the unexplained parts and the sources whose clips vanished
    p = _defi("check", str(root), "--no-progress")
    assert p.returncode == 1
    kinds = sorted((line.split()[0], os.path.basename(line.split()[1])) for line in p.stdout.splitlines())
    assert kinds == [("lost_clips", "part-renamed.parquet"), ("orphan_part", part), ("orphan_part", part)], p.stdout
    # without --repair: refused, nothing touched
    _one_line_exit_2(_defi("curate", str(inputs), "--root", str(root), *FLAGS), str(root / "clips" / part), "--repair")
    # --repair moves, never deletes, says what and why, and the same run curates those videos again
    p = _defi("curate", str(inputs), "--root", str(root), *FLAGS, "--repair")
    assert p.returncode == 0, p.stderr
    moved = [line for line in p.stdout.splitlines() if line.strip().startswith("repair")]
    assert len(moved) == 4 and all("quarantine" in m for m in moved), p.stdout  # clips, shards parts, the tar, the sources part
    after = _hashes(root)
    assert set(before) <= set(after), "a file's bytes are gone"
    assert _keys(root) == keys  # rebuilt with the same keys
    p = _defi("check", str(root), "--no-progress")
    assert p.returncode == 0 and "no problems" in p.stdout and "quarantine" in p.stderr, (p.stdout, p.stderr)
    # what was quarantined reads back: the user can restore from it
    q = next((root / "quarantine").iterdir())
    assert (q / "why.json").exists() and (q / "clips" / part).exists() and (q / "sources" / "part-renamed.parquet").exists()


def test_deleted_clips_part_is_refused_reported_and_rebuilt(made, tmp_path):
    inputs, root = _copy(made, tmp_path)
    keys = _keys(root)
    part = _unit_with_clips(root)
    (root / "clips" / part).unlink()
    p = _defi("check", str(root), "--no-progress")
    assert p.returncode == 1 and p.stdout.split()[:2] == ["lost_clips", str(root / "sources" / part)], p.stdout
    _one_line_exit_2(_defi("curate", str(inputs), "--root", str(root), *FLAGS), str(root / "sources" / part), "no clips")
    p = _defi("curate", str(inputs), "--root", str(root), *FLAGS, "--repair")
    assert p.returncode == 0, p.stderr
    assert _keys(root) == keys
    assert _defi("check", str(root), "--no-progress").returncode == 0


@pytest.mark.parametrize("damage", ["shards part deleted", "sources part garbage", "sources part replaced"])
def test_repair_quarantines_a_damaged_unit_and_rebuilds_it(made, tmp_path, damage):
    inputs, root = _copy(made, tmp_path)
    keys = _keys(root)
    part = _unit_with_clips(root)
    if damage == "shards part deleted":
        (root / "shards" / part).unlink()
    elif damage == "sources part garbage":
        (root / "sources" / part).write_bytes(b"PAR1 garbage")
    else:  # another unit's sources part under this unit's name: its clips belong to no source
        other = next(p for p in sorted((root / "sources").glob("part-*.parquet")) if p.name != part)
        shutil.copyfile(other, root / "sources" / part)
    before = _hashes(root)
    assert _defi("check", str(root), "--no-progress").returncode == 1
    _one_line_exit_2(_defi("curate", str(inputs), "--root", str(root), *FLAGS), "--repair")
    p = _defi("curate", str(inputs), "--root", str(root), *FLAGS, "--repair")
    assert p.returncode == 0 and "repair   moved" in p.stdout, p.stderr
    assert set(before) <= set(_hashes(root))
    assert _keys(root) == keys
    assert _defi("check", str(root), "--no-progress").returncode == 0


def test_npz_instruction_reaches_sources_clips_and_shards(made):
    _, root = made
    c = Corpus.open(str(root))
    src = c.query("SELECT uri, language FROM sources ORDER BY uri").to_pylist()
    assert {os.path.basename(r["uri"]): r["language"] for r in src} == {"a.mp4": None, "b.mp4": None, "c.mp4": None, "r.mp4": INSTRUCTION}
    clips = c.query("SELECT key, shard, language FROM clips WHERE uri LIKE '%r.mp4' AND kept").to_pylist()
    assert clips and all(r["language"] == INSTRUCTION for r in clips)
    for r in clips:
        with tarfile.open(root / "shards" / r["shard"]) as tar:
            assert tar.extractfile(f"{r['key']}.lang.txt").read().decode() == INSTRUCTION
            meta = tar.extractfile(f"{r['key']}.json").read().decode()
            assert INSTRUCTION in meta


@pytest.mark.parametrize("where", ["clips/part-x.parquet", "text_embeddings/part-x.parquet"])
def test_index_with_a_garbage_part_is_one_line(made, tmp_path, where):
    _, root = _copy(made, tmp_path)
    bad = root / where
    bad.parent.mkdir(exist_ok=True)
    bad.write_bytes(np.random.default_rng(1).bytes(3000))
    _one_line_exit_2(_defi("index", str(root)), str(bad), "unreadable corpus file")
    assert not list(root.glob("*.duckdb*")) and not list(root.glob(".tmp-index-*"))


def test_curate_with_a_garbage_sources_part_is_one_line(made, tmp_path):
    inputs, root = _copy(made, tmp_path)
    bad = root / "sources" / "part-x.parquet"
    bad.write_bytes(np.random.default_rng(2).bytes(3000))
    before = _hashes(root)
    _one_line_exit_2(_defi("curate", str(inputs), "--root", str(root), *FLAGS), str(bad), "unreadable")
    assert _hashes(root) == before


def _member_bytes(root: Path) -> dict[str, bytes]:
    out = {}
    for t in sorted((root / "shards").glob("*.tar")):
        with tarfile.open(t) as tar:
            for m in tar:
                out[m.name] = tar.extractfile(m).read()
    return out


def test_encoding_does_not_depend_on_workers_or_resume(made, tmp_path):
    """The same inputs curated with 1 worker, and with 2 workers in two runs (--limit 2, then the
    rest), give byte-identical shard members per key."""
    inputs, _ = made
    flags = [f for f in FLAGS if f not in ("--encode.short_side", "48")]  # unscaled: frames go to x264 as decoded
    one = tmp_path / "one"
    assert _defi("curate", str(inputs), "--root", str(one), *flags, "--workers", "1").returncode == 0
    two = tmp_path / "two"
    assert _defi("curate", str(inputs), "--root", str(two), *flags, "--workers", "2", "--limit", "2").returncode == 0
    assert _defi("curate", str(inputs), "--root", str(two), *flags, "--workers", "2").returncode == 0
    a, b = _member_bytes(one), _member_bytes(two)
    assert a.keys() == b.keys() and len(a) > 0
    assert [k for k in a if a[k] != b[k]] == []


ENCODE_ONE = """
import hashlib, io, sys
import numpy as np
from defi.curate.base import Frames
from defi.curate.encode import encode_frames
h, w = 64, 96
ramp = np.add.outer(np.arange(h * 3 // 2), np.arange(w))
frames = Frames(np.stack([np.clip(ramp + 3 * t, 0, 255).astype(np.uint8) for t in range(30)]), np.arange(30) / 10, np.arange(30), layout="i420")
out = io.BytesIO()
assert encode_frames(frames, 10.0, out).ok
print(hashlib.sha256(out.getvalue()).hexdigest())
"""


def test_the_same_pixels_encode_to_the_same_bytes_whatever_memory_held_before():
    """libx264 reads memory it has not written, so what a process freed before (other clips,
    other videos: another --workers, a resumed run) reached a clip's bytes. glibc's
    MALLOC_PERTURB_ fills freed and new memory with a chosen byte: two processes that differ
    only in it must encode the same pixels to the same bytes."""
    digests = set()
    for byte in ("17", "238", ""):
        p = subprocess.run([sys.executable, "-c", ENCODE_ONE], capture_output=True, text=True, env={**ENV, "MALLOC_PERTURB_": byte})
        assert p.returncode == 0, p.stderr
        digests.add(p.stdout.strip())
    assert len(digests) == 1


def _children(pid: int) -> set[int]:
    """Pids whose parent is ``pid``, read from /proc."""
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.add(int(d))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_killed_curate_leaves_no_worker_and_resumes(tmp_path, sig):
    import signal
    import time

    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(6):
        write_video(inputs / f"v{i}.mp4", pan(150, h=96, w=128, seed=i, speed=1 + i % 3), fps=25)
    root = tmp_path / "R"
    cmd = [DEFI, "curate", str(inputs), "--root", str(root), "--workers", "2", *FLAGS]
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers: set[int] = set()
    deadline = time.time() + 60
    while len(workers) < 2 and time.time() < deadline and p.poll() is None:
        workers |= {c for c in _children(p.pid) if _alive(c)}
        time.sleep(0.05)
    assert len(workers) == 2 and p.poll() is None, "the run ended before its workers could be seen"
    p.send_signal(getattr(signal, sig))
    _, err = p.communicate(timeout=60)
    if sig == "SIGTERM":  # stopped like Ctrl-C: one line, the run record says so
        assert p.returncode == 130, err
        assert "Traceback" not in err
        import json

        (rec,) = [json.loads(f.read_text()) for f in (root / "runs").glob("*.json")]
        assert rec["status"] == "interrupted"
    deadline = time.time() + 10
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert [w for w in workers if _alive(w)] == [], "a worker outlived its driver"
    # the rerun resumes (the lock of a dead driver is taken over) and the corpus checks clean
    p = _defi(*cmd[1:])
    assert p.returncode == 0, p.stderr
    c = Corpus.open(str(root))
    assert c.query("SELECT count(*) AS n FROM sources").to_pylist() == [{"n": 6}]
    assert c.query("SELECT count(*) - count(DISTINCT key) AS d FROM clips").to_pylist() == [{"d": 0}]
    assert _defi("check", str(root), "--no-progress").returncode == 0
