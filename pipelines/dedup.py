"""`defi dedup --root R`: near-duplicate groups over every kept clip of every curate run.

Steps, under the corpus writer lock:

1. Signatures (``curate.signature``): kept clips that have no signature under this signature
   config yet are cut into units of ``clips_per_unit`` (as `defi label` does); the runner
   (local process pool or Ray Data) reads each unit's clips from their shard and computes their
   keyframe vectors; each unit is committed as one part of
   ``labels/dedup-signatures-<signature config hash>/``. A clip whose signature cannot be computed
   (unreadable, missing from its shard, no texture) gets a row with ``error``. A later run
   computes signatures only for clips it has not seen (a new curate run's clips); changing a
   grouping threshold computes none.
2. Grouping: the signatures of every kept clip (and, with ``semantic_min_cosine``, the CLIP
   embeddings curate stored with ``--use_clip``) are searched with faiss and grouped
   (``curate.signature.group_clips``) from scratch each run: the search costs little beside the
   decoding, and a from-scratch grouping is what makes the result independent of the order runs
   happened in. The result goes to ``labels/dedup-<config hash>/part-all.parquet`` in one atomic
   write, then ``labels/dedup.json`` names it as the current one (read by the ``dedup`` view).

Nothing is deleted. The views: ``dedup`` (one row per kept clip: ``dup_group``, ``keeper``,
``neighbour``, ``distance``, ``match``, ``error``) and ``clips_dedup`` (kept clips minus
non-keepers); ``defi select --exclude-duplicates`` and ``--select "SELECT key FROM clips_dedup"``
use them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterator

import numpy as np

from defi.curate.signature import ClipInfo, SignatureConfig, SignatureError, group_clips, mp4_signature
from defi.schemas.corpus import DEDUP_POINTER, LABELS_DIR, Corpus
from defi.schemas.tables import DEDUP, DEDUP_SIGNATURES, table_from_rows

from .command import RUNNER_SHORTCUTS, CommandSpec, add_dry_run_flag, layered, print_run_record, run_command
from .config import add_flags, to_dict
from .label import UnitCommitter, stream_units
from .lock import WriterLock
from .ray_adapter import RayConfig
from .runner import RUNNER_HELP, WORKERS_HELP, Runner, Stage, pick_backend, runner_field_errors
from .runs import finish_record, new_run_id, start_record

KEPT_SQL = "SELECT DISTINCT key, shard, width, height, duration_s, clip_embedding FROM clips WHERE kept AND shard IS NOT NULL ORDER BY key"


class DedupError(ValueError):
    """Bad input to `defi dedup` (no kept clips, bad option): one line."""


@dataclass
class DedupConfig:
    min_similarity: float = field(
        default=0.88,
        metadata={"help": "keyframe cosine at which two keyframes match, and clip similarity at which two clips are near-duplicates"},
    )
    min_match_frac: float = field(
        default=0.5,
        metadata={"help": "fraction of the shorter clip's keyframes that must match (lower: more robust to trims, more false matches)"},
    )
    neighbours: int = field(default=32, metadata={"help": "nearest keyframes searched per keyframe (faiss k)"})
    semantic_min_cosine: float | None = field(
        default=0.97,
        metadata={"help": "CLIP-embedding cosine at which clips curated with --use_clip are near-duplicates too (none: off)"},
    )
    clips_per_unit: int = field(default=256, metadata={"help": "clips whose signatures are committed together in one parquet part"})
    signature: SignatureConfig = field(default_factory=SignatureConfig)
    runner: str = field(default="auto", metadata={"help": RUNNER_HELP})
    workers: int | None = field(default=None, metadata={"help": WORKERS_HELP})
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        errors = []
        if not -1.0 <= self.min_similarity <= 1.0:
            errors.append(f"min_similarity={self.min_similarity!r}: must be in [-1, 1]")
        if not 0.0 < self.min_match_frac <= 1.0:
            errors.append(f"min_match_frac={self.min_match_frac!r}: must be in (0, 1]")
        if int(self.neighbours) < 1:
            errors.append(f"neighbours={self.neighbours!r}: must be >= 1")
        if self.semantic_min_cosine is not None and not -1.0 <= self.semantic_min_cosine <= 1.0:
            errors.append(f"semantic_min_cosine={self.semantic_min_cosine!r}: must be in [-1, 1] or none")
        if int(self.clips_per_unit) < 1:
            errors.append(f"clips_per_unit={self.clips_per_unit!r}: must be >= 1")
        errors += runner_field_errors(self.runner, self.workers)
        if errors:
            raise ValueError("invalid DedupConfig:\n  " + "\n  ".join(errors))

    def signatures_name(self) -> str:
        return f"dedup-signatures-{self.signature.key()}"

    def result_name(self) -> str:
        """``dedup-<hash>`` of everything that shapes the groups (not the runner)."""
        shape = {
            "signature": self.signature.key(),
            "min_similarity": self.min_similarity,
            "min_match_frac": self.min_match_frac,
            "neighbours": self.neighbours,
            "semantic_min_cosine": self.semantic_min_cosine,
        }
        return "dedup-" + hashlib.sha1(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------
# the signature stage (a plain function; the runner maps it over (unit, shard) tasks)
# ----------------------------------------------------------------------------------------------
def _error_item(unit: str, key: str, run_id: str, reason: str, detail: str) -> dict[str, Any]:
    row = {"key": key, "error": reason, "error_detail": detail[:300], "run_id": run_id}
    return {"kind": "error", "unit": unit, "key": key, "reason": reason, "detail": detail[:300], "row": row}


def signature_task(task: dict[str, Any], cfg: SignatureConfig, run_id: str) -> Iterator[dict[str, Any]]:
    """Signatures of the clips ``task["keys"]`` of shard ``task["url"]``: one item per key."""
    from defi.schemas.shards import ShardReader

    want = set(task["keys"])
    reader = ShardReader(task["url"], keys=want)
    with tempfile.TemporaryDirectory(prefix="defi-dedup-") as tmp:
        for sample in reader:
            if sample.key not in want:
                continue
            want.discard(sample.key)
            path = os.path.join(tmp, "clip.mp4")
            with open(path, "wb") as f:
                f.write(sample.mp4)
            try:
                vecs, times = mp4_signature(path, cfg)
            except SignatureError as e:
                yield _error_item(task["unit"], sample.key, run_id, e.reason, e.detail)
                continue
            row = {"key": sample.key, "vectors": vecs.tolist(), "times_s": times.tolist(), "run_id": run_id}
            yield {"kind": "row", "unit": task["unit"], "key": sample.key, "row": row}
    problems = ", ".join(f"{k}={v}" for k, v in sorted(reader.stats.items()) if k.startswith("error:"))
    for key in sorted(want):
        yield _error_item(task["unit"], key, run_id, "missing_sample", f"not readable in {task['url']} ({problems or 'absent'})")


class SignatureCommitter(UnitCommitter):
    """Signature rows of ``labels/dedup-signatures-<hash>/``, with their own counters in the run."""

    schema = DEDUP_SIGNATURES
    ok_count, error_count, unit_count = "signatures", "signature_errors", "signature_units"


# ----------------------------------------------------------------------------------------------
# the driver
# ----------------------------------------------------------------------------------------------
def run_dedup(root: str, cfg: DedupConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """Signatures for the kept clips that lack them, then near-duplicate groups of every kept
    clip; returns the run record (also saved under ``runs/``). Raises ``DedupError`` when the
    corpus has no kept clip (nothing is written), ``LockHeld`` while another run writes the root."""
    cfg = cfg or DedupConfig()
    t_start = time.time()
    corpus = Corpus.open(root)
    run_id = new_run_id()
    with WriterLock(corpus, "dedup", run_id):
        kept = corpus.query(KEPT_SQL)
        if kept.num_rows == 0:
            raise DedupError(f"corpus {root} has no kept clip with a shard; curate videos into it first")
        return _dedup_locked(corpus, root, kept, run_id, cfg, progress, t_start)


def _dedup_locked(corpus: Corpus, root: str, kept, run_id: str, cfg: DedupConfig, progress: bool, t_start: float) -> dict[str, Any]:
    import pyarrow as pa

    from .label import plan_units

    sig_name, result_name = cfg.signatures_name(), cfg.result_name()
    sig_table = f"{LABELS_DIR}/{sig_name}"
    have = set(corpus.read_table(sig_table).column("key").to_pylist())
    keys = kept.column("key").to_pylist()
    pending = kept.filter(pa.array([k not in have for k in keys], type=pa.bool_()))
    counts: Counter = Counter(kept=len(keys), signatures_cached=len(keys) - pending.num_rows, signatures_pending=pending.num_rows)
    counts.update(signatures=0, signature_errors=0)
    tasks, units = plan_units(pending.select(["key", "shard"]), sig_name, cfg.clips_per_unit, corpus.shard_url)
    stages = [Stage("signature", signature_task, (cfg.signature, run_id), cpus=1)]
    backend, why = pick_backend(cfg.runner, cfg.ray, len(tasks), stages)
    record = start_record(
        corpus, run_id, "dedup", t_start, root=root, config=to_dict(cfg), result=result_name, signatures=sig_name,
        runner={"backend": backend, "why": why},
    )  # fmt: skip
    committer = SignatureCommitter(corpus, sig_name, units, counts)
    status, t_sig, t_group = "failed", 0.0, 0.0
    try:
        t_sig, _ = stream_units(
            record, Runner(backend, cfg.ray, cfg.workers, why), tasks, stages, committer, counts, pending.num_rows, progress
        )
        if units:
            raise RuntimeError(f"{len(units)} signature units never completed (a reader lost clips); re-run to finish them")
        t0 = time.time()
        table = group_table(corpus, kept, sig_table, cfg, run_id, counts)
        corpus.write_part(f"{LABELS_DIR}/{result_name}", table, part="all")
        corpus.write_json(DEDUP_POINTER, {"current": result_name, "run_id": run_id, "config": to_dict(cfg)})
        t_group = time.time() - t0
        status = "done"
    finally:
        finish_record(
            corpus,
            record,
            status,
            t_start,
            signature_s=t_sig,
            group_s=t_group,
            counts=dict(counts),
            errors=dict(committer.errors),
            error_examples=committer.examples,
        )
    return record


def group_table(corpus: Corpus, kept, sig_table: str, cfg: DedupConfig, run_id: str, counts: Counter):
    """The dedup table of the kept clips ``kept`` (KEPT_SQL's columns) from their signatures."""
    sigs = corpus.read_table(sig_table)
    by_key: dict[str, tuple[Any, Any]] = {}
    for k, v, e in zip(sigs.column("key").to_pylist(), sigs.column("vectors").to_pylist(), sigs.column("error").to_pylist(), strict=True):
        by_key[k] = (np.asarray(v, np.float32) if v else None, e)
    clips, errors = [], {}
    for r in kept.to_pylist():
        vec, err = by_key.get(r["key"], (None, "missing_signature"))
        if err:
            errors[r["key"]] = err
        clips.append(ClipInfo(r["key"], vec, r["clip_embedding"], r["width"], r["height"], r["duration_s"]))
    g = group_clips(clips, cfg.min_similarity, cfg.min_match_frac, cfg.neighbours, cfg.semantic_min_cosine)
    rows = [
        {
            "key": k,
            "dup_group": g.dup_group[i],
            "keeper": g.keeper[i],
            "group_size": g.group_size[i],
            "neighbour": g.neighbour[i],
            "distance": g.distance[i],
            "match": g.match[i],
            "error": errors.get(k),
            "run_id": run_id,
        }
        for i, k in enumerate(g.keys)
    ]
    counts.update(
        clips_without_signature=len(errors),
        groups=len(set(g.dup_group)),
        duplicate_groups=len({d for d, s in zip(g.dup_group, g.group_size, strict=True) if s > 1}),
        non_keepers=sum(not x for x in g.keeper),
        candidate_pairs=g.candidates,
        matched_pairs=g.pairs,
    )
    return table_from_rows(rows, DEDUP, "dedup")


def summary_text(rec: dict[str, Any]) -> str:
    c = rec.get("counts", {})
    lines = [
        f"run {rec['run_id']}: {rec['status']} in {rec['wall_s']:.1f} s "
        f"(signatures {rec.get('signature_s', 0):.1f} s, grouping {rec.get('group_s', 0):.1f} s)",
        f"  clips       {c.get('kept', 0)} kept; signatures: {c.get('signatures_cached', 0)} cached, "
        f"{c.get('signatures', 0)} computed, {c.get('signature_errors', 0)} failed",
    ]
    for k, v in sorted(rec.get("errors", {}).items(), key=lambda kv: -kv[1]):
        lines.append(f"    error     {k:<20} {v}")
    lines.append(
        f"  groups      {c.get('groups', 0)} ({c.get('duplicate_groups', 0)} with duplicates); "
        f"{c.get('non_keepers', 0)} clips are near-duplicates of a keeper"
    )
    lines.append(f"  written     labels/{rec['result']}/ (views: dedup, clips_dedup); signatures in labels/{rec['signatures']}/")
    if rec.get("runner"):
        lines.append(f"  runner      {rec['runner']['backend']} ({rec['runner']['why']})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def add_dedup_parser(subparsers) -> argparse.ArgumentParser:
    """``defi dedup --root R ...``"""
    p = subparsers.add_parser(
        "dedup",
        help="find near-duplicate clips across every curate run of a corpus",
        description="Group the kept clips of a corpus into near-duplicates (re-encodes, resizes, crops, trims, "
        "frame-rate changes, letterboxing, overlaid text; with --use_clip embeddings, semantic duplicates too) "
        "and choose one keeper per group (most pixels, then longest, then smallest key). Writes "
        "labels/dedup-<config hash>/ (views dedup and clips_dedup); deletes nothing. Keyframe signatures are "
        "cached, so re-runs compute them only for new clips.",
    )
    p.add_argument("--root", help="corpus root (local folder or fsspec URL); required unless --dry-run")
    p.add_argument("--config", help="YAML/TOML/JSON file with DedupConfig fields (flags override it)")
    add_dry_run_flag(p)
    p.add_argument("--local", action="store_true", help="same as --runner local: a process pool on this machine, without Ray")
    p.add_argument("--address", help="same as --ray.address: join this Ray cluster")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_flags(p, DedupConfig, "dedup config (DedupConfig: defaults <- --config file <- these flags <- shortcuts)")
    p.set_defaults(func=cmd_dedup)
    return p


def _dedup_summary(args, rec: dict[str, Any]) -> None:
    print(summary_text(rec))
    print_run_record(args, rec)


DEDUP_SPEC = CommandSpec(
    name="dedup",
    build=layered(DedupConfig),
    shortcuts=RUNNER_SHORTCUTS,
    requires=("root",),
    run=lambda args, cfg: run_dedup(args.root, cfg, progress=not args.no_progress),
    summary=_dedup_summary,
    errors=("defi.pipelines.dedup.DedupError", "ValueError", "defi.schemas.corpus.CorpusError"),
)


def cmd_dedup(args) -> int:
    return run_command(DEDUP_SPEC, args)


def main(argv: list[str] | None = None) -> int:
    """``defi dedup`` on its own (argv starts with ``dedup``)."""
    from .cli import run_standalone

    return run_standalone([add_dedup_parser], argv)
