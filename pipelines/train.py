"""``defi train gidm|gfdm|policy``: launch training on a selection of curated clips.

``defi train gidm --root ROOT --select SQL|MANIFEST --out RUN_DIR`` builds the shard loader over
the selection (``training.data.ClipDataset``), runs the GIDM recipe (``training.recipes.gidm``)
and prints a summary. Re-running with the same RUN_DIR resumes from its latest checkpoint.

Python: ``run_train_gidm(root, select, gidm_run_config(preset, *layers))``, what the command and
``defi demo`` both call.

Config: one ``GIDMRunConfig`` (model = ``GIDMConfig``, train = ``TrainConfig``, data =
``DataConfig``), resolved as: the ``--model`` preset's builder defaults <- ``--config`` file <-
generated ``--model.*/--train.*/--data.*`` flags <- the shortcut flags (``--gap-s``,
``--gap-frames``, ``--size``, ``--loader-workers``, ``--steps``; see ``train_common``). The resolved config is written to
``RUN_DIR/run_config.json``; the data facts a labeler needs to read clips the way the model was
trained (gap in seconds or frames, input size) are a ``defi.schemas.contract.DataContract`` the
recipe writes into every checkpoint's ``state.json`` ``extra["data"]``.

Units: ``gap_s`` is seconds (k = max(1, round(gap_s * fps)) frames per clip), ``gap_frames`` is
encoded frames; ``size`` is the square input side in pixels.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from defi.schemas.contract import DataContract
from defi.schemas.corpus import Corpus
from defi.schemas.selection import SelectionError
from defi.training.gidm import GIDM_PRESETS, GIDMConfig, gidm_config
from defi.training.recipes.configuration import TrainConfig

from .command import run_command
from .config import ConfigError, add_flags, to_dict
from .train_common import (
    add_input_flags,
    RUN_CONFIG_FILE,
    DataConfig,
    add_run_flags,
    check_resume,
    flush_denormals,
    resolve_run_config,
    process_group,
    output_lines,
    progress_lines,
    train_spec,
)
from .train_gfdm import add_gfdm_parser
from .train_joint import add_joint_parser
from .train_policy import add_policy_parser
from .usage import Parser, UsageError, one_line, run_standalone

__all__ = ["DataConfig", "GIDMRunConfig", "RUN_CONFIG_FILE", "gidm_run_config", "run_train_gidm", "add_train_parser", "main"]


@dataclass
class GIDMRunConfig:
    """A whole ``defi train gidm`` run: the model, the loop, the data."""

    model: GIDMConfig = field(default_factory=GIDMConfig)  # replaced by the preset's builder
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)


def gidm_run_config(preset: str = "keypoint", *layers: dict[str, Any]):
    """The ``GIDMRunConfig`` of the GIDM preset ``preset`` (``defi train gidm --model``) with
    ``layers`` (nested dicts like a ``--config`` file, lowest first) over it. ``data.size`` sets
    ``model.image_size`` too; ``data.size`` defaults to it. Raises ``ConfigError`` naming every bad
    entry."""
    try:
        base = {"model": gidm_config(preset).to_dict()}
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return resolve_run_config(GIDMRunConfig, base, layers)


def data_contract(cfg) -> DataContract:
    """What a labeler needs to read clips the way the model saw them (saved in every checkpoint)."""
    return DataContract(image_size=cfg.model.image_size, gap=cfg.data.gap)


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------
def run_train_gidm(root: str, select: str, cfg) -> dict[str, Any]:
    """Train (or resume) the GIDM run ``cfg`` (a ``GIDMRunConfig``, see ``gidm_run_config``) on
    the clips ``select`` (SQL or a manifest path) picks from the corpus at ``root``, into
    ``cfg.train.out_dir``; writes run_config.json there. Returns the recipe's summary plus
    ``config``, ``selected_clips``, ``data_stats``, ``wall_s`` and ``last_checkpoint``. User
    errors raise ``UsageError`` (one line)."""
    from defi.training.data import batch_stream, build_dataset
    from defi.training.recipes.gidm import last_checkpoint, train

    rank, world = process_group()
    out = Path(cfg.train.out_dir)
    check_resume(out, cfg)
    window = 3 if cfg.model.additive_weight > 0 else 2  # additivity needs o_t, o_t+k, o_t+2k
    try:
        dataset = build_dataset(Corpus.open(root), select, cfg.data, cfg.train.seed, window, rank, world)
    except SelectionError as e:
        raise UsageError(f"--select: {e}") from None
    except ValueError as e:
        raise UsageError(str(e)) from None
    out.mkdir(parents=True, exist_ok=True)
    resolved = {**to_dict(cfg), "root": root, "select": select, "selected_clips": len(dataset.keys), "rank": rank, "world_size": world}
    if rank == 0:
        (out / RUN_CONFIG_FILE).write_text(json.dumps(resolved, indent=2))

    def make_batches(start_step: int):
        return batch_stream(dataset, cfg.train.batch_size, cfg.data.num_workers, start_step)

    t0 = time.perf_counter()
    try:
        with flush_denormals():
            # the data facts go into every checkpoint the recipe writes (a labeler reads the gap back)
            result = train(cfg.model, cfg.train, make_batches, extra={"data": data_contract(cfg).to_dict()})
    except ValueError as e:  # e.g. a RUN_DIR whose saved model config differs
        raise UsageError(one_line(e)) from None
    result.update(
        rank=rank,
        world_size=world,
        config=cfg,
        selected_clips=len(dataset.keys),
        wall_s=time.perf_counter() - t0,
        data_stats=dict(dataset.stats),
        last_checkpoint=str(last_checkpoint(out) or ""),
    )
    return result


def summary_text(res: dict[str, Any]) -> str:
    cfg = res["config"]
    gap = cfg.data.gap.label()
    lines = [f"gidm: {res['selected_clips']} clips selected, gap {gap}, {cfg.data.size} px, batch {cfg.train.batch_size}"]
    lines += progress_lines(res, cfg.train.steps, lambda: f"  loss     {res['first_loss']:.5g} -> {res['last_loss']:.5g}")
    return "\n".join(lines + output_lines(res))


GIDM_SPEC = train_spec("gidm", gidm_run_config, run_train_gidm, summary_text)


def cmd_train_gidm(args: argparse.Namespace) -> int:
    return run_command(GIDM_SPEC, args)


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``train`` with ``gidm``, ``gfdm``, ``joint`` and ``policy`` to ``defi``'s subparsers (their flags
    come from torch-free config classes: ``defi --help`` does not import torch)."""
    t = subparsers.add_parser(
        "train", help="train a model on a selection of curated clips", description="Train GIDM / GFDM / policy models on curated shards."
    )
    sub = t.add_subparsers(dest="train_command", metavar="MODEL", parser_class=Parser)
    sub.required = True
    g = sub.add_parser(
        "gidm",
        help="train a latent inverse-dynamics model (latent actions) on frame pairs",
        description="Train a GIDM on frame pairs (o_t, o_t+k) from the clips a SQL query or manifest selects. "
        "Re-running with the same --out resumes from its latest checkpoint. Config: the --model "
        "size's defaults <- --config file <- --model.*/--train.*/--data.* flags <- shortcut flags.",
    )
    add_input_flags(g, grids=False)
    g.add_argument(
        "--model",
        default="keypoint",
        choices=tuple(GIDM_PRESETS),
        help="model preset (builder defaults): keypoint (default: 64 px, 32 soft-argmax keypoints, continuous "
        "latent; for robot or fixed-camera video), keypoint-rvq (the same with residual-VQ codes), "
        "tiny (transformer encoder, 64 px), small (128 px, VQ), univla (DINOv2 features, VQ)",
    )
    add_run_flags(g)
    add_flags(g, GIDMRunConfig, "run config (model.*, train.*, data.*)")
    g.set_defaults(func=cmd_train_gidm)
    add_gfdm_parser(sub)
    add_joint_parser(sub)
    add_policy_parser(sub)
    return t


def main(argv: Sequence[str] | None = None) -> int:
    """``defi train ...`` standalone (argv starts with the model name, e.g. ["gidm", "--root", ...]);
    user errors print one line and return 2."""
    return run_standalone([add_train_parser], argv, prefix=("train",))


if __name__ == "__main__":
    raise SystemExit(main())
