"""`defi check ROOT`: verify a corpus against its own index, reading every byte of every shard.

Reported, one line each (``KIND  PATH  detail``), exit 1 when anything is wrong, 0 when clean:
- ``unreadable``: a parquet part whose footer or columns cannot be read (queries fail on it);
- ``uncommitted``: a clips/shards part of a unit whose commit a killed run left unfinished (the
  next `defi curate` removes it); ``orphan_part``: one with no sources part and no run committing it
  (a sources part was deleted or renamed; `defi curate --repair` moves it to quarantine/);
- ``unexplained_clips``: a committed clips part holding clips of a source no ``sources`` row names;
- ``lost_clips``: a committed sources part whose readable, error-free sources have no row in any
  committed clips part (every source that decodes yields at least one clip row, kept or not): the
  clips part was deleted, or sits in an orphan part;
- ``missing_shard``: a shard a ``shards`` row or a kept clip names that is not on storage;
- ``bad_shard``: a shard whose size, sha256 or sample count differs from its ``shards`` row, or
  that is not a readable tar;
- ``missing_sample``: a kept clip whose key is not in its shard (or misses its mp4/json);
- ``orphan_shard``: a shard tar no ``shards`` row names.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tarfile
from collections import defaultdict
from typing import Any

from defi.schemas.corpus import LABELS_DIR, SHARDS_DIR, Corpus
from defi.schemas.samples import REQUIRED


def _read_ok(corpus: Corpus, table: str, bad: set[str]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from defi.schemas.tables import TABLES

    parts = [p for p in corpus.parts(table) if p not in bad]
    if not parts:
        return TABLES[table].empty_table()
    return pa.concat_tables([pq.read_table(p, filesystem=corpus.fs, schema=TABLES[table]) for p in parts])


def _scan_shard(corpus: Corpus, name: str) -> tuple[str, int, dict[str, set[str]], str | None]:
    """(sha256, size, key -> member extensions, error) of one shard, read once."""
    h, size = hashlib.sha256(), 0
    members: dict[str, set[str]] = defaultdict(set)

    class _Hashing:  # tarfile reads through this, so the file is read once for both checks
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            nonlocal size
            b = self.f.read(n)
            h.update(b)
            size += len(b)
            return b

    last = None
    try:
        with corpus.fs.open(corpus.path(SHARDS_DIR, name), "rb") as f:
            stream = _Hashing(f)
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for ti in tar:
                    if ti.isfile():
                        key, _, ext = ti.name.partition(".")
                        members[key].add(ext)
                        last = (key, ext)
            while stream.read(1 << 20):  # the zero padding after the last member counts too
                pass
        return h.hexdigest(), size, members, None
    except (tarfile.TarError, OSError, EOFError) as e:
        if last is not None:  # the stream failed past this member's header: its data is incomplete
            members[last[0]].discard(last[1])
        return h.hexdigest(), size, members, f"not a readable tar: {str(e).splitlines()[0] if str(e) else type(e).__name__}"


def _uncommitted_parts(corpus: Corpus) -> list[tuple[str, str, str]]:
    """clips/shards parts outside any commit (no sources part of the same unit)."""
    committed = {os.path.basename(p) for p in corpus.parts("sources")}
    pending_dir = corpus.path("pending")
    pending = {
        f"part-{os.path.basename(m)[: -len('.json')]}.parquet"
        for m in (corpus.fs.glob(f"{pending_dir}/*.json") if corpus.fs.exists(pending_dir) else [])
    }
    out = []
    for table in ("clips", "shards"):
        for p in corpus.parts(table):
            name = os.path.basename(p)
            if name in committed:
                continue
            if name in pending:
                out.append(("uncommitted", p, "a killed run's unfinished commit; the next `defi curate` removes it"))
            else:
                out.append(("orphan_part", p, "no sources part commits it; `defi curate --repair` moves it to quarantine/"))
    return out


def _lost_clips(corpus: Corpus, bad: set[str]) -> list[tuple[str, str, str]]:
    """Committed sources parts whose error-free sources have no clip row in a committed part, and
    committed clips parts with clips of no source."""
    import pyarrow.parquet as pq

    committed = {os.path.basename(p) for p in corpus.parts("sources")}
    have = set()
    out = []
    sources = {
        p: pq.read_table(p, filesystem=corpus.fs, columns=["source_id", "error", "uri"]).to_pylist()
        for p in corpus.parts("sources")
        if p not in bad
    }
    known = {r["source_id"] for rows in sources.values() for r in rows}
    for p in corpus.parts("clips"):
        if p not in bad and os.path.basename(p) in committed:
            ids = pq.read_table(p, filesystem=corpus.fs, columns=["source_id"]).column("source_id").to_pylist()
            have |= set(ids)
            stray = [i for i in ids if i not in known]
            if stray:
                out.append(
                    (
                        "unexplained_clips",
                        p,
                        f"{len(stray)} clips of source {stray[0]}{' and others' if len(set(stray)) > 1 else ''}, which no sources row "
                        "names (a sources part was replaced?); `defi curate --repair` moves the unit to quarantine/",
                    )
                )
    for p, t in sources.items():
        lost = [r for r in t if r["error"] is None and r["source_id"] not in have]
        if lost:
            out.append(
                (
                    "lost_clips",
                    p,
                    f"{len(lost)} source{'s' if len(lost) > 1 else ''} ({lost[0]['uri']}{', ...' if len(lost) > 1 else ''}) "
                    "have no clips in any committed clips part (deleted, or in an orphan part); "
                    "`defi curate --repair` moves them to quarantine/ and curates the videos again",
                )
            )
    return out


def check_corpus(root: str, progress: bool = False) -> dict[str, Any]:
    """Every problem of the corpus at ``root`` as ``{"problems": [(kind, path, detail)], "shards",
    "clips", "parts"}`` (counts checked)."""
    corpus = Corpus.open(root)
    problems: list[tuple[str, str, str]] = []
    bad = set()
    for path, why in corpus.unreadable_parts():
        problems.append(("unreadable", path, why))
        bad.add(path)
    n_parts = sum(len(corpus.parts(t)) for t in ("sources", "clips", "shards"))
    n_parts += sum(len(corpus.parts(f"{LABELS_DIR}/{name}")) for name in corpus.labelers())
    problems += _uncommitted_parts(corpus)
    problems += _lost_clips(corpus, bad)
    shards = _read_ok(corpus, "shards", bad).to_pylist()
    clips = _read_ok(corpus, "clips", bad).select(["key", "kept", "shard"]).to_pylist()
    by_shard: dict[str, list[str]] = defaultdict(list)
    for c in clips:
        if c["kept"] and c["shard"]:
            by_shard[c["shard"]].append(c["key"])
    d = corpus.path(SHARDS_DIR)
    on_disk = {p.rstrip("/").rsplit("/", 1)[-1] for p in corpus.fs.ls(d, detail=False)} if corpus.fs.exists(d) else set()
    known = {r["shard"] for r in shards}
    from tqdm import tqdm

    for row in tqdm(shards, unit="shard", disable=not progress, file=sys.stderr):
        name, path = row["shard"], corpus.path(SHARDS_DIR, row["shard"])
        if name not in on_disk:
            problems.append(("missing_shard", path, f"named by a shards row ({row['num_samples']} samples)"))
            continue
        sha, size, members, err = _scan_shard(corpus, name)
        if err:
            problems.append(("bad_shard", path, err))
        elif size != row["size_bytes"]:
            problems.append(("bad_shard", path, f"{size} bytes, the index says {row['size_bytes']}"))
        elif sha != row["sha256"]:
            problems.append(("bad_shard", path, f"sha256 {sha[:12]}…, the index says {row['sha256'][:12]}…"))
        elif len(members) != row["num_samples"]:
            problems.append(("bad_shard", path, f"{len(members)} samples, the index says {row['num_samples']}"))
        for key in by_shard.get(name, []):
            missing = [e for e in REQUIRED if e not in members.get(key, set())]
            if missing:
                problems.append(("missing_sample", path, f"kept clip {key} has no {', '.join(missing)} in it"))
    for name in sorted(set(by_shard) - known):
        kind = "missing_shard" if name not in on_disk else "orphan_shard"
        problems.append((kind, corpus.path(SHARDS_DIR, name), f"{len(by_shard[name])} kept clips name it but no shards row does"))
    for name in sorted(on_disk - known - set(by_shard)):
        if name.endswith(".tar"):
            problems.append(("orphan_shard", corpus.path(SHARDS_DIR, name), "no shards row or clip names it"))
    qdir = corpus.path("quarantine")
    quarantined = [p for p in corpus.fs.find(qdir) if not p.endswith("/why.json")] if corpus.fs.exists(qdir) else []
    return {"problems": problems, "shards": len(shards), "clips": len(clips), "parts": n_parts, "quarantined": len(quarantined)}


def add_check_parser(subparsers) -> argparse.ArgumentParser:
    """``defi check ROOT``"""
    p = subparsers.add_parser(
        "check",
        help="verify a corpus: parts readable, every shard's sha256 and samples against the index",
        description="Read every parquet part and every shard of ROOT and compare them with the index: unreadable "
        "parts, parts outside any commit, missing or damaged shards (size, sha256, sample count), kept clips "
        "missing from their shard, orphan shards. Prints one line per problem; exit 1 if any, 0 if none.",
    )
    p.add_argument("root", help="corpus root (local folder or fsspec URL)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_check)
    return p


def cmd_check(args) -> int:
    r = check_corpus(args.root, progress=not args.no_progress)
    for kind, path, detail in r["problems"]:
        print(f"{kind:<15} {path}  {detail}")
    n = len(r["problems"])
    if r["quarantined"]:
        print(
            f"note: {r['quarantined']} file{'s' if r['quarantined'] != 1 else ''} in {args.root.rstrip('/')}/quarantine/, moved "
            "there by `defi curate --repair` (each run's why.json says why; move one back to restore it)",
            file=sys.stderr,
        )
    print(
        f"checked {r['parts']} parts, {r['clips']} clips, {r['shards']} shards: "
        + (f"{n} problem{'s' if n != 1 else ''}" if n else "no problems"),
        file=sys.stderr if n else sys.stdout,
    )
    return 1 if n else 0
