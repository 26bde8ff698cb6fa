import json
import os
import signal
import subprocess
import sys
import textwrap

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from defi.schemas.corpus import Corpus, CorpusError
from defi.schemas.records import ClipRecord, SourceRecord, clips_table, sources_table
from defi.schemas.tables import FORMAT_VERSION, SchemaError


def _clips(n, source="s" * 32, start=0):
    return clips_table(
        [
            ClipRecord(
                key=f"k{i:06d}",
                source_id=source,
                start_frame=i * 10,
                end_frame=i * 10 + 10,
                start_s=i,
                end_s=i + 1.0,
                kept=i % 3 != 0,
                reject_reason=None if i % 3 else "low_motion",
                motion_mean=float(i),
            )
            for i in range(start, start + n)
        ]
    )


def test_create_open_and_version(tmp_path):
    root = tmp_path / "c"
    c = Corpus.create(str(root))
    info = json.loads((root / "corpus.json").read_text())
    assert info["format_version"] == FORMAT_VERSION
    assert Corpus.open(str(root)).info == info
    with pytest.raises(CorpusError, match="already exists"):
        Corpus.create(str(root), exist_ok=False)
    assert c.is_local


def test_newer_format_is_refused(tmp_path):
    Corpus.create(str(tmp_path))
    (tmp_path / "corpus.json").write_text(json.dumps({"format_version": "99.0"}))
    with pytest.raises(CorpusError, match="format 99.0, newer than this defi supports"):
        Corpus.open(str(tmp_path))


def test_missing_root_and_non_corpus(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        Corpus.open(str(tmp_path / "nope"))
    with pytest.raises(CorpusError, match="not a defi corpus"):
        Corpus.open(str(tmp_path))


def test_parts_round_trip_and_replace_by_name(tmp_path):
    c = Corpus.create(str(tmp_path))
    c.write_part("clips", _clips(5), part="unit-a")
    c.write_part("clips", _clips(5), part="unit-a")  # same unit again: replaced, not duplicated
    c.write_part("clips", _clips(4, start=5), part="unit-b")
    assert len(c.parts("clips")) == 2
    t = c.read_table("clips")
    assert sorted(t.column("key").to_pylist()) == [f"k{i:06d}" for i in range(9)]
    res = c.query("SELECT count(*) AS n, sum(motion_mean) AS m FROM clips WHERE kept").to_pylist()[0]
    kept = [i for i in range(9) if i % 3 != 0]
    assert res == {"n": len(kept), "m": float(sum(kept))}


def test_write_part_validates(tmp_path):
    c = Corpus.create(str(tmp_path))
    with pytest.raises(SchemaError, match="missing column"):
        c.write_part("clips", pa.table({"key": ["a"]}))
    assert c.parts("clips") == []


def test_empty_corpus_queries_have_the_schema(tmp_path):
    c = Corpus.create(str(tmp_path))
    t = c.query("SELECT * FROM clips")
    assert t.num_rows == 0 and "reject_reason" in t.column_names
    assert c.query("SELECT count(*) AS n FROM latent_actions").to_pylist() == [{"n": 0}]


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM clips",
        "DROP VIEW clips",
        "COPY (SELECT 1) TO 'x.csv'",
        "SELECT 1; DROP VIEW clips",
        "CREATE TABLE t AS SELECT 1",
        "ATTACH 'x.db'",
    ],
)
def test_write_statements_are_refused(tmp_path, sql):
    c = Corpus.create(str(tmp_path))
    with pytest.raises(CorpusError, match="only read-only queries"):
        c.query(sql)
    assert not (tmp_path / "x.csv").exists()


def test_bad_sql_is_one_line(tmp_path):
    c = Corpus.create(str(tmp_path))
    with pytest.raises(CorpusError) as e:
        c.query("SELEC nothing FROM clips")
    assert "\n" not in str(e.value) and "SQL error" in str(e.value)


def test_index_duckdb_opens_in_plain_duckdb(tmp_path):
    c = Corpus.create(str(tmp_path))
    c.write_part("clips", _clips(6), part="a")
    c.write_part("sources", sources_table([SourceRecord(source_id="s" * 32, uri="/v.mp4", duration_s=6.0)]), part="a")
    path = c.build_index()
    con = duckdb.connect(path, read_only=True)
    assert con.execute("SELECT count(*) FROM clips JOIN sources USING (source_id)").fetchone()[0] == 6
    assert con.execute("SELECT count(*) FROM latent_actions").fetchone()[0] == 0


_KILL_WRITER = textwrap.dedent(
    """
    import sys, time, pyarrow as pa, pyarrow.parquet as pq
    from defi.schemas.corpus import Corpus
    import defi.schemas.corpus as corpus_mod
    c = Corpus.open(sys.argv[1])
    real = pq.write_table
    def slow_write(table, where, **kw):
        # write half a file, announce it, then hang so the parent can SIGKILL us mid-write
        where.write(b"PAR1" + b"x" * 100000)
        where.flush()
        print("writing", flush=True)
        time.sleep(60)
    corpus_mod.pq.write_table = slow_write
    t = pa.table({"x": [1]})
    from defi.schemas.records import ClipRecord, clips_table
    c.write_part("clips", clips_table([ClipRecord(key="k", source_id="s", start_frame=0, end_frame=1, start_s=0, end_s=1)]), part="killed")
    """
)


def test_writer_killed_mid_write_leaves_no_visible_part(tmp_path):
    c = Corpus.create(str(tmp_path))
    c.write_part("clips", _clips(3), part="ok")
    proc = subprocess.Popen([sys.executable, "-c", _KILL_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any(p.name.startswith(".tmp-") for p in (tmp_path / "clips").iterdir())  # the half-written file
    c2 = Corpus.open(str(tmp_path))
    assert [os.path.basename(p) for p in c2.parts("clips")] == ["part-ok.parquet"]
    assert c2.query("SELECT count(*) AS n FROM clips").to_pylist() == [{"n": 3}]


def test_million_clip_rows_filter_group_by(tmp_path):
    n = 1_000_000
    rng = np.random.default_rng(0)
    reasons = np.array([None, "low_motion", "too_short", "blurry"], dtype=object)
    r_idx = rng.integers(0, 4, n)
    motion = rng.random(n).astype(np.float32) * 10
    from defi.schemas.tables import CLIPS

    cols = {}
    for f in CLIPS:
        if f.name == "key":
            cols[f.name] = pa.array([f"k{i}" for i in range(n)])
        elif f.name == "source_id":
            cols[f.name] = pa.array(np.char.add("s", (np.arange(n) % 1000).astype(str)).astype(object))
        elif f.name == "kept":
            cols[f.name] = pa.array(r_idx == 0)
        elif f.name == "reject_reason":
            cols[f.name] = pa.array(reasons[r_idx], pa.string())
        elif f.name == "motion_mean":
            cols[f.name] = pa.array(motion)
        else:
            cols[f.name] = pa.nulls(n, f.type)
    table = pa.table(cols, schema=CLIPS)
    c = Corpus.create(str(tmp_path))
    for i in range(4):
        c.write_part("clips", table.slice(i * n // 4, n // 4), part=f"p{i}")
    got = c.query(
        "SELECT reject_reason, count(*) AS n, avg(motion_mean) AS m FROM clips WHERE motion_mean > 2.5 GROUP BY 1 ORDER BY 1 NULLS FIRST"
    ).to_pylist()
    sel = motion > 2.5
    expect = []
    for j in range(4):
        m = sel & (r_idx == j)
        expect.append((reasons[j], int(m.sum()), float(motion[m].astype(np.float64).mean())))
    expect.sort(key=lambda r: (r[0] is not None, r[0] or ""))
    assert [(g["reject_reason"], g["n"]) for g in got] == [(e[0], e[1]) for e in expect]
    for g, e in zip(got, expect, strict=False):
        assert g["m"] == pytest.approx(e[2], rel=1e-6)
