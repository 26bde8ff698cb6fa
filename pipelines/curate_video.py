"""One source video through the curate operators, with no Ray: probe -> decode once -> shots ->
windows -> scores/filters -> encode kept clips (+ robot actions). ``curate_stages`` hands it
to the runner (``runner.py``: a local process pool or Ray) as one task per video, with CLIP
scoring as an actor stage; tests call it directly.

Memory is bounded by ``AnalysisConfig.segment_s``, not by video length: the video is decoded once,
streaming, at the *output* size, and processed in segments of ``segment_s`` seconds. Each segment's
frames are held once (as yuv420p by default: half the bytes of RGB; plus an analysis-size RGB
copy), cut into shots, windowed, scored and encoded, then dropped. A shot longer than a segment
is split at the segment boundary (windows split long shots anyway; the boundary is recorded as a
forced cut).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterator

import numpy as np

from defi.curate.base import Frames
from defi.curate.clip_score import ClipScorer, sample_keyframes
from defi.curate.decode import DecodeError, decode
from defi.curate.dedup import Dedup, clip_phashes
from defi.curate.encode import ClipEncoder, encode_frames, select_ticks
from defi.schemas.keys import clip_key
from defi.schemas.records import ClipRecord, SourceRecord
from defi.schemas.samples import EXT_ACTIONS, EXT_LANG, EXT_META, EXT_PROPRIO, EXT_ROW_ACTIONS, EXT_ROW_PROPRIO, EXT_VIDEO, SampleMeta
from defi.schemas.tables import FORMAT_VERSION

from .curate_config import CurateConfig
from .runner import Stage, node_id
from .sources import SourceSpec


@dataclass
class ClipItem:
    """A clip on its way to a shard: its row, its sample members, and CLIP keyframes if needed."""

    record: ClipRecord
    members: dict[str, bytes] = field(default_factory=dict)
    keyframes: np.ndarray | None = None  # uint8 [K, H, W, 3] for the CLIP stage, then dropped


@dataclass
class VideoDone:
    """The last item a video yields: its ``sources`` row and what its processing cost."""

    source: SourceRecord
    num_clips: int
    timings: dict[str, float]
    node: str | None = None
    spec_key: tuple = ()
    started_at: float = 0.0  # wall clock (epoch seconds) of the worker when it began / finished
    finished_at: float = 0.0


def source_id_for(spec: SourceSpec, file_hash: str) -> str:
    """A robot episode shares its file with others (LeRobot v3 concatenates episodes): its id
    mixes the file's content hash with the episode and camera, so each episode is one source."""
    if not spec.robot or spec.robot.get("format") != "lerobot":
        return file_hash
    tag = f"{file_hash}:{spec.robot['episode_index']}:{spec.robot['camera']}"
    return hashlib.blake2b(tag.encode(), digest_size=16).hexdigest()


@functools.lru_cache(maxsize=8)
def _lerobot_episodes(root: str) -> dict[tuple[int, str], Any]:
    from defi.curate.lerobot import load_lerobot

    return {(ep.episode_index, ep.camera): ep for ep in load_lerobot(root)}


def load_episode(spec: SourceSpec):
    """The robot episode behind a spec (actions, proprio, timestamps), or None."""
    if not spec.robot:
        return None
    if spec.robot["format"] == "lerobot":
        return _lerobot_episodes(spec.robot["root"])[(spec.robot["episode_index"], spec.robot["camera"])]
    from defi.curate.robot import load_npz_episode

    return load_npz_episode(spec.uri, spec.robot["npz"])


def process_source(spec: SourceSpec, cfg: CurateConfig, run_id: str | None = None) -> Iterator[ClipItem | VideoDone]:
    """Yield every candidate clip of one source (kept and rejected), then a ``VideoDone``.
    Never raises for a bad video: a failure becomes the source's ``error`` (and rejected clips)."""
    timings: dict[str, float] = {}
    started_at = time.time()
    t0 = time.perf_counter()
    rec = cfg.probe(spec.uri, kind=spec.kind, dataset=spec.dataset, run_id=run_id)
    timings["probe"] = time.perf_counter() - t0
    rec.license, rec.language = spec.license, spec.language
    if spec.meta or spec.robot:
        rec.meta_json = json.dumps({**spec.meta, **({"robot": spec.robot} if spec.robot else {})}, sort_keys=True, default=str)
    if rec.source_id:
        rec.source_id = source_id_for(spec, rec.source_id)
    else:  # not_found etc.: no content to hash; the uri names the row
        rec.source_id = hashlib.blake2b(repr(spec.sort_key).encode(), digest_size=16).hexdigest()
    n = 0
    if rec.error is None:
        from defi.curate.robot import SidecarError

        sidecar = None
        try:
            episode = load_episode(spec)
        except SidecarError as e:  # an episode.npz without usable actions: the video is still curated, action-free
            episode, sidecar = None, str(e)
            rec.error_detail = f"robot sidecar unusable ({e}); curated action-free"[:500]
        except Exception as e:  # a broken episode file: the source says why, the run goes on
            rec.error, rec.error_detail, episode = "robot_episode_unreadable", f"{type(e).__name__}: {e}"[:500], None
        _episode_meta(rec, episode, sidecar)
        if episode is not None and episode.language and not rec.language:
            # the episode's task instruction (an npz sidecar's ``language``, a LeRobot task) unless
            # the listing named one: it goes to the source and clip rows and each sample's .lang.txt
            rec.language = episode.language
        if rec.error is None:
            if episode is not None and spec.robot.get("format") == "lerobot":
                _describe_episode(rec, episode)
            if episode is not None and episode.timestamp_issues:
                rec.error_detail = "timestamp issues: " + "; ".join(episode.timestamp_issues)[:480]
            try:
                for item in _clips_of(spec, rec, episode, cfg, run_id, timings):
                    n += 1
                    yield item
            except DecodeError as e:
                rec.error, rec.error_detail = "decode_failed", str(e)[:500]
            except Exception as e:  # an odd file tripping an operator: the source says why, the run goes on
                rec.error, rec.error_detail = "processing_failed", f"{type(e).__name__}: {e}"[:500]
    if rec.error is None and n == 0:
        # every readable source yields at least one clip row (`defi check` relies on it to find lost clips)
        rec.error, rec.error_detail = "no_clips", "decoding gave no frames in the source's time range"
    timings["total"] = time.perf_counter() - t0
    yield VideoDone(rec, n, timings, spec_key=spec.sort_key, started_at=started_at, finished_at=time.time())


def _describe_episode(rec: SourceRecord, episode) -> None:
    """A LeRobot episode is a span of a file other episodes share: its source row gives the span's
    duration and frame count (counted from packets by ``load_lerobot``; else duration x fps, marked
    inexact), not the file's."""
    rec.duration_s = (episode.to_s or rec.duration_s) - episode.from_s
    if episode.video_frames is not None:
        rec.num_frames, rec.num_frames_exact = int(episode.video_frames), True
    elif rec.duration_s is not None:
        rec.num_frames, rec.num_frames_exact = int(round(rec.duration_s * episode.fps)), False
    rec.fps_avg = rec.num_frames / rec.duration_s if rec.num_frames and rec.duration_s else None


def _episode_meta(rec: SourceRecord, episode, sidecar_error: str | None) -> None:
    """Keep in the source's ``meta_json`` what the episode says beyond actions: its success flag,
    the sidecar fields defi does not use, or why the sidecar was unusable."""
    extra: dict[str, Any] = {}
    if sidecar_error:
        extra["sidecar_error"] = sidecar_error
    if episode is not None and episode.extra:
        extra["sidecar_fields"] = episode.extra
    if episode is not None and episode.success is not None:
        extra["success"] = bool(episode.success)
    if extra:
        meta = json.loads(rec.meta_json) if rec.meta_json else {}
        rec.meta_json = json.dumps({**meta, **extra}, sort_keys=True, default=str)


def _segments(spec: SourceSpec, rec: SourceRecord, cfg: CurateConfig) -> Iterator[tuple[Frames, float, int]]:
    """Decode once at the output size; yield (segment frames, segment end in seconds, end frame)."""
    start_s = float(spec.robot.get("from_s", 0.0)) if spec.robot else 0.0
    end_s = spec.robot.get("to_s") if spec.robot else None
    seg_len = cfg.analysis.segment_s
    size = cfg.encode.short_side
    if size is not None and not cfg.encode.upscale and rec.width and rec.height and min(rec.width, rec.height) < size:
        size = None  # never upscale: decode at the source size
    buf: list[Frames] = []
    boundary = start_s + seg_len
    for chunk in decode(
        spec.uri,
        size=size,
        start_s=start_s,
        end_s=end_s,
        chunk_frames=cfg.analysis.chunk_frames,
        skip_loop_filter=cfg.analysis.skip_loop_filter,
        threads=cfg.analysis.decode_threads,
        pix_fmt=cfg.analysis.pix_fmt,
    ):
        while len(chunk) and chunk.pts_s[-1] >= boundary - 1e-6:
            head = chunk.slice_time(-np.inf, boundary)
            chunk = chunk.slice_time(boundary, np.inf)
            if len(head):
                buf.append(head)
            seg = Frames.concat(buf)
            buf = []
            if len(seg):
                nxt = chunk.indices[0] if len(chunk) else None
                yield seg, boundary, nxt
            boundary += seg_len
        if len(chunk):
            buf.append(chunk)
    seg = Frames.concat(buf)
    if len(seg):
        yield seg, None, None


def _clips_of(spec, rec: SourceRecord, episode, cfg: CurateConfig, run_id, timings) -> Iterator[ClipItem]:
    key_params = cfg.key_params()
    lineage = [op.lineage() for op in (cfg.probe, cfg.shots, cfg.windows, cfg.duration, cfg.resolution, *cfg.scorers(), cfg.encode)]
    if cfg.use_clip:
        lineage.append(cfg.clip.lineage())
    if cfg.use_dedup:
        lineage.append(cfg.dedup.lineage())

    def tick(name: str, t: float) -> None:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t

    res_scores, res_reason = cfg.resolution(rec)
    t = time.perf_counter()
    tail = None  # the previous segment's last analysis frames: context for cuts just after a boundary
    for seg, seg_end_s, seg_end_frame in _segments(spec, rec, cfg):
        tick("decode", t)
        t = time.perf_counter()
        analysis = seg.to_rgb(cfg.analysis.short_side)
        end_s = seg_end_s if seg_end_s is not None else _video_end_s(spec)
        end_frame = int(seg_end_frame) if seg_end_frame is not None else int(seg.indices[-1]) + 1
        shots = cfg.shots(analysis, end_frame=end_frame, end_s=end_s, context=tail)
        k = cfg.shots.window_width + 1
        tail = Frames(analysis.frames[-k:], analysis.pts_s[-k:], analysis.indices[-k:])
        # windows want pts indexed by source frame: this segment's frames, offset to its first index
        pts = np.full(end_frame, np.nan)
        pts[seg.indices] = seg.pts_s
        clips = cfg.windows(shots, pts_s=_fill_nan(pts))
        tick("shots", t)
        for c in clips:
            t = time.perf_counter()
            key = clip_key(rec.source_id, c.start_frame, c.end_frame, key_params)
            r = ClipRecord(
                key=key,
                source_id=rec.source_id,
                start_frame=c.start_frame,
                end_frame=c.end_frame,
                start_s=c.start_s,
                end_s=c.end_s,
                uri=spec.uri,
                kind=rec.kind,
                dataset=rec.dataset,
                shot_index=c.shot_index,
                clip_index=c.clip_index,
                width=rec.width,
                height=rec.height,
                language=rec.language,
                operators=lineage,
                run_id=run_id,
            )
            if c.reject_reason:
                r.reject(c.reject_reason)
            if res_reason:
                r.reject(res_reason)
            sc, reason = cfg.duration(r)
            if reason:
                r.reject(reason)
            frames = analysis.slice_frames(c.start_frame, c.end_frame)
            for op in cfg.scorers():
                try:
                    scores, reason = op(frames)
                except Exception as e:  # an operator bug on odd frames: recorded, not raised
                    r.errors[op.name] = f"{type(e).__name__}: {e}"[:300]
                    continue
                r.set_scores({k: v for k, v in scores.items() if k not in ("duration_s", "short_side")})
                if reason:
                    r.reject(reason)
            if len(frames):
                r.phash = ",".join(clip_phashes(frames))
            tick("score", t)
            item = ClipItem(r)
            if r.kept:
                out = seg.slice_frames(c.start_frame, c.end_frame)
                if cfg.use_clip and len(out):
                    item.keyframes = out.take(sample_keyframes(len(out), cfg.clip.num_frames)).to_rgb().frames
                t = time.perf_counter()
                _encode(item, out, episode, cfg)
                tick("encode", t)
            yield item
        t = time.perf_counter()


def _video_end_s(spec) -> float | None:
    if spec.robot and spec.robot.get("to_s") is not None:
        return float(spec.robot["to_s"])
    return None  # the detector estimates it from the last frame


def _fill_nan(pts: np.ndarray) -> np.ndarray:
    """Frames before the segment have no pts here; windows only read indices inside its shots."""
    if np.isnan(pts).any():
        first = np.flatnonzero(~np.isnan(pts))
        if len(first):
            pts[: first[0]] = pts[first[0]]
    return pts


def _encode(item: ClipItem, out: Frames, episode, cfg: CurateConfig) -> None:
    """Resample the clip to the target fps by timestamp, encode it, attach actions and metadata."""
    r = item.record
    enc = cfg.encode
    picked = list(select_ticks(((float(t), i) for i, t in enumerate(out.pts_s)), r.start_s, r.end_s, enc.fps, max_frames=enc.max_frames))
    if not picked:
        r.errors["encode"] = "no frames in the clip's time range"
        r.reject("encode_failed")
        return
    idx = np.array([i for _, i in picked])
    sel = out.take(idx)
    buf = io.BytesIO()
    result = encode_frames(sel, enc.fps, buf, short_side=enc.short_side, crf=enc.crf, preset=enc.preset, upscale=enc.upscale)
    ClipEncoder.update_record(r, result)
    if not r.kept:
        return
    item.members[EXT_VIDEO] = buf.getvalue()
    action_dim = None
    rows = None
    if episode is not None:
        from defi.curate.robot import align_to_frames, rows_in_span

        al = align_to_frames(episode, sel.pts_s)
        if al.actions is not None:
            if len(al.missed):
                r.errors["actions"] = f"{len(al.missed)} of {len(sel)} frames have no action within half a frame"
            item.members[EXT_ACTIONS] = _npy(al.actions.astype(np.float32))
            action_dim = int(al.actions.shape[1])
            r.has_actions = True
        if al.proprio is not None:
            item.members[EXT_PROPRIO] = _npy(al.proprio.astype(np.float32))
        # every recorded row in the clip's span, at the robot's rate (the per-frame rows above
        # keep one row per encoded frame: at 10 fps from 20 Hz that is half of them)
        rows = rows_in_span(episode, r.start_s, r.end_s, sel.pts_s)
        if rows.actions is not None:
            item.members[EXT_ROW_ACTIONS] = _npy(rows.actions)
        if rows.proprio is not None:
            item.members[EXT_ROW_PROPRIO] = _npy(rows.proprio)
    if r.has_actions is None:
        r.has_actions = False
    if r.language:
        item.members[EXT_LANG] = r.language.encode()
    meta = SampleMeta(
        key=r.key,
        source_id=r.source_id,
        uri=r.uri or "",
        start_frame=r.start_frame,
        end_frame=r.end_frame,
        start_s=r.start_s,
        end_s=r.end_s,
        fps=float(r.out_fps),
        width=int(r.out_width),
        height=int(r.out_height),
        num_frames=int(r.out_frames),
        kind=r.kind,
        dataset=r.dataset,
        language=r.language,
        action_dim=action_dim,
        format_version=FORMAT_VERSION,
        row_fps=None if rows is None else rows.fps,
        row_times_s=None if rows is None else [round(float(x), 6) for x in rows.times_s],
        frame_rows=None if rows is None else [int(x) for x in rows.frame_rows],
        extra={"frame_pts_s": [round(float(x), 6) for x in sel.pts_s]},
    )
    item.members[EXT_META] = meta.to_json()


def _npy(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, a, allow_pickle=False)
    return b.getvalue()


def score_clip_batch(items: list[ClipItem], scorer: ClipScorer) -> None:
    """CLIP-score the items that carry keyframes, in one batch; reject below ``min_score``."""
    todo = [it for it in items if it.keyframes is not None and len(it.keyframes)]
    if not todo:
        return
    frames = [Frames(it.keyframes, np.zeros(len(it.keyframes)), np.zeros(len(it.keyframes), np.int64)) for it in todo]
    for it, scores in zip(todo, scorer.score_batch(frames), strict=False):
        scorer.update_record(it.record, scores)
        reason = scorer.reject_reason(scores)
        if reason:
            it.record.reject(reason)
            it.members = {}
        it.keyframes = None


def video_items(spec: SourceSpec, cfg: CurateConfig, run_id: str) -> Iterator[VideoDone | tuple[tuple, ClipItem]]:
    """The curate task stage: ``process_source``'s clips as ``(spec.sort_key, clip)``, then its
    ``VideoDone`` stamped with the node that ran it."""
    for item in process_source(spec, cfg, run_id):
        if isinstance(item, VideoDone):
            item.node = node_id()
            yield item
        else:
            yield (spec.sort_key, item)


class ClipActor:
    """The CLIP actor stage: one model; scores the clips of each batch that carry keyframes
    (``VideoDone`` items pass through in place)."""

    def __init__(self, cfg: CurateConfig):
        self.scorer = cfg.clip

    def __call__(self, items: list) -> list:
        score_clip_batch([it[1] for it in items if isinstance(it, tuple)], self.scorer)
        return items


def curate_stages(cfg: CurateConfig, run_id: str, videos: int | None = None, slots: float | None = None) -> list[Stage]:
    """The stages of ``defi curate``: one task per video (1 CPU), then CLIP scoring when on (an
    actor pool of ``ray.clip_actors``, 32 clips a batch, a GPU each when there is one).
    ``videos``/``slots``: the run's video count and worker slots (CPUs), which resolve
    ``analysis.decode_threads=0`` (the saved config keeps the 0)."""
    if cfg.analysis.decode_threads == 0 and videos is not None and slots is not None and videos >= slots:
        cfg = dataclasses.replace(cfg, analysis=dataclasses.replace(cfg.analysis, decode_threads=1))
    stages = [Stage("video", video_items, (cfg, run_id), cpus=1)]
    if cfg.use_clip:
        stages.append(Stage("clip", ClipActor, (cfg,), gpus="auto", actors=max(1, cfg.ray.clip_actors), batch_size=32))
    return stages


def dedup_video(items: list[ClipItem], dedup: Dedup) -> None:
    """Near-duplicates among one video's kept clips: the keeper stays, the others are rejected
    ``duplicate`` (scope is one video so results do not depend on how videos are batched)."""
    kept = [it for it in items if it.record.kept]
    if len(kept) < 2:
        for it in kept:
            it.record.dup_group = it.record.key
        return
    results = dedup(dedup.items_from_records([it.record for it in kept]))
    for it, res in zip(kept, results, strict=False):
        it.record.dup_group = res.dup_group
        if not res.kept:
            it.record.reject("duplicate")
            it.members = {}
