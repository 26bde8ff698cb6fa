"""The corpus on storage, and the handle every stage and tool uses to read and write it.

```
ROOT/
  corpus.json                      format version, creation time, defi version
  sources/part-*.parquet           one row per input video
  clips/part-*.parquet             one row per candidate clip, kept or rejected
  shards/shard-NNNNNN.tar          WebDataset samples (see samples.py)
  labels/<labeler>/part-*.parquet  one row per labeled clip
  labels/caption-<hash>/           captions of `defi label captions` (labels/captions.json names the current one)
  labels/dedup-<hash>/             near-duplicate groups of `defi dedup` (labels/dedup.json names the current one)
  runs/<run_id>.json               one record per run
  index.duckdb                     (local roots) views over the parquet, for DuckDB's own clients
```

Atomicity: a part becomes visible only complete. Locally it is written to a hidden temp name
(``.tmp-*``, never matched by readers) and renamed with ``os.replace``; on object stores a single
PUT is atomic, so the object is written under its final name in one upload. Part names are chosen
by the writer per unit of work, so re-committing the same unit overwrites rather than duplicates.

Queries: local roots are read by DuckDB from the parquet paths directly; remote roots through a
pyarrow dataset over the fsspec filesystem registered in DuckDB. DuckDB is never handed an fsspec
filesystem (it has returned wrong sums that way).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import uuid
from dataclasses import dataclass
from typing import Any

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from .tables import CAPTIONS, DEDUP, FORMAT_MAJOR, FORMAT_VERSION, LATENT_ACTIONS, TABLES, label_schema, validate_table

CORPUS_FILE = "corpus.json"
INDEX_FILE = "index.duckdb"
LABELS_DIR = "labels"
SHARDS_DIR = "shards"
PART_GLOB = "part-*.parquet"
CAPTIONS_POINTER = f"{LABELS_DIR}/captions.json"  # {"current": "caption-<hash>"}: what the `captions` view reads
DEDUP_POINTER = f"{LABELS_DIR}/dedup.json"  # {"current": "dedup-<hash>", ...}: what the `dedup` view reads
# Kept clips minus the near-duplicates `defi dedup` did not keep (all kept clips before any dedup).
CLIPS_DEDUP_SQL = "SELECT * FROM clips WHERE kept AND key NOT IN (SELECT key FROM dedup WHERE NOT keeper)"

# Statement types `query` accepts (a friendlier first refusal; the engine settings in
# `Corpus.connect` are what make a query unable to write).
_READ_ONLY = {"SELECT", "EXPLAIN"}
_PART_NAME = re.compile(r"^[A-Za-z0-9_.=-]+$")


class CorpusError(Exception):
    """A corpus problem a user can fix (missing root, newer format, bad SQL); one-line message."""


DISTRIBUTION = "defi-robot"  # defi's name on PyPI / in pip (PyPI's `defi` is another project)


def defi_version() -> str:
    try:
        from importlib.metadata import version

        return version(DISTRIBUTION)
    except Exception:  # running from a checkout without install metadata
        return "unknown"


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Corpus:
    """Handle on a corpus root (a local folder or any fsspec URL)."""

    root: str
    fs: fsspec.AbstractFileSystem
    path_root: str  # root as the filesystem names it (no protocol)
    info: dict[str, Any]

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str, exist_ok: bool = True, storage_options: dict | None = None) -> Corpus:
        """Create a corpus at ``root`` (or open it if it exists and ``exist_ok``)."""
        if not str(root).strip():
            raise CorpusError("the corpus root is empty")
        fs, path = fsspec.core.url_to_fs(str(root), **(storage_options or {}))
        meta = f"{path.rstrip('/')}/{CORPUS_FILE}"
        if fs.exists(path) and not fs.isdir(path):
            raise CorpusError(f"corpus root {root} is a file, not a folder")
        if fs.exists(meta):
            if not exist_ok:
                raise CorpusError(f"corpus already exists at {root}")
            return cls.open(root, storage_options)
        fs.makedirs(path, exist_ok=True)
        info = {"format_version": FORMAT_VERSION, "created_at": _utcnow(), "defi_version": defi_version()}
        _atomic_write_bytes(fs, meta, json.dumps(info, indent=2).encode())
        return cls(str(root), fs, path.rstrip("/"), info)

    @classmethod
    def open(cls, root: str, storage_options: dict | None = None) -> Corpus:
        """Open an existing corpus; refuses a missing root and a newer major format."""
        fs, path = fsspec.core.url_to_fs(str(root), **(storage_options or {}))
        path = path.rstrip("/")
        meta = f"{path}/{CORPUS_FILE}"
        if not str(root).strip():
            raise CorpusError("the corpus root is empty")
        if not fs.exists(path):
            raise CorpusError(f"corpus root {root} does not exist")
        if not fs.isdir(path):
            raise CorpusError(f"corpus root {root} is a file, not a folder")
        if not fs.exists(meta):
            raise CorpusError(f"{root} is not a defi corpus (no {CORPUS_FILE}); create one with `defi curate`")
        if fs.isdir(meta):
            raise CorpusError(f"{meta} is a folder, not the corpus's JSON file")
        try:
            info = json.loads(fs.cat_file(meta))
            version = str(info["format_version"])
            major = int(version.split(".")[0])
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise CorpusError(f"{meta} is unreadable: {e}") from None
        if major > FORMAT_MAJOR:
            raise CorpusError(
                f"corpus {root} has format {version}, newer than this defi supports ({FORMAT_VERSION}); upgrade defi to read it"
            )
        return cls(str(root), fs, path, info)

    # -- paths ---------------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return protocol in ("file", "local")

    def path(self, *parts: str) -> str:
        """A path inside the root, as the filesystem names it."""
        return "/".join([self.path_root, *parts])

    def url(self, *parts: str) -> str:
        """A URL inside the root that fsspec (and webdataset's pipe/fsspec openers) can open."""
        p = self.path(*parts)
        return p if self.is_local else self.fs.unstrip_protocol(p)

    def shard_url(self, name: str) -> str:
        return self.url(SHARDS_DIR, name)

    def table_dir(self, table: str) -> str:
        if table in ("sources", "clips", "shards", "text_embeddings"):
            return self.path(table)
        if table.startswith(LABELS_DIR + "/"):
            return self.path(table)
        raise CorpusError(f"unknown table {table!r}; valid: sources, clips, shards, text_embeddings, labels/<labeler>")

    # -- writing -------------------------------------------------------------------------------
    def write_part(self, table: str, data: pa.Table, part: str | None = None) -> str:
        """Atomically write one parquet part of ``table`` ("sources", "clips", "shards" or
        "labels/<labeler>"); ``part`` names it (same name = replace, for idempotent commits)."""
        schema = _table_schema(table)
        validate_table(data, schema, table)
        data = data.select(schema.names).cast(schema)
        part = part or uuid.uuid4().hex
        if not _PART_NAME.match(part):
            raise ValueError(f"part name {part!r} has characters outside [A-Za-z0-9_.=-]")
        d = self.table_dir(table)
        self.fs.makedirs(d, exist_ok=True)
        final = f"{d}/part-{part}.parquet"
        if self.is_local:
            tmp = f"{d}/.tmp-{part}-{uuid.uuid4().hex}.parquet"
            with open(tmp, "wb") as f:
                pq.write_table(data, f, compression="zstd")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        else:
            with self.fs.open(final, "wb") as f:  # one PUT on close: atomic on object stores
                pq.write_table(data, f, compression="zstd")
        return final

    def parts(self, table: str) -> list[str]:
        """Committed parts of a table, sorted (temp files are never listed)."""
        d = self.table_dir(table)
        if not self.fs.exists(d):
            return []
        return sorted(p for p in self.fs.glob(f"{d}/{PART_GLOB}"))

    def labelers(self) -> list[str]:
        """The latent-action labelers (folders under ``labels/`` that hold LATENT_ACTIONS rows)."""
        return [n for n in self.label_folders() if label_schema(n) is LATENT_ACTIONS]

    def label_folders(self) -> list[str]:
        """Every folder under ``labels/`` (latent-action labelers, captions, dedup results and signatures)."""
        d = self.path(LABELS_DIR)
        if not self.fs.exists(d):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(d, detail=False) if self.fs.isdir(p))

    def current_dedup(self) -> str | None:
        """The ``labels/`` folder the ``dedup`` view reads (the last `defi dedup` run's), or None."""
        return self._current_label(DEDUP_POINTER, DEDUP)

    def _current_label(self, pointer: str, schema: pa.Schema) -> str | None:
        """The ``labels/`` folder a pointer file (``{"current": NAME}``) names, if it holds
        ``schema``; None without the file. An unreadable pointer is a ``CorpusError``."""
        if not self.fs.exists(self.path(pointer)):
            return None
        try:
            name = str(self.read_json(pointer)["current"])
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise CorpusError(f"{self.path(pointer)} is unreadable: {e}") from None
        return name if label_schema(name) is schema else None

    def read_table(self, table: str) -> pa.Table:
        """All committed parts of a table as one Arrow table (empty, with schema, if none)."""
        schema = _table_schema(table)
        parts = self.parts(table)
        if not parts:
            return pa.Table.from_batches([], schema=schema)  # (Schema.empty_table imports pandas: ~1.5 s of start-up)
        return pa.concat_tables([pq.read_table(p, filesystem=self.fs, schema=schema) for p in parts])

    def write_json(self, rel_path: str, obj: Any) -> str:
        p = self.path(rel_path)
        self.fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        _atomic_write_bytes(self.fs, p, json.dumps(obj, indent=2, default=str).encode())
        return p

    def read_json(self, rel_path: str) -> Any:
        return json.loads(self.fs.cat_file(self.path(rel_path)))

    # -- querying ------------------------------------------------------------------------------
    def views(self) -> dict[str, list[str]]:
        """View name -> parquet parts behind it. ``latent_actions`` unions every labeler's parts;
        each ``labels/`` folder also gets its own view ``labels_<name>`` (non-alphanumerics ->
        ``_``); ``captions`` reads the current captions (``current_captions``), ``dedup`` the current
        dedup result (``current_dedup``). SQL views over these (``clips_dedup``) are not listed."""
        return {v: parts for v, (parts, _) in self.view_tables().items()}

    def view_tables(self) -> dict[str, tuple[list[str], pa.Schema]]:
        """View name -> (parquet parts, schema); see ``views``."""
        out = {t: (self.parts(t), TABLES[t]) for t in ("sources", "clips", "shards", "text_embeddings")}
        out["latent_actions"] = ([], LATENT_ACTIONS)
        for name in self.label_folders():
            ps, schema = self.parts(f"{LABELS_DIR}/{name}"), label_schema(name)
            if schema is LATENT_ACTIONS:
                out["latent_actions"][0].extend(ps)
            out[label_view_name(name)] = (ps, schema)
        current = self.current_captions()
        out["captions"] = (self.parts(f"{LABELS_DIR}/{current}") if current else [], CAPTIONS)
        current = self.current_dedup()
        out["dedup"] = (self.parts(f"{LABELS_DIR}/{current}") if current else [], DEDUP)
        return out

    def current_captions(self) -> str | None:
        """The ``labels/`` folder of the last finished `defi label captions` run (what the
        ``captions`` view and training's ``--data.language caption|auto`` read), or None."""
        return self._current_label(CAPTIONS_POINTER, CAPTIONS)

    def connect(self, threads: int | None = None, tables: dict[str, pa.Table] | None = None) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with the corpus views defined, that cannot touch a file.

        Read-only at the engine, not by parsing the SQL: every view is a pyarrow dataset over the
        committed parts (pyarrow does the file reads), and the connection is opened with
        ``enable_external_access=false`` (no COPY TO/FROM, ATTACH, EXPORT, read_csv/read_parquet
        of any path, extension install or load), extension autoload/autoinstall off, spilling to a
        private temp folder removed on ``close`` and ``lock_configuration=true`` (no SET/RESET can
        undo any of it). DuckDB's ``allowed_paths`` and ``allowed_directories`` would let a
        statement read the parts but also overwrite them (they grant writing too: ``COPY ... TO
        part``), so neither is used. What a statement can still change is this connection's own
        in-memory catalog, which dies with it.

        ``tables``: extra in-memory Arrow tables to expose by name (e.g. ``text_scores`` of a
        text search), registered before the configuration is locked."""
        import shutil
        import tempfile

        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise CorpusError(f"threads must be a positive integer, got {threads!r}")
        spill = tempfile.mkdtemp(prefix="defi-duckdb-")
        config = {
            "enable_external_access": False,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "temp_directory": spill,
        }
        if threads:
            config["threads"] = int(threads)
        con = duckdb.connect(":memory:", config=config)
        try:
            for view, (parts, schema) in self.view_tables().items():
                _define_view(con, view, parts, schema, self)
            con.execute(f"CREATE VIEW clips_dedup AS {CLIPS_DEDUP_SQL}")
            for name, table in (tables or {}).items():
                con.register(name, table)
            con.execute("SET lock_configuration = true")
        except (duckdb.Error, OSError, pa.ArrowException) as e:
            con.close()
            shutil.rmtree(spill, ignore_errors=True)
            raise self.sql_error(e) from None
        return _Connection(con, spill)

    def query(self, sql: str, threads: int | None = None, tables: dict[str, pa.Table] | None = None) -> pa.Table:
        """Run read-only SQL over the views (and ``tables``, see ``connect``); returns an Arrow
        table. Raises ``CorpusError`` (one line; an unreadable part is named)."""
        con = self.connect(threads, tables)
        try:
            check_read_only(con, sql)
            return con.sql(sql).to_arrow_table()
        except (duckdb.Error, OSError, pa.ArrowException) as e:
            raise self.sql_error(e) from None
        finally:
            con.close()

    def columns(self, sql: str, tables: dict[str, pa.Table] | None = None) -> list[str]:
        """The column names ``sql`` would return, found by binding it (nothing runs)."""
        con = self.connect(tables=tables)
        try:
            check_read_only(con, sql)
            rel = con.sql(sql)  # a SELECT is bound, not run, until its rows are asked for
            return list(rel.columns) if rel is not None else []
        except (duckdb.Error, OSError, pa.ArrowException) as e:
            raise self.sql_error(e) from None
        finally:
            con.close()

    def sql_error(self, e: BaseException) -> CorpusError:
        """A DuckDB error as one line; when a committed part cannot be read, name that file."""
        bad = self.unreadable_parts(limit=1)
        if bad:
            path, why = bad[0]
            return CorpusError(f"unreadable corpus file {path}: {why} (run `defi check {self.root}`)")
        msg = _first_line(str(e))
        if isinstance(e, duckdb.PermissionException):
            msg += " (queries are read-only: no file may be read or written except the corpus's own tables)"
        return CorpusError(f"SQL error: {msg}")

    def unreadable_parts(self, limit: int | None = None, tables: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
        """(path, reason) for every committed parquet part (of the views ``tables``, default all)
        whose footer cannot be read or whose columns do not fit the table's schema."""
        out, seen = [], set()
        for view, (parts, schema) in self.view_tables().items():
            if tables is not None and view not in tables:
                continue
            for p in parts:
                if p in seen:  # a labeler's parts are in latent_actions and its own view
                    continue
                seen.add(p)
                why = part_problem(self.fs, p, schema)
                if why:
                    out.append((p, why))
                    if limit and len(out) >= limit:
                        return out
        return out

    def build_index(self) -> str:
        """Write ``index.duckdb`` (local roots only) with the views, so DuckDB's own clients can
        open the index directly. Views name absolute parquet globs: re-run after moving the root."""
        if not self.is_local:
            raise CorpusError("index.duckdb is built for local roots only; query remote roots with `defi query`")
        self.refuse_unreadable()  # a view over a damaged part would fail to bind, deep in DuckDB
        final = self.path(INDEX_FILE)
        tmp = self.path(f".tmp-index-{uuid.uuid4().hex}.duckdb")
        con = duckdb.connect(tmp)
        ok = False
        try:
            for view, (parts, schema) in self.view_tables().items():
                if parts:
                    files = ", ".join(_sql_str(os.path.abspath(p)) for p in parts)
                    con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet([{files}], union_by_name=true)")
                else:
                    cols = ", ".join(f'CAST(NULL AS {_duck_type(f.type)}) AS "{f.name}"' for f in schema)
                    con.execute(f"CREATE VIEW {view} AS SELECT {cols} WHERE false")
            con.execute(f"CREATE VIEW clips_dedup AS {CLIPS_DEDUP_SQL}")
            ok = True
        except duckdb.Error as e:
            raise self.sql_error(e) from None
        finally:
            con.close()
            if not ok:
                for p in (tmp, f"{tmp}.wal"):
                    if os.path.exists(p):
                        os.unlink(p)
        os.replace(tmp, final)
        return final

    def refuse_unreadable(self, tables: tuple[str, ...] | None = None) -> None:
        """Raise ``CorpusError`` naming the first committed part (of ``tables``; default every
        view's) that cannot be read: a command that reads or rewrites the index must not start on
        a damaged corpus."""
        bad = self.unreadable_parts(limit=1, tables=tables)
        if bad:
            path, why = bad[0]
            raise CorpusError(f"unreadable corpus file {path}: {why} (run `defi check {self.root}`)")

    def summary(self) -> dict[str, Any]:
        """The numbers ``defi info`` prints: videos, hours in/out, clips by reason, shards, labels."""
        q = self.query
        src = q(
            "SELECT count(*) AS n, count(*) FILTER (WHERE error IS NULL) AS ok, "
            "coalesce(sum(duration_s) FILTER (WHERE error IS NULL), 0) / 3600 AS hours FROM sources"
        ).to_pylist()[0]
        errors = {
            r["error"]: r["n"]
            for r in q("SELECT error, count(*) AS n FROM sources WHERE error IS NOT NULL GROUP BY 1 ORDER BY 2 DESC").to_pylist()
        }
        clips = q(
            "SELECT count(*) FILTER (WHERE kept) AS kept, count(*) FILTER (WHERE NOT kept) AS rejected, "
            "coalesce(sum(duration_s) FILTER (WHERE kept), 0) / 3600 AS hours_kept FROM clips"
        ).to_pylist()[0]
        reasons = {
            r["reject_reason"]: r["n"]
            for r in q("SELECT reject_reason, count(*) AS n FROM clips WHERE NOT kept GROUP BY 1 ORDER BY 2 DESC").to_pylist()
        }
        shards = q("SELECT count(*) AS n, coalesce(sum(size_bytes), 0)::BIGINT AS bytes FROM shards").to_pylist()[0]
        labels = {r["labeler"]: r["n"] for r in q("SELECT labeler, count(*) AS n FROM latent_actions GROUP BY 1 ORDER BY 1").to_pylist()}
        return {
            "root": self.root,
            "format_version": self.info.get("format_version"),
            "videos": src["n"],
            "videos_ok": src["ok"],
            "video_errors": errors,
            "hours_in": src["hours"],
            "clips_kept": clips["kept"],
            "clips_rejected": clips["rejected"],
            "reject_reasons": reasons,
            "hours_out": clips["hours_kept"],
            "shards": shards["n"],
            "shard_bytes": shards["bytes"],
            "labels": labels,
        }


def _table_schema(table: str) -> pa.Schema:
    if table.startswith(LABELS_DIR + "/"):
        return label_schema(table.split("/", 1)[1])
    return TABLES[table]


def label_view_name(labeler: str) -> str:
    return "labels_" + re.sub(r"[^A-Za-z0-9_]", "_", labeler)


_EXPLAIN = re.compile(r"^\s*EXPLAIN\s+(?:ANALY[SZ]E\s+|\([^)]*\)\s*)?", re.IGNORECASE)


def corpus_root_of(path: str) -> str | None:
    """The corpus root that the local ``path`` is or lies inside: the nearest folder at or above
    its real path (symlinks resolved) holding ``corpus.json``. None when there is none, and for a
    remote URL (s3://, gs://...). Outputs of commands go outside every root (see DESIGN.md)."""
    if "://" in path:
        if not path.startswith("file://"):
            return None
        path = path[len("file://") :]
    p = os.path.realpath(os.path.abspath(path))
    while True:
        if os.path.isfile(os.path.join(p, CORPUS_FILE)):
            return p
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but SELECT statements, also when wrapped in EXPLAIN [ANALYZE] (which runs
    what it wraps). A first, friendlier refusal: what guarantees that no file is written is the
    connection's engine settings (``Corpus.connect``); this also keeps a statement from changing
    the in-memory catalog the query runs against."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise CorpusError(f"SQL error: {_first_line(str(e))}") from None
    if not statements:
        raise CorpusError("SQL error: empty query")
    for st in statements:
        kind = st.type.name
        if kind == "EXPLAIN":
            inner = _EXPLAIN.sub("", st.query, count=1)
            if inner.strip() == st.query.strip():
                raise CorpusError("only read-only queries are allowed; refused an EXPLAIN whose statement could not be read")
            check_read_only(con, inner)
        elif kind not in _READ_ONLY:
            raise CorpusError(f"only read-only queries are allowed; refused a {kind} statement")


class _Connection:
    """A DuckDB connection that removes its private spill folder when closed."""

    def __init__(self, con: duckdb.DuckDBPyConnection, spill: str):
        self._con, self._spill = con, spill

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)

    def close(self) -> None:
        import shutil

        self._con.close()
        shutil.rmtree(self._spill, ignore_errors=True)

    def __enter__(self) -> _Connection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def part_problem(fs: fsspec.AbstractFileSystem, path: str, schema: pa.Schema) -> str | None:
    """Why a committed parquet part cannot be read as ``schema`` (None when it can)."""
    try:
        with fs.open(path, "rb") as f:
            got = pq.read_schema(f)
    except FileNotFoundError:
        return "the file is missing"
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged footer
        return _first_line(str(e)) or type(e).__name__
    for field in got:
        want = schema.field(field.name) if field.name in schema.names else None
        if want is not None and not field.type.equals(want.type):
            return f"column {field.name} is {field.type}, expected {want.type}"
    return None


def _define_view(con, view: str, parts: list[str], schema: pa.Schema, corpus: Corpus) -> None:
    if not parts:
        con.register(f"__empty_{view}", schema.empty_table())
        con.execute(f"CREATE VIEW {view} AS SELECT * FROM __empty_{view}")
    else:
        # pyarrow reads the files (a part that lacks a newer column reads it as nulls); DuckDB
        # itself has no file access on this connection (see Corpus.connect)
        import pyarrow.dataset as ds

        if corpus.is_local:
            dataset = ds.dataset(parts, schema=schema, format="parquet")
        else:
            from pyarrow.fs import FSSpecHandler, PyFileSystem

            dataset = ds.dataset(parts, schema=schema, format="parquet", filesystem=PyFileSystem(FSSpecHandler(corpus.fs)))
        con.register(view, dataset)


def _duck_type(t: pa.DataType) -> str:
    """DuckDB type name for the empty views of ``index.duckdb``."""
    if pa.types.is_string(t):
        return "VARCHAR"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_int32(t):
        return "INTEGER"
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_float32(t):
        return "FLOAT"
    if pa.types.is_float64(t):
        return "DOUBLE"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ"
    if pa.types.is_list(t):
        return _duck_type(t.value_type) + "[]"
    if pa.types.is_map(t):
        return f"MAP({_duck_type(t.key_type)}, {_duck_type(t.item_type)})"
    raise TypeError(f"no DuckDB type for {t}")


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _first_line(msg: str) -> str:
    return " ".join(msg.strip().splitlines()[:1]) if msg.strip() else "unknown error"


def _atomic_write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        with fs.open(path, "wb") as f:
            f.write(data)
