"""The training loop's config (``TrainConfig``, and the GFDM's ``GFDMTrainConfig``): torch-free,
so that building the ``defi`` parser and resolving a run config import no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DEVICES", "GFDMTrainConfig", "TrainConfig"]

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """The loop of a training run (the GFDM adds its grid fields in ``GFDMTrainConfig``)."""

    steps: int = field(default=1000, metadata={"help": "total optimizer steps"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=50, metadata={"help": "linear warmup steps from 0, then cosine to min_lr_ratio * lr at steps"})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "final learning rate as a fraction of lr"})
    batch_size: int = field(default=32, metadata={"help": "items per optimizer step (per process)"})
    grad_clip: float = field(default=1.0, metadata={"help": "max global gradient norm; 0 disables"})
    seed: int = field(default=0, metadata={"help": "seed of the model init, the data order and every draw"})
    log_every: int = field(default=10, metadata={"help": "steps between metrics.jsonl / TensorBoard rows (step 1 always logs)"})
    ckpt_every: int = field(default=500, metadata={"help": "steps between checkpoints; the last step always checkpoints"})
    out_dir: str = field(default="runs/gidm", metadata={"help": "run folder (set by --out)"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available) | cpu | cuda"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast on GPU (CPU always runs fp32)"})
    progress: bool = field(default=True, metadata={"help": "tqdm progress bar"})

    def errors(self) -> list[str]:
        """Every bad field, one message each (subclasses add theirs)."""
        errors = []
        for name in ("steps", "batch_size", "log_every", "ckpt_every"):
            if getattr(self, name) < 1:
                errors.append(f"{name}={getattr(self, name)!r}: must be >= 1")
        for name in ("lr", "weight_decay", "grad_clip", "warmup_steps"):
            if getattr(self, name) < 0:
                errors.append(f"{name}={getattr(self, name)!r}: must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            errors.append(f"min_lr_ratio={self.min_lr_ratio!r}: must be in [0, 1]")
        if self.device not in DEVICES:
            errors.append(f"device={self.device!r}: unknown; valid: {', '.join(DEVICES)}")
        return errors

    def __post_init__(self) -> None:
        errors = self.errors()
        if errors:
            raise ValueError("invalid TrainConfig:\n  " + "\n  ".join(errors))


@dataclass
class GFDMTrainConfig(TrainConfig):
    """The GIDM's loop config with the GFDM's defaults, plus the prediction grids."""

    steps: int = field(default=1500, metadata={"help": "total optimizer steps"})
    batch_size: int = field(default=16, metadata={"help": "items per optimizer step (per process)"})
    out_dir: str = field(default="runs/gfdm", metadata={"help": "run folder (set by --out)"})
    grid_every: int = field(default=250, metadata={"help": "steps between prediction grids (PNG + TensorBoard); the last step always"})
    grid_rows: int = field(default=4, metadata={"help": "items shown per grid"})

    def errors(self) -> list[str]:
        bad = [f"{n}={getattr(self, n)!r}: must be >= 1" for n in ("grid_every", "grid_rows") if getattr(self, n) < 1]
        return super().errors() + bad
