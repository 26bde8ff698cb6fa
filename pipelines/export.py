"""``defi export lerobot``: write a selection of robot clips as a LeRobot v3.0 dataset.

One selected clip becomes one episode: its frames are the clip's encoded mp4 decoded in full, its
``action`` and ``observation.state`` rows are every recorded row of the clip (``<key>.rows.*.npy``,
at the robot's rate, each frame held over the rows it spans when the clip was encoded at a lower
fps; clips curated before format 1.1: ``<key>.actions.npy``, one row per frame), its task is the clip's language and the
dataset's fps is the clips' encoded fps. Writing goes through the same v3 writer that
``defi sim generate`` uses (``defi.curate.lerobot.LeRobotV3Writer``), into a temporary
folder beside ``out`` that is renamed into place when complete, so a killed export never leaves a
half dataset that looks finished.

A LeRobot dataset has one fps, one frame size per camera and one shape per feature. The export
takes the most common (fps, width, height) among the selected clips that have actions, and the
action/proprio widths of the first clip it reads; clips that differ, that lack actions, whose
actions hold NaN rows (frames curation found no recorded action for) or whose row count differs
from their frame count are skipped and counted by reason in the summary, never raised.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .usage import check_out_dir, int_in_range

DEFAULT_CAMERA = "main"  # video key observation.images.main when the clips' camera is unknown or mixed


def _sql_list(values: list[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def _clip_facts(corpus, keys: list[str]) -> dict[str, dict[str, Any]]:
    """Per key: has_actions, out_fps, out_width, out_height, language, dataset and the source's
    camera name (from ``sources.meta_json``, robot sources only)."""
    facts: dict[str, dict[str, Any]] = {}
    step = 5000  # keep each IN (...) list a reasonable size
    for i in range(0, len(keys), step):
        part = keys[i : i + step]
        rows = corpus.query(
            "SELECT c.key, c.has_actions, c.out_fps, c.out_width, c.out_height, c.language, c.dataset, "
            "json_extract_string(s.meta_json, '$.robot.camera') AS camera "
            "FROM clips c LEFT JOIN (SELECT DISTINCT source_id, meta_json FROM sources) s USING (source_id) "
            f"WHERE c.kept AND c.key IN ({_sql_list(part)})"
        ).to_pylist()
        for r in rows:
            facts.setdefault(r["key"], r)
    return facts


def _int_fps(fps: float | None) -> int | None:
    """LeRobot stores one integer fps; a clip fps off an integer by more than 1e-3 cannot be one."""
    if fps is None or not np.isfinite(fps) or fps <= 0 or abs(fps - round(fps)) > 1e-3:
        return None
    return int(round(fps))


def _check_out_and_crf(out: Path, crf: int) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not an empty folder")
    if not 0 <= int(crf) <= 51:
        raise ValueError(f"crf={crf!r}: x264's CRF is 0-51")


def export_lerobot(
    root: str,
    select: str,
    out: str,
    camera: str | None = None,
    crf: int = 20,
    robot_type: str | None = None,
    progress: bool = True,
    storage_options: dict | None = None,
) -> dict[str, Any]:
    """Export the selected kept clips with actions of the corpus at ``root`` as a LeRobot v3.0
    dataset in the local folder ``out`` (which must not exist or be empty).

    ``select``: SQL over the corpus views returning ``key`` (or a selection manifest path), as for
    training (``defi.schemas.selection.resolve_selection``). ``camera``: the camera name of the
    video feature (``observation.images.<camera>``); default: the source camera when all exported
    clips share one, else ``main``. ``crf``: x264 quality of the re-encoded episode videos.

    Returns a summary: ``episodes``, ``frames``, ``fps``, ``size`` (h, w), ``camera``, ``selected``,
    ``skipped`` (reason -> count), ``seconds``, ``out``. Raises ``SelectionError`` for an unusable
    selection and ``ValueError`` when ``out`` is not empty or no selected clip can be exported.
    """
    from tqdm import tqdm

    from defi.schemas.corpus import Corpus
    from defi.schemas.selection import resolve_selection
    from defi.schemas.shards import ShardReader
    from defi.curate.lerobot import LeRobotV3Writer

    t0 = time.time()
    out_path = Path(out)
    _check_out_and_crf(out_path, crf)
    corpus = Corpus.open(root, storage_options=storage_options)
    resolved = resolve_selection(corpus, select)
    keys = resolved.column("key").to_pylist()
    shards = resolved.column("shard").to_pylist()
    facts = _clip_facts(corpus, keys)

    skipped: Counter = Counter()
    with_actions = [k for k in keys if facts.get(k, {}).get("has_actions")]
    skipped["no actions"] = len(keys) - len(with_actions)
    if not with_actions:
        raise ValueError(f"none of the {len(keys)} selected clips has actions; nothing to export")
    fps, height, width, todo = _dataset_shape(facts, with_actions, skipped)
    if camera is None:
        cams = {facts[k]["camera"] for k in todo}
        camera = cams.pop() if len(cams) == 1 and None not in cams else DEFAULT_CAMERA

    # Build in a hidden sibling folder, rename into place at the end (atomic on one filesystem).
    tmp = out_path.parent / f".{out_path.name}.tmp-{uuid.uuid4().hex[:8]}"
    writer: LeRobotV3Writer | None = None
    dims: dict[str, int | None] = {}
    shard_order = list(dict.fromkeys(shards))  # resolved is sorted by (shard, key)
    reader = ShardReader([corpus.shard_url(s) for s in shard_order], keys=todo, storage_options=storage_options)
    bar = tqdm(total=len(todo), unit="clip", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    seen: set[str] = set()
    try:
        for sample in reader:
            bar.update(1)
            seen.add(sample.key)
            sample, row_fps = _at_row_rate(sample)
            frames, reason = _episode_frames(sample, row_fps, dims, (height, width), fps if writer is not None else None)
            if reason is not None:
                skipped[reason] += 1
                continue
            if writer is None:
                dims = {"action": sample.actions.shape[1], "observation.state": None if sample.proprio is None else sample.proprio.shape[1]}
                features = {"action": {"dtype": "float32", "shape": [dims["action"]], "names": None}}
                if dims["observation.state"] is not None:
                    features["observation.state"] = {"dtype": "float32", "shape": [dims["observation.state"]], "names": None}
                fps = row_fps or fps  # robot clips export at their rows' rate, every row kept
                writer = LeRobotV3Writer(tmp, fps, features, {camera: (height, width)}, robot_type=robot_type, crf=crf)
            writer.add_episode(_episode(sample, frames, camera, with_state=dims["observation.state"] is not None))
        bar.close()
        missing = len(todo - seen)
        if missing:
            skipped["not found in its shard"] += missing
        for k, v in reader.stats.items():
            if k.startswith("error:"):
                skipped[f"shard {k}"] += v
        if writer is None:
            raise ValueError(f"no selected clip could be exported: {dict(skipped)}")
        info = writer.close()
        if out_path.exists():
            out_path.rmdir()  # empty, checked above
        os.replace(tmp, out_path)
    finally:
        bar.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "out": str(out_path),
        "episodes": info["total_episodes"],
        "frames": info["total_frames"],
        "fps": fps,
        "size": [height, width],
        "camera": camera,
        "tasks": info["total_tasks"],
        "selected": len(keys),
        "skipped": {k: v for k, v in skipped.items() if v},
        "seconds": time.time() - t0,
    }


def _dataset_shape(facts: dict[str, dict], keys: list[str], skipped: Counter) -> tuple[int, int, int, set[str]]:
    """The dataset's one fps and frame size, the most common among ``keys`` (ties: the smallest,
    so the choice does not depend on selection order), and the keys that have them; the others
    are counted in ``skipped`` by reason."""
    shapes = Counter((_int_fps(facts[k]["out_fps"]), facts[k]["out_height"], facts[k]["out_width"]) for k in keys)
    valid = {s: n for s, n in shapes.items() if s[0] is not None}
    if not valid:
        raise ValueError(f"no selected clip has an integer fps (got {sorted({facts[k]['out_fps'] for k in keys})})")
    fps, height, width = min(valid, key=lambda s: (-valid[s], s))
    todo = set()
    for k in keys:
        f = facts[k]
        if _int_fps(f["out_fps"]) is None:
            skipped[f"fps {f['out_fps']} is not an integer"] += 1
        elif _int_fps(f["out_fps"]) != fps:
            skipped[f"fps {f['out_fps']:g} differs from the dataset's {fps}"] += 1
        elif (f["out_height"], f["out_width"]) != (height, width):
            skipped[f"size {f['out_width']}x{f['out_height']} differs from the dataset's {width}x{height}"] += 1
        else:
            todo.add(k)
    return fps, height, width, todo


def _episode_frames(sample, row_fps: int | None, dims: dict, size: tuple[int, int], fps: int | None):
    """(frames, None) of a sample ready to write, or (None, the reason it is skipped). ``fps``: the
    dataset's rate once the first episode fixed it (None before)."""
    from defi.training.data import DecodeError, decode_frames

    reason = _check_sample(sample, dims)
    if reason is not None:
        return None, reason
    try:
        frames = decode_frames(sample.mp4)
    except DecodeError as e:
        return None, f"undecodable mp4 ({str(e)[:60]})"
    if row_fps is not None:
        frames, reason = _hold_frames(frames, sample, row_fps, fps)
        if reason is not None:
            return None, reason
    if len(frames) != len(sample.actions):
        return None, "frame count differs from action rows"
    if frames.shape[1:3] != size:
        return None, "decoded size differs from the index"
    return frames, None


def _episode(sample, frames, camera: str, with_state: bool):
    """The ``EpisodeBuffer`` of one exported clip, with its provenance in the corpus (extra
    columns, which LeRobot ignores)."""
    from defi.curate.lerobot import EpisodeBuffer

    columns = {"action": sample.actions}
    if with_state:
        columns["observation.state"] = sample.proprio
    m = sample.meta
    return EpisodeBuffer(
        frames={camera: frames},
        columns=columns,
        task=sample.lang or "",
        extra={
            "defi_key": sample.key,
            "defi_source_id": m.source_id,
            "defi_uri": m.uri,
            "defi_start_s": float(m.start_s),
            "defi_end_s": float(m.end_s),
        },
    )


def _at_row_rate(sample):
    """A robot sample with every recorded row (format 1.1) as (sample whose actions/proprio are
    those rows, their rate as an integer fps or 0 when it is not one); others as (sample, None)."""
    import dataclasses

    if sample.row_actions is None or sample.meta.frame_rows is None:
        return sample, None
    actions, proprio, _, rate = sample.rows()
    return dataclasses.replace(sample, actions=actions, proprio=proprio), _int_fps(rate) or 0


def _hold_frames(frames: np.ndarray, sample, row_fps: int, dataset_fps: int | None):
    """One frame per row (a clip encoded below the rows' rate holds each frame over its rows), or
    (frames, why not)."""
    from defi.curate.robot import rows_to_frames

    if not row_fps:
        return frames, f"row rate {sample.meta.row_fps} is not an integer fps"
    if dataset_fps is not None and row_fps != dataset_fps:
        return frames, f"row rate {row_fps} differs from the dataset's {dataset_fps}"
    if len(sample.meta.frame_rows) != len(frames):
        return frames, "frame count differs from the sample's frame-to-row map"
    return frames[rows_to_frames(sample.meta.frame_rows, len(sample.actions))], None


def _check_sample(sample, dims: dict[str, int | None]) -> str | None:
    """Why a shard sample cannot become an episode of this dataset, or None."""
    a = sample.actions
    if a is None or a.ndim != 2 or len(a) == 0:
        return "no actions in the shard"
    if not np.isfinite(a).all():
        return "actions have NaN rows (frames without a recorded action)"
    p = sample.proprio
    if p is not None and (p.ndim != 2 or len(p) != len(a) or not np.isfinite(p).all()):
        return "proprio rows missing or not finite"
    if dims:  # the first exported clip fixed the feature shapes
        if a.shape[1] != dims["action"]:
            return f"action width {a.shape[1]} differs from the dataset's {dims['action']}"
        if (p is None) != (dims["observation.state"] is None) or (p is not None and p.shape[1] != dims["observation.state"]):
            return "proprio width differs from the dataset's"
    return None


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``export`` (with its ``lerobot`` subcommand) to a ``defi`` subparsers object."""
    exp = subparsers.add_parser(
        "export",
        help="write a selection of clips in another dataset format",
        description="Write a selection of clips in another dataset format.",
    )
    sub = exp.add_subparsers(dest="export_command", metavar="FORMAT", required=True, parser_class=type(exp))
    lr = sub.add_parser(
        "lerobot",
        help="selected robot clips (with actions) as a LeRobot v3.0 dataset",
        description="Export the selected kept robot clips that have actions as a LeRobot v3.0 dataset: one "
        "episode per clip (frames decoded from the clip's mp4, actions and proprio from its "
        "shard sample, task = its language, fps = the clips' encoded fps). Clips that do not "
        "fit (no actions, other fps or size, NaN actions) are skipped and counted.",
    )
    lr.add_argument("--root", required=True, help="corpus root (local folder or fsspec URL)")
    lr.add_argument(
        "--select",
        required=True,
        help='SQL returning a key column, e.g. "SELECT key FROM clips WHERE kept AND has_actions", or a selection manifest (.parquet)',
    )
    lr.add_argument("--out", required=True, help="output folder (new or empty, local)")
    lr.add_argument("--camera", help="camera name of the video feature (default: the sources' camera, else 'main')")
    lr.add_argument("--crf", type=int_in_range(0, 51), default=20, help="x264 CRF of the episode videos, 0-51 (default 20)")
    lr.add_argument("--robot-type", help="robot_type written to meta/info.json")
    lr.add_argument("--no-progress", action="store_true", help="no progress bar")
    lr.set_defaults(func=cmd_export_lerobot)
    return exp


def cmd_export_lerobot(args: argparse.Namespace) -> int:
    from defi.pipelines.cli import UsageError
    from defi.schemas.selection import SelectionError

    check_out_dir(args.out, root=args.root)
    try:
        s = export_lerobot(
            args.root, args.select, args.out, camera=args.camera, crf=args.crf, robot_type=args.robot_type, progress=not args.no_progress
        )
    except (SelectionError, ValueError) as e:
        raise UsageError(str(e)) from None
    print(
        f"wrote {s['episodes']} episodes, {s['frames']} frames ({s['fps']} fps, {s['size'][1]}x{s['size'][0]}, "
        f"camera {s['camera']}, {s['tasks']} tasks) to {s['out']} in {s['seconds']:.1f} s; "
        f"{s['selected']} clips selected, {sum(s['skipped'].values())} skipped"
    )
    for reason, n in sorted(s["skipped"].items(), key=lambda kv: -kv[1]):
        print(f"  skipped {n:>5}  {reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``defi export ...`` on its own (argv starts with the format, e.g. ``lerobot``)."""
    from defi.pipelines.cli import run_standalone

    return run_standalone([add_export_parser], argv, prefix=("export",))


if __name__ == "__main__":
    raise SystemExit(main())
