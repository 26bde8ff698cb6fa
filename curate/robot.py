"""Robot episodes with actions: read them, check their timestamps, align actions to clip frames.

Two sources:
- a LeRobot v3.0 dataset (``defi.curate.lerobot.load_lerobot``, beside its writer): ``meta/info.json``, ``meta/tasks.parquet``,
  ``meta/episodes/*/*.parquet``, ``data/*/*.parquet`` and one mp4 per camera per file, with
  several episodes one after another in a file (each episode's span is
  ``[from_s, to_s)`` seconds inside its file);
- a plain ``episode.mp4`` beside ``episode.npz`` (``load_npz_episode``) with arrays ``actions``
  [N, A] and optionally ``timestamps`` [N] (seconds), ``proprio`` [N, P], ``language`` (str).

Times: ``RobotEpisode.timestamps`` are seconds from the episode's start (LeRobot's ``timestamp``
column); ``RobotEpisode.video_times_s`` = ``from_s + timestamps`` are the same instants on the
video file's clock, which is the clock of the pts that decoding the file yields. ``align_to_frames``
takes frame pts on the file's clock.

Timestamp problems (non-monotonic, jitter over half a frame, row count different from the
video's frame count) are listed in ``timestamp_issues``, never repaired by resampling. Nothing
here imports ray or a simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np


@dataclass
class RobotEpisode:
    """One episode seen by one camera.

    ``uri``: the video file; ``from_s``/``to_s``: the episode's span inside it (seconds, end
    exclusive; ``to_s`` is None when unknown). ``timestamps``: float64 [N] seconds from the
    episode's start, one per row. ``actions``: float32 [N, A] or None (action-free data);
    ``proprio``: float32 [N, P] or None. ``success``: None when unknown. ``video_frames``: the
    video frames in the episode's span, when counted (``lerobot.load_lerobot(check_video=True)``).
    """

    uri: str
    camera: str
    episode_index: int
    fps: float
    timestamps: np.ndarray
    actions: np.ndarray | None
    proprio: np.ndarray | None
    language: str
    success: bool | None
    from_s: float = 0.0
    to_s: float | None = None
    timestamp_issues: list[str] = field(default_factory=list)
    video_frames: int | None = None
    extra: dict = field(default_factory=dict)  # sidecar fields defi does not use, kept for the source's metadata

    @property
    def video_times_s(self) -> np.ndarray:
        """Row times on the video file's clock (seconds)."""
        return self.from_s + self.timestamps

    def __len__(self) -> int:
        return len(self.timestamps)


def check_timestamps(timestamps: np.ndarray, fps: float, n_video_frames: int | None = None) -> list[str]:
    """Problems with one episode's row timestamps (seconds), as short strings.

    - ``non-monotonic``: a timestamp not later than the one before;
    - ``jitter``: a step differing from ``1/fps`` by more than half a frame;
    - ``frame count``: ``n_video_frames`` (when given) differs from the number of rows.
    """
    issues = []
    ts = np.asarray(timestamps, np.float64)
    if len(ts) == 0:
        return ["no rows"]
    if not np.all(np.isfinite(ts)):
        issues.append(f"non-finite timestamps: {int((~np.isfinite(ts)).sum())} rows")
    d = np.diff(ts)
    bad = np.flatnonzero(d <= 0)
    if len(bad):
        issues.append(f"non-monotonic: {len(bad)} steps <= 0 (first at row {int(bad[0]) + 1}, {ts[bad[0]]:.4f}s -> {ts[bad[0] + 1]:.4f}s)")
    if fps and len(d):
        period = 1.0 / fps
        err = np.abs(d - period)
        jit = np.flatnonzero(err > period / 2)
        if len(jit):
            issues.append(
                f"jitter: {len(jit)} steps off 1/fps by more than half a frame "
                f"(max {float(err.max()) * 1000:.1f} ms, first at row {int(jit[0]) + 1})"
            )
    if n_video_frames is not None and n_video_frames != len(ts):
        issues.append(f"frame count: video has {n_video_frames} frames, episode has {len(ts)} rows")
    return issues


def video_frame_times(path: str | Path, from_s: float = 0.0, to_s: float | None = None) -> np.ndarray:
    """Pts (seconds, sorted) of the video frames in ``[from_s, to_s)``, read from packets without
    decoding."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        tb = s.time_base
        pts = [float(p.pts * tb) for p in c.demux(s) if p.pts is not None and p.size > 0]
    pts = np.sort(np.asarray(pts, np.float64))
    eps = 1e-6
    m = pts >= from_s - eps
    if to_s is not None:
        m &= pts < to_s - eps
    return pts[m]


class SidecarError(ValueError):
    """An ``episode.npz`` that cannot give actions: names the field and why."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(f"{field_name}: {reason}")
        self.field, self.reason = field_name, reason


_NPZ_FIELDS = ("actions", "timestamps", "proprio", "language", "success")


def _extra_value(a: np.ndarray):
    """A JSON-able summary of a sidecar field defi does not use: small values as they are, else
    their shape and dtype."""
    if a.dtype.kind in "biufU" and a.size <= 16:
        return a.tolist()
    return {"shape": list(a.shape), "dtype": str(a.dtype)}


def _npz_success(a: np.ndarray) -> bool:
    """``success`` as one flag: a scalar, or a per-step array (one flag per step) -> any step."""
    if a.dtype.kind not in "biuf":
        raise SidecarError("success", f"expected booleans or numbers, got dtype {a.dtype}")
    return bool(np.any(a != 0)) if a.size else False


def _npz_actions(z) -> np.ndarray:
    if "actions" not in z.files:
        raise SidecarError("actions", f"missing (fields: {', '.join(z.files) or 'none'})")
    raw = z["actions"]
    if raw.dtype.kind not in "biuf":
        raise SidecarError("actions", f"expected numbers, got dtype {raw.dtype}")
    actions = np.asarray(raw, np.float32)
    if actions.ndim == 1:
        actions = actions[:, None]
    if actions.ndim != 2 or len(actions) == 0:
        raise SidecarError("actions", f"expected [steps, dims] with at least one step, got shape {tuple(raw.shape)}")
    return actions


def load_npz_episode(mp4_path: str | Path, npz_path: str | Path | None = None) -> RobotEpisode:
    """An ``episode.mp4`` with its ``episode.npz`` (default: same name, ``.npz``).

    npz arrays: ``actions`` [N, A] (required), ``timestamps`` [N] seconds (default: the video's
    frame pts when the counts match, else ``i / fps``), ``proprio`` [N, P], ``language`` (str),
    ``success`` (a bool, or one flag per step: success = any step). Other fields are kept in
    ``RobotEpisode.extra``. Timestamps on another clock (e.g. wall-clock time) are shifted so the
    first row falls on the video's first frame, and the shift is reported. A sidecar that cannot
    give actions raises ``SidecarError`` naming the field and the reason.
    """
    mp4_path = Path(mp4_path)
    npz_path = Path(npz_path) if npz_path is not None else mp4_path.with_suffix(".npz")
    pts = video_frame_times(mp4_path)
    import av

    with av.open(str(mp4_path)) as c:
        rate = c.streams.video[0].average_rate or c.streams.video[0].guessed_rate
    fps = float(rate) if rate else (1.0 / float(np.median(np.diff(pts))) if len(pts) > 1 else 0.0)
    issues: list[str] = []
    try:
        z = np.load(npz_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SidecarError(
            "file", f"{npz_path.name} is not a readable npz ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    if not hasattr(z, "files"):
        raise SidecarError("file", f"{npz_path.name} holds one array, not named fields")
    try:
        with z:
            actions = _npz_actions(z)
            n = len(actions)
            proprio = np.asarray(z["proprio"], np.float32) if "proprio" in z.files else None
            language = str(z["language"]) if "language" in z.files else ""
            success = _npz_success(z["success"]) if "success" in z.files else None
            extra = {k: _extra_value(z[k]) for k in z.files if k not in _NPZ_FIELDS}
            if "timestamps" in z.files:
                ts = np.asarray(z["timestamps"], np.float64).ravel()
                if len(ts) != n:
                    issues.append(f"timestamps has {len(ts)} rows, actions has {n}")
                    ts = ts[:n] if len(ts) > n else np.concatenate([ts, np.full(n - len(ts), np.nan)])
                start = float(pts[0]) if len(pts) else 0.0
                if len(ts) and fps and abs(ts[0] - start) > 0.5 / fps:
                    issues.append(f"clock offset: timestamps start at {ts[0]:.4f}s, video at {start:.4f}s; shifted")
                    ts = ts - ts[0] + start
            elif len(pts) == n:
                ts = pts.copy()
            else:
                ts = (pts[0] if len(pts) else 0.0) + np.arange(n) / fps
    except SidecarError:
        raise
    except (ValueError, TypeError, OSError) as e:  # an object array (needs pickle), a bad cast ...
        raise SidecarError("file", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if proprio is not None and len(proprio) != n:
        issues.append(f"proprio has {len(proprio)} rows, actions has {n}")
    issues += check_timestamps(ts, fps, len(pts))
    return RobotEpisode(
        uri=str(mp4_path),
        camera="",
        episode_index=0,
        fps=fps,
        timestamps=ts,
        actions=actions,
        proprio=proprio,
        language=language,
        success=success,
        from_s=0.0,
        to_s=None,
        timestamp_issues=issues,
        extra=extra,
    )


class Alignment(NamedTuple):
    """Rows of an episode matched to clip frames.

    ``actions``: float32 [T, A] (NaN rows where no row lay within tolerance; None for
    action-free episodes); ``proprio``: the same for proprio (or None); ``max_error_s``: the
    largest |frame pts - row time| over matched frames (seconds); ``missed``: int64 indices of
    frames without a row within tolerance.
    """

    actions: np.ndarray | None
    proprio: np.ndarray | None
    max_error_s: float
    missed: np.ndarray


def align_to_frames(episode: RobotEpisode, frame_pts_s: np.ndarray, tolerance_s: float | None = None) -> Alignment:
    """For each clip frame (its pts on the video file's clock, seconds), the episode row whose
    time (``episode.video_times_s``) is nearest, if within ``tolerance_s`` (default: half a frame
    period). Rows are never interpolated: a frame gets a recorded action or NaN.
    """
    frame_pts_s = np.asarray(frame_pts_s, np.float64)
    times = episode.video_times_s
    if tolerance_s is None:
        tolerance_s = 0.5 / episode.fps if episode.fps else 0.0
    if len(times) == 0:
        nearest = np.zeros(len(frame_pts_s), np.int64)
        err = np.full(len(frame_pts_s), np.inf)
    else:
        # Nearest by sorted search; works with non-monotonic rows too (sorted order, stable).
        order = np.argsort(times, kind="stable")
        st = times[order]
        pos = np.clip(np.searchsorted(st, frame_pts_s), 1, max(len(st) - 1, 1))
        left = np.clip(pos - 1, 0, len(st) - 1)
        right = np.clip(pos, 0, len(st) - 1)
        pick_right = np.abs(st[right] - frame_pts_s) < np.abs(st[left] - frame_pts_s)
        sorted_idx = np.where(pick_right, right, left)
        nearest = order[sorted_idx]
        err = np.abs(st[sorted_idx] - frame_pts_s)
    ok = err <= tolerance_s + 1e-9
    missed = np.flatnonzero(~ok).astype(np.int64)

    def take(arr: np.ndarray | None) -> np.ndarray | None:
        if arr is None:
            return None
        res = np.full((len(frame_pts_s),) + arr.shape[1:], np.nan, np.float32)
        if len(arr):
            res[ok] = arr[nearest[ok]]
        return res

    max_err = float(err[ok].max()) if ok.any() else float("nan")
    return Alignment(take(episode.actions), take(episode.proprio), max_err, missed)


class ClipRows(NamedTuple):
    """Every recorded row of an episode inside a clip's span, at the episode's native rate.

    ``index``: int64 [R] row indices into the episode (sorted by time); ``times_s``: float64 [R]
    their times on the video file's clock (seconds); ``actions``: float32 [R, A] or None;
    ``proprio``: float32 [R, P] or None; ``frame_rows``: int64 [T], for each clip frame the
    position in these R rows of the row aligned to it (nearest within half a row period), -1 when
    none is; ``fps``: the rows' rate (the episode's fps).
    """

    index: np.ndarray
    times_s: np.ndarray
    actions: np.ndarray | None
    proprio: np.ndarray | None
    frame_rows: np.ndarray
    fps: float


def rows_in_span(episode: RobotEpisode, start_s: float, end_s: float, frame_pts_s: np.ndarray) -> ClipRows:
    """Rows whose time (file clock, seconds) lies in the clip's span ``[start_s, end_s)``, shifted
    back by half a row period so that a row recorded a hair before its frame's pts still belongs
    to that frame's clip. Clips that tile an episode (each one ending where the next starts)
    therefore share out its rows exactly: every row lands in one clip, whatever the clip's
    encoded fps. ``frame_pts_s``: the clip's encoded frames (file clock), mapped to rows as
    ``align_to_frames`` does."""
    times = episode.video_times_s
    half = 0.5 / episode.fps if episode.fps else 1e-6
    order = np.argsort(times, kind="stable")
    st = times[order]
    inside = (st >= start_s - half - 1e-9) & (st < end_s - half - 1e-9)
    index = order[inside].astype(np.int64)
    al = align_to_frames(episode, frame_pts_s)
    frame_pts_s = np.asarray(frame_pts_s, np.float64)
    rtimes = times[index]
    frame_rows = np.full(len(frame_pts_s), -1, np.int64)
    if len(index):
        pos = np.clip(np.searchsorted(rtimes, frame_pts_s), 1, max(len(rtimes) - 1, 1))
        left, right = np.clip(pos - 1, 0, len(rtimes) - 1), np.clip(pos, 0, len(rtimes) - 1)
        pick = np.where(np.abs(rtimes[right] - frame_pts_s) < np.abs(rtimes[left] - frame_pts_s), right, left)
        ok = np.abs(rtimes[pick] - frame_pts_s) <= half + 1e-9
        ok[al.missed] = False
        frame_rows[ok] = pick[ok]

    def take(arr: np.ndarray | None) -> np.ndarray | None:
        return None if arr is None else np.asarray(arr, np.float32)[index]

    return ClipRows(index, rtimes, take(episode.actions), take(episode.proprio), frame_rows, float(episode.fps))


def rows_to_frames(frame_rows: np.ndarray, num_rows: int) -> np.ndarray:
    """For each of ``num_rows`` rows, the clip frame showing it: the last frame whose aligned row
    is at or before it (frame 0 for rows before the first aligned frame). With ``frame_rows`` of
    a clip encoded below the rows' rate, consecutive rows share a frame (the frame is held)."""
    fr = np.asarray(frame_rows, np.int64)
    valid = np.flatnonzero(fr >= 0)
    if len(valid) == 0:
        return np.zeros(num_rows, np.int64)
    pos = np.searchsorted(fr[valid], np.arange(num_rows), side="right") - 1
    return valid[np.clip(pos, 0, len(valid) - 1)]
