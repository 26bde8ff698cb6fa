"""``defi train joint``: pretrain the entangled model, the baseline of DeFI's claim.

``defi train joint --root ROOT --select SQL|MANIFEST --out RUN_DIR`` trains one model holding a
GFDM, the policy's feature projection and a GIDM (encoder and decoder) from random weights, on the
GFDM's forward loss plus the GIDM's reconstruction loss along the policy's own path (the GIDM
encodes the projected GFDM prediction, not the true future; see ``training.joint``). The data are
the GFDM's (frame windows at the gap, the text of each clip). A policy starts from the run with
``defi train policy --init entangled --joint RUN_DIR``. Re-running with the same RUN_DIR resumes.

Python: ``run_train_joint(root, select, joint_run_config(gidm_preset, gfdm_preset, *layers))``.

Config: one ``JointRunConfig`` (gidm = ``GIDMConfig``, gfdm = ``GFDMConfig``, joint = the two
loss weights, train, data and text as ``defi train gfdm``'s), resolved as: the ``--gidm-model``
and ``--gfdm-model`` presets <- ``--config`` file <- generated ``--gidm.*/--gfdm.*/--joint.*/
--train.*/--data.*/--text.*`` flags <- shortcut flags. ``--size`` sets both models' image size.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from defi.training.gfdm import GFDM_PRESETS, GFDMConfig, TextModelConfig, gfdm_config
from defi.training.gidm import GIDM_PRESETS, GIDMConfig, gidm_config
from defi.training.joint import JointConfig
from defi.training.recipes.configuration import GFDMTrainConfig

from .command import run_command
from .config import ConfigError, add_flags, from_dict, merge, to_dict
from .train_common import (
    RUN_CONFIG_FILE,
    add_input_flags,
    add_run_flags,
    flush_denormals,
    process_group,
    output_lines,
    progress_lines,
    train_spec,
)
from .train_gfdm import GFDMDataConfig, forward_data
from .usage import UsageError, one_line


@dataclass
class JointLoss:
    """How the joint model's two losses are summed."""

    forward_weight: float = field(default=1.0, metadata={"help": "weight of the GFDM's loss on the true future"})
    inverse_weight: float = field(
        default=1.0, metadata={"help": "weight of the GIDM's reconstruction of the true future from (o_t, projected prediction)"}
    )


@dataclass
class JointRunConfig:
    """A whole ``defi train joint`` run: the two models, the loss weights, the loop, the data, the text tower."""

    gidm: GIDMConfig = field(default_factory=GIDMConfig)  # replaced by the --gidm-model preset
    gfdm: GFDMConfig = field(default_factory=GFDMConfig)  # replaced by the --gfdm-model preset
    joint: JointLoss = field(default_factory=JointLoss)
    train: GFDMTrainConfig = field(default_factory=GFDMTrainConfig)
    data: GFDMDataConfig = field(default_factory=GFDMDataConfig)
    text: TextModelConfig = field(default_factory=TextModelConfig)

    @property
    def model(self) -> JointConfig:
        """The model config the checkpoint saves (and a policy rebuilds it from)."""
        return JointConfig(
            gfdm=self.gfdm.to_dict(),
            gidm=self.gidm.to_dict(),
            forward_weight=self.joint.forward_weight,
            inverse_weight=self.joint.inverse_weight,
        )


def joint_run_config(gidm_preset: str = "keypoint", gfdm_preset: str = "tiny", *layers: dict[str, Any]) -> JointRunConfig:
    """The ``JointRunConfig`` of the two presets with ``layers`` (nested dicts like a ``--config``
    file, lowest first) over them. ``data.size`` sets both models' ``image_size``. Raises
    ``ConfigError`` naming what is wrong."""
    try:
        data: dict[str, Any] = {"gidm": gidm_config(gidm_preset).to_dict(), "gfdm": gfdm_config(gfdm_preset).to_dict()}
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if gfdm_preset == "svd":  # the released text tower, as `defi train gfdm --model svd`
        data["text"] = {"name": "ViT-B-32", "pretrained": "openai"}
    for layer in layers:
        data = merge(data, layer)
    size = (data.get("data") or {}).get("size")
    if size is not None:
        for part in ("gidm", "gfdm"):
            data[part]["image_size"] = int(size)
    cfg = from_dict(JointRunConfig, data)
    cfg.data.size = cfg.gfdm.image_size
    cfg.train.out_dir = cfg.train.out_dir or ""
    try:
        cfg.model  # noqa: B018  (validates the pair: pixel GIDM, same image size, text widths)
    except ValueError as e:
        raise ConfigError(one_line(e)) from None
    if cfg.text.name == "tiny" and cfg.text.width != cfg.gfdm.text_dim:
        raise ConfigError(f"text.width={cfg.text.width} (the tiny tower's output) disagrees with gfdm.text_dim={cfg.gfdm.text_dim}")
    return cfg


def check_joint_resume(out: Path, cfg: JointRunConfig) -> None:
    """A RUN_DIR holds one joint model trained on one kind of window: another model config, gap or
    size is refused."""
    saved_path = out / RUN_CONFIG_FILE
    if not saved_path.is_file() or not any((out / "checkpoints").glob("step-*")):
        return
    saved, now = json.loads(saved_path.read_text()), to_dict(cfg)
    diff = [s for s in ("gidm", "gfdm", "joint") if saved.get(s) != now[s]]
    diff += [f"data.{k}" for k in ("gap_s", "gap_frames", "size") if saved.get("data", {}).get(k) != now["data"][k]]
    if diff:
        raise UsageError(f"{out} already holds a joint run with a different config ({', '.join(diff)}); use a new --out")


def run_train_joint(root: str, select: str, cfg: JointRunConfig) -> dict[str, Any]:
    """Train (or resume) the joint run ``cfg`` on the clips ``select`` picks from the corpus at
    ``root``, into ``cfg.train.out_dir`` (run_config.json there). Returns the recipe's summary plus
    ``config``, ``selected_clips``, ``texts``, ``data_stats``, ``wall_s``. User errors raise
    ``UsageError`` (one line)."""
    from defi.training.recipes.joint import last_checkpoint, train

    rank, world = process_group()
    out = Path(cfg.train.out_dir)
    check_joint_resume(out, cfg)
    data = forward_data(root, select, cfg, cfg.gfdm, "train joint", rank, world)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        resolved = {**to_dict(cfg), "root": root, "select": select, "selected_clips": len(data.dataset.keys), "world_size": world}
        (out / RUN_CONFIG_FILE).write_text(json.dumps(resolved, indent=2))
    t0 = time.perf_counter()
    try:
        with flush_denormals():
            result = train(cfg.model, cfg.train, data.make_batches, extra={"data": data.contract.to_dict()})
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(one_line(e)) from None
    result.update(
        rank=rank,
        world_size=world,
        config=cfg,
        selected_clips=len(data.dataset.keys),
        texts=len(data.texts),
        wall_s=time.perf_counter() - t0,
        data_stats=dict(data.dataset.stats),
        last_checkpoint=str(last_checkpoint(out) or ""),
    )
    return result


def summary_text(res: dict[str, Any]) -> str:
    cfg, model = res["config"], res["model"]
    parts = {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in ("gfdm", "project", "gidm")}
    lines = [
        f"joint (gfdm {cfg.gfdm.backbone} {cfg.gfdm.objective} + gidm): {res['selected_clips']} clips selected, "
        f"{res['texts']} distinct texts, gap {cfg.data.gap.label()}, {cfg.data.size} px, batch {cfg.train.batch_size}",
        "  parameters " + ", ".join(f"{k} {n:,}" for k, n in parts.items()) + f"; loss = {cfg.joint.forward_weight} x forward "
        f"+ {cfg.joint.inverse_weight} x inverse",
    ]
    lines += progress_lines(res, cfg.train.steps, lambda: f"  loss     {res['first_loss']:.5g} -> {res['last_loss']:.5g}")
    return "\n".join(lines + output_lines(res))


JOINT_SPEC = train_spec("joint", lambda presets, *layers: joint_run_config(*presets, *layers), run_train_joint, summary_text)


def cmd_train_joint(args: argparse.Namespace) -> int:
    args.model = (args.gidm_model, args.gfdm_model)
    return run_command(JOINT_SPEC, args)


def add_joint_parser(sub) -> argparse.ArgumentParser:
    """Add ``joint`` to the ``train`` subparsers."""
    g = sub.add_parser(
        "joint",
        help="pretrain GFDM + GIDM jointly, one summed loss (the entangled baseline of --init entangled)",
        description="Pretrain one model holding a GFDM, the policy's feature projection and a GIDM from random weights, "
        "on the GFDM's forward loss plus the GIDM's reconstruction of the true future from (o_t, projected prediction). "
        "Re-running with the same --out resumes. Config: the --gidm-model and --gfdm-model presets <- --config file <- "
        "--gidm.*/--gfdm.*/--joint.*/--train.*/--data.*/--text.* flags <- shortcut flags.",
    )
    add_input_flags(g, grids=True)
    g.add_argument("--gidm-model", default="keypoint", choices=tuple(GIDM_PRESETS), help="GIDM preset, as `defi train gidm --model`")
    g.add_argument("--gfdm-model", default="tiny", choices=tuple(GFDM_PRESETS), help="GFDM preset, as `defi train gfdm --model`")
    add_run_flags(g)
    add_flags(g, JointRunConfig, "run config (gidm.*, gfdm.*, joint.*, train.*, data.*, text.*)")
    g.set_defaults(func=cmd_train_joint)
    return g
