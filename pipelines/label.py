"""`defi label latent-actions` (GIDM pseudo-labels for every selected clip) and `defi select`
(a selection manifest balanced by a label, e.g. the dominant latent-action code).

Labeling
    The selected kept clips (SQL or a manifest; default: every kept clip with a shard), minus the
    clips this labeler has already labeled, sorted by (shard, key), are cut into units of
    ``clips_per_unit`` clips. The runner (``runner.py``: a local process pool or Ray Data, by
    ``--runner``) reads and decodes the clips of each (unit, shard) in CPU tasks (frames resized
    to the model's input size), an actor stage labels them ``clips_per_batch`` clips at a time
    (one model per actor, a GPU each when there are GPUs; locally one model, in the driver), and
    the driver's ``LabelCommitter`` writes ``labels/<labeler>/part-<unit>.parquet`` atomically
    once every clip of a unit is in. A killed run loses at most its unfinished units; a re-run skips every
    labeled key (the labeler's table is read first), so nothing is labeled or written twice.

Failures are rows: a clip that cannot be decoded, is missing from its shard, or fails in the
model gets a row with only ``key``, ``labeler`` and ``run_id`` (``num_steps`` and every statistic
null), and is counted by reason in the run record (``errors``, with a few ``error_examples``).
Find them with ``SELECT key FROM latent_actions WHERE num_steps IS NULL``. A re-run retries them
(a shard restored since, a transient model failure): each is labeled again within the unit whose
part holds its failed row, and that part is rewritten (same name: atomic, no duplicate rows) only
when a retried clip got its label. A clip too short for one window (frames <= gap) is not a
failure: its row has ``num_steps = 0``. `defi label` exits 1 when clips were pending and none got
a label.

Run records go to ``runs/<run_id>.json`` like curate's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterable, Iterator

import numpy as np

from defi.schemas.corpus import Corpus, label_view_name
from defi.schemas.gap import Gap
from defi.schemas.tables import LATENT_ACTIONS, table_from_rows

from .command import RUNNER_SHORTCUTS, VALUE, CommandSpec, add_dry_run_flag, layered, print_run_record, run_command
from .config import add_flags, to_dict
from .lock import WriterLock
from .ray_adapter import RayConfig
from .runner import RUNNER_HELP, WORKERS_HELP, Runner, Stage, pick_backend, runner_field_errors
from .runs import finish_record, new_run_id, start_record
from .usage import int_at_least

DEFAULT_SELECT = "SELECT key FROM clips WHERE kept AND shard IS NOT NULL"
_EXAMPLES = 20  # error examples kept in a run record

# ----------------------------------------------------------------------------------------------
# Queries researchers run ({labels}: a labeler's view, e.g. labels_gidm_0123abcd4567, or the
# union view latent_actions filtered by labeler). Each is exercised by tests/pipelines/test_label.py.
# ----------------------------------------------------------------------------------------------
QUERIES: dict[str, str] = {
    # clips with the largest latent actions (mean per-step latent norm), with their motion
    "by_magnitude": (
        "SELECT l.key, l.norm_mean, l.norm_p90, c.motion_mean, c.duration_s, c.uri\n"
        "FROM {labels} l JOIN clips c USING (key)\n"
        "WHERE c.kept AND l.num_steps > 0\n"
        "ORDER BY l.norm_mean DESC LIMIT 20"
    ),
    # how the clips spread over dominant codes (VQ/FSQ labelers)
    "by_dominant_code": (
        "SELECT l.dominant_code, count(*) AS clips, avg(l.norm_mean) AS norm_mean, avg(c.motion_mean) AS motion_mean\n"
        "FROM {labels} l JOIN clips c USING (key)\n"
        "WHERE c.kept AND l.dominant_code IS NOT NULL\n"
        "GROUP BY 1 ORDER BY clips DESC"
    ),
    # clips whose latent actions vary most (many codes used) and still move
    "by_code_entropy": (
        "SELECT l.key, l.code_entropy, l.dominant_code, c.motion_mean\n"
        "FROM {labels} l JOIN clips c USING (key)\n"
        "WHERE c.kept AND l.code_entropy IS NOT NULL AND c.motion_mean > 0.5\n"
        "ORDER BY l.code_entropy DESC LIMIT 20"
    ),
    # clips that failed to label
    "failed": "SELECT key, labeler, run_id FROM {labels} WHERE num_steps IS NULL",
}


def centred_vectors_sql(labels: str) -> str:
    """A subquery of (key, v): each clip's ``mean_vector`` minus the mean of all of them in
    ``labels`` (one labeler's view). Raw mean vectors share a large common part, so their cosines
    bunch near 1 and rank neighbours poorly; centred, they spread over [-1, 1]
    (docs/gidm-discrete-2026-11-26.md, section G)."""
    return (
        "(SELECT l.key, list_transform(list_zip(l.mean_vector, m.mu), lambda p: p[1] - p[2]) AS v\n"
        f" FROM {labels} l, (SELECT list(x ORDER BY i) AS mu FROM (SELECT i, avg(x) AS x FROM\n"
        "   (SELECT unnest(mean_vector) AS x, unnest(generate_series(1, len(mean_vector))) AS i\n"
        f"    FROM {labels} WHERE mean_vector IS NOT NULL) GROUP BY i)) m\n"
        " WHERE l.mean_vector IS NOT NULL)"
    )


def nearest_clips_sql(key: str, labels: str = "latent_actions", limit: int = 10, centred: bool = True) -> str:
    """SQL for the ``limit`` clips whose latent is most cosine-similar to that of clip ``key``
    (the clip itself first, similarity 1). ``labels``: a labeler's view (with the union view
    ``latent_actions``, restrict it to one labeler first: vectors of different models do not
    compare). ``centred`` (default): cosine of the mean vectors minus their mean over ``labels``
    (``centred_vectors_sql``), so it depends on which clips ``labels`` holds; else of the raw
    ``mean_vector``.

    DuckDB's ``array_cosine_similarity`` needs fixed-size arrays (``mean_vector::FLOAT[D]`` on
    both sides, D the latent width); ``list_cosine_similarity`` takes the variable-length
    ``FLOAT[]`` lists as stored, so no D is needed. Zero vectors give NaN, sorted last."""
    k = key.replace("'", "''")
    vecs = centred_vectors_sql(labels) if centred else f"(SELECT key, mean_vector AS v FROM {labels} WHERE mean_vector IS NOT NULL)"
    return (
        f"WITH vecs AS {vecs}\n"
        "SELECT l.key, list_cosine_similarity(a.v, q.v) AS cosine, l.norm_mean, c.uri\n"
        f"FROM vecs a JOIN {labels} l USING (key) JOIN clips c USING (key), (SELECT v FROM vecs WHERE key = '{k}' LIMIT 1) q\n"
        f"ORDER BY isnan(cosine), cosine DESC LIMIT {int(limit)}"
    )


# ----------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------
@dataclass
class LabelConfig:
    gap_frames: int | None = field(default=None, metadata={"help": "gap k in frames (default: the checkpoint's, else 1)"})
    gap_s: float | None = field(default=None, metadata={"help": "gap in seconds, k = max(1, round(gap_s * fps)) per clip"})
    window_stride: int = field(default=1, metadata={"help": "frames between consecutive windows"})
    stabilize_px: int = field(
        default=0,
        metadata={"help": "take camera motion of up to this many pixels (at the model's size) out of each window before encoding (0: off)"},
    )
    batch_size: int = field(default=64, metadata={"help": "frames / transitions per model batch"})
    device: str = field(default="auto", metadata={"help": "torch device the model runs on: auto (cuda when a GPU is visible), cpu or cuda"})
    clips_per_batch: int = field(default=16, metadata={"help": "clips per actor call"})
    clips_per_unit: int = field(default=256, metadata={"help": "clips committed together in one parquet part"})
    actors: int = field(default=1, metadata={"help": "labeling actors (each takes a GPU when present)"})
    runner: str = field(default="auto", metadata={"help": RUNNER_HELP})
    workers: int | None = field(default=None, metadata={"help": WORKERS_HELP})
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        errors = []
        for name in ("clips_per_batch", "clips_per_unit", "actors"):
            if int(getattr(self, name)) < 1:
                errors.append(f"{name}={getattr(self, name)!r}: must be >= 1")
        errors += runner_field_errors(self.runner, self.workers)
        try:  # checked here, when the flags are read, not when the labeler loads its model
            Gap.from_fields(self.gap_s, self.gap_frames)
        except ValueError as e:
            errors.append(str(e))
        if errors:
            raise ValueError("invalid LabelConfig:\n  " + "\n  ".join(errors))

    def labeler(self, ckpt: str, device: str | None = None):
        from defi.labelers.latent_actions import LatentActionLabeler

        return LatentActionLabeler(
            ckpt,
            gap_frames=self.gap_frames,
            gap_s=self.gap_s,
            batch_size=self.batch_size,
            device=device or self.device,
            window_stride=self.window_stride,
            stabilize_px=self.stabilize_px,
        )


# ----------------------------------------------------------------------------------------------
# the stages (plain functions; Ray Data or the local engine calls them)
# ----------------------------------------------------------------------------------------------
def _error_row(key: str, labeler: str, run_id: str, reason: str, detail: str) -> dict[str, Any]:
    return {
        "kind": "error",
        "key": key,
        "reason": reason,
        "detail": detail[:300],
        "row": {"key": key, "labeler": labeler, "run_id": run_id},
    }


def read_clips(task: dict[str, Any], labeler: str, run_id: str, size: int) -> Iterator[dict[str, Any]]:
    """Read and decode the clips ``task["keys"]`` of the shard ``task["url"]``: one item per key,
    ``{"kind": "clip", key, unit, frames uint8 [T, size, size, 3], fps}`` or an error item."""
    from defi.training.data import DecodeError, ShardReader, decode_frames

    want = set(task["keys"])
    reader = ShardReader(task["url"], keys=want)
    for sample in reader:
        if sample.key not in want:  # a key twice in a shard: label it once
            continue
        want.discard(sample.key)
        try:
            frames = decode_frames(sample.mp4, None, size=(size, size))
            yield {"kind": "clip", "unit": task["unit"], "key": sample.key, "frames": frames, "fps": float(sample.meta.fps)}
        except DecodeError as e:
            yield {"unit": task["unit"], **_error_row(sample.key, labeler, run_id, "decode", str(e))}
    problems = ", ".join(f"{k}={v}" for k, v in sorted(reader.stats.items()) if k.startswith("error:"))
    for key in sorted(want):
        yield {
            "unit": task["unit"],
            **_error_row(key, labeler, run_id, "missing_sample", f"not readable in {task['url']} ({problems or 'absent'})"),
        }


def label_items(labeler, items: list[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    """Label the clip items of a batch (error items pass through). When the batch fails in the
    model, each clip is retried alone so one bad clip cannot sink its neighbours."""
    clips = [it for it in items if it["kind"] == "clip"]
    rows: dict[str, dict] = {}
    try:
        for it, row in zip(clips, labeler.label_clips([(it["key"], it["frames"], it["fps"]) for it in clips], run_id), strict=False):
            rows[it["key"]] = row
    except Exception:  # noqa: BLE001 - isolate the failing clip below, record it as data
        for it in clips:
            try:
                rows[it["key"]] = labeler.label_clip(it["frames"], it["fps"], key=it["key"], run_id=run_id)
            except Exception as e:  # noqa: BLE001
                rows[it["key"]] = _error_row(it["key"], labeler.name, run_id, "label_failed", f"{type(e).__name__}: {e}")
    out = []
    for it in items:
        if it["kind"] != "clip":
            out.append(it)
            continue
        r = rows[it["key"]]
        if r.get("kind") == "error":
            out.append({"unit": it["unit"], **r})
        else:
            out.append({"kind": "row", "unit": it["unit"], "key": it["key"], "row": r})
    return out


class LabelActor:
    """The labeling actor stage: one model (built from the checkpoint, or the driver's own
    ``labeler`` on the local runner); labels batches of clip items."""

    def __init__(self, cfg: LabelConfig, ckpt: str, run_id: str, labeler=None):
        self.labeler, self.run_id = labeler or cfg.labeler(ckpt), run_id

    def __call__(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return label_items(self.labeler, items, self.run_id)


def label_stages(cfg: LabelConfig, ckpt: str, name: str, run_id: str, size: int, labeler=None) -> list[Stage]:
    """The stages of ``defi label latent-actions``: read and decode each (unit, shard) task (1
    CPU), then label ``clips_per_batch`` clips a call on ``actors`` actors (a GPU each when there
    is one). ``labeler``: a model the driver already holds, used by the local runner."""
    return [
        Stage("read", read_clips, (name, run_id, size), cpus=1),
        Stage("label", LabelActor, (cfg, ckpt, run_id, labeler), gpus="auto", actors=cfg.actors, batch_size=cfg.clips_per_batch),
    ]


# ----------------------------------------------------------------------------------------------
# the driver
# ----------------------------------------------------------------------------------------------
def label_state(corpus: Corpus, labeler: str) -> tuple[set[str], dict[str, str]]:
    """(keys this labeler has a label for, failed key -> the unit whose part holds its failed
    row): a re-run skips the first and retries the second in their units."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    failed: dict[str, str] = {}
    for path in corpus.parts(f"labels/{labeler}"):
        unit = path.rsplit("/", 1)[-1][len("part-") : -len(".parquet")]
        t = pq.read_table(path, filesystem=corpus.fs, columns=["key", "num_steps"])
        for key, steps in zip(t.column("key").to_pylist(), t.column("num_steps").to_pylist(), strict=True):
            if steps is None:
                failed.setdefault(key, unit)
            else:
                done.add(key)
    return done, {k: u for k, u in failed.items() if k not in done}


def retry_units(corpus: Corpus, labeler: str, rows: list[tuple[str, str]], unit_of: dict[str, str], shard_url):
    """Read tasks that label the failed clips ``rows`` ((key, shard)) again, each in the unit
    whose part holds its failed row; returns (tasks, unit -> keys, unit -> the part's other rows,
    which the rewritten part carries over)."""
    import pyarrow.parquet as pq

    by_unit: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for k, sh in rows:
        by_unit[unit_of[k]].append((k, sh))
    tasks, units, carried = [], {}, {}
    for unit, group in sorted(by_unit.items()):
        keys = {k for k, _ in group}
        part = corpus.table_dir(f"labels/{labeler}") + f"/part-{unit}.parquet"
        carried[unit] = [r for r in pq.read_table(part, filesystem=corpus.fs).to_pylist() if r["key"] not in keys]
        units[unit] = keys
        by_shard: dict[str, list[str]] = defaultdict(list)
        for k, sh in group:
            by_shard[sh].append(k)
        tasks += [{"unit": unit, "url": shard_url(sh), "shard": sh, "keys": ks} for sh, ks in sorted(by_shard.items())]
    return tasks, units, carried


def plan_units(resolved, labeler: str, clips_per_unit: int, shard_url) -> tuple[list[dict], dict[str, set[str]]]:
    """Cut resolved (key, shard) rows, sorted by (shard, key), into units of ``clips_per_unit``
    clips; a unit's name hashes the labeler and its keys, so re-committing it replaces its part.
    Returns read tasks (one per unit x shard) and the keys of each unit."""
    rows = list(zip(resolved.column("key").to_pylist(), resolved.column("shard").to_pylist(), strict=False))
    tasks, units = [], {}
    for i in range(0, len(rows), clips_per_unit):
        group = rows[i : i + clips_per_unit]
        unit = "u" + hashlib.sha1(json.dumps([labeler, [k for k, _ in group]]).encode()).hexdigest()[:16]
        units[unit] = {k for k, _ in group}
        by_shard: dict[str, list[str]] = defaultdict(list)
        for k, s in group:
            by_shard[s].append(k)
        tasks += [{"unit": unit, "url": shard_url(s), "shard": s, "keys": ks} for s, ks in by_shard.items()]
    return tasks, units


def run_label(
    root: str, ckpt: str, select: str | None = None, cfg: LabelConfig | None = None, progress: bool = True, limit: int | None = None
) -> dict[str, Any]:
    """Label the selected kept clips of the corpus at ``root`` with the GIDM checkpoint ``ckpt``
    (a checkpoint folder or a training run folder); returns the run record (also saved).

    ``select``: SQL returning ``key`` or a manifest path (default: every kept clip). ``limit``:
    label at most this many pending clips. Raises ``SelectionError`` for a bad selection and
    ``CheckpointError``/``ValueError`` for a bad checkpoint or option, ``LockHeld`` while another
    run writes the root."""
    cfg = cfg or LabelConfig()
    t_start = time.time()
    corpus = Corpus.open(root)
    # the driver's copy names the labels and sizes the decode; on Ray it never labels (so it stays
    # on the CPU), on the local runner it is the one model. Only the job's size, known after the
    # selection, can still turn `auto` from local to Ray.
    surely_ray = pick_backend(cfg.runner, cfg.ray, 0, [Stage("label", LabelActor, actors=cfg.actors)])[0] == "ray"
    labeler = cfg.labeler(ckpt, device="cpu" if surely_ray else None)
    run_id = new_run_id()
    with WriterLock(corpus, "label", run_id):  # one writer per root
        return _label_locked(corpus, root, labeler, run_id, select, cfg, progress, limit, t_start)


class UnitCommitter:
    """Buffers each unit's rows as they arrive and writes the unit's part of ``labels/<name>/``
    (``schema``) once all its clips are in (like ``curate.Committer``); counts the rows
    (``ok_count``), the failures by reason (``error_count``, ``errors``, a few ``examples``) and the
    units written (``unit_count``). Every corpus-level labeling command commits through one."""

    schema = LATENT_ACTIONS
    ok_count, error_count, unit_count = "labeled", "errors", "units"

    def __init__(self, corpus: Corpus, name: str, units: dict[str, set[str]], counts: Counter):
        self.corpus, self.name, self.units, self.counts = corpus, name, units, counts
        self.errors: Counter = Counter()
        self.examples: dict[str, str] = {}
        self.rows: dict[str, list[dict]] = defaultdict(list)

    def add(self, item: dict[str, Any]) -> bool:
        """Take one labeled (or failed) clip; returns True when this committed its unit."""
        unit = item["unit"]
        self.rows[unit].append(item["row"])
        if item["kind"] == "error":
            self.errors[item["reason"]] += 1
            self.counts[self.error_count] += 1
            if len(self.examples) < _EXAMPLES:
                self.examples[item["key"]] = f"{item['reason']}: {item['detail']}"
        else:
            self.counts[self.ok_count] += 1
            self.counted(item["row"])
        if len(self.rows[unit]) == len(self.units[unit]):
            self.commit(unit)
            return True
        return False

    def counted(self, row: dict[str, Any]) -> None:
        """What a row adds to the counts beyond ``ok_count`` (nothing by default)."""

    def commit(self, unit: str) -> None:
        del self.units[unit]
        self.write(unit, self.rows.pop(unit))

    def write(self, unit: str, rows: list[dict]) -> None:
        table = f"labels/{self.name}"
        rows = sorted(rows, key=lambda r: r["key"])
        self.corpus.write_part(table, table_from_rows(rows, self.schema, table), part=unit)
        self.counts[self.unit_count] += 1


class LabelCommitter(UnitCommitter):
    """Latent-action rows; counts their steps too. A retried unit's part is rewritten with the
    rows it ``carried`` that were not retried."""

    def __init__(
        self, corpus: Corpus, name: str, units: dict[str, set[str]], counts: Counter, carried: dict[str, list[dict]] | None = None
    ):
        super().__init__(corpus, name, units, counts)
        self.carried = carried or {}  # a retried unit: the rows of its part that are not retried

    def counted(self, row: dict[str, Any]) -> None:
        self.counts["steps"] += int(row["num_steps"])

    def commit(self, unit: str) -> None:
        new = self.rows.pop(unit)
        del self.units[unit]
        if unit in self.carried and all(r.get("num_steps") is None for r in new):
            return  # every retried clip failed again: its part already says so
        self.write(unit, new + self.carried.pop(unit, []))


def _label_locked(
    corpus: Corpus, root: str, labeler, run_id: str, select: str | None, cfg: LabelConfig, progress: bool, limit: int | None, t_start: float
) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.compute as pc

    from defi.schemas.selection import resolve_selection

    name = labeler.name
    resolved = resolve_selection(corpus, select or DEFAULT_SELECT)
    done, failed = label_state(corpus, name)
    keep = [k not in done for k in resolved.column("key").to_pylist()]
    pending = resolved.filter(pa.array(keep, type=pa.bool_()))
    if limit is not None:
        pending = pending.slice(0, limit)
    retry = pa.array([k in failed for k in pending.column("key").to_pylist()], type=pa.bool_())
    tasks, units = plan_units(pending.filter(pc.invert(retry)), name, cfg.clips_per_unit, corpus.shard_url)
    again = pending.filter(retry)
    rtasks, runits, carried = retry_units(
        corpus, name, list(zip(again.column("key").to_pylist(), again.column("shard").to_pylist(), strict=True)), failed, corpus.shard_url
    )
    tasks, units = tasks + rtasks, {**units, **runits}
    counts: Counter = Counter(selected=len(resolved), skipped_done=len(resolved) - sum(keep), pending=len(pending), retried=len(again))
    ckpt = str(labeler.ckpt_path)
    backend, why = pick_backend(cfg.runner, cfg.ray, len(tasks), label_stages(cfg, ckpt, name, run_id, labeler.size))
    stages = label_stages(cfg, ckpt, name, run_id, labeler.size, labeler if backend == "local" else None)
    record = start_record(
        corpus,
        run_id,
        "label latent-actions",
        t_start,
        root=root,
        select=select,
        labeler=labeler.params(),
        config=to_dict(cfg),
        runner={"backend": backend, "why": why},
    )
    committer = LabelCommitter(corpus, name, units, counts, carried)
    status, t_label, t_ray = "failed", 0.0, 0.0
    try:
        t_label, t_ray = stream_units(
            record, Runner(backend, cfg.ray, cfg.workers, why), tasks, stages, committer, counts, len(pending), progress
        )
        if units:
            raise RuntimeError(f"{len(units)} units never completed (a reader lost clips); re-run to finish them")
        status = "done"
    finally:
        finish_record(
            corpus,
            record,
            status,
            t_start,
            label_s=t_label,
            ray_start_s=t_ray,
            counts=dict(counts),
            errors=dict(committer.errors),
            error_examples=committer.examples,
            clips_per_s=counts["labeled"] / t_label if t_label > 0 else None,
        )
    return record


def stream_units(
    record: dict, runner, tasks: list, stages: list, committer, counts: Counter, total: int, progress: bool
) -> tuple[float, float]:
    """Stream ``tasks`` through ``stages`` on ``runner`` (entered here), handing each labeled
    item to ``committer.add``, which commits a unit once all its clips are in; the run ``record``
    gets the runner's facts. Returns (seconds streaming, Ray start-up seconds): clips/s counts
    from the first, so Ray's start-up is reported apart. Shared by every ``defi label`` command."""
    if not tasks:
        return 0.0, 0.0
    t_run = t_ray = 0.0
    bar = _bar(total, progress)
    with runner:
        record["runner"] = runner.info
        if runner.ray_info is not None:
            record["ray"], t_ray = runner.ray_info, runner.start_s
        t0 = time.time()
        for item in runner.stream(tasks, stages):
            bar.update(1)
            if committer.add(item):
                bar.set_postfix(units=counts[committer.unit_count], errors=counts[committer.error_count])
        t_run = time.time() - t0
    bar.close()
    return t_run, t_ray


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="clip", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def gap_text(gap: Any) -> str:
    """The labeler's gap as a reader wants it (``5 frames``, ``0.5 s``); the run record stores it
    as ``{unit: value}``."""
    if isinstance(gap, dict) and len(gap) == 1:
        ((unit, value),) = gap.items()
        try:
            return Gap(value, unit).label()
        except ValueError:
            pass
    return str(gap)


def summary_text(rec: dict[str, Any]) -> str:
    c, lab = rec["counts"], rec["labeler"]
    rate = f", {rec['clips_per_s']:.1f} clips/s" if rec.get("clips_per_s") else ""
    if rec.get("ray_start_s"):
        rate += f" after {rec['ray_start_s']:.1f} s of Ray start-up"
    lines = [
        f"run {rec['run_id']}: {rec['status']} in {rec['wall_s']:.1f} s{rate}",
        f"  labeler  {lab['name']} ({lab['bottleneck']}, {lab['num_action_tokens']} tokens, gap {gap_text(lab['gap'])})",
        f"  clips    {c.get('selected', 0)} selected, {c.get('skipped_done', 0)} already labeled, "
        + (f"{c['retried']} failed before and retried, " if c.get("retried") else "")
        + f"{c.get('labeled', 0)} labeled ({c.get('steps', 0)} steps), "
        f"{c.get('errors', 0)} failed",
    ]
    for k, v in sorted(rec["errors"].items(), key=lambda kv: -kv[1]):
        lines.append(f"    error  {k:<20} {v}")
    lines.append(f"  parts    {c.get('units', 0)} written to labels/{lab['name']}/ (query it as {label_view_name(lab['name'])})")
    if rec.get("runner"):
        lines.append(f"  runner   {rec['runner']['backend']} ({rec['runner']['why']})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# defi select: a balanced selection manifest
# ----------------------------------------------------------------------------------------------
def balanced_weights(groups: Iterable[Any]) -> np.ndarray:
    """Weight ``(N / G) / n_g`` for a clip in group g (N clips, G groups, n_g clips in g): every
    group gets the same total weight N / G, and the weights sum to N (mean 1). A null group is a
    group of its own."""
    groups = list(groups)
    counts = Counter(groups)
    n, g = len(groups), len(counts)
    return np.array([(n / g) / counts[x] for x in groups], dtype=np.float64)


def pick_labeler(corpus: Corpus, labeler: str | None) -> str | None:
    """The labeler to join: the one named, else the only one, else None when there is none."""
    from .cli import UsageError

    have = corpus.labelers()
    if labeler is not None:
        if labeler not in have:
            raise UsageError(f"no labeler {labeler!r} in this corpus; have: {', '.join(have) or 'none'}")
        return labeler
    if len(have) > 1:
        raise UsageError(f"the corpus has {len(have)} labelers, name one with --labeler: {', '.join(have)}")
    return have[0] if have else None


def select_sql(where: str, balance_by: str | None, labels_view: str | None, text_scores: bool = False) -> str:
    """SQL returning (key, __group) over kept clips joined with a labeler's rows (when any).
    ``where`` is a predicate over the columns of ``clips`` and the labeler's table (``run_id`` of
    the labels is ``label_run_id``), or a full SELECT returning ``key``; ``balance_by`` a column
    or SQL expression over the same columns. ``text_scores``: join the ``text_scores`` table of
    ``--text`` too (its ``text_score`` joins those columns, and is returned as ``__text_score``)."""
    from defi.schemas.selection import is_sql

    if labels_view:
        base = f"(SELECT c.*, l.* EXCLUDE (key, run_id), l.run_id AS label_run_id FROM clips c JOIN {labels_view} l ON c.key = l.key)"
    else:
        base = "clips"
    if text_scores:
        base = f"(SELECT b.*, t.text_score FROM {base} b LEFT JOIN text_scores t ON b.key = t.key)"
    group = f"({balance_by})" if balance_by else "NULL"
    score = ", x.text_score AS __text_score" if text_scores else ""
    if is_sql(where):
        return (
            f"SELECT DISTINCT s.key, {group} AS __group{score}\n"
            f"FROM (SELECT DISTINCT key FROM ({where})) s JOIN (SELECT * FROM {base} WHERE kept) x "
            "ON s.key = x.key ORDER BY s.key"
        )
    return f"SELECT DISTINCT key, {group} AS __group{score} FROM {base} x\nWHERE kept AND ({where or 'true'}) ORDER BY key"


def run_select(
    root: str,
    where: str,
    out: str,
    balance_by: str | None = None,
    labeler: str | None = None,
    *,
    exclude_duplicates: bool = False,
    text: str | None = None,
    top: int | None = None,
    clip_model: str | None = None,
    clip_pretrained: str | None = None,
) -> dict[str, Any]:
    """Write a selection manifest of the clips matching ``where``, weighted by
    ``balanced_weights`` of ``balance_by`` (all 1.0 without it). Returns a summary dict.
    ``exclude_duplicates``: leave out the clips `defi dedup` found to be near-duplicates of a
    keeper (the ``clips_dedup`` view). ``text``: score clips by CLIP similarity to it
    (``text_search``), a ``text_score`` column for ``where``/``balance_by``; ``top``: keep the
    ``top`` best-scoring matches."""
    from defi.schemas.selection import write_selection

    from .cli import UsageError

    from .text_search import search_tables

    if top is not None and (text is None or top < 1):
        raise UsageError("--top N (N >= 1) keeps the N clips most similar to --text; give --text")
    corpus = Corpus.open(root)
    name = pick_labeler(corpus, labeler)
    tables = search_tables(root, text, clip_model, clip_pretrained)
    sql = select_sql(where, balance_by, label_view_name(name) if name else None, text_scores=bool(tables))
    if exclude_duplicates:
        if corpus.current_dedup() is None:
            raise UsageError(f"--exclude-duplicates: corpus {root} has no dedup result; run `defi dedup --root {root}` first")
        sql = f"SELECT * FROM ({sql}) WHERE key IN (SELECT key FROM clips_dedup)"
    if top is not None:
        sql = f"SELECT * FROM ({sql}) ORDER BY __text_score DESC NULLS LAST, key LIMIT {int(top)}"
    elif exclude_duplicates:
        sql = f"SELECT * FROM ({sql}) ORDER BY key"
    table = corpus.query(sql, tables=tables)
    keys = table.column("key").to_pylist()
    if not keys:
        raise UsageError(f"the selection is empty; SQL:\n{sql}")
    if len(set(keys)) != len(keys):
        raise UsageError(f"the selection has duplicated keys (a balance value that differs per row?); SQL:\n{sql}")
    groups = table.column("__group").to_pylist()
    weights = balanced_weights(groups) if balance_by else np.ones(len(keys))
    stored = sql + (f"\n-- weights: balanced by {balance_by} (each group's total weight = N / groups)" if balance_by else "")
    if text is not None:
        stored += f"\n-- text_scores: CLIP similarity to {text!r}"
    write_selection(out, keys, weights, sql=stored)
    per_group = Counter(groups)
    return {
        "out": out,
        "clips": len(keys),
        "labeler": name,
        "balance_by": balance_by,
        "sql": sql,
        "text": text,
        "groups": {
            str(g): {"clips": n, "weight_each": (len(keys) / len(per_group)) / n if balance_by else 1.0}
            for g, n in sorted(per_group.items(), key=lambda kv: -kv[1])
        },
    }


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def add_label_parser(subparsers) -> argparse.ArgumentParser:
    """``defi label latent-actions ...``"""
    label = subparsers.add_parser(
        "label",
        help="attach labels to clips (latent actions from a GIDM, captions from a CoCa)",
        description="Attach labels to the clips of a corpus.",
    )
    sub = label.add_subparsers(dest="label_command", metavar="LABELER", parser_class=type(label))
    sub.required = True
    p = sub.add_parser(
        "latent-actions",
        help="per-step latent actions of every selected clip from a GIDM checkpoint",
        description="Label the selected kept clips with a GIDM checkpoint: per-step latent actions and clip "
        "statistics go to labels/gidm-<checkpoint hash>/ (view labels_gidm_<hash>, and the union view "
        "latent_actions). Re-running skips clips already labeled and retries those that failed; a killed run resumes. "
        "Exits 1 when clips were pending and none got a label.",
    )
    p.add_argument("--root", help="corpus root (local folder or fsspec URL); required unless --dry-run")
    p.add_argument("--ckpt", help="GIDM checkpoint folder, or a training run folder (latest checkpoint); required unless --dry-run")
    p.add_argument("--select", help="SQL returning key, or a selection manifest (default: every kept clip)")
    p.add_argument("--config", help="YAML/TOML/JSON file with LabelConfig fields (flags override it)")
    add_dry_run_flag(p)
    # shortcuts for the flags people type most; every LabelConfig field has its generated flag below
    p.add_argument("--local", action="store_true", help="same as --runner local: a process pool on this machine, without Ray")
    p.add_argument("--address", help="same as --ray.address: join this Ray cluster")
    p.add_argument("--limit", type=int_at_least(1), help="label at most this many pending clips")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_flags(p, LabelConfig, "label config (LabelConfig: defaults <- --config file <- these flags <- shortcuts)")
    p.set_defaults(func=cmd_label_latent_actions)
    from .captions import add_captions_parser

    add_captions_parser(sub)  # `defi label captions` (pipelines/captions.py)
    return label


def _label_summary(args, rec: dict[str, Any]) -> int:
    print(summary_text(rec))
    print_run_record(args, rec)
    c = rec["counts"]
    if c.get("pending", 0) and not c.get("labeled", 0):
        why = ", ".join(f"{k} {v}" for k, v in sorted(rec["errors"].items(), key=lambda kv: -kv[1]))
        print(
            f"defi label latent-actions: error: none of the {c['pending']} pending clips got a label ({why}); a rerun retries them",
            file=sys.stderr,
        )
        return 1
    return 0


# a gap flag (--gap-s or --gap-frames, LabelConfig's own) replaces the --config file's gap in either unit
LABEL_SHORTCUTS: dict[str, Any] = {
    **RUNNER_SHORTCUTS,
    "cfg__gap_s": {"gap_s": VALUE, "gap_frames": None},
    "cfg__gap_frames": {"gap_frames": VALUE, "gap_s": None},
}

LABEL_SPEC = CommandSpec(
    name="label latent-actions",
    build=layered(LabelConfig),
    shortcuts=LABEL_SHORTCUTS,
    requires=("root", "ckpt"),
    run=lambda args, cfg: run_label(args.root, args.ckpt, args.select, cfg, progress=not args.no_progress, limit=args.limit),
    summary=_label_summary,
    errors=("defi.schemas.selection.SelectionError", "defi.training.checkpoint.CheckpointError", "ValueError"),
)


def cmd_label_latent_actions(args) -> int:
    return run_command(LABEL_SPEC, args)


def add_select_parser(subparsers) -> argparse.ArgumentParser:
    """``defi select ...``"""
    p = subparsers.add_parser(
        "select",
        help="write a selection manifest (optionally balanced by a label)",
        description="Write a selection manifest (key, weight) of the kept clips matching --where, for training "
        "(--select FILE). With --balance-by, each clip's weight is (N / G) / n_g, so each of the G groups "
        "gets the same total weight. The SQL used is stored in the manifest.",
    )
    p.add_argument("--root", required=True, help="corpus root (local folder or fsspec URL)")
    p.add_argument(
        "--where",
        default="true",
        help="SQL predicate over clips + the labeler's columns "
        '(e.g. "norm_mean > 0.5 AND motion_mean > 1"), or a full SELECT returning key',
    )
    p.add_argument("--balance-by", help="column or SQL expression to balance over, e.g. dominant_code")
    p.add_argument("--labeler", help="labeler whose columns to join (default: the only one, if any)")
    p.add_argument("--out", required=True, help="manifest path (.parquet)")
    from .text_search import add_text_flags

    add_text_flags(p, "whose text_score --where and --balance-by can read")
    p.add_argument("--top", type=int, help="with --text: keep the N matching clips most similar to the text")
    p.add_argument(
        "--exclude-duplicates",
        action="store_true",
        help="leave out clips that the last `defi dedup` run found to be near-duplicates of a kept clip",
    )
    p.set_defaults(func=cmd_select)
    return p


def cmd_select(args) -> int:
    from defi.schemas.selection import SelectionError

    from .usage import UsageError, check_out_file

    check_out_file(args.out, make_parents=True, root=args.root)
    try:
        s = run_select(
            args.root,
            args.where,
            args.out,
            args.balance_by,
            args.labeler,
            exclude_duplicates=args.exclude_duplicates,
            text=args.text,
            top=args.top,
            clip_model=args.clip_model,
            clip_pretrained=args.clip_pretrained,
        )
    except SelectionError as e:
        raise UsageError(str(e)) from None
    print(f"wrote {s['clips']} clips to {s['out']}" + (f" (labeler {s['labeler']})" if s["labeler"] else ""))
    if s["text"] is not None:
        print(f"  ranked by CLIP similarity to {s['text']!r} (text_score)")
    if s["balance_by"]:
        print(f"  balanced by {s['balance_by']}: {len(s['groups'])} groups")
        for g, v in list(s["groups"].items())[:20]:
            print(f"    {g:<12} {v['clips']:>6} clips  weight {v['weight_each']:.4g} each")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``defi label``/``defi select`` on their own (argv starts with ``label`` or ``select``)."""
    from .cli import run_standalone

    return run_standalone([add_label_parser, add_select_parser], argv)
