"""What every recipe (gidm, gfdm, policy) writes the same way: ``metrics.jsonl`` and TensorBoard
rows, and the summary a ``train`` call returns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from torch.utils.tensorboard import SummaryWriter


def open_logs(out: Path, start_step: int) -> tuple[Path, SummaryWriter]:
    """``out/metrics.jsonl`` holding exactly steps 1..start_step (after a resume, drop what a
    killed run wrote later) and a TensorBoard writer on ``out/tb`` purged after ``start_step``."""
    path = out / "metrics.jsonl"
    kept = [ln for ln in path.read_text().splitlines() if json.loads(ln)["step"] <= start_step] if path.exists() else []
    path.write_text("".join(ln + "\n" for ln in kept))
    return path, SummaryWriter(str(out / "tb"), purge_step=start_step + 1)


def log_row(row: dict[str, Any], metrics: IO[str], writer: SummaryWriter | None) -> None:
    """One metrics.jsonl line (flushed, so a killed run keeps it) and ``train/<name>`` scalars."""
    if writer is not None:
        for k, v in row.items():
            if k != "step":
                writer.add_scalar(f"train/{k}", v, row["step"])
    metrics.write(json.dumps(row) + "\n")
    metrics.flush()


def run_summary(start_step: int, resumed_from: str | None, losses: list[float], seconds: float, last_ckpt, **more: Any) -> dict[str, Any]:
    """The dict a recipe's ``train`` returns: steps run, start/final step, per-step losses of this
    call, first/last loss, seconds per step, last checkpoint path, plus ``more``."""
    ran = len(losses)
    return {
        "start_step": start_step,
        "resumed_from": resumed_from,
        "steps_run": ran,
        "final_step": start_step + ran,
        "losses": losses,
        "first_loss": losses[0] if ran else None,
        "last_loss": losses[-1] if ran else None,
        "seconds_per_step": seconds / ran if ran else None,
        "checkpoint": str(last_ckpt) if last_ckpt else None,
        **more,
    }
