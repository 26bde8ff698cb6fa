"""Writing WebDataset shards atomically, and removing orphans a killed run left behind.

A shard is built in a local temp file, hashed, then moved into ``ROOT/shards/`` under its final
name in one step (``os.replace`` locally, one upload remotely). Its ``shards`` row and its clips'
rows are committed after it; a shard with no ``shards`` row is an orphan of a killed run and is
removed by ``remove_orphans`` before a run starts (under the writer lock, see lock.py).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import uuid
from dataclasses import dataclass

from defi.schemas.corpus import SHARDS_DIR, Corpus
from defi.schemas.samples import member_name


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
