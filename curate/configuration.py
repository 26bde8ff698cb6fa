"""Configuration sections of ``defi curate`` that belong to no single operator.

Each operator's parameters are the operator's own dataclass, in its module (``Probe``, ``Shots``,
``Windows``, the filters, ``ClipScorer``, ``Dedup``, ``ClipEncoder``); ``AnalysisConfig`` is how a
video is decoded once for all of them. The run's whole config, ``CurateConfig``, composes these
with the run-level sections (runner, Ray, shards) in ``defi.pipelines.curate_config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AnalysisConfig:
    """How the video is decoded once for every analysis step."""

    segment_s: float = field(default=30.0, metadata={"help": "seconds of video held in memory at once"})
    short_side: int = field(default=128, metadata={"help": "analysis frames' short side (shots, scores), px"})
    chunk_frames: int = field(default=64, metadata={"help": "frames per decode chunk"})
    skip_loop_filter: str = field(
        default="auto",
        metadata={
            "help": "auto | always | never: skip the codec's deblocking filter when decoding 4x smaller per side (see curate.decode)"
        },
    )
    decode_threads: int = field(
        default=0,
        metadata={
            "help": "FFmpeg decoder threads per video; 0: 1 when the run has at least as many videos as worker slots "
            "(every core busy with a video: frame threading would only add CPU), else FFmpeg's choice"
        },
    )
    pix_fmt: str = field(
        default="yuv420p",
        metadata={
            "help": "yuv420p | rgb24: how decoded frames are held until encode (yuv420p: half the memory, no colour "
            "conversion for re-encoded frames; analysis frames are converted at the analysis size)"
        },
    )

    def __post_init__(self) -> None:
        if self.pix_fmt not in ("yuv420p", "rgb24"):
            raise ValueError(f"pix_fmt must be yuv420p or rgb24, got {self.pix_fmt!r}")
        if self.skip_loop_filter not in ("auto", "always", "never"):
            raise ValueError(f"skip_loop_filter must be auto, always or never, got {self.skip_loop_filter!r}")
        if self.segment_s <= 0:
            raise ValueError(f"segment_s must be > 0 seconds, got {self.segment_s}")
        if self.short_side < 16:
            raise ValueError(f"short_side must be >= 16 px, got {self.short_side}")
        if self.decode_threads < 0:
            raise ValueError(f"decode_threads must be >= 0 (0: auto), got {self.decode_threads}")
