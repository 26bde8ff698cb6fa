"""`defi curate`: sources -> probe/decode/shots/windows/scores/encode (one task per video) ->
CLIP (an actor stage, optional) -> per-video dedup + shard packing + atomic commit (driver). The
stages (``curate_video.curate_stages``) run on the runner (``runner.py``): a local process pool or
Ray Data, by ``--runner``.

Units of work: the pending videos, in sorted order, are grouped ``shards.videos_per_unit`` at a
time. A unit commits in this order: a ``pending/<unit>.json`` marker, shard tars (each atomic),
its ``clips`` and ``shards`` parts, then its ``sources`` part, which is the commit marker. At
start (``clean_uncommitted``), parts of a unit that a pending marker names and shard tars no row
names are leftovers of a killed run and are removed; parts no commit explains are refused, or
with ``--repair`` moved to ``quarantine/`` (never deleted); videos with a committed ``sources``
row are skipped. Clip keys are deterministic and dedup looks
within one video only, so a killed and resumed run keeps exactly the clips an uninterrupted one
would.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from defi.schemas.corpus import SHARDS_DIR, Corpus, CorpusError
from defi.schemas.records import clips_table, sources_table
from defi.schemas.tables import SHARDS, table_from_rows

from .config import to_dict
from .curate_video import ClipItem, VideoDone, curate_stages, dedup_video
from .curate_config import CurateConfig
from .lock import WriterLock
from .runner import Runner, pick_backend
from .runs import finish_record, new_run_id, start_record
from defi.schemas.shards import Sample, remove_orphans, write_shard
from .sources import SourceSpec, list_sources


@dataclass
class RunStats:
    counts: Counter = field(default_factory=Counter)
    source_errors: Counter = field(default_factory=Counter)
    reject_reasons: Counter = field(default_factory=Counter)
    timings: Counter = field(default_factory=Counter)
    nodes: Counter = field(default_factory=Counter)
    hours_in: float = 0.0
    hours_out: float = 0.0
    first_started_at: float | None = None  # the processing window: first video begun, last video done
    last_finished_at: float | None = None
    frames_in: int = 0


def unit_id(specs: list[SourceSpec]) -> str:
    h = hashlib.sha1(json.dumps([list(map(str, s.sort_key)) for s in specs]).encode()).hexdigest()
    return f"u{h[:16]}"


def largest_first(units: dict[str, list[SourceSpec]]) -> list[SourceSpec]:
    """The order videos are handed to the runner: unit by unit (units commit in order), and in a
    unit the largest local files first, so the workers do not end a unit waiting on one long
    video begun last. Sizes are a hint only: URLs and robot episodes keep their listed order."""

    def size(s: SourceSpec) -> int:
        if s.robot or "://" in s.uri:
            return 0
        try:
            return os.path.getsize(s.uri)
        except OSError:
            return 0

    return [s for specs in units.values() for s in sorted(specs, key=size, reverse=True)]


def done_specs(corpus: Corpus) -> set[tuple]:
    """Sort keys of sources already committed (uri, episode, camera)."""
    t = corpus.read_table("sources")
    out = set()
    for uri, meta in zip(t.column("uri").to_pylist(), t.column("meta_json").to_pylist(), strict=True):
        robot = (json.loads(meta).get("robot") if meta else None) or {}
        out.add((uri, robot.get("episode_index", -1), robot.get("camera", "")))
    return out


PENDING_DIR = "pending"  # ROOT/pending/<unit>.json: a unit whose commit has begun and not ended
QUARANTINE_DIR = "quarantine"  # ROOT/quarantine/<run_id>/...: what `--repair` moved out of the live tables


def _unit(path: str) -> str:
    """The unit a part belongs to: ``.../part-<unit>.parquet`` -> ``<unit>``."""
    return os.path.basename(path)[len("part-") : -len(".parquet")]


def clean_uncommitted(corpus: Corpus, repair: bool = False, run_id: str = "repair") -> dict[str, Any]:
    """Before a run (under the writer lock), make the live tables consistent. Returns what was done
    (``parts``, ``shards``: leftovers removed; ``quarantined``: ``[{"path", "to", "why"}]``).

    Removed (explained): what a killed run left of the units it was committing
    (``pending/<unit>.json`` names them: their clips/shards parts), and shard tars and temp files
    that no row of any table names.

    Refused without ``repair`` (``CorpusError`` naming the file; see `defi check`): a committed
    part that cannot be read; a clips or shards part with no ``sources`` part of its unit and no
    pending marker (the unit's commit marker was deleted or renamed); a shard tar that committed
    clips rows name but no ``shards`` row does (a shards part was deleted); clips of a source no
    ``sources`` row names (a sources part replaced); error-free sources with no clip row (a clips
    part deleted: every source that decodes has at least one, see ``process_source``).

    With ``repair`` (``defi curate --repair``) nothing is deleted that no commit explains: each
    such file is *moved* to ``ROOT/quarantine/<run_id>/<its path in the root>`` (out of every
    table: no query, training run or check reads it), with ``ROOT/quarantine/<run_id>/why.json``
    saying why, and listed in the return value (the CLI prints each). Whole units go together, so
    the videos behind them are no longer "done" and the same run re-curates them (clip keys are
    deterministic: the rebuilt clips have the same keys). Quarantined: unreadable committed parts,
    with the rest of their unit when it is the sources part; clips/shards parts with no sources
    part; every part of a unit whose clips name a tar no shards row names, and that tar; every part
    of a unit with clips of no source, or with error-free sources that have no live clip row left
    (also when their clips went to quarantine above: a renamed sources part); last, the tars only
    quarantined rows name. Restoring is moving the files back (then `defi check`)."""
    committed = {_unit(p) for p in corpus.parts("sources")}
    pending_dir = corpus.path(PENDING_DIR)
    markers = corpus.fs.glob(f"{pending_dir}/*.json") if corpus.fs.exists(pending_dir) else []
    pending = {os.path.basename(m)[: -len(".json")] for m in markers}
    removed, damaged = [], []
    for table in ("clips", "shards"):
        for p in corpus.parts(table):
            u = _unit(p)
            if u in committed:
                continue
            (removed if u in pending else damaged).append(p)
    if damaged and not repair:
        raise CorpusError(
            f"{damaged[0]} has no matching sources part (the unit's commit marker) and no run was committing it: "
            f"the corpus was changed outside defi ({len(damaged)} such part{'s' if len(damaged) > 1 else ''}); "
            f"see `defi check {corpus.root}`; `defi curate --repair` moves them to {corpus.path(QUARANTINE_DIR)}/"
        )
    for p in removed:
        corpus.fs.rm(p)
    quarantine: dict[str, str] = {}  # path -> why
    if repair:
        quarantine = _to_quarantine(corpus, damaged)
    else:
        try:
            corpus.refuse_unreadable(("sources", "clips", "shards"))  # read below, and by the commits
        except CorpusError as e:
            raise CorpusError(f"{e}; `defi curate --repair` moves it and its unit to {corpus.path(QUARANTINE_DIR)}/") from None
    lost = _lost_shards(corpus, set(quarantine))
    if lost and not repair:
        raise CorpusError(
            f"shard {corpus.path(SHARDS_DIR, lost[0])} holds committed clips but no shards row names it (a shards part "
            f"was deleted?); see `defi check {corpus.root}`; `defi curate --repair` moves it and its units to "
            f"{corpus.path(QUARANTINE_DIR)}/ and re-curates their videos"
        )
    if not repair:
        stray = _clips_without_sources(corpus, set())
        if stray:
            raise CorpusError(
                f"{stray[0]} holds clips of a source no sources row names (a sources part was replaced?); see "
                f"`defi check {corpus.root}`; `defi curate --repair` moves the unit to {corpus.path(QUARANTINE_DIR)}/ "
                "and curates its videos again"
            )
        without = _sources_without_clips(corpus, set())
        if without:
            raise CorpusError(
                f"{without[0][0]} holds {without[0][1]} committed source(s) with no clips in any committed clips part "
                f"(a clips part was deleted or renamed); see `defi check {corpus.root}`; `defi curate --repair` moves "
                f"the unit to {corpus.path(QUARANTINE_DIR)}/ and curates its videos again"
            )
    moved = _move_to_quarantine(corpus, quarantine, run_id)
    gone = remove_orphans(corpus)
    for m in markers:
        corpus.fs.rm(m)
    out: dict[str, Any] = {"parts": len(removed), "shards": len(gone)}
    if moved:
        out["quarantined"] = moved
    return out


def _live(corpus: Corpus, table: str, columns: list[str], skip: set[str]) -> list[tuple[str, dict]]:
    """(part, row) of every readable ``table`` part not in ``skip``."""
    import pyarrow.parquet as pq

    out = []
    for p in corpus.parts(table):
        if p in skip:
            continue
        for row in pq.read_table(p, filesystem=corpus.fs, columns=columns).to_pylist():
            out.append((p, row))
    return out


def _lost_shards(corpus: Corpus, skip: set[str]) -> list[str]:
    """Shard tars that clips rows of live parts name but no live shards row does."""
    named = {r["shard"] for _, r in _live(corpus, "shards", ["shard"], skip)}
    return sorted({r["shard"] for _, r in _live(corpus, "clips", ["shard"], skip) if r["shard"]} - named)


def _sources_without_clips(corpus: Corpus, skip: set[str]) -> list[tuple[str, int]]:
    """(sources part, count) of live sources parts whose error-free sources have no live clip
    row: every source that decodes yields at least one clip row (kept or rejected), so those
    clips were lost."""
    have = {r["source_id"] for _, r in _live(corpus, "clips", ["source_id"], skip)}
    missing: Counter = Counter()
    for p, r in _live(corpus, "sources", ["source_id", "error"], skip):
        if r["error"] is None and r["source_id"] not in have:
            missing[p] += 1
    return sorted(missing.items())


def _clips_without_sources(corpus: Corpus, skip: set[str]) -> list[str]:
    """Live clips parts with a row whose source no live sources row names."""
    known = {r["source_id"] for _, r in _live(corpus, "sources", ["source_id"], skip)}
    return sorted({p for p, r in _live(corpus, "clips", ["source_id"], skip) if r["source_id"] not in known})


def _quarantine_unit(corpus: Corpus, q: dict[str, str], unit: str, why: str) -> None:
    """Add every part of ``unit`` (sources, clips, shards) to ``q``, each with ``why``."""
    for table in ("sources", "clips", "shards"):
        for part in corpus.parts(table):
            if _unit(part) == unit:
                q.setdefault(part, why)


def _to_quarantine(corpus: Corpus, damaged: list[str]) -> dict[str, str]:
    """Every file ``--repair`` moves out of the live tables, with why (see ``clean_uncommitted``)."""
    from defi.schemas.corpus import part_problem
    from defi.schemas.tables import TABLES

    q: dict[str, str] = {}
    for table in ("sources", "clips", "shards"):
        for p in corpus.parts(table):
            why = part_problem(corpus.fs, p, TABLES[table])
            if why:
                q[p] = f"unreadable ({why})"
    for p in [p for p in q if _in(corpus, "sources", p)]:
        _quarantine_unit(corpus, q, _unit(p), f"its unit's sources part {os.path.basename(p)} is unreadable")
    for p in damaged:
        q.setdefault(p, "no sources part commits its unit (the commit marker was deleted or renamed)")
    # a tar no shards row names while its clips rows are live: its whole unit goes, to be re-curated
    for name in _lost_shards(corpus, set(q)):
        q[corpus.path(SHARDS_DIR, name)] = "committed clips name it but no shards row does (a shards part was deleted)"
        for p, r in _live(corpus, "clips", ["shard"], set(q)):
            if r["shard"] == name:
                _quarantine_unit(corpus, q, _unit(p), f"its unit's clips are in {name}, which no shards row names")
    # clips of no live source (a sources part replaced by another): the whole unit goes
    for p in _clips_without_sources(corpus, set(q)):
        _quarantine_unit(corpus, q, _unit(p), f"clips in {os.path.basename(p)} belong to no source a sources row names")
    # sources whose clips went (a deleted clips part, or one quarantined above): the whole unit
    # goes, so the videos are curated again
    for p, n in _sources_without_clips(corpus, set(q)):
        _quarantine_unit(corpus, q, _unit(p), f"{n} source(s) of {os.path.basename(p)} have no clips left (a deleted or renamed part)")
    # the tars that only quarantined rows name
    live_names = {r["shard"] for _, r in _live(corpus, "shards", ["shard"], set(q))}
    live_names |= {r["shard"] for _, r in _live(corpus, "clips", ["shard"], set(q)) if r["shard"]}
    for p in list(q):
        if (_in(corpus, "clips", p) or _in(corpus, "shards", p)) and p.endswith(".parquet"):
            for r in _rows_or_none(corpus, p, ["shard"]):
                name = r["shard"]
                if name and name not in live_names and corpus.fs.exists(corpus.path(SHARDS_DIR, name)):
                    q.setdefault(corpus.path(SHARDS_DIR, name), f"only quarantined rows name it ({os.path.basename(p)})")
    return q


def _in(corpus: Corpus, table: str, path: str) -> bool:
    return path.startswith(corpus.path(table) + "/")


def _rows_or_none(corpus: Corpus, path: str, columns: list[str]) -> list[dict]:
    """The rows of a part, or none when it cannot be read (an unreadable part names nothing)."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, filesystem=corpus.fs, columns=columns).to_pylist()
    except Exception:  # noqa: BLE001 - a damaged part: it is quarantined whole, its rows unknown
        return []


def _move_to_quarantine(corpus: Corpus, q: dict[str, str], run_id: str) -> list[dict[str, str]]:
    if not q:
        return []
    base = corpus.path(QUARANTINE_DIR, run_id)
    moved = []
    for p in sorted(q):
        rel = p[len(corpus.path_root) + 1 :]
        to = f"{base}/{rel}"
        corpus.fs.makedirs(to.rsplit("/", 1)[0], exist_ok=True)
        corpus.fs.mv(p, to)
        moved.append({"path": p, "to": to, "why": q[p]})
    corpus.write_json(f"{QUARANTINE_DIR}/{run_id}/why.json", moved)
    return moved


def _next_shard_index(corpus: Corpus) -> int:
    names = corpus.read_table("shards").column("shard").to_pylist()
    nums = [int(n[len("shard-") : -len(".tar")]) for n in names if n.startswith("shard-") and n.endswith(".tar")]
    return max(nums, default=-1) + 1


class Committer:
    """Buffers each unit's videos as they arrive and commits a unit once all its videos are in."""

    def __init__(self, corpus: Corpus, cfg: CurateConfig, units: dict[str, list[tuple]], run_id: str, stats: RunStats):
        self.corpus, self.cfg, self.run_id, self.stats = corpus, cfg, run_id, stats
        self.expect = {u: set(keys) for u, keys in units.items()}
        self.unit_of = {k: u for u, keys in units.items() for k in keys}
        self.clips: dict[tuple, list[ClipItem]] = defaultdict(list)
        self.done: dict[str, list[VideoDone]] = defaultdict(list)
        self.next_shard = _next_shard_index(corpus)
        self.seen_sources: set[str] = set(corpus.read_table("sources").column("source_id").to_pylist())

    def add_clip(self, spec_key: tuple, item: ClipItem) -> None:
        self.clips[spec_key].append(item)

    def add_done(self, d: VideoDone) -> bool:
        """Returns True when this completed (and committed) a unit."""
        u = self.unit_of[d.spec_key]
        self.done[u].append(d)
        if len(self.done[u]) == len(self.expect[u]):
            self.commit(u)
            return True
        return False

    def commit(self, unit: str) -> None:
        cfg, st = self.cfg, self.stats
        # the marker first: what a kill leaves of this unit is known to be uncommitted
        self.corpus.write_json(f"{PENDING_DIR}/{unit}.json", {"unit": unit, "run_id": self.run_id})
        sources, items = [], []
        for d in sorted(self.done.pop(unit), key=lambda d: d.spec_key):
            vid_items = sorted(self.clips.pop(d.spec_key, []), key=lambda it: it.record.key)
            src = d.source
            if src.error is None and src.source_id in self.seen_sources:
                # the same content under another name: one copy in the corpus
                src.error, src.error_detail, vid_items = "duplicate_source", "same content hash as a committed source", []
            self.seen_sources.add(src.source_id)
            if cfg.use_dedup:
                dedup_video(vid_items, cfg.dedup)
            sources.append(src)
            items += vid_items
            st.counts["videos"] += 1
            if src.error:
                st.source_errors[src.error] += 1
            else:
                st.hours_in += (src.duration_s or 0) / 3600
            for k, v in d.timings.items():
                st.timings[k] += v
            if d.started_at:
                st.first_started_at = min(st.first_started_at or d.started_at, d.started_at)
                st.last_finished_at = max(st.last_finished_at or d.finished_at, d.finished_at)
            st.frames_in += int(src.num_frames or 0) if src.error is None else 0
            if d.node:
                st.nodes[d.node] += 1
        # pack kept samples into shards of about target size, in key order
        target = cfg.shards.target_mb * 1e6
        shard_rows, batch, size = [], [], 0
        kept = [it for it in items if it.record.kept and it.members]

        def flush() -> None:
            nonlocal batch, size
            if not batch:
                return
            name = f"shard-{self.next_shard:06d}.tar"
            self.next_shard += 1
            info = write_shard(self.corpus, name, [Sample(it.record.key, it.members) for it in batch])
            for it in batch:
                it.record.shard = name
            shard_rows.append(
                {
                    "shard": name,
                    "num_samples": info.num_samples,
                    "size_bytes": info.size_bytes,
                    "sha256": info.sha256,
                    "run_id": self.run_id,
                    "created_at": dt.datetime.now(dt.timezone.utc),
                }
            )
            batch, size = [], 0

        for it in kept:
            s = sum(len(v) for v in it.members.values())
            if batch and size + s > target:
                flush()
            batch.append(it)
            size += s
        flush()
        for it in items:
            r = it.record
            st.counts["clips"] += 1
            if r.kept:
                st.counts["kept"] += 1
                st.hours_out += r.duration_s / 3600
            else:
                st.reject_reasons[r.reject_reason] += 1
        st.counts["shards"] += len(shard_rows)
        # commit: clips and shards rows, then the sources part (the marker)
        if items:
            self.corpus.write_part("clips", clips_table([it.record for it in items]), part=unit)
        if shard_rows:
            self.corpus.write_part("shards", table_from_rows(shard_rows, SHARDS, "shards"), part=unit)
        self.corpus.write_part("sources", sources_table(sources), part=unit)
        self.corpus.fs.rm(self.corpus.path(PENDING_DIR, f"{unit}.json"))
        st.counts["units"] += 1


def run_curate(
    inputs: list[str],
    root: str,
    cfg: CurateConfig,
    progress: bool = True,
    limit: int | None = None,
    on_video: Callable[[VideoDone], None] | None = None,
    repair: bool = False,
) -> dict[str, Any]:
    """Curate ``inputs`` into the corpus at ``root``; returns the run record (also saved).
    ``on_video``: called in the driver with each video's ``VideoDone`` as it arrives (its source
    row, clip count, per-stage timings, node, and the worker's begin/finish wall-clock times).
    Holds the root's writer lock (a second writer is refused, ``LockHeld``); ``repair``: move
    what a damaged corpus holds outside any commit to ``ROOT/quarantine/<run_id>/`` and curate
    the videos whose clips went there again (see ``clean_uncommitted``)."""
    t_start = time.time()
    specs = list_sources(inputs, kind=cfg.kind, dataset=cfg.dataset)  # a bad input is refused before anything is created
    corpus = Corpus.create(root)
    run_id = new_run_id()
    with _sigterm_interrupts(), WriterLock(corpus, "curate", run_id) as lock:
        return _run_locked(corpus, specs, inputs, root, cfg, run_id, t_start, lock, progress, limit, on_video, repair)


class Terminated(KeyboardInterrupt):
    """SIGTERM reached a running curate: raised in the driver like Ctrl-C, so the run stops the
    same way (workers stopped, the run record says ``interrupted``, the lock released; committed
    units stay and a rerun resumes after them; a unit caught mid-commit is cleaned by its marker)."""


@contextlib.contextmanager
def _sigterm_interrupts():
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; an embedding program keeps its own
        return

    def handler(signum, _frame):
        raise Terminated(f"signal {signum}")

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _run_locked(
    corpus: Corpus,
    specs: list[SourceSpec],
    inputs: list[str],
    root: str,
    cfg: CurateConfig,
    run_id: str,
    t_start: float,
    lock: WriterLock,
    progress: bool,
    limit: int | None,
    on_video: Callable[[VideoDone], None] | None,
    repair: bool,
) -> dict[str, Any]:
    cleaned = clean_uncommitted(corpus, repair=repair, run_id=run_id)
    if lock.took_over:
        cleaned["took_over_lock_of"] = lock.took_over
    done = done_specs(corpus)
    pending = [s for s in specs if s.sort_key not in done]
    if limit is not None:
        pending = pending[:limit]
    stats = RunStats()
    stats.counts["listed"] = len(specs)
    stats.counts["skipped_done"] = len(specs) - len([s for s in specs if s.sort_key not in done])
    stages = curate_stages(cfg, run_id)
    backend, why = pick_backend(cfg.runner, cfg.ray, len(pending), stages)
    record = start_record(
        corpus,
        run_id,
        "curate",
        t_start,
        inputs=inputs,
        root=root,
        config=to_dict(cfg),
        cleaned=cleaned,
        runner={"backend": backend, "why": why},
    )
    n = cfg.shards.videos_per_unit
    groups = {}
    for i in range(0, len(pending), n):
        group = pending[i : i + n]
        groups[unit_id(group)] = group
    units = {u: [s.sort_key for s in group] for u, group in groups.items()}
    committer = Committer(corpus, cfg, units, run_id, stats)
    status = "failed"
    try:
        if pending:
            bar = _bar(len(pending), progress)
            with Runner(backend, cfg.ray, cfg.workers, why) as runner:
                record["runner"] = runner.info
                if runner.ray_info is not None:
                    record["ray"] = runner.ray_info
                    stats.timings["ray_start"] += runner.start_s
                slots = runner.ray_info["cpus"] if runner.ray_info is not None else runner.workers
                stages = curate_stages(cfg, run_id, videos=len(pending), slots=slots)
                warm = None
                for item in runner.stream(largest_first(groups), stages):
                    warm = warm or warm_arrow()  # the first output: the workers are running
                    if isinstance(item, VideoDone):
                        committer.add_done(item)
                        if on_video is not None:
                            on_video(item)
                        bar.update(1)
                        bar.set_postfix(clips=stats.counts["clips"], kept=stats.counts["kept"], hours=f"{stats.hours_in:.2f}")
                    else:
                        spec_key, clip = item
                        committer.add_clip(spec_key, clip)
            bar.close()
        status = "done"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        finish_record(
            corpus,
            record,
            status,
            t_start,
            counts=dict(stats.counts),
            source_errors=dict(stats.source_errors),
            reject_reasons=dict(stats.reject_reasons),
            timings_s={k: round(v, 3) for k, v in stats.timings.items()},
            nodes=dict(stats.nodes),
            hours_in=stats.hours_in,
            hours_out=stats.hours_out,
            frames_in=stats.frames_in,
            processing_window_s=(round(stats.last_finished_at - stats.first_started_at, 3) if stats.first_started_at else None),
        )
    return record


def warm_arrow() -> threading.Thread:
    """Build a small Arrow table in a background thread: pyarrow imports pandas the first time it
    builds a table from Python objects (~1.5 s of CPU), which would otherwise fall on the driver's
    first commit, often the last thing a short run does. Started once the workers run (never
    before the local runner forks them: a fork during an import could inherit its locks)."""
    import pyarrow as pa

    t = threading.Thread(target=pa.table, args=({"warm": [0]},), daemon=True, name="defi-warm-arrow")
    t.start()
    return t


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="video", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def summary_text(rec: dict[str, Any]) -> str:
    c = rec["counts"]
    lines = [
        f"run {rec['run_id']}: {rec['status']} in {rec['wall_s']:.1f} s",
        f"  videos   {c.get('listed', 0)} listed, {c.get('skipped_done', 0)} already done, {c.get('videos', 0)} processed, "
        f"{sum(rec['source_errors'].values())} unreadable",
    ]
    for k, v in sorted(rec["source_errors"].items(), key=lambda kv: -kv[1]):
        lines.append(f"    error   {k:<24} {v}")
    lines.append(f"  clips    {c.get('clips', 0)} candidates, {c.get('kept', 0)} kept, {c.get('clips', 0) - c.get('kept', 0)} rejected")
    for k, v in sorted(rec["reject_reasons"].items(), key=lambda kv: -kv[1]):
        lines.append(f"    reject  {k:<24} {v}")
    lines.append(f"  hours    {rec['hours_in']:.4f} in, {rec['hours_out']:.4f} kept")
    lines.append(f"  shards   {c.get('shards', 0)} written in {c.get('units', 0)} commits")
    if rec.get("timings_s"):
        lines.append("  time     " + ", ".join(f"{k} {v:.1f}s" for k, v in sorted(rec["timings_s"].items())))
    if rec.get("processing_window_s") and rec.get("frames_in"):
        w = rec["processing_window_s"]
        lines.append(
            f"  rate     {rec['frames_in']} input frames in {w:.1f} s from the first video begun to the last "
            f"done: {rec['frames_in'] / max(w, 1e-9):.0f} frames/s"
        )
    for m in (rec.get("cleaned") or {}).get("quarantined", []):
        lines.append(f"  repair   moved {m['path']} to {m['to']}: {m['why']}")
    if rec.get("runner"):
        lines.append(f"  runner   {rec['runner']['backend']} ({rec['runner']['why']})")
    if rec.get("nodes"):
        lines.append(f"  nodes    {len(rec['nodes'])}: " + ", ".join(f"{k[:12]}={v}" for k, v in rec["nodes"].items()))
    return "\n".join(lines)
