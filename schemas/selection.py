"""Selection manifests: which clips a training run reads, and how often.

A selection is a parquet file with one row per clip:

- ``key`` (string, not null): a clip key (see ``keys.clip_key``), unique within the manifest;
- ``weight`` (float64, not null, >= 0, default 1.0): a relative sampling weight. A loader that
  samples by weight draws clips with replacement with probability ``weight / sum(weight)``.

The SQL that produced it (if any) is kept in the parquet schema metadata (``defi.selection.sql``),
so a run record can say where its data came from.

``resolve_selection`` turns a selection (SQL or a manifest path) into ``(key, shard, weight)`` by
joining with the corpus' ``clips`` table; only kept clips with a shard are selectable, and every
unknown or rejected key is an error naming a few of them (training on a silently smaller set is
worse than not starting).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from collections.abc import Iterable, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .tables import FORMAT_VERSION

if TYPE_CHECKING:  # corpus imports duckdb; keep this module importable without opening one
    from .corpus import Corpus

SQL_METADATA_KEY = b"defi.selection.sql"

SELECTION = pa.schema(
    [pa.field("key", pa.string(), nullable=False), pa.field("weight", pa.float64(), nullable=False)],
    metadata={"defi.table": "selection", "defi.format_version": FORMAT_VERSION},
)

# What ``resolve_selection`` returns: one row per selected clip, sorted by (shard, key).
RESOLVED = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("weight", pa.float64(), nullable=False),
    ]
)

_SQL_START = re.compile(r"^\s*(\(\s*)*(select|with|from|values|table)\b", re.IGNORECASE)
_EXAMPLES = 5  # how many offending keys an error message lists


class SelectionError(ValueError):
    """A selection that cannot be used as asked; the message names the offending keys/values."""


def _examples(values: Sequence[str]) -> str:
    shown = ", ".join(repr(v) for v in list(values)[:_EXAMPLES])
    more = len(values) - _EXAMPLES
    return shown + (f" (+{more} more)" if more > 0 else "")


def selection_table(keys: Iterable[str], weights: Iterable[float] | None = None, sql: str | None = None) -> pa.Table:
    """Build and validate a selection table (see module docstring for the rules)."""
    keys = pa.array(list(keys), type=pa.string())
    if weights is None:
        weights = pa.array(np.ones(len(keys)), type=pa.float64())
    else:
        weights = pa.array(list(weights), type=pa.float64())
    if len(weights) != len(keys):
        raise SelectionError(f"selection: {len(keys)} keys but {len(weights)} weights")
    table = pa.table({"key": keys, "weight": weights})
    metadata = dict(SELECTION.metadata)
    if sql is not None:
        metadata[SQL_METADATA_KEY] = sql.encode()
    return _validate(table).replace_schema_metadata(metadata)


def _validate(table: pa.Table) -> pa.Table:
    """Check columns, nulls, duplicates and weights; fill null weights with 1.0."""
    if "key" not in table.column_names:
        raise SelectionError(f"selection has no 'key' column (columns: {', '.join(table.column_names)})")
    keys = table.column("key")
    if not pa.types.is_string(keys.type) and not pa.types.is_large_string(keys.type):
        raise SelectionError(f"selection column 'key' has type {keys.type}, expected string")
    keys = keys.cast(pa.string())
    if keys.null_count:
        raise SelectionError(f"selection has {keys.null_count} null keys")
    if "weight" in table.column_names:
        try:
            weights = table.column("weight").cast(pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise SelectionError(f"selection column 'weight' is not numeric ({table.column('weight').type}): {e}") from None
        weights = pc.fill_null(weights, 1.0)  # a NULL weight from SQL means "no preference"
    else:
        weights = pa.chunked_array([np.ones(len(table))], type=pa.float64())
    w = weights.to_numpy()
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        k = keys.to_numpy(zero_copy_only=False)[bad]
        raise SelectionError(f"selection has {int(bad.sum())} weights that are negative or not finite, e.g. keys {_examples(k)}")
    if len(w) and w.sum() <= 0:
        raise SelectionError("selection weights sum to 0; nothing could be sampled")
    counts = pc.value_counts(keys)
    dup = [d["values"] for d in counts.to_pylist() if d["counts"] > 1]
    if dup:
        raise SelectionError(f"selection has {len(dup)} duplicated keys, e.g. {_examples(sorted(dup))}")
    return pa.Table.from_arrays([keys, weights], schema=SELECTION)


def write_selection(
    path: str,
    keys: Iterable[str],
    weights: Iterable[float] | None = None,
    sql: str | None = None,
    storage_options: dict | None = None,
) -> str:
    """Write a selection manifest to ``path`` (local path or fsspec URL); returns ``path``.

    ``weights`` default to 1.0 each; ``sql`` (the query that made the selection) is stored in the
    file's metadata. Raises ``SelectionError`` on duplicate keys or negative/non-finite weights.
    """
    table = selection_table(keys, weights, sql)
    fs, p = fsspec.core.url_to_fs(str(path), **(storage_options or {}))
    parent = p.rsplit("/", 1)[0] if "/" in p else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(p, "wb") as f:
        pq.write_table(table, f)
    return str(path)


def read_selection(path: str, storage_options: dict | None = None) -> pa.Table:
    """Read and validate a manifest: ``pa.Table(key string, weight float64)``. Extra columns are
    dropped; a missing ``weight`` column means 1.0 for every key. The SQL (if any) is in
    ``selection_sql(table)``."""
    fs, p = fsspec.core.url_to_fs(str(path), **(storage_options or {}))
    if not fs.exists(p):
        raise SelectionError(f"selection manifest {path} does not exist")
    try:
        with fs.open(p, "rb") as f:
            raw = pq.read_table(f)
    except (pa.ArrowInvalid, OSError) as e:
        raise SelectionError(f"selection manifest {path} is not readable parquet: {e}") from None
    table = _validate(raw)
    meta = dict(SELECTION.metadata)
    sql = (raw.schema.metadata or {}).get(SQL_METADATA_KEY)
    if sql is not None:
        meta[SQL_METADATA_KEY] = sql
    return table.replace_schema_metadata(meta)


def selection_sql(table: pa.Table) -> str | None:
    """The SQL stored with a selection, or None."""
    sql = (table.schema.metadata or {}).get(SQL_METADATA_KEY)
    return None if sql is None else sql.decode()


def is_sql(select: str) -> bool:
    """True when ``select`` reads as a query (starts with SELECT/WITH/FROM/VALUES/TABLE), not a path."""
    return bool(_SQL_START.match(select))


def _not_a_path(select: str) -> bool:
    """A selection that names no file and has words in it (``SELEC key FROM clips``) is read as
    SQL, so the engine's error says what is wrong with it."""
    if len(select.split()) < 2:
        return False
    try:
        fs, p = fsspec.core.url_to_fs(select)
        return not fs.exists(p)
    except (ValueError, ImportError, OSError):  # not even a URL fsspec can read
        return True


def _query_words(corpus: Corpus, sql: str) -> pa.Table:
    from .corpus import CorpusError

    try:
        return corpus.query(sql)
    except CorpusError as e:
        raise SelectionError(f"{sql!r} is no selection manifest, and as SQL: {e}") from None


def resolve_selection(corpus: Corpus, select: str | pa.Table) -> pa.Table:
    """Resolve a selection against ``corpus``: ``pa.Table(key, shard, weight)`` sorted by
    (shard, key).

    ``select`` is SQL over the corpus views returning a ``key`` column (and optionally
    ``weight``), a path/URL to a manifest written by ``write_selection``, or a selection table.
    Keys are matched against kept clips that have a shard. Raises ``SelectionError`` listing a few
    keys when any key is unknown, belongs to a rejected clip, or has no shard; and when the
    selection is empty.
    """
    if isinstance(select, pa.Table):
        sel, sql = _validate(select), selection_sql(select)
    elif is_sql(select):
        sel, sql = _validate(corpus.query(select)), select
    elif _not_a_path(select):
        sel, sql = _validate(_query_words(corpus, select)), select
    else:
        sel = read_selection(select)
        sql = selection_sql(sel)
    if len(sel) == 0:
        raise SelectionError(f"selection is empty{f' (SQL: {sql})' if sql else ''}")

    clips = corpus.query("SELECT DISTINCT key, kept, shard FROM clips")
    joined = sel.join(clips, keys="key", join_type="left outer")
    kept = joined.column("kept").to_pylist()  # True / False / None (unknown key)
    shard = joined.column("shard")
    keys = np.asarray(joined.column("key").to_pylist(), dtype=object)
    unknown = keys[np.asarray([k is None for k in kept], dtype=bool)]
    problems = []
    if len(unknown):
        problems.append(f"{len(unknown)} keys not in the corpus' clips table: {_examples(sorted(unknown))}")
    rejected = keys[np.asarray([k is False for k in kept], dtype=bool)]
    if len(rejected):
        problems.append(f"{len(rejected)} keys are rejected clips: {_examples(sorted(rejected))}")
    no_shard = keys[np.asarray([k is True for k in kept], dtype=bool) & np.asarray([s is None for s in shard.to_pylist()], dtype=bool)]
    if len(no_shard):
        problems.append(f"{len(no_shard)} kept keys have no shard: {_examples(sorted(no_shard))}")
    if problems:
        raise SelectionError(f"selection of {len(sel)} keys cannot be used: " + "; ".join(problems))
    if len(joined) != len(sel):
        # the clips table holds a key twice with different shards: ambiguous, refuse
        counts = pc.value_counts(joined.column("key"))
        dup = sorted(d["values"] for d in counts.to_pylist() if d["counts"] > 1)
        raise SelectionError(f"{len(dup)} keys appear in several shards in clips: {_examples(dup)}")
    out = pa.Table.from_arrays([joined.column("key"), shard.cast(pa.string()), joined.column("weight")], schema=RESOLVED)
    out = out.sort_by([("shard", "ascending"), ("key", "ascending")])
    return out.replace_schema_metadata({SQL_METADATA_KEY: sql.encode()} if sql else None)
