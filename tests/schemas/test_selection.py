"""Selection manifests: write/read round trip, validation, and resolution against a real corpus
(parquet clips parts queried through DuckDB)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from defi.schemas.corpus import Corpus
from defi.schemas.keys import clip_key
from defi.schemas.records import ClipRecord, clips_table
from defi.schemas.selection import (
    SelectionError,
    is_sql,
    read_selection,
    resolve_selection,
    selection_sql,
    write_selection,
)


def _key(i: int) -> str:
    return clip_key(f"{i:016x}", 0, 10 + i, {"w": 1})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    c = Corpus.create(str(tmp_path_factory.mktemp("corpus")))
    recs = []
    for i in range(6):
        recs.append(
            ClipRecord(
                key=_key(i),
                source_id=f"{i:016x}",
                start_frame=0,
                end_frame=10 + i,
                start_s=0.0,
                end_s=1.0,
                shard=f"shard-{i % 2:06d}.tar",
                out_fps=10.0 * (1 + i % 2),
                out_frames=10 + i,
            )
        )
    rejected = ClipRecord(key=_key(6), source_id=f"{6:016x}", start_frame=0, end_frame=16, start_s=0.0, end_s=1.0)
    rejected.reject("too_static")
    recs.append(rejected)
    # two parts, as two pipeline batches would commit them
    c.write_part("clips", clips_table(recs[:3]), part="a")
    c.write_part("clips", clips_table(recs[3:]), part="b")
    return c


def test_manifest_round_trip_keeps_keys_weights_and_sql(tmp_path):
    keys = [_key(i) for i in range(3)]
    path = write_selection(str(tmp_path / "sel" / "m.parquet"), keys, [1.0, 2.5, 0.0], sql="SELECT key FROM clips")
    table = read_selection(path)
    assert table.column("key").to_pylist() == keys
    assert table.column("weight").to_pylist() == [1.0, 2.5, 0.0]
    assert table.schema.field("weight").type == pa.float64()
    assert selection_sql(table) == "SELECT key FROM clips"
    # default weights are 1.0, no sql stored
    table = read_selection(write_selection(str(tmp_path / "d.parquet"), keys))
    assert table.column("weight").to_pylist() == [1.0, 1.0, 1.0]
    assert selection_sql(table) is None


def test_manifest_without_weight_column_and_with_null_weights(tmp_path):
    pq.write_table(pa.table({"key": ["a", "b"], "score": [3, 4]}), tmp_path / "no_w.parquet")
    t = read_selection(str(tmp_path / "no_w.parquet"))
    assert t.column_names == ["key", "weight"] and t.column("weight").to_pylist() == [1.0, 1.0]
    pq.write_table(pa.table({"key": ["a", "b"], "weight": pa.array([None, 2], pa.int64())}), tmp_path / "n.parquet")
    assert read_selection(str(tmp_path / "n.parquet")).column("weight").to_pylist() == [1.0, 2.0]


@pytest.mark.parametrize(
    "keys,weights,message",
    [
        (["a", "b", "a"], None, "duplicated keys, e.g. 'a'"),
        (["a", "b"], [1.0, -1.0], "negative or not finite, e.g. keys 'b'"),
        (["a", "b"], [1.0, float("nan")], "negative or not finite"),
        (["a", "b"], [0.0, 0.0], "sum to 0"),
        (["a", "b"], [1.0], "2 keys but 1 weights"),
    ],
)
def test_write_selection_refuses_bad_input(tmp_path, keys, weights, message):
    with pytest.raises(SelectionError, match=message.replace("(", r"\(")):
        write_selection(str(tmp_path / "bad.parquet"), keys, weights)
    assert not (tmp_path / "bad.parquet").exists()


def test_read_selection_missing_file_and_missing_key_column(tmp_path):
    with pytest.raises(SelectionError, match="does not exist"):
        read_selection(str(tmp_path / "nope.parquet"))
    pq.write_table(pa.table({"clip": ["a"]}), tmp_path / "nokey.parquet")
    with pytest.raises(SelectionError, match="no 'key' column"):
        read_selection(str(tmp_path / "nokey.parquet"))


def test_is_sql_tells_queries_from_paths():
    assert is_sql("SELECT key FROM clips")
    assert is_sql("  with x as (select 1) select * from x")
    assert is_sql("(SELECT key FROM clips)")
    assert not is_sql("/data/selections/select_me.parquet")
    assert not is_sql("s3://bucket/selection.parquet")


def test_resolve_by_sql_joins_shards_and_weights(corpus):
    got = resolve_selection(corpus, "SELECT key FROM clips WHERE kept AND out_fps = 20")
    want_keys = sorted(_key(i) for i in (1, 3, 5))
    assert got.column_names == ["key", "shard", "weight"]
    assert sorted(got.column("key").to_pylist()) == want_keys
    assert set(got.column("shard").to_pylist()) == {"shard-000001.tar"}
    assert got.column("weight").to_pylist() == [1.0, 1.0, 1.0]
    assert selection_sql(got) == "SELECT key FROM clips WHERE kept AND out_fps = 20"
    # SQL may set weights; the result is sorted by (shard, key)
    got = resolve_selection(corpus, "SELECT key, out_frames * 1.0 AS weight FROM clips WHERE kept")
    assert got.num_rows == 6
    assert got.column("shard").to_pylist() == sorted(got.column("shard").to_pylist())
    frames = {_key(i): 10 + i for i in range(6)}
    for k, w in zip(got.column("key").to_pylist(), got.column("weight").to_pylist(), strict=False):
        assert w == frames[k]


def test_resolve_by_manifest_chooses_exactly_its_keys(corpus, tmp_path):
    keys = [_key(4), _key(0)]
    path = write_selection(str(tmp_path / "m.parquet"), keys, [3.0, 1.0])
    got = resolve_selection(corpus, path)
    assert got.column("key").to_pylist() == [_key(0), _key(4)]  # sorted by (shard, key)
    assert got.column("shard").to_pylist() == ["shard-000000.tar", "shard-000000.tar"]
    assert got.column("weight").to_pylist() == [1.0, 3.0]


def test_resolve_unknown_and_rejected_keys_give_clear_error(corpus, tmp_path):
    bogus = [f"ffffffffffffffff-0000000-00000{i:02d}-deadbeef" for i in range(8)]
    path = write_selection(str(tmp_path / "m.parquet"), [_key(0), _key(6), *bogus])
    with pytest.raises(SelectionError) as err:
        resolve_selection(corpus, path)
    msg = str(err.value)
    assert "8 keys not in the corpus' clips table" in msg
    assert repr(sorted(bogus)[0]) in msg and "(+3 more)" in msg
    assert f"1 keys are rejected clips: {_key(6)!r}" in msg


def test_resolve_empty_selection_and_bad_sql(corpus):
    with pytest.raises(SelectionError, match="selection is empty"):
        resolve_selection(corpus, "SELECT key FROM clips WHERE false")
    with pytest.raises(SelectionError, match="no 'key' column"):
        resolve_selection(corpus, "SELECT shard FROM clips")
