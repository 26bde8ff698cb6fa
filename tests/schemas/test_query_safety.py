"""`defi query` / `defi browse` / `Corpus.query` cannot write: every writing statement, also
wrapped in EXPLAIN ANALYZE, in a CTE or in query(), fails with one line (exit 2 through the
installed entry point), and the corpus's bytes and the working folder are unchanged after each."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from defi.schemas.corpus import Corpus, CorpusError
from defi.schemas.records import ClipRecord, SourceRecord, clips_table, sources_table

DEFI = str(Path(sys.executable).with_name("defi"))


def _corpus(root: Path) -> Corpus:
    c = Corpus.create(str(root))
    c.write_part("sources", sources_table([SourceRecord(source_id="a" * 32, uri="/a.mp4", duration_s=10.0)]), part="u")
    c.write_part(
        "clips",
        clips_table(
            [
                ClipRecord(
                    key=f"k{i}", source_id="a" * 32, start_frame=0, end_frame=10, start_s=0, end_s=1.0, kept=True, motion_mean=float(i)
                )
                for i in range(3)
            ]
        ),
        part="u",
    )
    return c


def _snapshot(*dirs: Path) -> dict[str, str]:
    out = {}
    for d in dirs:
        for p in sorted(d.rglob("*")):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def _attacks(part: str, root: str) -> list[str]:
    q = lambda s: s.replace("'", "''")  # noqa: E731
    return [
        "EXPLAIN ANALYZE COPY (SELECT 42) TO 'out.csv'",
        f"EXPLAIN ANALYZE COPY (SELECT * REPLACE ('X'||key AS key) FROM clips) TO '{part}' (FORMAT parquet)",
        f"EXPLAIN ANALYZE COPY (SELECT * REPLACE ('X'||key AS key) FROM clips) TO '{part}' (FORMAT parquet, USE_TMP_FILE false)",
        f"COPY (SELECT 1 AS x) TO '{root}/corpus.json' (FORMAT csv)",
        "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
        "EXPLAIN CREATE TABLE t AS SELECT 1",
        "EXPLAIN ANALYZE INSTALL httpfs",
        "EXPLAIN ANALYZE LOAD httpfs",
        "INSTALL httpfs",
        "LOAD parquet",
        "EXPLAIN ANALYZE DELETE FROM clips",
        "EXPLAIN ANALYZE DROP VIEW clips",
        "EXPLAIN ANALYZE INSERT INTO clips SELECT * FROM clips",
        "WITH a AS (COPY (SELECT 1) TO 'cte.csv') SELECT 1",
        f"SELECT * FROM query('COPY (SELECT 1) TO ''{q(part)}''')",
        "SELECT * FROM query_table('clips'); COPY (SELECT 1) TO 'after.csv'",
        "SET enable_external_access = true",
        "EXPLAIN ANALYZE SET threads = 1",
        "RESET lock_configuration",
        "ATTACH 'x.duckdb' AS x",
        f"ATTACH '{root}/index.duckdb' AS x",
        "EXPORT DATABASE 'exported'",
        "SELECT * FROM read_parquet('/etc/hostname')",
        "SELECT * FROM glob('*')",
        "PRAGMA profiling_output = 'prof.json'",
        "CALL enable_profiling()",
    ]


def test_corpus_query_cannot_write(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = _corpus(tmp_path / "c")
    part = c.parts("clips")[0]
    before = _snapshot(tmp_path)
    for sql in _attacks(part, c.path_root):
        with pytest.raises(CorpusError) as e:
            c.query(sql)
        assert "\n" not in str(e.value), sql
        assert _snapshot(tmp_path) == before, f"{sql} changed files"
    # reading still works, query()/query_table() included, and nothing was added
    assert c.query("SELECT count(*) AS n FROM clips").to_pylist() == [{"n": 3}]
    assert c.query("SELECT count(*) AS n FROM query_table('clips')").to_pylist() == [{"n": 3}]
    assert c.query("EXPLAIN ANALYZE SELECT count(*) FROM clips").num_rows == 1
    assert c.columns("SELECT key, motion_mean FROM clips") == ["key", "motion_mean"]


def test_threads_must_be_positive(tmp_path):
    c = _corpus(tmp_path / "c")
    with pytest.raises(CorpusError, match="threads must be a positive integer"):
        c.query("SELECT 1", threads=-1)


@pytest.mark.parametrize("i", [0, 2, 13])  # through the entry point (each start costs seconds)
def test_defi_query_and_browse_refuse_with_one_line(tmp_path, i):
    c = _corpus(tmp_path / "c")
    part = c.parts("clips")[0]
    sql = _attacks(part, c.path_root)[i]
    before = _snapshot(tmp_path)
    for argv in (["query", sql, "--root", c.root], ["browse", sql, "--root", c.root, "--out", str(tmp_path / "p.html")]):
        p = subprocess.run([DEFI, *argv], capture_output=True, text=True, cwd=tmp_path)
        assert p.returncode == 2, (argv, p.stdout, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
        assert _snapshot(tmp_path) == before


def test_browse_refuses_a_query_without_key_before_running_it(tmp_path):
    c = _corpus(tmp_path / "c")
    p = subprocess.run(
        [DEFI, "browse", "SELECT motion_mean FROM clips", "--root", c.root, "--out", str(tmp_path / "p.html")],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "must return a `key` column" in p.stderr and "motion_mean" in p.stderr
    assert not (tmp_path / "p.html").exists()


def test_defi_query_threads_negative_is_one_line(tmp_path):
    c = _corpus(tmp_path / "c")
    p = subprocess.run([DEFI, "query", "SELECT 1", "--root", c.root, "--threads", "-1"], capture_output=True, text=True)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "threads" in p.stderr, p.stderr


def test_object_store_root_is_read_only_too():
    """A root on an fsspec store (memory://): the same locked connection reads it, writes fail."""
    import fsspec

    c = Corpus.create("memory://bucket/qsafe")
    c.write_part(
        "clips",
        clips_table([ClipRecord(key="k", source_id="a" * 32, start_frame=0, end_frame=1, start_s=0, end_s=1.0, motion_mean=2.0)]),
        part="u",
    )
    try:
        assert c.query("SELECT sum(motion_mean) AS m FROM clips").to_pylist() == [{"m": 2.0}]
        with pytest.raises(CorpusError, match="Permission"):
            c.query("WITH a AS (COPY (SELECT 1) TO 'memory_out.csv') SELECT 1")  # past the type check: the engine refuses
        assert not Path("memory_out.csv").exists()
    finally:
        fsspec.filesystem("memory").rm("/bucket/qsafe", recursive=True)


def test_the_engine_refuses_writes_without_the_statement_check(tmp_path, monkeypatch):
    """The guarantee is the connection, not the parser: every file-touching statement, run straight
    on ``Corpus.connect()`` (no statement-type check), fails and changes nothing."""
    import duckdb

    monkeypatch.chdir(tmp_path)
    c = _corpus(tmp_path / "c")
    part = c.parts("clips")[0]
    before = _snapshot(tmp_path)
    con = c.connect()
    try:
        for sql in [
            f"EXPLAIN ANALYZE COPY (SELECT * REPLACE ('X'||key AS key) FROM clips) TO '{part}' (FORMAT parquet, USE_TMP_FILE false)",
            f"COPY (SELECT 1 AS x) TO '{c.path_root}/corpus.json' (FORMAT csv, USE_TMP_FILE false)",
            "EXPORT DATABASE 'exported'",
            "ATTACH 'x.duckdb' AS x",
            "EXPLAIN ANALYZE INSTALL httpfs",
            "LOAD httpfs",
            "SET enable_external_access = true",
            "SET allowed_paths = ['/']",
            "RESET lock_configuration",
            "SELECT * FROM read_text('/etc/hostname')",
        ]:
            with pytest.raises(duckdb.Error):
                con.execute(sql)
            assert _snapshot(tmp_path) == before, sql
        assert con.sql("SELECT count(*) FROM clips").fetchall() == [(3,)]
    finally:
        con.close()
