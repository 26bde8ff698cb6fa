"""`defi label captions`: a caption per selected kept clip, from a CoCa model (open_clip).

Runs like `defi label latent-actions` (``label.py``): the selected kept clips (SQL or a manifest;
default: every kept clip with a shard), minus those this captioner has already captioned, sorted
by (shard, key), are cut into units of ``clips_per_unit`` clips; the runner (local process pool or
Ray Data, ``--runner``) decodes each clip's middle frame in CPU tasks, an actor stage captions
``clips_per_batch`` clips a call (one model per actor, a GPU each when there are GPUs; locally
the driver's model), and ``CaptionCommitter`` writes ``labels/caption-<config hash>/part-<unit>.parquet``
atomically once every clip of a unit is in. A killed run loses at most its unfinished units; a
re-run skips every captioned key. The config hash names the model and what shaped the captions
(``labelers.captions``): another model writes its own folder beside this one.

When a run finishes, ``labels/captions.json`` names its folder: the ``captions`` view and
training's ``--data.language caption|auto`` read that one (``Corpus.current_captions``).

Failures are rows: a clip that cannot be decoded, is missing from its shard, or fails in the model
has ``caption`` null and ``error`` its reason (counted in the run record). Like latent actions,
such a clip counts as captioned; delete the part, or caption with another config, to retry.

A model path that does not exist or is not a captioner is refused before anything is written.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterator

from defi.schemas.corpus import CAPTIONS_POINTER, Corpus
from defi.schemas.tables import CAPTIONS

from .command import RUNNER_SHORTCUTS, CommandSpec, add_dry_run_flag, layered, print_run_record, run_command
from .config import add_flags, to_dict
from .label import DEFAULT_SELECT, UnitCommitter, plan_units, stream_units
from .lock import WriterLock
from .ray_adapter import RayConfig
from .runner import RUNNER_HELP, WORKERS_HELP, Runner, Stage, pick_backend, runner_field_errors
from .runs import finish_record, new_run_id, start_record


def captioned_keys(corpus, name: str) -> set[str]:
    """Keys this caption folder already has rows for (failed rows included: a rerun does not
    retry them, unlike ``defi label latent-actions``)."""
    return set(corpus.read_table(f"labels/{name}").column("key").to_pylist())


@dataclass
class CaptionConfig:
    max_len: int = field(default=20, metadata={"help": "most tokens in a caption, counting the start token"})
    min_len: int = field(default=5, metadata={"help": "fewest tokens before a caption may end, counting the start token"})
    batch_size: int = field(default=16, metadata={"help": "images per model forward pass"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    clips_per_batch: int = field(default=16, metadata={"help": "clips per actor call"})
    clips_per_unit: int = field(default=256, metadata={"help": "clips committed together in one parquet part"})
    actors: int = field(default=1, metadata={"help": "captioning actors (each takes a GPU when present)"})
    runner: str = field(default="auto", metadata={"help": RUNNER_HELP})
    workers: int | None = field(default=None, metadata={"help": WORKERS_HELP})
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        errors = []
        for name in ("clips_per_batch", "clips_per_unit", "actors", "batch_size"):
            if int(getattr(self, name)) < 1:
                errors.append(f"{name}={getattr(self, name)!r}: must be >= 1")
        if int(self.min_len) < 1 or int(self.max_len) <= int(self.min_len):
            errors.append(f"min_len={self.min_len!r}, max_len={self.max_len!r}: need 1 <= min_len < max_len")
        errors += runner_field_errors(self.runner, self.workers)
        if errors:
            raise ValueError("invalid CaptionConfig:\n  " + "\n  ".join(errors))

    def labeler(self, model: str, device: str | None = None):
        from defi.labelers.captions import CaptionLabeler

        return CaptionLabeler(model, max_len=self.max_len, min_len=self.min_len, batch_size=self.batch_size, device=device or self.device)


# ----------------------------------------------------------------------------------------------
# the stages (plain functions; Ray Data or the local runner calls them)
# ----------------------------------------------------------------------------------------------
def _error(unit: str, key: str, base: dict[str, Any], run_id: str, reason: str, detail: str) -> dict[str, Any]:
    row = {**base, "key": key, "caption": None, "error": reason, "error_detail": detail[:300], "run_id": run_id}
    return {"kind": "error", "unit": unit, "key": key, "reason": reason, "detail": detail[:300], "row": row}


def read_middle_frames(task: dict[str, Any], base: dict[str, Any], run_id: str) -> Iterator[dict[str, Any]]:
    """Decode the middle frame (``labelers.captions.middle_frame``, at the encoded size) of each
    clip ``task["keys"]`` of the shard ``task["url"]``: ``{"kind": "clip", unit, key, frame}`` or
    an error item whose row carries ``base`` (labeler, model, config_hash, version)."""
    from defi.labelers.captions import middle_frame
    from defi.training.data import DecodeError, ShardReader, decode_frames

    want = set(task["keys"])
    reader = ShardReader(task["url"], keys=want)
    for sample in reader:
        if sample.key not in want:  # a key twice in a shard: caption it once
            continue
        want.discard(sample.key)
        try:
            frame = decode_frames(sample.mp4, [middle_frame(sample.meta.num_frames)], None)[0]
            yield {"kind": "clip", "unit": task["unit"], "key": sample.key, "frame": frame}
        except DecodeError as e:
            yield _error(task["unit"], sample.key, base, run_id, "decode", str(e))
    problems = ", ".join(f"{k}={v}" for k, v in sorted(reader.stats.items()) if k.startswith("error:"))
    for key in sorted(want):
        yield _error(task["unit"], key, base, run_id, "missing_sample", f"not readable in {task['url']} ({problems or 'absent'})")


def caption_items(labeler, items: list[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    """Caption the clip items of a batch (error items pass through). When the batch fails in the
    model, each clip is retried alone so one bad clip cannot sink its neighbours."""
    clips = [it for it in items if it["kind"] == "clip"]
    rows: dict[str, dict] = {}
    try:
        for it, row in zip(clips, labeler.caption_clips([(it["key"], it["frame"]) for it in clips], run_id), strict=True):
            rows[it["key"]] = {"kind": "row", "unit": it["unit"], "key": it["key"], "row": row}
    except Exception:  # noqa: BLE001 - isolate the failing clip below, record it as data
        base = {k: v for k, v in labeler.row("", None, run_id).items() if k in ("labeler", "model", "config_hash", "version")}
        for it in clips:
            try:
                row = labeler.caption_clips([(it["key"], it["frame"])], run_id)[0]
                rows[it["key"]] = {"kind": "row", "unit": it["unit"], "key": it["key"], "row": row}
            except Exception as e:  # noqa: BLE001
                rows[it["key"]] = _error(it["unit"], it["key"], base, run_id, "caption_failed", f"{type(e).__name__}: {e}")
    return [rows[it["key"]] if it["kind"] == "clip" else it for it in items]


class CaptionActor:
    """The captioning actor stage: one model (loaded here, or the driver's own ``labeler`` on the
    local runner); captions batches of clip items."""

    def __init__(self, cfg: CaptionConfig, model: str, run_id: str, labeler=None):
        self.labeler, self.run_id = labeler or cfg.labeler(model), run_id

    def __call__(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return caption_items(self.labeler, items, self.run_id)


def caption_stages(cfg: CaptionConfig, model: str, base: dict[str, Any], run_id: str, labeler=None) -> list[Stage]:
    """Decode each (unit, shard) task's middle frames (1 CPU), then caption ``clips_per_batch``
    clips a call on ``actors`` actors (a GPU each when there is one)."""
    return [
        Stage("read", read_middle_frames, (base, run_id), cpus=1),
        Stage("caption", CaptionActor, (cfg, model, run_id, labeler), gpus="auto", actors=cfg.actors, batch_size=cfg.clips_per_batch),
    ]


class CaptionCommitter(UnitCommitter):
    """Caption rows, counted as ``captioned``."""

    schema = CAPTIONS
    ok_count = "captioned"


# ----------------------------------------------------------------------------------------------
# the driver
# ----------------------------------------------------------------------------------------------
def run_captions(
    root: str, model: str, select: str | None = None, cfg: CaptionConfig | None = None, progress: bool = True, limit: int | None = None
) -> dict[str, Any]:
    """Caption the selected kept clips of the corpus at ``root`` with the CoCa ``model`` (a local
    open_clip folder, ``hf-hub:ORG/REPO`` or ``ARCH:TAG``); returns the run record (also saved).

    ``select``: SQL returning ``key`` or a manifest path (default: every kept clip). ``limit``:
    caption at most this many pending clips. Raises ``CaptionModelError`` for a model that is
    missing or not a captioner (before anything is written), ``SelectionError`` for a bad
    selection, ``LockHeld`` while another run writes the root."""
    cfg = cfg or CaptionConfig()
    t_start = time.time()
    corpus = Corpus.open(root)
    surely_ray = pick_backend(cfg.runner, cfg.ray, 0, [Stage("caption", CaptionActor, actors=cfg.actors)])[0] == "ray"
    labeler = cfg.labeler(model, device="cpu" if surely_ray else None)
    run_id = new_run_id()
    with WriterLock(corpus, "label", run_id):  # one writer per root
        return _captions_locked(corpus, root, model, labeler, run_id, select, cfg, progress, limit, t_start)


def _captions_locked(corpus, root, model, labeler, run_id, select, cfg, progress, limit, t_start) -> dict[str, Any]:
    import pyarrow as pa

    from defi.schemas.selection import resolve_selection

    name = labeler.name
    resolved = resolve_selection(corpus, select or DEFAULT_SELECT)
    done = captioned_keys(corpus, name)
    keep = [k not in done for k in resolved.column("key").to_pylist()]
    pending = resolved.filter(pa.array(keep, type=pa.bool_()))
    if limit is not None:
        pending = pending.slice(0, limit)
    tasks, units = plan_units(pending, name, cfg.clips_per_unit, corpus.shard_url)
    counts: Counter = Counter(selected=len(resolved), skipped_done=len(resolved) - sum(keep), pending=len(pending))
    base = {k: v for k, v in labeler.row("", None, run_id).items() if k in ("labeler", "model", "config_hash", "version")}
    backend, why = pick_backend(cfg.runner, cfg.ray, len(tasks), caption_stages(cfg, model, base, run_id))
    stages = caption_stages(cfg, model, base, run_id, labeler if backend == "local" else None)
    record = start_record(
        corpus,
        run_id,
        "label captions",
        t_start,
        root=root,
        select=select,
        labeler=labeler.params(),
        config=to_dict(cfg),
        runner={"backend": backend, "why": why},
    )
    committer = CaptionCommitter(corpus, name, units, counts)
    status, t_run, t_ray = "failed", 0.0, 0.0
    try:
        t_run, t_ray = stream_units(
            record, Runner(backend, cfg.ray, cfg.workers, why), tasks, stages, committer, counts, len(pending), progress
        )
        if units:
            raise RuntimeError(f"{len(units)} units never completed (a reader lost clips); re-run to finish them")
        if corpus.parts(f"labels/{name}"):
            corpus.write_json(CAPTIONS_POINTER, {"current": name, "run_id": run_id, "model": labeler.params()["model"]})
        status = "done"
    finally:
        finish_record(
            corpus,
            record,
            status,
            t_start,
            caption_s=t_run,
            ray_start_s=t_ray,
            counts=dict(counts),
            errors=dict(committer.errors),
            error_examples=committer.examples,
            clips_per_s=counts["captioned"] / t_run if t_run > 0 else None,
        )
    return record


def summary_text(rec: dict[str, Any]) -> str:
    c, lab = rec["counts"], rec["labeler"]
    rate = f", {rec['clips_per_s']:.2f} clips/s" if rec.get("clips_per_s") else ""
    if rec.get("ray_start_s"):
        rate += f" after {rec['ray_start_s']:.1f} s of Ray start-up"
    lines = [
        f"run {rec['run_id']}: {rec['status']} in {rec['wall_s']:.1f} s{rate}",
        f"  model    {lab['model']} ({lab['name']}, {lab['image_size'][0]} px, up to {lab['max_len']} tokens, {lab['device']})",
        f"  clips    {c.get('selected', 0)} selected, {c.get('skipped_done', 0)} already captioned, "
        f"{c.get('captioned', 0)} captioned, {c.get('errors', 0)} failed",
    ]
    for k, v in sorted(rec["errors"].items(), key=lambda kv: -kv[1]):
        lines.append(f"    error  {k:<20} {v}")
    lines.append(f"  parts    {c.get('units', 0)} written to labels/{lab['name']}/ (query it as the view captions)")
    if rec.get("runner"):
        lines.append(f"  runner   {rec['runner']['backend']} ({rec['runner']['why']})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def add_captions_parser(sub) -> argparse.ArgumentParser:
    """``defi label captions ...`` (``sub``: the ``label`` subparsers)."""
    from defi.labelers.captions import DEFAULT_MODEL

    p = sub.add_parser(
        "captions",
        help="a caption per selected clip from a CoCa captioning model (open_clip)",
        description="Caption the middle frame of every selected kept clip with a CoCa model; rows (key, caption, "
        "model, config hash, error) go to labels/caption-<config hash>/, read as the view captions and by "
        "`defi train gfdm --data.language caption|auto`. Re-running skips clips already captioned; a killed run resumes.",
    )
    p.add_argument("--root", help="corpus root (local folder or fsspec URL); required unless --dry-run")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="captioning model: a local open_clip folder (open_clip_config.json + open_clip_model.safetensors), "
        f"hf-hub:ORG/REPO, or ARCH:TAG (default: {DEFAULT_MODEL})",
    )
    p.add_argument("--select", help="SQL returning key, or a selection manifest (default: every kept clip)")
    p.add_argument("--config", help="YAML/TOML/JSON file with CaptionConfig fields (flags override it)")
    add_dry_run_flag(p)
    p.add_argument("--local", action="store_true", help="same as --runner local: a process pool on this machine, without Ray")
    p.add_argument("--address", help="same as --ray.address: join this Ray cluster")
    p.add_argument("--limit", type=int, help="caption at most this many pending clips")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_flags(p, CaptionConfig, "caption config (CaptionConfig: defaults <- --config file <- these flags <- shortcuts)")
    p.set_defaults(func=cmd_label_captions)
    return p


def _captions_summary(args, rec: dict[str, Any]) -> None:
    print(summary_text(rec))
    print_run_record(args, rec)


CAPTIONS_SPEC = CommandSpec(
    name="label captions",
    build=layered(CaptionConfig),
    shortcuts=RUNNER_SHORTCUTS,
    requires=("root",),
    run=lambda args, cfg: run_captions(args.root, args.model, args.select, cfg, progress=not args.no_progress, limit=args.limit),
    summary=_captions_summary,
    errors=("defi.labelers.captions.CaptionModelError", "defi.schemas.selection.SelectionError", "ValueError"),
)


def cmd_label_captions(args) -> int:
    return run_command(CAPTIONS_SPEC, args)
