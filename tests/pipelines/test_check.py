"""Corruption is a one-line error naming the bad file, never a traceback or a silent delete, and
`defi check` finds each kind: a garbage parquet part, a deleted sources/shards part, a truncated
shard. A real corpus: H.264 clips in a tar shard written by the curate writer, real parquet."""

import datetime as dt
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from factories import moving_square, write_video

from defi.pipelines.check import check_corpus
from defi.pipelines.label import LabelConfig, run_label
from defi.schemas.shards import Sample, write_shard
from defi.schemas.corpus import Corpus, CorpusError
from defi.schemas.records import ClipRecord, SourceRecord, clips_table, sources_table
from defi.schemas.samples import SampleMeta
from defi.schemas.tables import SHARDS, table_from_rows

DEFI = str(Path(sys.executable).with_name("defi"))
SIZE = 32


def _corpus(root: Path, tmp: Path) -> Corpus:
    """One committed unit ``u1``: 3 kept clips in shard-000000.tar, their rows, the marker."""
    c = Corpus.create(str(root))
    samples, records = [], []
    for i in range(3):
        key = f"{i:032x}"
        mp4 = write_video(tmp / f"v{i}.mp4", moving_square(8, h=SIZE, w=SIZE, size=8, speed=i + 1), fps=8).read_bytes()
        meta = SampleMeta(
            key=key,
            source_id="a" * 32,
            uri="/v.mp4",
            start_frame=0,
            end_frame=8,
            start_s=0.0,
            end_s=1.0,
            fps=8.0,
            width=SIZE,
            height=SIZE,
            num_frames=8,
        )
        samples.append(Sample(key, {"mp4": mp4, "json": meta.to_json()}))
        records.append(
            ClipRecord(
                key=key,
                source_id="a" * 32,
                uri="/v.mp4",
                start_frame=0,
                end_frame=8,
                start_s=0.0,
                end_s=1.0,
                shard="shard-000000.tar",
                out_fps=8.0,
                out_frames=8,
                out_width=SIZE,
                out_height=SIZE,
                motion_mean=float(i),
            )
        )
    info = write_shard(c, "shard-000000.tar", samples)
    c.write_part("clips", clips_table(records), part="u1")
    c.write_part(
        "shards",
        table_from_rows(
            [
                {
                    "shard": info.shard,
                    "num_samples": info.num_samples,
                    "size_bytes": info.size_bytes,
                    "sha256": info.sha256,
                    "run_id": "r",
                    "created_at": dt.datetime.now(dt.timezone.utc),
                }
            ],
            SHARDS,
            "shards",
        ),
        part="u1",
    )
    c.write_part("sources", sources_table([SourceRecord(source_id="a" * 32, uri="/v.mp4", duration_s=3.0)]), part="u1")
    return c


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _defi(*args, cwd=None):
    return subprocess.run([DEFI, *args], capture_output=True, text=True, cwd=cwd)


def _one_line_exit_2(p, *needles):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    for n in needles:
        assert n in p.stderr, p.stderr


def test_clean_corpus_checks_clean(tmp_path):
    c = _corpus(tmp_path / "c", tmp_path)
    r = check_corpus(c.root)
    assert r["problems"] == [] and r["shards"] == 1 and r["clips"] == 3
    p = _defi("check", c.root, "--no-progress")
    assert p.returncode == 0 and "no problems" in p.stdout, p.stderr


def test_garbage_parquet_part(tmp_path):
    c = _corpus(tmp_path / "c", tmp_path)
    bad = tmp_path / "c" / "clips" / "part-zzz.parquet"
    bad.write_bytes(b"PAR1 this is not parquet at all" * 10)
    for argv in (
        ["info", c.root],
        ["query", "SELECT count(*) FROM clips", "--root", c.root],
        ["browse", "SELECT key FROM clips", "--root", c.root, "--out", str(tmp_path / "b.html")],
    ):
        _one_line_exit_2(_defi(*argv), str(bad), "unreadable corpus file")
    assert not (tmp_path / "b.html").exists()
    # label: refused before anything is written
    from defi.training.checkpoint import save_checkpoint
    from defi.training.gidm.modeling_gidm import GIDM
    from defi.training.gidm import gidm_tiny

    torch.manual_seed(0)
    cfg = gidm_tiny(image_size=SIZE, patch_size=8, model_dim=32, num_heads=2, enc_depth=1, dec_depth=1)
    ckpt = str(save_checkpoint(tmp_path / "ckpt", GIDM(cfg), cfg, step=1))
    with pytest.raises(CorpusError, match=f"unreadable corpus file {bad}"):
        run_label(c.root, ckpt, cfg=LabelConfig(runner="local"), progress=False)
    assert not (tmp_path / "c" / "labels").exists()
    p = _defi("check", c.root, "--no-progress")
    assert p.returncode == 1 and f"unreadable      {bad}" in p.stdout, p.stdout


def test_deleted_sources_part_is_refused_not_cleaned(tmp_path):
    c = _corpus(tmp_path / "c", tmp_path)
    os.unlink(tmp_path / "c" / "sources" / "part-u1.parquet")
    before = _digest(tmp_path / "c")
    empty = tmp_path / "empty"
    empty.mkdir()
    p = _defi("curate", str(empty), "--root", c.root, "--no-progress")
    _one_line_exit_2(p, str(tmp_path / "c" / "clips" / "part-u1.parquet"), "--repair")
    after = {k: v for k, v in _digest(tmp_path / "c").items() if not k.startswith("runs/")}
    assert after == before  # nothing deleted, no lock left
    r = check_corpus(c.root)
    kinds = sorted((k, os.path.basename(p)) for k, p, _ in r["problems"])
    assert kinds == [("orphan_part", "part-u1.parquet"), ("orphan_part", "part-u1.parquet")]
    # the explicit flag deletes them, and says so in the run record
    p = _defi("curate", str(empty), "--root", c.root, "--no-progress", "--repair")
    assert p.returncode == 0, p.stderr
    assert Corpus.open(c.root).parts("clips") == [] and check_corpus(c.root)["problems"] == []


def test_deleted_shards_part_is_refused_and_found(tmp_path):
    c = _corpus(tmp_path / "c", tmp_path)
    os.unlink(tmp_path / "c" / "shards" / "part-u1.parquet")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_exit_2(
        _defi("curate", str(empty), "--root", c.root, "--no-progress"),
        str(tmp_path / "c" / "shards" / "shard-000000.tar"),
        "holds committed clips",
    )
    assert (tmp_path / "c" / "shards" / "shard-000000.tar").exists()
    kinds = {k for k, _, _ in check_corpus(c.root)["problems"]}
    assert kinds == {"orphan_shard"}


def test_truncated_shard(tmp_path):
    c = _corpus(tmp_path / "c", tmp_path)
    tar = tmp_path / "c" / "shards" / "shard-000000.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    p = _defi("check", c.root, "--no-progress")
    assert p.returncode == 1 and f"bad_shard       {tar}" in p.stdout, p.stdout
    problems = check_corpus(c.root)["problems"]
    assert any(k == "missing_sample" for k, _, _ in problems)
    # same size, one byte changed: the sha256 catches it
    tar.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert [(k, d.split()[0]) for k, _, d in check_corpus(c.root)["problems"]] == [("bad_shard", "sha256")]
    # deleted: missing_shard
    tar.unlink()
    assert {k for k, _, _ in check_corpus(c.root)["problems"]} == {"missing_shard"}
