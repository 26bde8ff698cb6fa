"""WebDataset shards of the sample layout in ``samples.py``: written atomically, read back, and
orphans a killed run left behind removed.

Writing: a shard is built in a local temp file, hashed, then moved into ``ROOT/shards/`` under its
final name in one step (``os.replace`` locally, one upload remotely). Its ``shards`` row and its
clips' rows are committed after it; a shard with no ``shards`` row is an orphan of a killed run and
is removed by ``remove_orphans`` before a run starts (under the writer lock, see
``pipelines/lock.py``).

Reading: ``ShardReader`` iterates the samples of shard tars (local paths or fsspec URLs) as
``ShardSample``s; samples outside ``keys`` are skipped by seeking past their tar members, neither
read into memory nor decoded.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tarfile
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

from .corpus import SHARDS_DIR, Corpus
from .samples import EXT_ACTIONS, EXT_LANG, EXT_META, EXT_PROPRIO, EXT_ROW_ACTIONS, EXT_ROW_PROPRIO, EXT_VIDEO, SampleMeta, member_name

log = logging.getLogger(__name__)

# WebDataset's member naming: the key is everything up to the first dot of the base name.
_MEMBER_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


@dataclass
class Sample:
    """One shard sample: key -> {extension: bytes}."""

    key: str
    members: dict[str, bytes]

    @property
    def nbytes(self) -> int:
        return sum(len(v) for v in self.members.values())


@dataclass
class ShardInfo:
    shard: str
    num_samples: int
    size_bytes: int
    sha256: str


def write_shard(corpus: Corpus, name: str, samples: list[Sample]) -> ShardInfo:
    """Write ``samples`` as ``shards/<name>`` (a plain POSIX tar, members sorted by key so the
    same samples give the same bytes). Returns its size and sha256."""
    fd, tmp = tempfile.mkstemp(suffix=".tar", prefix=".tmp-shard-")
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for s in sorted(samples, key=lambda s: s.key):
                for ext in sorted(s.members):
                    data = s.members[ext]
                    ti = tarfile.TarInfo(member_name(s.key, ext))
                    ti.size, ti.mtime, ti.mode = len(data), 0, 0o444
                    ti.uname = ti.gname = "defi"
                    tar.addfile(ti, io.BytesIO(data))
        h = hashlib.sha256()
        with open(tmp, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        size = os.path.getsize(tmp)
        final = corpus.path(SHARDS_DIR, name)
        corpus.fs.makedirs(corpus.path(SHARDS_DIR), exist_ok=True)
        if corpus.is_local:
            staged = corpus.path(SHARDS_DIR, f".tmp-{uuid.uuid4().hex}-{name}")
            corpus.fs.put_file(tmp, staged)  # same filesystem as the final name: rename is atomic
            os.replace(staged, final)
        else:
            corpus.fs.put_file(tmp, final)  # one upload: visible only complete
        return ShardInfo(name, len(samples), size, h.hexdigest())
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def orphan_shards(corpus: Corpus) -> list[str]:
    """Names of shard tars (and temp files) in ``shards/`` that no committed ``shards`` row names."""
    d = corpus.path(SHARDS_DIR)
    if not corpus.fs.exists(d):
        return []
    known = set(corpus.read_table("shards").column("shard").to_pylist())
    out = []
    for p in corpus.fs.ls(d, detail=False):
        name = p.rstrip("/").rsplit("/", 1)[-1]
        # shards/ also holds the shards table's parquet parts: only tars and temp files are ours
        if name not in known and (name.endswith(".tar") or name.startswith(".tmp-")):
            out.append(name)
    return sorted(out)


def remove_orphans(corpus: Corpus, keep: set[str] = frozenset()) -> list[str]:
    """Delete shard files (and temp files) that no committed ``shards`` row names, except ``keep``.
    Only call this under the root's writer lock (``defi curate`` does, before it starts)."""
    removed = []
    for name in orphan_shards(corpus):
        if name in keep:
            continue
        corpus.fs.rm(corpus.path(SHARDS_DIR, name))
        removed.append(name)
    return removed


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
@dataclass
class ShardSample:
    """One sample of a shard. ``actions``/``proprio``: float32 [num_frames, D] aligned to the
    clip's encoded frames, or None; ``lang``: the instruction (``<key>.lang.txt``, else the
    meta's ``language``), or None."""

    key: str
    shard: str  # the shard's URL/path it was read from
    meta: SampleMeta
    mp4: bytes
    actions: np.ndarray | None = None
    proprio: np.ndarray | None = None
    lang: str | None = None
    row_actions: np.ndarray | None = None  # every recorded row in the clip's span [R, A] (format 1.1)
    row_proprio: np.ndarray | None = None

    def rows(self) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray, float]:
        """(actions [R, A], proprio [R, P] or None, frame_rows [num_frames], rows' rate in Hz): the
        clip's rows at the robot's own rate with, per encoded frame, its row's position (-1: none).
        Samples written before format 1.1 have one row per frame: ``frame_rows`` is then
        ``arange(num_frames)`` and the rate is the clip's fps."""
        m = self.meta
        if self.row_actions is not None and m.frame_rows is not None:
            return self.row_actions, self.row_proprio, np.asarray(m.frame_rows, np.int64), float(m.row_fps or m.fps)
        n = len(self.actions) if self.actions is not None else int(m.num_frames)
        return self.actions, self.proprio, np.arange(n, dtype=np.int64), float(m.fps)


class ShardReader:
    """Iterate ``ShardSample``s of one or more shards, in tar order.

    ``keys``: only these samples are returned; the others are skipped without reading their
    bytes (the tar is read header by header and seeks past unselected members). Malformed
    samples (missing mp4/json, bad json or npy) and unreadable shards are skipped with a warning
    and counted in ``stats`` (``"error:<reason>"``); ``stats["samples"]`` counts samples yielded
    and ``stats["not_selected"]`` those skipped by ``keys``.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        keys: Iterable[str] | None = None,
        storage_options: dict | None = None,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.keys = None if keys is None else set(keys)
        self.storage_options = storage_options or {}
        self.stats: Counter = Counter()

    def __iter__(self) -> Iterator[ShardSample]:
        for url in self.urls:
            yield from self.read_shard(url)

    def read_shard(self, url: str) -> Iterator[ShardSample]:
        """Samples of the shard at ``url`` (local path or fsspec URL)."""
        try:
            with fsspec.open(url, "rb", **self.storage_options) as f:
                yield from self.read_fileobj(f, url)
        except (OSError, ValueError) as e:  # missing file, bad URL: count, go on with the next shard
            self._error("bad_shard", f"{url}: {type(e).__name__}: {e}")

    def read_fileobj(self, f: Any, url: str = "<fileobj>") -> Iterator[ShardSample]:
        """Samples of a tar in an open, seekable binary file; ``url`` names it in samples and logs."""
        try:
            # "r:" (not the streaming "r|") so unselected members are seeked over, not read
            with tarfile.open(fileobj=f, mode="r:") as tf:
                key, members, selected = None, {}, False
                for m in tf:
                    if not m.isfile():
                        continue
                    match = _MEMBER_RE.match(m.name)
                    if match is None:
                        self._error("member_without_key", f"{url}: member {m.name!r} has no key.ext name")
                        continue
                    mkey, ext = match.groups()
                    if mkey != key:
                        if key is not None:
                            sample = self._finish(url, key, members, selected)
                            if sample is not None:
                                yield sample
                        key, members = mkey, {}
                        selected = self.keys is None or mkey in self.keys
                    if selected:
                        members[ext] = tf.extractfile(m).read()
                if key is not None:
                    sample = self._finish(url, key, members, selected)
                    if sample is not None:
                        yield sample
        except (tarfile.TarError, OSError, EOFError) as e:
            # a truncated or missing shard: what was read so far was yielded; count and move on
            self._error("bad_shard", f"{url}: {type(e).__name__}: {e}")

    def _finish(self, url: str, key: str, members: dict[str, bytes], selected: bool) -> ShardSample | None:
        if not selected:
            self.stats["not_selected"] += 1
            return None
        for ext in (EXT_VIDEO, EXT_META):
            if ext not in members:
                self._error(f"missing_{ext}", f"{url}: sample {key} has no .{ext}")
                return None
        try:
            meta = SampleMeta.from_json(members[EXT_META])
            actions = _load_npy(members[EXT_ACTIONS]) if EXT_ACTIONS in members else None
            proprio = _load_npy(members[EXT_PROPRIO]) if EXT_PROPRIO in members else None
            lang = members[EXT_LANG].decode("utf-8") if EXT_LANG in members else meta.language
            row_actions = _load_npy(members[EXT_ROW_ACTIONS]) if EXT_ROW_ACTIONS in members else None
            row_proprio = _load_npy(members[EXT_ROW_PROPRIO]) if EXT_ROW_PROPRIO in members else None
        except (ValueError, TypeError, UnicodeDecodeError) as e:
            self._error("bad_member", f"{url}: sample {key}: {type(e).__name__}: {e}")
            return None
        self.stats["samples"] += 1
        return ShardSample(key, url, meta, members[EXT_VIDEO], actions, proprio, lang, row_actions, row_proprio)

    def _error(self, reason: str, message: str) -> None:
        self.stats[f"error:{reason}"] += 1
        log.warning("ShardReader: %s", message)


def _load_npy(data: bytes) -> np.ndarray:
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    return np.asarray(arr, dtype=np.float32)
