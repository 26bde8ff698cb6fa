"""``defi train gfdm``: train the forward dynamics model on a selection of curated clips.

``defi train gfdm --root ROOT --select SQL|MANIFEST --out RUN_DIR [--model tiny|svd]`` embeds the
selection's distinct instructions once (open_clip text tower, cached in ROOT/text_embeddings; see
``training.gfdm.text``), builds the shard loader over the selection (windows of context + future
frames at gap k), runs the GFDM recipe (``training.recipes.train_gfdm``) and prints a summary.
Re-running with the same RUN_DIR resumes from its latest checkpoint.

Config: one ``GFDMRunConfig`` (model = ``GFDMConfig``, train = ``TrainConfig``, data =
``DataConfig`` shared with ``defi train gidm``, text = ``TextModelConfig``), resolved as: the
``--model`` size's builder defaults <- ``--config`` file <- generated ``--model.*/--train.*/
--data.*/--text.*`` flags <- shortcut flags. Saved to ``RUN_DIR/run_config.json``; counts (clips
skipped as too short for the gap, undecodable, ...) to ``RUN_DIR/run_record.json``.

Units: ``gap_s`` seconds, ``gap_frames`` encoded frames (k); ``size`` pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from defi.pipelines.config import ConfigError, add_flags, flag_overrides, from_dict, load_file, merge, to_dict

from .train import RUN_CONFIG_FILE, DataConfig, _check_resume, batch_stream, process_group, torchrun_argv

MODEL_SIZES = ("tiny", "svd")
RUN_RECORD_FILE = "run_record.json"


def _gfdm_default():
    from defi.training.gfdm import GFDMConfig

    return GFDMConfig()  # replaced by the --model size's builder in resolve_run_config


def _text_default():
    from defi.training.gfdm import TextModelConfig

    return TextModelConfig()


def run_config_cls() -> type:
    """``GFDMRunConfig``, built on first use so that building the ``defi`` parser does not import
    torch."""
    if "GFDMRunConfig" in globals():
        return globals()["GFDMRunConfig"]
    from defi.training.gfdm import GFDMConfig, TextModelConfig
    from defi.training.recipes.train_gfdm import GFDMTrainConfig as TrainConfig

    globals().update(GFDMConfig=GFDMConfig, TrainConfig=TrainConfig, TextModelConfig=TextModelConfig)

    @dataclass
    class GFDMRunConfig:
        """A whole ``defi train gfdm`` run: the model, the loop, the data, the text tower."""

        model: GFDMConfig = field(default_factory=_gfdm_default)
        train: TrainConfig = field(default_factory=TrainConfig)
        data: DataConfig = field(default_factory=DataConfig)
        text: TextModelConfig = field(default_factory=_text_default)

    globals()["GFDMRunConfig"] = GFDMRunConfig
    return GFDMRunConfig


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
def resolve_run_config(args: argparse.Namespace):
    """Builder defaults of ``--model`` <- ``--config`` file <- generated flags <- shortcut flags."""
    from defi.training.gfdm import gfdm_config

    from .cli import UsageError

    cls = run_config_cls()
    try:
        base_model = gfdm_config(args.model).to_dict()
    except ValueError as e:
        raise UsageError(str(e)) from None
    data: dict[str, Any] = {"model": base_model}
    if args.model == "svd":  # the released text tower: CLIP ViT-B/32 (512 wide)
        data["text"] = {"name": "ViT-B-32", "pretrained": "openai"}
    if args.config:
        data = merge(data, load_file(args.config))
    flags = flag_overrides(args)
    data = merge(data, flags)
    short: dict[str, Any] = {}
    if args.gap_s is not None:
        short.update(gap_s=args.gap_s, gap_frames=None)
    if args.gap_frames is not None:
        short["gap_frames"] = args.gap_frames
    if args.size is not None:
        short["size"] = args.size
    if args.loader_workers is not None:
        short["num_workers"] = args.loader_workers
    data = merge(data, {"data": short, "train": {"out_dir": args.out}})
    if args.steps is not None:
        data = merge(data, {"train": {"steps": args.steps}})
    if args.no_progress:
        data = merge(data, {"train": {"progress": False}})
    if args.pretrained:
        data = merge(data, {"model": {"pretrained_path": args.pretrained}})
    d, m = data.get("data") or {}, data["model"]
    explicit = "image_size" in (flags.get("model") or {}) or (args.config and "image_size" in (load_file(args.config).get("model") or {}))
    if d.get("size") is not None:
        if explicit and int(m["image_size"]) != int(d["size"]):
            raise UsageError(f"--size {d['size']} disagrees with model.image_size={m['image_size']}")
        m["image_size"] = int(d["size"])
    cfg = from_dict(cls, data)
    if cfg.data.size is None:
        cfg.data.size = cfg.model.image_size
    if cfg.data.size != cfg.model.image_size:
        raise UsageError(f"data.size={cfg.data.size} disagrees with model.image_size={cfg.model.image_size}")
    if cfg.text.name == "tiny" and cfg.text.width != cfg.model.text_dim:
        raise UsageError(f"text.width={cfg.text.width} (the tiny tower's output) disagrees with model.text_dim={cfg.model.text_dim}")
    return cfg


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def selection_texts(corpus, keys: list[str]) -> list[str]:
    """Distinct non-empty instructions (clips.language) of the selected clips, sorted."""
    import pyarrow as pa
    import pyarrow.compute as pc

    clips = corpus.read_table("clips").select(["key", "language"])
    clips = clips.filter(pc.is_in(clips.column("key"), value_set=pa.array(keys, pa.string())))
    return sorted({t for t in clips.column("language").to_pylist() if t})


class TextLookup:
    """Instruction -> embedding, from the corpus cache (texts seen for the first time, e.g. a
    <key>.lang.txt that differs from clips.language, are embedded and cached on the fly)."""

    def __init__(self, corpus, text_cfg, texts: list[str], text_dim: int):
        from defi.training.gfdm import embed_instructions

        self.corpus, self.cfg, self.text_dim = corpus, text_cfg, text_dim
        self.table: dict[str, Any] = {}
        self.encoder = None
        if texts:
            self.add(texts, embed_instructions)

    def add(self, texts: list[str], embed) -> None:
        embs = embed(self.corpus, texts, self.cfg, encoder=self.encoder)
        if embs.shape[1] != self.text_dim:
            from .cli import UsageError

            raise UsageError(
                f"the text model gives {embs.shape[1]}-dim embeddings but model.text_dim="
                f"{self.text_dim}; set --model.text_dim {embs.shape[1]}"
            )
        self.table.update(zip(texts, embs, strict=True))

    def __call__(self, langs: list[str | None]):
        import numpy as np
        import torch

        from defi.training.gfdm import embed_instructions

        new = sorted({t for t in langs if t and t not in self.table})
        if new:
            self.add(new, embed_instructions)
        zero = np.zeros(self.text_dim, np.float32)
        emb = np.stack([self.table[t] if t else zero for t in langs])
        return torch.from_numpy(emb), torch.tensor([bool(t) for t in langs])


def gfdm_batches(stream: Iterator[dict], context: int, lookup: TextLookup) -> Iterator[dict]:
    """ClipDataset batches -> the recipe's batches (obs, future, text_emb, has_text)."""
    for batch in stream:
        if "frames" in batch:  # [B, context + T, 3, H, W] at stride k
            frames = batch["frames"]
            obs, future = frames[:, :context].flatten(1, 2), frames[:, context:]
        else:
            obs, future = batch["obs"], batch["next_obs"].unsqueeze(1)
        langs = batch.get("lang") or [None] * obs.shape[0]
        text_emb, has_text = lookup(list(langs))
        yield {"obs": obs, "future": future, "text_emb": text_emb, "has_text": has_text}


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------
def run_train_gfdm(cfg, root: str, select: str) -> dict[str, Any]:
    """Train (or resume) a GFDM run described by ``cfg`` (a resolved ``GFDMRunConfig``) on the
    clips ``select`` picks from the corpus at ``root``. Returns the recipe's summary plus
    ``config``, ``selected_clips``, ``texts``, ``data_stats`` and ``wall_s``; writes
    run_config.json and run_record.json into ``cfg.train.out_dir``. User errors raise
    ``UsageError`` (one line)."""
    import torch

    from defi.schemas.corpus import Corpus, CorpusError
    from defi.schemas.selection import SelectionError
    from defi.training.data import ClipDataset
    from defi.training.gfdm import text_model_id
    from defi.training.recipes.train_gfdm import last_checkpoint, train

    from .cli import UsageError, one_line

    if cfg.model.pretrained_path and not Path(cfg.model.pretrained_path).exists():
        raise UsageError(f"pretrained SVD weights not found: {cfg.model.pretrained_path}")
    rank, world = process_group()
    out = Path(cfg.train.out_dir)
    _check_resume(out, cfg)
    d, m = cfg.data, cfg.model
    try:
        corpus = Corpus.open(root)
        dataset = ClipDataset.from_corpus(
            corpus,
            select,
            gap=d.gap,
            size=d.size,
            pairs_per_clip=d.pairs_per_clip,
            window=m.context_frames + m.future_frames,
            shuffle=True,
            shuffle_buffer=d.shuffle_buffer,
            seed=cfg.train.seed,
            rank=rank,
            world_size=world,
        )
        texts = selection_texts(corpus, dataset.keys)
        lookup = TextLookup(corpus, cfg.text, texts, m.text_dim)
    except SelectionError as e:
        raise UsageError(f"--select: {one_line(e)}") from None
    except (CorpusError, ValueError, FileNotFoundError) as e:
        raise UsageError(one_line(e)) from None
    out.mkdir(parents=True, exist_ok=True)
    main_rank = rank == 0
    facts = {
        **d.gap.to_dict(),
        "size": d.size,
        "image_size": m.image_size,
        "context_frames": m.context_frames,
        "future_frames": m.future_frames,
        "text": to_dict(cfg.text),
        "text_model_id": text_model_id(cfg.text),
    }
    if main_rank:
        (out / RUN_CONFIG_FILE).write_text(
            json.dumps({**to_dict(cfg), "root": root, "select": select, "selected_clips": len(dataset.keys), "world_size": world}, indent=2)
        )

    def make_batches(start_step: int):
        stream = batch_stream(dataset, cfg.train.batch_size, d.num_workers, start_step)
        return gfdm_batches(stream, m.context_frames, lookup)

    flushed = torch.set_flush_denormal(True)  # see pipelines/train.py: denormals slow CPU steps 10x
    t0 = time.perf_counter()
    try:
        result = train(m, cfg.train, make_batches, extra={"data": facts})  # a labeler/policy reads them back
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(one_line(e)) from None
    finally:
        if flushed:
            torch.set_flush_denormal(False)
    stats = dict(dataset.stats)
    if main_rank:
        record = {
            "command": "train gfdm",
            "root": root,
            "select": select,
            "selected_clips": len(dataset.keys),
            "texts": len(texts),
            "text_model_id": facts["text_model_id"],
            "data_stats": stats,
            "clips_skipped_too_short": stats.get("skipped:too_short", 0),
            "steps_run": result["steps_run"],
            "final_step": result["final_step"],
            "seconds_per_step": result["seconds_per_step"],
            "first_loss": result["first_loss"],
            "last_loss": result["last_loss"],
            "checkpoint": result["checkpoint"],
            "grid": result["grid"],
        }
        (out / RUN_RECORD_FILE).write_text(json.dumps(record, indent=2))
    result.update(
        rank=rank,
        world_size=world,
        config=cfg,
        selected_clips=len(dataset.keys),
        texts=len(texts),
        wall_s=time.perf_counter() - t0,
        data_stats=stats,
        last_checkpoint=str(last_checkpoint(out) or ""),
    )
    return result


def summary_text(res: dict[str, Any]) -> str:
    cfg = res["config"]
    m = cfg.model
    gap = f"{cfg.data.gap_s} s" if cfg.data.gap_s is not None else f"{cfg.data.gap_frames} frames"
    model = res["model"]
    params = sum(p.numel() for p in model.parameters())
    unet = sum(p.numel() for p in model.unet.parameters())
    lines = [
        f"gfdm ({m.backbone}, {m.objective}): {res['selected_clips']} clips selected, {res['texts']} distinct "
        f"instructions, gap {gap}, {cfg.data.size} px, batch {cfg.train.batch_size}",
        f"  model    {params:,} parameters (U-Net {unet:,})",
    ]
    skipped = res["data_stats"].get("skipped:too_short", 0)
    if skipped:
        lines.append(f"  skipped  {skipped} clip reads too short for the gap")
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
    if res.get("grid"):
        lines.append(f"  grid     {res['grid']}  (o_t | predicted | true)")
    lines.append(f"  checkpoint {res['last_checkpoint']}")
    return "\n".join(lines)


def cmd_train_gfdm(args: argparse.Namespace) -> int:
    from .cli import UsageError

    if args.workers > 1 and int(os.environ.get("WORLD_SIZE", "1") or 1) == 1 and not args.dry_run:
        import subprocess

        full = getattr(args, "argv", None) or sys.argv[1:]
        argv = full[full.index("gfdm") + 1 :]
        cmd = torchrun_argv(args.workers, ["gfdm", *argv])
        print(f"launching {args.workers} processes: {' '.join(cmd[1:])}", file=sys.stderr)
        return subprocess.run(cmd).returncode
    try:
        cfg = resolve_run_config(args)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    if args.dry_run:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    res = run_train_gfdm(cfg, args.root, args.select)
    if res.get("rank", 0) == 0:
        print(summary_text(res))
    return 0


def add_gfdm_parser(sub) -> argparse.ArgumentParser:
    """Add ``gfdm`` to the ``train`` subparsers (a subparsers action whose parser class adds the
    generated flags on first use, see pipelines/train.py)."""
    g = sub.add_parser(
        "gfdm",
        help="train a language-conditioned forward dynamics model (predicts o_t+k from o_t + instruction)",
        description="Train a GFDM on windows (o_t, o_t+k ...) from the clips a SQL query or manifest selects; "
        "instructions are embedded once by an open_clip text tower and cached in ROOT/text_embeddings. "
        "Re-running with the same --out resumes. Config: the --model size's defaults <- --config file "
        "<- --model.*/--train.*/--data.*/--text.* flags <- shortcut flags.",
    )
    g.add_argument("--root", required=True, help="corpus root (local folder or fsspec URL)")
    g.add_argument("--select", required=True, help="clips to train on: SQL returning key[, weight] or a selection manifest path")
    g.add_argument("--out", required=True, help="run folder: checkpoints/, grids/, metrics.jsonl, tb/, run_config.json")
    g.add_argument(
        "--model",
        default="tiny",
        choices=MODEL_SIZES,
        help="tiny: 64 px pixel U-Net for CPUs (default); svd: SVD img2vid's U-Net, 16 frames, 256 px",
    )
    g.add_argument("--config", help="YAML/TOML/JSON file with model/train/data/text sections")
    gap = g.add_mutually_exclusive_group()
    gap.add_argument("--gap-s", type=float, help="gap o_t -> o_t+k in seconds (same as --data.gap_s; default 1.0)")
    gap.add_argument("--gap-frames", type=int, help="gap in encoded frames (same as --data.gap_frames)")
    g.add_argument("--size", type=int, help="square frame side in px; sets model.image_size too")
    g.add_argument("--steps", type=int, help="total optimizer steps (same as --train.steps)")
    g.add_argument("--pretrained", help="svd: local folder of SVD img2vid weights (diffusers layout: unet/, vae/)")
    g.add_argument("--loader-workers", type=int, help="DataLoader worker processes (same as --data.num_workers)")
    g.add_argument(
        "--workers", type=int, default=1, help="training processes on this machine (data-parallel under torchrun: a GPU each, else gloo)"
    )
    g.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.lazy = lambda parser: add_flags(parser, run_config_cls(), "run config (model.*, train.*, data.*, text.*)")
    g.set_defaults(func=cmd_train_gfdm)
    return g
