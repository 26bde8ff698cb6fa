"""Typed records for the rows code builds. Field names equal the table's column names, so
``table_from_rows([r.to_row() for r in records], SOURCES)`` is the whole conversion."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .tables import CLIPS, SCORE_COLUMNS, SOURCES, table_from_rows


class Span:
    """A half-open span of source frames ``[start_frame, end_frame)`` and its times in seconds
    ``[start_s, end_s)``; shared by shots, clip windows and clip records."""

    start_frame: int
    end_frame: int
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame


@dataclass
class SourceRecord:
    """One input video, probed. ``error`` is a short reason when it could not be used."""

    source_id: str
    uri: str
    kind: str | None = None
    dataset: str | None = None
    license: str | None = None
    language: str | None = None
    size_bytes: int | None = None
    container: str | None = None
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    rotation: int | None = None
    fps_avg: float | None = None
    fps_real: float | None = None
    is_vfr: bool | None = None
    duration_s: float | None = None
    num_frames: int | None = None
    num_frames_exact: bool | None = None
    has_audio: bool | None = None
    error: str | None = None
    error_detail: str | None = None
    run_id: str | None = None
    meta_json: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ClipRecord(Span):
    """One candidate clip, kept or rejected. Scores stay ``None`` when their operator did not run."""

    key: str
    source_id: str
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    uri: str | None = None
    kind: str | None = None
    dataset: str | None = None
    shot_index: int | None = None
    clip_index: int | None = None
    kept: bool = True
    reject_reason: str | None = None
    errors: dict[str, str] = field(default_factory=dict)
    width: int | None = None
    height: int | None = None
    motion_mean: float | None = None
    motion_p90: float | None = None
    frame_diff: float | None = None
    camera_motion: float | None = None
    local_motion: float | None = None
    blur: float | None = None
    black_frac: float | None = None
    clip_scores: dict[str, float] | None = None
    clip_score_max: float | None = None
    clip_embedding: list[float] | None = None
    phash: str | None = None
    dup_group: str | None = None
    extra_scores: dict[str, float] = field(default_factory=dict)
    shard: str | None = None
    out_fps: float | None = None
    out_width: int | None = None
    out_height: int | None = None
    out_frames: int | None = None
    out_bytes: int | None = None
    has_actions: bool | None = None
    language: str | None = None
    operators: list[dict[str, Any]] = field(default_factory=list)
    run_id: str | None = None

    def reject(self, reason: str) -> None:
        """Mark rejected; the first reason wins, so the index names the filter that fired first."""
        if self.kept:
            self.kept = False
            self.reject_reason = reason

    def set_scores(self, scores: dict[str, float]) -> None:
        """Store scores: known names go to their column, others to ``extra_scores``."""
        for name, value in scores.items():
            if name in SCORE_COLUMNS:
                setattr(self, name, None if value is None else float(value))
            else:
                self.extra_scores[name] = float(value)

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        for name in SCORE_COLUMNS:  # a score column reaches the row whether or not a field above declares it
            row[name] = getattr(self, name, None)
        errors = row.pop("errors")
        row["errors_json"] = json.dumps(errors, sort_keys=True) if errors else None
        row["operators_json"] = json.dumps(row.pop("operators"), sort_keys=True)
        row["duration_s"] = self.duration_s
        row["clip_scores"] = list(self.clip_scores.items()) if self.clip_scores else None
        row["extra_scores"] = list(self.extra_scores.items()) if self.extra_scores else None
        return row


def sources_table(records: list[SourceRecord]):
    return table_from_rows([r.to_row() for r in records], SOURCES, "sources")


def clips_table(records: list[ClipRecord]):
    return table_from_rows([r.to_row() for r in records], CLIPS, "clips")
