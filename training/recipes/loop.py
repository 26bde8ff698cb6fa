"""What every recipe's loop (gidm, gfdm, policy) shares: the learning-rate schedule of
``TrainConfig`` (configuration.py), seeding, the device, and one optimizer step. A recipe reads
top to bottom and calls these; none of them knows which model it trains.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import load_checkpoint, restore_rng, save_checkpoint
from ..distributed import barrier, sync_gradients
from .configuration import TrainConfig


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of cfg.lr after ``step`` optimizer steps: linear warmup, then cosine decay."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def last_checkpoint(out_dir: str | Path) -> Path | None:
    """Latest complete checkpoint ``out_dir/checkpoints/step-NNNNNNNN`` (complete by
    construction: save_checkpoint renames a folder into place only when fully written)."""
    found = sorted(Path(out_dir, "checkpoints").glob("step-*"))
    return found[-1] if found else None


def resume(out: Path, model: torch.nn.Module, model_cfg: Any, optimizer, scheduler, **load_kwargs: Any) -> tuple[int, str | None]:
    """Restore weights, optimizer, schedule and RNG from ``out``'s latest checkpoint, if any;
    returns (its step, its path) or (0, None). A checkpoint of another model config is refused
    (``load_kwargs`` go to ``load_checkpoint``, e.g. an external feature extractor)."""
    ckpt = last_checkpoint(out)
    if ckpt is None:
        return 0, None
    loaded, saved_cfg, state = load_checkpoint(ckpt, **load_kwargs)
    if saved_cfg != model_cfg:
        raise ValueError(f"{ckpt}: saved model config differs from the one given; use a new out_dir")
    model.load_state_dict(loaded.state_dict())
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"])
    return state["step"], str(ckpt)


def save_step(out: Path, step: int, model, model_cfg: Any, optimizer, scheduler, extra: dict, main: bool = True) -> Path:
    """Checkpoint ``out/checkpoints/step-NNNNNNNN`` (written by the main rank only); no rank runs
    ahead of a checkpoint it may need to resume from. Returns its path."""
    path = out / "checkpoints" / f"step-{step:08d}"
    if main:
        save_checkpoint(path, model, model_cfg, optimizer, scheduler, step=step, extra=extra)
    barrier()
    return path


def batch_iterator(batches: Iterable[dict] | Callable[[int], Iterable[dict]], start_step: int) -> Iterator[dict]:
    """The batches of steps ``start_step + 1`` on: ``batches(start_step)`` for a callable; a plain
    iterable is assumed to restart from the beginning, so its first ``start_step`` are skipped."""
    return iter(batches(start_step)) if callable(batches) else itertools.islice(iter(batches), start_step, None)


def next_batch(stream: Iterator[dict], step: int, steps: int) -> dict:
    try:
        return next(stream)
    except StopIteration:
        raise ValueError(f"batches ran out at step {step} of {steps}") from None


def step_bar(cfg: TrainConfig, start_step: int, desc: str, show: bool = True) -> tqdm:
    """The steps ``start_step + 1 .. cfg.steps`` under a progress bar (shown if ``cfg.progress`` and ``show``)."""
    return tqdm(range(start_step + 1, cfg.steps + 1), initial=start_step, total=cfg.steps, disable=not (cfg.progress and show), desc=desc)


def pick_device(cfg: TrainConfig) -> torch.device:
    """``cfg.device``, with ``auto`` = cuda when available."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def scalars(out: dict[str, Any]) -> dict[str, float]:
    """The 0-d tensors of a model's output dict as floats (the metrics row)."""
    return {k: float(v.detach()) for k, v in out.items() if torch.is_tensor(v) and v.dim() == 0}


def optimizer_step(loss: torch.Tensor, params: list[torch.nn.Parameter], optimizer, scheduler, grad_clip: float) -> torch.Tensor:
    """One step on ``loss``: backward, gradients averaged over ranks (a no-op on one process),
    global norm clipped to ``grad_clip`` (0: not clipped, the norm is still measured), optimizer
    and schedule stepped. ``params``: the parameters that train now (a list: a staged unfreeze
    changes it between steps). Returns the gradient norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    sync_gradients(params)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    optimizer.step()
    scheduler.step()
    return grad_norm


def finite_loss(loss: torch.Tensor, step: int) -> float:
    """``loss`` as a float; a NaN or infinite loss stops the run naming the step."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"loss is {value} at step {step}")
    return value
