"""`defi dedup` over a real corpus made by two `defi curate` runs (real H.264, tar shards, DuckDB):
a copy of a video curated in the second run (smaller, re-encoded) is grouped with its original
and one is kept; the result does not depend on the order of the runs; an incremental run equals
one from scratch; other content stays apart; bad input is one line and writes nothing."""

from __future__ import annotations

import os
import shutil

import cv2
import duckdb
import pytest
from factories import smooth_pan, write_video

from defi.pipelines.config import from_dict
from defi.pipelines.curate import run_curate
from defi.pipelines.curate_config import CurateConfig
from defi.pipelines.dedup import DedupConfig, DedupError, main, run_dedup
from defi.pipelines.label import run_select
from defi.schemas.corpus import Corpus
from defi.schemas.records import ClipRecord, clips_table
from defi.schemas.selection import read_selection

CURATE = {
    "windows": {"clip_len_s": 10, "stride_s": 10, "max_clip_s": None, "min_clip_s": 0.5},
    "shots": {"min_shot_s": 0.5},
    "encode": {"fps": 12, "short_side": 64},
    "motion": {"min_frame_diff": 0.1},
    "runner": "local",
}
DEDUP = {"runner": "local", "workers": 1}


def _small(frames):
    return [cv2.resize(f, (96, 54), interpolation=cv2.INTER_AREA) for f in frames]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two folders (one per curate run). Run 2 holds a smaller re-encode of run 1's a.mp4."""
    tmp = tmp_path_factory.mktemp("dedup-inputs")
    a = list(smooth_pan(48, h=72, w=128, speed=1, seed=3))
    (tmp / "run1").mkdir()
    (tmp / "run2").mkdir()
    write_video(tmp / "run1" / "a.mp4", a, fps=24)
    write_video(tmp / "run1" / "b.mp4", smooth_pan(48, h=72, w=128, speed=1, seed=5), fps=24)
    write_video(tmp / "run2" / "a_small.mp4", _small(a), fps=24)
    write_video(tmp / "run2" / "c.mp4", smooth_pan(48, h=72, w=128, speed=1, seed=7), fps=24)
    return tmp


def _curate(folder, root):
    rec = run_curate([str(folder)], str(root), from_dict(CurateConfig, CURATE), progress=False)
    assert rec["status"] == "done"


def _by_uri(root) -> dict[str, dict]:
    rows = Corpus.open(str(root)).query("SELECT d.*, c.uri FROM dedup d JOIN clips c USING (key) ORDER BY key").to_pylist()
    return {os.path.basename(r["uri"]): r for r in rows}


@pytest.fixture(scope="module")
def corpora(inputs, tmp_path_factory):
    """``fwd``: run1, dedup, run2, dedup (incremental); ``rev``: run2, run1, one dedup (from scratch)."""
    tmp = tmp_path_factory.mktemp("dedup-corpora")
    recs = {}
    _curate(inputs / "run1", tmp / "fwd")
    recs["fwd1"] = run_dedup(str(tmp / "fwd"), from_dict(DedupConfig, DEDUP), progress=False)
    _curate(inputs / "run2", tmp / "fwd")
    recs["fwd2"] = run_dedup(str(tmp / "fwd"), from_dict(DedupConfig, DEDUP), progress=False)
    _curate(inputs / "run2", tmp / "rev")
    _curate(inputs / "run1", tmp / "rev")
    recs["rev"] = run_dedup(str(tmp / "rev"), from_dict(DedupConfig, DEDUP), progress=False)
    return tmp / "fwd", tmp / "rev", recs


def test_a_copy_from_another_run_is_grouped_and_one_is_kept(corpora):
    fwd, _, recs = corpora
    rows = _by_uri(fwd)
    assert set(rows) == {"a.mp4", "b.mp4", "a_small.mp4", "c.mp4"}
    a, copy = rows["a.mp4"], rows["a_small.mp4"]
    assert a["dup_group"] == copy["dup_group"] == a["key"]  # the bigger source is the keeper
    assert a["keeper"] and not copy["keeper"] and a["group_size"] == 2
    assert copy["neighbour"] == a["key"] and copy["match"] == "keyframes" and copy["distance"] < 0.1
    for other in ("b.mp4", "c.mp4"):  # other content: alone, kept
        assert rows[other]["group_size"] == 1 and rows[other]["keeper"] and rows[other]["dup_group"] == rows[other]["key"]
    assert recs["fwd2"]["status"] == "done" and recs["fwd2"]["counts"]["non_keepers"] == 1
    # the views a selection uses
    c = Corpus.open(str(fwd))
    left = {os.path.basename(u) for u in c.query("SELECT uri FROM clips_dedup").column("uri").to_pylist()}
    assert left == {"a.mp4", "b.mp4", "c.mp4"}
    assert c.labelers() == [] and c.query("SELECT count(*) AS n FROM latent_actions").column("n")[0].as_py() == 0
    con = duckdb.connect(c.build_index(), read_only=True)  # DuckDB's own clients see the same views
    try:
        assert con.execute("SELECT count(*) FROM clips_dedup").fetchone()[0] == 3
        assert con.execute("SELECT count(*) FROM dedup WHERE NOT keeper").fetchone()[0] == 1
    finally:
        con.close()


def test_order_of_runs_and_incremental_runs_do_not_change_the_result(corpora):
    fwd, rev, recs = corpora
    cols = ("key", "dup_group", "keeper", "group_size", "neighbour", "match", "error")
    f, r = _by_uri(fwd), _by_uri(rev)
    assert {k: tuple(v[c] for c in cols) for k, v in f.items()} == {k: tuple(v[c] for c in cols) for k, v in r.items()}
    assert {k: v["distance"] for k, v in f.items()} == pytest.approx({k: v["distance"] for k, v in r.items()})
    # the second run of fwd computed signatures only for run 2's clips
    assert recs["fwd1"]["counts"]["signatures"] == 2
    assert recs["fwd2"]["counts"]["signatures_cached"] == 2 and recs["fwd2"]["counts"]["signatures"] == 2
    assert recs["rev"]["counts"]["signatures"] == 4


def test_another_threshold_needs_no_new_signatures_and_select_excludes_duplicates(corpora, tmp_path):
    fwd, _, _ = corpora
    root = tmp_path / "c"
    shutil.copytree(fwd, root)
    rec = run_dedup(str(root), from_dict(DedupConfig, {**DEDUP, "min_similarity": -1.0}), progress=False)
    assert rec["counts"]["signatures"] == 0 and rec["counts"]["signatures_cached"] == 4
    assert rec["result"] != from_dict(DedupConfig, DEDUP).result_name()
    assert [r["group_size"] for r in _by_uri(root).values()] == [4] * 4  # at -1 every clip matches every other
    run_dedup(str(root), from_dict(DedupConfig, DEDUP), progress=False)  # back to the default: current again
    s = run_select(str(root), "true", str(tmp_path / "sel.parquet"), exclude_duplicates=True)
    assert s["clips"] == 3
    keys, _ = read_selection(str(tmp_path / "sel.parquet"))
    assert _by_uri(root)["a_small.mp4"]["key"] not in keys


def test_a_clip_without_signature_is_a_row_with_its_reason(corpora, tmp_path):
    fwd, _, _ = corpora
    root = tmp_path / "c"
    shutil.copytree(fwd, root)
    c = Corpus.open(str(root))
    shard = c.query("SELECT shard FROM clips WHERE kept LIMIT 1").column("shard")[0].as_py()
    ghost = ClipRecord(key="f" * 32, source_id="f" * 16, uri="file://ghost.mp4", start_frame=0, end_frame=12, start_s=0.0, end_s=1.0)
    ghost.shard = shard  # kept, but its shard has no such sample
    c.write_part("clips", clips_table([ghost]), part="ghost")
    rec = run_dedup(str(root), from_dict(DedupConfig, DEDUP), progress=False)
    assert rec["status"] == "done" and rec["errors"] == {"missing_sample": 1}
    row = c.query(f"SELECT * FROM dedup WHERE key = '{'f' * 32}'").to_pylist()[0]
    assert row["error"] == "missing_sample" and row["keeper"] and row["group_size"] == 1


def test_a_corpus_without_kept_clips_is_one_line_and_writes_nothing(tmp_path, capsys):
    root = tmp_path / "empty"
    Corpus.create(str(root))
    with pytest.raises(DedupError, match="no kept clip"):
        run_dedup(str(root), from_dict(DedupConfig, DEDUP), progress=False)
    assert main(["dedup", "--root", str(root), "--local"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no kept clip" in err and len(err.splitlines()) == 1
    assert sorted(os.listdir(root)) == ["corpus.json"]
