"""Arrow schemas of every table in a corpus, and the format version they belong to.

A corpus stores one folder of parquet parts per table (see ``corpus.py``). Every part of a table
has exactly the schema below; ``validate_table`` names the first bad column and its type.

Units: times are seconds (float64) unless the column name says ``_frame``/``_frames``; frame
indices are 0-based in the *source* video's decode order; ranges are half-open ``[start, end)``.
"""

from __future__ import annotations

import pyarrow as pa

# Bump MAJOR when a reader of the old format would misread the new one; MINOR for additions that
# old readers can ignore (a new nullable column). ``Corpus.open`` refuses a newer MAJOR.
FORMAT_VERSION = "1.1"  # 1.1: robot samples carry every action row (schemas/samples.py)
FORMAT_MAJOR = int(FORMAT_VERSION.split(".")[0])

_f32 = pa.float32()
_f64 = pa.float64()
_str = pa.string()
_i64 = pa.int64()
_i32 = pa.int32()
_bool = pa.bool_()
_ts = pa.timestamp("us", tz="UTC")


def _schema(name: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={"defi.table": name, "defi.format_version": FORMAT_VERSION})


# One row per input video (or robot episode x camera): what it is, or why it could not be read.
SOURCES = _schema(
    "sources",
    [
        pa.field("source_id", _str, nullable=False),  # content hash (see curate.probe.content_hash)
        pa.field("uri", _str, nullable=False),
        pa.field("kind", _str),  # human | robot | web
        pa.field("dataset", _str),
        pa.field("license", _str),
        pa.field("language", _str),  # an instruction or caption, if the source has one
        pa.field("size_bytes", _i64),
        pa.field("container", _str),
        pa.field("codec", _str),
        pa.field("width", _i32),  # after rotation metadata is applied
        pa.field("height", _i32),
        pa.field("rotation", _i32),  # degrees, as stored in the container's display matrix
        pa.field("fps_avg", _f64),  # frames / duration
        pa.field("fps_real", _f64),  # the stream's base rate (r_frame_rate)
        pa.field("is_vfr", _bool),
        pa.field("duration_s", _f64),
        pa.field("num_frames", _i64),
        pa.field("num_frames_exact", _bool),  # False: estimated from duration x fps
        pa.field("has_audio", _bool),
        pa.field("error", _str),  # null when the source was readable; else a short reason
        pa.field("error_detail", _str),
        pa.field("run_id", _str),
        pa.field("meta_json", _str),  # free-form metadata from a manifest, as JSON
    ],
)

# The scores with a float32 column of their own in ``clips`` (null when the scorer did not run),
# in schema order, each with what it measures (the report's axis label). A scorer declares the
# columns it fills (``curate.base.Scorer.columns``); any other score it returns goes to
# ``extra_scores``. Adding a column here adds it to the schema, the record's row (``ClipRecord``
# stores it by name; its declared score fields only document the built-in ones) and the report.
FRAME_SCORE_COLUMNS: dict[str, str] = {
    "motion_mean": "optical flow, px/frame",  # at the analysis resolution
    "motion_p90": "optical flow, 90th percentile, px/frame",
    "frame_diff": "mean |frame difference|, 0..255",
    "camera_motion": "camera motion, px/frame",  # the global motion estimate
    "local_motion": "local motion, px/frame",  # motion left after removing the global estimate
    "blur": "variance of Laplacian (sharper: higher)",
    "black_frac": "fraction of black frames",  # black or flat
}
CLIP_SCORE_COLUMNS: dict[str, str] = {"clip_score_max": "best CLIP prompt cosine"}
SCORE_COLUMNS: dict[str, str] = {**FRAME_SCORE_COLUMNS, **CLIP_SCORE_COLUMNS}

# One row per candidate clip, kept or rejected, with every score and the reason.
CLIPS = _schema(
    "clips",
    [
        pa.field("key", _str, nullable=False),  # deterministic; see schemas.keys.clip_key
        pa.field("source_id", _str, nullable=False),
        pa.field("uri", _str),
        pa.field("kind", _str),
        pa.field("dataset", _str),
        pa.field("shot_index", _i32),
        pa.field("clip_index", _i32),  # index inside its shot
        pa.field("start_frame", _i64),  # source frames, half-open
        pa.field("end_frame", _i64),
        pa.field("start_s", _f64),  # source timestamps of the first frame and one past the last
        pa.field("end_s", _f64),
        pa.field("duration_s", _f64),
        pa.field("kept", _bool, nullable=False),
        pa.field("reject_reason", _str),  # null when kept; else the first filter that rejected it
        pa.field("errors_json", _str),  # {operator_name: message} for operators that failed
        # scores (null when the operator did not run); every score is kept for rejected clips too
        pa.field("width", _i32),  # source resolution
        pa.field("height", _i32),
        *(pa.field(name, _f32) for name in FRAME_SCORE_COLUMNS),
        pa.field("clip_scores", pa.map_(_str, _f32)),  # prompt -> cosine similarity
        *(pa.field(name, _f32) for name in CLIP_SCORE_COLUMNS),
        pa.field("clip_embedding", pa.list_(_f32)),
        pa.field("phash", _str),  # perceptual hash of the middle keyframe, hex
        pa.field("dup_group", _str),  # key of the clip this one duplicates (itself if kept)
        pa.field("extra_scores", pa.map_(_str, _f64)),  # scores of user operators
        # the encoded output
        pa.field("shard", _str),  # shard file name, null when rejected
        pa.field("out_fps", _f64),
        pa.field("out_width", _i32),
        pa.field("out_height", _i32),
        pa.field("out_frames", _i32),
        pa.field("out_bytes", _i64),
        pa.field("has_actions", _bool),
        pa.field("language", _str),
        # lineage
        pa.field("operators_json", _str),  # [{name, version, params}] in the order they ran
        pa.field("run_id", _str),
    ],
)

SHARDS = _schema(
    "shards",
    [
        pa.field("shard", _str, nullable=False),  # file name under shards/
        pa.field("num_samples", _i64),
        pa.field("size_bytes", _i64),
        pa.field("sha256", _str),
        pa.field("run_id", _str),
        pa.field("created_at", _ts),
    ],
)

# One row per labeled clip (a labeler's table lives under labels/<labeler>/).
LATENT_ACTIONS = _schema(
    "latent_actions",
    [
        pa.field("key", _str, nullable=False),
        pa.field("labeler", _str, nullable=False),  # name incl. checkpoint hash
        pa.field("num_steps", _i32),
        pa.field("gap_frames", _i32),
        pa.field("codes", pa.list_(pa.list_(_i32))),  # [step][token] code ids (VQ/FSQ), or null
        pa.field("vectors", pa.list_(pa.list_(_f32))),  # [step][dim] continuous latents, or null
        pa.field("mean_vector", pa.list_(_f32)),
        pa.field("norm_mean", _f32),
        pa.field("norm_p90", _f32),
        pa.field("code_hist", pa.list_(_i32)),  # counts per code id
        pa.field("code_entropy", _f32),  # nats
        pa.field("dominant_code", _i32),
        pa.field("run_id", _str),
    ],
)

# Corpus-level near-duplicates (`defi dedup`, pipelines/dedup.py). Signatures are cached per clip
# under labels/dedup-signatures-<signature config hash>/; a clip whose signature could not be
# computed has a row with ``error`` set and no vectors (it is not retried under the same config).
DEDUP_SIGNATURES = _schema(
    "dedup_signatures",
    [
        pa.field("key", _str, nullable=False),
        pa.field("vectors", pa.list_(pa.list_(_f32))),  # [keyframe][dim], unit L2 norm
        pa.field("times_s", pa.list_(_f32)),  # clip time of each keyframe, seconds
        pa.field("error", _str),  # null, or why the clip has no signature (decode, missing_sample, flat)
        pa.field("error_detail", _str),
        pa.field("run_id", _str),
    ],
)

# One row per kept clip of the corpus for one dedup config (labels/dedup-<config hash>/).
DEDUP = _schema(
    "dedup",
    [
        pa.field("key", _str, nullable=False),
        pa.field("dup_group", _str),  # the keeper's key: clips with the same dup_group are near-duplicates
        pa.field("keeper", _bool),  # the one clip of its group that a selection keeps
        pa.field("group_size", _i32),
        pa.field("neighbour", _str),  # the most similar other clip found, null when none matched
        pa.field("distance", _f32),  # 1 - similarity to ``neighbour`` (see curate.signature.clip_similarity)
        pa.field("match", _str),  # what joined it to ``neighbour``: keyframes | embedding
        pa.field("error", _str),  # why the clip has no perceptual signature (it can still match by embedding)
        pa.field("run_id", _str),
    ],
)

# One row per clip for one captioning config (labels/caption-<config hash>/, `defi label captions`,
# pipelines/captions.py): a caption, or the reason there is none.
CAPTIONS = _schema(
    "captions",
    [
        pa.field("key", _str, nullable=False),
        pa.field("labeler", _str, nullable=False),  # caption-<config hash>
        pa.field("caption", _str),  # null when the clip could not be captioned
        pa.field("model", _str),  # the captioning model: a local folder's name or a hub name
        pa.field("config_hash", _str),  # hash of what shaped the caption (model weights, decoding, frame rule)
        pa.field("version", _str),  # the labeler's code version
        pa.field("error", _str),  # null, or why there is no caption (decode, missing_sample, caption_failed)
        pa.field("error_detail", _str),
        pa.field("run_id", _str),
    ],
)

# A labels/<name>/ folder's schema by the name's prefix (first match); any other name holds
# latent actions. The prefixes are the commands that write them.
LABEL_SCHEMAS: tuple[tuple[str, pa.Schema], ...] = (
    ("dedup-signatures-", DEDUP_SIGNATURES),
    ("dedup-", DEDUP),
    ("caption-", CAPTIONS),
)


def label_schema(name: str) -> pa.Schema:
    """The schema of the parts under ``labels/<name>/``."""
    for prefix, schema in LABEL_SCHEMAS:
        if name.startswith(prefix):
            return schema
    return LATENT_ACTIONS


# One row per distinct instruction text and text model (ROOT/text_embeddings/): embedded once,
# read by GFDM and policy training (defi.training.gfdm.text). Two text models live side by side.
TEXT_EMBEDDINGS = _schema(
    "text_embeddings",
    [
        pa.field("text_hash", _str, nullable=False),  # sha256 hex of the UTF-8 text
        pa.field("text_model", _str, nullable=False),  # id of the text model (see text.text_model_id)
        pa.field("text", _str),
        pa.field("embedding", pa.list_(_f32)),
    ],
)

TABLES: dict[str, pa.Schema] = {
    "sources": SOURCES,
    "clips": CLIPS,
    "shards": SHARDS,
    "latent_actions": LATENT_ACTIONS,
    "text_embeddings": TEXT_EMBEDDINGS,
}


class SchemaError(ValueError):
    """A table does not match its schema; the message names the column."""


def schema_for(table: str) -> pa.Schema:
    try:
        return TABLES[table]
    except KeyError:
        raise SchemaError(f"unknown table {table!r}; valid tables: {', '.join(sorted(TABLES))}") from None


def validate_table(table: pa.Table, schema: pa.Schema, name: str = "table") -> None:
    """Raise ``SchemaError`` naming the first missing, extra, mistyped or null-violating column."""
    have = {f.name: f for f in table.schema}
    for field in schema:
        if field.name not in have:
            raise SchemaError(f"{name}: missing column {field.name!r} (expected {field.type})")
        got = have[field.name].type
        if not got.equals(field.type):
            raise SchemaError(f"{name}: column {field.name!r} has type {got}, expected {field.type}")
        if not field.nullable and table.column(field.name).null_count:
            raise SchemaError(f"{name}: column {field.name!r} has nulls but is not nullable")
    extra = [n for n in have if schema.get_field_index(n) < 0]
    if extra:
        raise SchemaError(f"{name}: unexpected column {extra[0]!r} (not in schema)")


def table_from_rows(rows: list[dict], schema: pa.Schema, name: str = "table") -> pa.Table:
    """Build a table from dict rows, filling absent keys with null; unknown keys are an error."""
    names = set(schema.names)
    for i, row in enumerate(rows):
        unknown = set(row) - names
        if unknown:
            raise SchemaError(f"{name}: row {i} has unexpected column {sorted(unknown)[0]!r}")
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    try:
        table = pa.table(cols, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        # find the column that failed, so the message names it
        for f in schema:
            try:
                pa.array(cols[f.name], type=f.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as ce:
                raise SchemaError(f"{name}: column {f.name!r} ({f.type}): {ce}") from None
        raise SchemaError(f"{name}: {e}") from None
    validate_table(table, schema, name)
    return table
