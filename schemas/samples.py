"""The WebDataset sample layout of a shard.

Each sample is a group of tar members sharing a key: ``<key>.mp4`` (H.264, yuv420p, faststart),
``<key>.json`` (``SampleMeta``), optionally ``<key>.actions.npy`` (float32 [out_frames, action_dim],
aligned to the clip's encoded frames), ``<key>.proprio.npy`` and ``<key>.lang.txt`` (UTF-8).

Robot clips (format 1.1 on) also carry every recorded row in the clip's span at the robot's own
rate, whatever fps the clip was encoded at: ``<key>.rows.actions.npy`` float32 [R, action_dim],
``<key>.rows.proprio.npy`` float32 [R, P], with ``SampleMeta.row_fps`` (the rows' rate, Hz),
``row_times_s`` (R times on the source file's clock, seconds, like ``extra.frame_pts_s``) and
``frame_rows`` (per encoded frame, the position in those R rows of the row aligned to it, -1 when
none). A 20 Hz episode encoded at 10 fps has 2 rows per frame; none is dropped. Readers of 1.0
ignore these members and fields.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

EXT_VIDEO = "mp4"
EXT_META = "json"
EXT_ACTIONS = "actions.npy"
EXT_PROPRIO = "proprio.npy"
EXT_LANG = "lang.txt"
EXT_ROW_ACTIONS = "rows.actions.npy"
EXT_ROW_PROPRIO = "rows.proprio.npy"
EXTENSIONS = (EXT_VIDEO, EXT_META, EXT_ACTIONS, EXT_PROPRIO, EXT_LANG, EXT_ROW_ACTIONS, EXT_ROW_PROPRIO)
REQUIRED = (EXT_VIDEO, EXT_META)


@dataclass
class SampleMeta:
    """What ``<key>.json`` holds: enough to use the clip without the index."""

    key: str
    source_id: str
    uri: str
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    fps: float  # of the encoded clip
    width: int
    height: int
    num_frames: int
    kind: str | None = None
    dataset: str | None = None
    language: str | None = None
    action_dim: int | None = None
    format_version: str = ""
    row_fps: float | None = None
    row_times_s: list[float] | None = None
    frame_rows: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> SampleMeta:
        d = json.loads(data)
        return cls(**{k: d[k] for k in d if k in cls.__dataclass_fields__})


def member_name(key: str, ext: str) -> str:
    if ext not in EXTENSIONS:
        raise ValueError(f"unknown sample extension {ext!r}; valid: {', '.join(EXTENSIONS)}")
    return f"{key}.{ext}"
