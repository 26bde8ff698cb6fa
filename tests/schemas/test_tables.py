import pyarrow as pa
import pytest

from defi.schemas.keys import clip_key, is_clip_key
from defi.schemas.records import ClipRecord, SourceRecord, clips_table, sources_table
from defi.schemas.samples import SampleMeta, member_name
from defi.schemas.tables import CLIPS, SOURCES, TABLES, SchemaError, schema_for, table_from_rows, validate_table


def test_every_schema_carries_its_name_and_version():
    for name, schema in TABLES.items():
        assert schema.metadata[b"defi.table"].decode() == name
        assert schema.metadata[b"defi.format_version"]


def test_wrong_column_type_is_named():
    t = SOURCES.empty_table().set_column(SOURCES.get_field_index("width"), "width", pa.array([], pa.string()))
    with pytest.raises(SchemaError, match="'width' has type string, expected int32"):
        validate_table(t, SOURCES, "sources")


def test_missing_and_extra_columns_are_named():
    t = SOURCES.empty_table().drop(["codec"])
    with pytest.raises(SchemaError, match="missing column 'codec'"):
        validate_table(t, SOURCES)
    t = SOURCES.empty_table().append_column("bogus", pa.array([], pa.int8()))
    with pytest.raises(SchemaError, match="unexpected column 'bogus'"):
        validate_table(t, SOURCES)


def test_rows_with_bad_values_name_the_column():
    with pytest.raises(SchemaError, match="'duration_s'"):
        table_from_rows([{"source_id": "a", "uri": "x", "duration_s": "long"}], SOURCES, "sources")
    with pytest.raises(SchemaError, match="unexpected column 'durations'"):
        table_from_rows([{"source_id": "a", "uri": "x", "durations": 1.0}], SOURCES, "sources")
    with pytest.raises(SchemaError, match="'source_id' has nulls"):
        table_from_rows([{"source_id": None, "uri": "x"}], SOURCES, "sources")


def test_unknown_table_lists_valid_ones():
    with pytest.raises(SchemaError, match="valid tables: clips, latent_actions, shards, sources"):
        schema_for("clip")


def test_records_round_trip_through_arrow():
    s = SourceRecord(source_id="ab" * 16, uri="/v.mp4", width=64, height=48, fps_avg=24.0, duration_s=2.5)
    bad = SourceRecord(source_id="cd" * 16, uri="/bad.mp4", error="empty_file")
    st = sources_table([s, bad])
    assert st.column("error").to_pylist() == [None, "empty_file"]
    key = clip_key(s.source_id, 0, 48, {"fps": 8})
    c = ClipRecord(key=key, source_id=s.source_id, start_frame=0, end_frame=48, start_s=0.0, end_s=2.0)
    c.set_scores({"motion_mean": 1.5, "my_score": 3.0})
    c.clip_scores = {"a robot": 0.25}
    c.operators = [{"name": "motion", "version": "1", "params": {}}]
    c.reject("low_motion")
    c.reject("blurry")  # the first reason wins
    ct = clips_table([c])
    row = ct.to_pylist()[0]
    assert row["reject_reason"] == "low_motion" and row["kept"] is False
    assert row["motion_mean"] == pytest.approx(1.5) and row["duration_s"] == 2.0
    assert dict(row["extra_scores"]) == {"my_score": 3.0}
    assert dict(row["clip_scores"]) == {"a robot": pytest.approx(0.25)}
    assert ct.schema.equals(CLIPS, check_metadata=False)


def test_clip_keys_are_deterministic_and_parameter_sensitive():
    a = clip_key("f" * 32, 10, 58, {"fps": 8, "size": 128})
    assert a == clip_key("f" * 32, 10, 58, {"size": 128, "fps": 8})
    assert a != clip_key("f" * 32, 10, 58, {"fps": 10, "size": 128})
    assert a != clip_key("f" * 32, 11, 58, {"fps": 8, "size": 128})
    assert is_clip_key(a) and "." not in a
    with pytest.raises(ValueError):
        clip_key("f" * 32, 5, 5, {})


def test_sample_meta_round_trip_and_member_names():
    m = SampleMeta(
        key="k",
        source_id="s",
        uri="u",
        start_frame=0,
        end_frame=8,
        start_s=0,
        end_s=1,
        fps=8,
        width=64,
        height=64,
        num_frames=8,
        action_dim=4,
    )
    assert SampleMeta.from_json(m.to_json()) == m
    assert member_name("k", "actions.npy") == "k.actions.npy"
    with pytest.raises(ValueError, match="valid"):
        member_name("k", "avi")
