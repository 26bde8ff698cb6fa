"""Writing WebDataset shards atomically, and removing orphans a killed run left behind.

A shard is built in a local temp file, hashed, then moved into ``ROOT/shards/`` under its final
name in one step (``os.replace`` locally, one upload remotely). Its ``shards`` row and its clips'
rows are committed after it; a shard with no ``shards`` row is an orphan of a killed run and is
removed by ``remove_orphans`` before a run starts.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import time
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


def remove_orphans(corpus: Corpus, min_age_s: float = 0.0) -> list[str]:
    """Delete shard files (and temp files) that no committed ``shards`` row names. Only call this
    when no other writer is running against the root (``defi curate`` does, before it starts)."""
    d = corpus.path(SHARDS_DIR)
    if not corpus.fs.exists(d):
        return []
    known = set(corpus.read_table("shards").column("shard").to_pylist())
    removed = []
    now = time.time()
    for p in corpus.fs.ls(d, detail=True):
        name = p["name"].rstrip("/").rsplit("/", 1)[-1]
        # shards/ also holds the shards table's parquet parts: only tars and temp files are ours
        if name in known or not (name.endswith(".tar") or name.startswith(".tmp-")):
            continue
        mtime = p.get("mtime") or p.get("LastModified")
        if min_age_s and mtime is not None and hasattr(mtime, "timestamp"):
            mtime = mtime.timestamp()
        if min_age_s and isinstance(mtime, (int, float)) and now - mtime < min_age_s:
            continue
        corpus.fs.rm(p["name"])
        removed.append(name)
    return removed
