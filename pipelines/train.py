"""``defi train gidm|gfdm|policy``: launch training on a selection of curated clips.

``defi train gidm --root ROOT --select SQL|MANIFEST --out RUN_DIR`` builds the shard loader over
the selection (``training.data.ClipDataset``), runs the GIDM recipe (``training.recipes.train_gidm``)
and prints a summary. Re-running with the same RUN_DIR resumes from its latest checkpoint.

Config: one ``GIDMRunConfig`` (model = ``GIDMConfig``, train = ``TrainConfig``, data =
``DataConfig``), resolved as: the ``--model`` size's builder defaults <- ``--config`` file <-
generated ``--model.*/--train.*/--data.*`` flags <- the shortcut flags (``--gap-s``,
``--gap-frames``, ``--size``, ``--loader-workers``, ``--steps``). The resolved config is written to
``RUN_DIR/run_config.json``; the data facts a labeler needs to read clips the way the model was
trained (gap in seconds or frames, input size) are written by the recipe into every checkpoint's
``state.json`` ``extra["data"]`` (``defi.schemas.gap.Gap`` reads the gap back).

Units: ``gap_s`` is seconds (k = max(1, round(gap_s * fps)) frames per clip), ``gap_frames`` is
encoded frames; ``size`` is the square input side in pixels.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Iterator, Sequence

# defi.pipelines.cli is imported inside functions: cli imports this module to register the
# command, so a top-level import here would be circular.
from defi.schemas.gap import Gap
from defi.pipelines.config import ConfigError, add_flags, flag_overrides, from_dict, load_file, merge, to_dict

RUN_CONFIG_FILE = "run_config.json"
MODEL_SIZES = ("keypoint", "tiny", "small", "univla")  # training/gidm/configuration_gidm.py GIDM_SIZES


@dataclass
class DataConfig:
    """How frame pairs are drawn from the selected clips (see ``training.data.ClipDataset``)."""

    gap_s: float | None = field(
        default=1.0, metadata={"help": "gap between o_t and o_t+k in seconds (k = max(1, round(gap_s * fps)) frames per clip)"}
    )
    gap_frames: int | None = field(default=None, metadata={"help": "gap in encoded frames; replaces gap_s"})
    size: int | None = field(default=None, metadata={"help": "square input side, px (default: model.image_size)"})
    pairs_per_clip: int | None = field(default=None, metadata={"help": "pairs drawn per clip per epoch (default: every t)"})
    shuffle_buffer: int = field(default=256, metadata={"help": "items mixed in the shuffle buffer"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})

    def __post_init__(self) -> None:
        errors = []
        if self.gap_frames is not None:
            self.gap_s = None  # one gap only: frames win over the seconds default
        try:
            if Gap.from_fields(self.gap_s, self.gap_frames) is None:
                errors.append("gap_s=None: give gap_s (seconds) or gap_frames")
        except ValueError as e:
            errors.append(str(e))
        if self.size is not None and self.size < 8:
            errors.append(f"size={self.size!r}: must be >= 8 px")
        if self.pairs_per_clip is not None and self.pairs_per_clip < 1:
            errors.append(f"pairs_per_clip={self.pairs_per_clip!r}: must be >= 1 (or null: every t)")
        if self.shuffle_buffer < 0 or self.num_workers < 0:
            errors.append("shuffle_buffer and num_workers must be >= 0")
        if errors:
            raise ValueError("invalid DataConfig: " + "; ".join(errors))

    @property
    def gap(self) -> Gap:
        return Gap.from_fields(self.gap_s, self.gap_frames)


def _gidm_default():
    from defi.training.gidm import GIDMConfig  # here, not at the top: `defi --help` must not import torch

    return GIDMConfig()  # replaced by the --model size's builder in resolve_run_config


def _run_config_cls() -> type:
    """``GIDMRunConfig``, built on first use so that building the ``defi`` parser does not import
    torch (the model and recipe configs live next to torch code)."""
    if "GIDMRunConfig" in globals():
        return globals()["GIDMRunConfig"]
    from defi.training.gidm import GIDMConfig
    from defi.training.recipes.train_gidm import TrainConfig

    # the string annotations below resolve against this module's globals (get_type_hints)
    globals().update(GIDMConfig=GIDMConfig, TrainConfig=TrainConfig)

    @dataclass
    class GIDMRunConfig:
        """A whole ``defi train gidm`` run: the model, the loop, the data."""

        model: GIDMConfig = field(default_factory=_gidm_default)
        train: TrainConfig = field(default_factory=TrainConfig)
        data: DataConfig = field(default_factory=DataConfig)

    globals()["GIDMRunConfig"] = GIDMRunConfig
    return GIDMRunConfig


def _lazy_parser_class() -> type:
    """A ``_Parser`` (one-line errors) whose generated flags are added when it is first used
    (parsing or --help), so ``defi --help`` and the other subcommands do not import torch."""
    from .cli import _Parser

    class _LazyFlagsParser(_Parser):
        lazy = None  # callable(parser) adding the flags

        def _materialise(self) -> None:
            if self.lazy is not None:
                add, self.lazy = self.lazy, None
                add(self)

        def parse_known_args(self, args=None, namespace=None):
            self._materialise()
            return super().parse_known_args(args, namespace)

        def format_help(self):
            self._materialise()
            return super().format_help()

    return _LazyFlagsParser


# ---------------------------------------------------------------------------------------------
# config resolution
# ---------------------------------------------------------------------------------------------
def resolve_run_config(args: argparse.Namespace):
    """Builder defaults of ``--model`` <- ``--config`` file <- generated flags <- shortcut flags."""
    from .cli import UsageError
    from defi.training.gidm import gidm_config

    cls = _run_config_cls()
    try:
        base_model = gidm_config(args.model).to_dict()
    except ValueError as e:
        raise UsageError(str(e)) from None
    data: dict[str, Any] = {"model": base_model}
    if args.config:
        data = merge(data, load_file(args.config))
    data = merge(data, flag_overrides(args))
    short: dict[str, Any] = {}
    if args.gap_s is not None:
        short["gap_s"] = args.gap_s
        short["gap_frames"] = None
    if args.gap_frames is not None:
        short["gap_frames"] = args.gap_frames
    if args.size is not None:
        short["size"] = args.size
    if args.loader_workers is not None:
        short["num_workers"] = args.loader_workers
    data = merge(data, {"data": short})
    if args.steps is not None:
        data = merge(data, {"train": {"steps": args.steps}})
    data = merge(data, {"train": {"out_dir": args.out}})
    if args.no_progress:
        data = merge(data, {"train": {"progress": False}})
    # --size sets the model's input side too, unless the model side was given explicitly
    d = data.get("data") or {}
    m = data.get("model") or {}
    explicit_model_size = "image_size" in (flag_overrides(args).get("model") or {}) or (
        args.config and "image_size" in (load_file(args.config).get("model") or {})
    )
    if d.get("size") is not None:
        if explicit_model_size and int(m["image_size"]) != int(d["size"]):
            raise UsageError(f"--size {d['size']} disagrees with model.image_size={m['image_size']}")
        m["image_size"] = int(d["size"])
    cfg = from_dict(cls, data)
    if cfg.data.size is None:
        cfg.data.size = cfg.model.image_size
    return cfg


def data_facts(cfg) -> dict[str, Any]:
    """What a labeler needs to read clips the way the model saw them (saved in every checkpoint)."""
    return {**cfg.data.gap.to_dict(), "size": cfg.data.size, "image_size": cfg.model.image_size}


# ---------------------------------------------------------------------------------------------
# distributed
# ---------------------------------------------------------------------------------------------
def process_group() -> tuple[int, int]:
    """(rank, world_size) of this process: joins torchrun's process group when WORLD_SIZE > 1
    (gloo on CPU, NCCL on GPU; see ``training.distributed``). ``--workers N`` outside torchrun is
    handled by ``cmd_train_gidm``, which relaunches the command under torchrun."""
    from defi.training.distributed import init_from_env

    return init_from_env()


def torchrun_argv(workers: int, argv: list[str]) -> list[str]:
    """The command that runs ``defi train`` with ``argv`` (``--workers`` removed) as ``workers``
    processes on this machine under torchrun (a GPU each where there are GPUs)."""
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--workers":
            skip = True
            continue
        if a.startswith("--workers="):
            continue
        rest.append(a)
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={workers}",
        "-m",
        "defi.pipelines.train",
        *rest,
    ]


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def build_dataset(root: str, select: str, cfg, rank: int = 0, world_size: int = 1):
    """The ClipDataset over the selection (a SelectionError/CorpusError names a bad one)."""
    from defi.schemas.corpus import Corpus
    from defi.training.data import ClipDataset

    corpus = Corpus.open(root)
    d = cfg.data
    return ClipDataset.from_corpus(
        corpus,
        select,
        gap=d.gap,
        size=d.size,
        pairs_per_clip=d.pairs_per_clip,
        window=3 if cfg.model.additive_weight > 0 else 2,  # additivity needs o_t, o_t+k, o_t+2k
        shuffle=True,
        shuffle_buffer=d.shuffle_buffer,
        seed=cfg.train.seed,
        rank=rank,
        world_size=world_size,
    )


def batch_stream(dataset, batch_size: int, num_workers: int, start_step: int) -> Iterator[dict]:
    """Endless batches of ``batch_size`` pairs, epoch after epoch.

    A resumed run (``start_step`` > 0) does not replay the batches already trained on (that would
    decode them all again); it starts a fresh epoch numbered after the step, so its draws differ
    from epochs 0, 1, ... of the first call but are still deterministic given (seed, step)."""
    from torch.utils.data import DataLoader

    from defi.training.data import collate_items

    from .cli import UsageError

    first_epoch = 0 if start_step == 0 else 1_000_000 + start_step
    for epoch in itertools.count(first_epoch):
        dataset.set_epoch(epoch)
        loader = DataLoader(
            dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_items, drop_last=True, persistent_workers=False
        )
        n = 0
        for batch in loader:
            n += 1
            yield batch
        if n == 0:
            raise UsageError(
                f"the selection yields fewer than batch_size={batch_size} pairs per epoch "
                f"(clips too short for the gap, or unreadable: {dict(dataset.stats)}); "
                "lower --train.batch_size or the gap"
            )


# ---------------------------------------------------------------------------------------------
# resume
# ---------------------------------------------------------------------------------------------
def _check_resume(out: Path, cfg) -> None:
    """A RUN_DIR holds one model trained on one kind of pair: refuse another model config or
    another gap/size (the recipe compares the model config too, with a longer message)."""
    from .cli import UsageError

    saved_path = out / RUN_CONFIG_FILE
    if not saved_path.is_file() or not any((out / "checkpoints").glob("step-*")):
        return
    saved = json.loads(saved_path.read_text())
    now = to_dict(cfg)
    # a field added since the run was saved counts as its default (the checkpoint loads that way)
    defaults = {f.name: f.default for f in dataclasses.fields(cfg.model) if f.default is not dataclasses.MISSING}
    saved = {**saved, "model": {**defaults, **saved.get("model", {})}}
    diff = [f"model.{k}" for k in now["model"] if saved["model"].get(k) != now["model"][k]]
    diff += [f"data.{k}" for k in ("gap_s", "gap_frames", "size") if saved.get("data", {}).get(k) != now["data"][k]]
    if diff:
        shown = ", ".join(f"{k} (saved {_get(saved, k)!r}, now {_get(now, k)!r})" for k in diff[:4])
        raise UsageError(f"{out} already holds a run with a different config: {shown}; use a new --out")


def _get(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part, {}) if isinstance(d, dict) else None
    return d


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------
def run_train_gidm(args: argparse.Namespace) -> dict[str, Any]:
    """Resolve the config, build the loader, train (or resume), stamp checkpoints; returns the
    recipe's summary plus ``config`` and ``selected_clips``."""
    from defi.schemas.selection import SelectionError
    from defi.training.recipes.train_gidm import last_checkpoint, train

    from .cli import UsageError, one_line

    try:
        cfg = resolve_run_config(args)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    if args.dry_run:
        print(json.dumps(to_dict(cfg), indent=2))
        return {"config": cfg}
    rank, world = process_group()
    out = Path(args.out)
    _check_resume(out, cfg)
    try:
        dataset = build_dataset(args.root, args.select, cfg, rank, world)
    except SelectionError as e:
        raise UsageError(f"--select: {e}") from None
    except ValueError as e:
        raise UsageError(str(e)) from None
    out.mkdir(parents=True, exist_ok=True)
    main_rank = rank == 0
    facts = data_facts(cfg)
    resolved = {
        **to_dict(cfg),
        "root": args.root,
        "select": args.select,
        "selected_clips": len(dataset.keys),
        "rank": rank,
        "world_size": world,
    }
    if main_rank:
        (out / RUN_CONFIG_FILE).write_text(json.dumps(resolved, indent=2))

    def make_batches(start_step: int):
        return batch_stream(dataset, cfg.train.batch_size, cfg.data.num_workers, start_step)

    import torch

    # Denormal floats (the zero-initialised output head's tiny early gradients and Adam moments)
    # made CPU steps ~10x slower: 324 vs 25 ms/step for the tiny model at 32 px, batch 16, on the
    # 2-core dev box. Flush them to zero while training; restored after (there is no getter, and
    # False is torch's default).
    flushed = torch.set_flush_denormal(True)
    t0 = time.perf_counter()
    try:
        # the data facts go into every checkpoint the recipe writes (a labeler reads the gap back)
        result = train(cfg.model, cfg.train, make_batches, extra={"data": facts})
    except ValueError as e:  # e.g. a RUN_DIR whose saved model config differs
        raise UsageError(one_line(e)) from None
    finally:
        if flushed:
            torch.set_flush_denormal(False)
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
    if res["resumed_from"]:
        lines.append(f"  resumed  from {res['resumed_from']} (step {res['start_step']})")
    if res["steps_run"]:
        lines.append(
            f"  steps    {res['start_step'] + 1}..{res['final_step']} of {cfg.train.steps} "
            f"in {res['wall_s']:.1f} s ({res['seconds_per_step'] * 1000:.0f} ms/step)"
        )
        lines.append(f"  loss     {res['first_loss']:.5g} -> {res['last_loss']:.5g}")
    else:
        lines.append(f"  steps    none to run: already at step {res['final_step']} of {cfg.train.steps}")
    lines.append(f"  checkpoint {res['last_checkpoint']}")
    return "\n".join(lines)


def cmd_train_gidm(args: argparse.Namespace) -> int:
    if args.workers > 1 and int(os.environ.get("WORLD_SIZE", "1") or 1) == 1 and not args.dry_run:
        import subprocess

        full = getattr(args, "argv", None) or sys.argv[1:]
        argv = full[full.index("gidm") + 1 :]
        cmd = torchrun_argv(args.workers, ["gidm", *argv])
        print(f"launching {args.workers} processes: {' '.join(cmd[1:])}", file=sys.stderr)
        return subprocess.run(cmd).returncode
    res = run_train_gidm(args)
    if not args.dry_run and res.get("rank", 0) == 0:
        print(summary_text(res))
    return 0


def cmd_not_built(args: argparse.Namespace) -> int:
    from .cli import UsageError

    raise UsageError(f"train {args.train_command} is not built yet: see its issue")


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``train`` with ``gidm`` (and placeholders ``gfdm``, ``policy``) to ``defi``'s
    subparsers."""
    t = subparsers.add_parser(
        "train", help="train a model on a selection of curated clips", description="Train GIDM / GFDM / policy models on curated shards."
    )
    sub = t.add_subparsers(dest="train_command", metavar="MODEL", parser_class=_lazy_parser_class())
    sub.required = True
    g = sub.add_parser(
        "gidm",
        help="train a latent inverse-dynamics model (latent actions) on frame pairs",
        description="Train a GIDM on frame pairs (o_t, o_t+k) from the clips a SQL query or manifest selects. "
        "Re-running with the same --out resumes from its latest checkpoint. Config: the --model "
        "size's defaults <- --config file <- --model.*/--train.*/--data.* flags <- shortcut flags.",
    )
    g.add_argument("--root", required=True, help="corpus root (local folder or fsspec URL)")
    g.add_argument(
        "--select",
        required=True,
        help='clips to train on: SQL returning key[, weight] (e.g. "SELECT key FROM clips WHERE kept") or a selection manifest path',
    )
    g.add_argument("--out", required=True, help="run folder: checkpoints/, metrics.jsonl, tb/, run_config.json")
    g.add_argument(
        "--model",
        default="keypoint",
        choices=MODEL_SIZES,
        help="model preset (builder defaults): keypoint (default; best measured latent on robot / fixed-camera "
        "video, 64 px), tiny (transformer encoder, 64 px), small (128 px, VQ), univla (DINOv2 features, VQ)",
    )
    g.add_argument("--config", help="YAML/TOML/JSON file with model/train/data sections")
    gap = g.add_mutually_exclusive_group()
    gap.add_argument("--gap-s", type=float, help="gap o_t -> o_t+k in seconds (same as --data.gap_s; default 1.0)")
    gap.add_argument("--gap-frames", type=int, help="gap in encoded frames (same as --data.gap_frames)")
    g.add_argument("--size", type=int, help="square input side in px; sets model.image_size too (default: the model's)")
    g.add_argument("--steps", type=int, help="total optimizer steps (same as --train.steps)")
    g.add_argument("--loader-workers", type=int, help="DataLoader worker processes (same as --data.num_workers)")
    g.add_argument(
        "--workers",
        type=int,
        default=1,
        help="training processes on this machine (data-parallel under torchrun: a GPU each when "
        "present, else gloo on CPU); under torchrun itself, WORLD_SIZE decides",
    )
    g.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.lazy = lambda parser: add_flags(parser, _run_config_cls(), "run config (model.*, train.*, data.*)")
    g.set_defaults(func=cmd_train_gidm)
    from .train_gfdm import add_gfdm_parser
    from .train_policy import add_policy_parser

    add_gfdm_parser(sub)
    add_policy_parser(sub)
    return t


def main(argv: Sequence[str] | None = None) -> int:
    """``defi train ...`` standalone (argv starts with the model name, e.g. ["gidm", "--root", ...]);
    user errors print one line and return 2."""
    from .cli import run_standalone

    return run_standalone([add_train_parser], argv, prefix=("train",))


if __name__ == "__main__":
    raise SystemExit(main())
