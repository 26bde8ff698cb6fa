"""``CurateConfig``: the whole ``defi curate`` run, one section per operator (its fields are the
operator's parameters), plus where the run executes (runner, Ray) and how shards are cut. Every
field is a flag of ``defi curate`` and a key of its ``--config`` file (``config.add_flags``).
The per-video steps that read it are ``curate_video``; the run around them is ``curate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from defi.curate.clip_score import ClipScorer
from defi.curate.configuration import AnalysisConfig
from defi.curate.dedup import Dedup
from defi.curate.encode import ClipEncoder
from defi.curate.filters import BlackFrames, Blur, CameraMotion, Duration, Motion, Resolution
from defi.curate.probe import Probe
from defi.curate.shots import Shots
from defi.curate.windows import Windows

from .ray_adapter import RayConfig
from .runner import RUNNER_HELP, WORKERS_HELP, runner_field_errors

__all__ = ["AnalysisConfig", "CurateConfig", "ShardConfig"]


@dataclass
class ShardConfig:
    target_mb: float = field(default=256.0, metadata={"help": "close a shard at about this size (MB)"})
    videos_per_unit: int = field(default=8, metadata={"help": "videos committed together (shards + rows)"})

    def __post_init__(self) -> None:
        if self.target_mb <= 0:
            raise ValueError(f"target_mb must be > 0, got {self.target_mb}")
        if self.videos_per_unit < 1:
            raise ValueError(f"videos_per_unit must be >= 1, got {self.videos_per_unit}")


def _clip_default() -> ClipScorer:
    return ClipScorer()


@dataclass
class CurateConfig:
    """The whole `defi curate` run: one section per operator (its fields are its parameters)."""

    kind: str | None = field(default=None, metadata={"help": "human | robot | web, for sources without one"})
    dataset: str | None = field(default=None, metadata={"help": "dataset name for sources without one"})
    use_clip: bool = field(default=False, metadata={"help": "score clips with CLIP (model from clip.*)"})
    use_dedup: bool = field(default=True, metadata={"help": "drop near-duplicate clips within a video"})
    probe: Probe = field(default_factory=Probe)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    shots: Shots = field(default_factory=Shots)
    windows: Windows = field(default_factory=Windows)
    duration: Duration = field(default_factory=Duration)
    resolution: Resolution = field(default_factory=Resolution)
    black: BlackFrames = field(default_factory=BlackFrames)
    blur: Blur = field(default_factory=Blur)
    motion: Motion = field(default_factory=Motion)
    camera: CameraMotion = field(default_factory=CameraMotion)
    clip: ClipScorer = field(default_factory=_clip_default)
    dedup: Dedup = field(default_factory=Dedup)
    encode: ClipEncoder = field(default_factory=ClipEncoder)
    shards: ShardConfig = field(default_factory=ShardConfig)
    runner: str = field(default="auto", metadata={"help": RUNNER_HELP})
    workers: int | None = field(default=None, metadata={"help": WORKERS_HELP})
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        errors = runner_field_errors(self.runner, self.workers)
        if errors:
            raise ValueError("; ".join(errors))

    def scorers(self) -> list:
        """Frame scorers in the order they run; the first to reject names the reason."""
        return [self.black, self.blur, self.motion, self.camera]

    def key_params(self) -> dict[str, Any]:
        """Parameters that shape a clip's span and bytes, hence its key (not filter thresholds:
        changing a threshold changes which clips are kept, not what a clip is)."""
        return {
            "shots": self.shots.params(),
            "windows": self.windows.params(),
            "encode": self.encode.params(),
            "segment_s": self.analysis.segment_s,
            "pix_fmt": self.analysis.pix_fmt,
        }
