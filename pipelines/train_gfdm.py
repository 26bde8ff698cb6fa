"""``defi train gfdm``: train the forward dynamics model on a selection of curated clips.

``defi train gfdm --root ROOT --select SQL|MANIFEST --out RUN_DIR [--model tiny|svd]`` embeds the
selection's distinct instructions once (open_clip text tower, cached in ROOT/text_embeddings; see
``training.gfdm.text``), builds the shard loader over the selection (windows of context + future
frames at gap k), runs the GFDM recipe (``training.recipes.gfdm``) and prints a summary.
Re-running with the same RUN_DIR resumes from its latest checkpoint.

Python: ``run_train_gfdm(root, select, gfdm_run_config(preset, *layers))``, what the command and
``defi demo`` both call.

Config: one ``GFDMRunConfig`` (model = ``GFDMConfig``, train = ``GFDMTrainConfig``, data =
``GFDMDataConfig``: ``defi train gidm``'s ``DataConfig`` plus which text a clip trains with,
text = ``TextModelConfig``), resolved as: the
``--model`` size's builder defaults <- ``--config`` file <- generated ``--model.*/--train.*/
--data.*/--text.*`` flags <- shortcut flags. Saved to ``RUN_DIR/run_config.json``; counts (clips
skipped as too short for the gap, undecodable, ...) to ``RUN_DIR/run_record.json``.

Language (``--data.language``): ``instruction`` (the clip's own, from its shard's lang.txt; none
for web clips), ``caption`` (the caption `defi label captions` wrote for it) or ``auto`` (the
instruction where there is one, else the caption). Captions come from the last finished
`defi label captions` run (``labels/captions.json``), or the folder ``--data.captions`` names;
the folder used is saved in run_config.json (``captions_used``).

Units: ``gap_s`` seconds, ``gap_frames`` encoded frames (k); ``size`` pixels.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from defi.schemas.contract import DataContract
from defi.schemas.corpus import Corpus, CorpusError
from defi.schemas.selection import SelectionError
from defi.training.gfdm import GFDM_PRESETS, GFDMConfig, TextModelConfig, gfdm_config, text_model_id
from defi.training.recipes.configuration import GFDMTrainConfig

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
    text_cache_saver,
    train_spec,
)
from .usage import UsageError, one_line

RUN_RECORD_FILE = "run_record.json"
LANGUAGES = ("instruction", "caption", "auto")  # training.gfdm.text.LANGUAGE_MODES (not imported: --help stays free of torch)


@dataclass
class GFDMDataConfig(DataConfig):
    """``DataConfig`` plus the text each clip trains with."""

    language: str = field(
        default="instruction",
        metadata={
            "help": "text a clip trains with: instruction (its own, else none), caption (from `defi label captions`), "
            "auto (the instruction, else the caption)"
        },
    )
    captions: str | None = field(
        default=None, metadata={"help": "caption labels to read, labels/caption-<hash> (default: the last `defi label captions` run's)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.language not in LANGUAGES:
            raise ValueError(f"invalid GFDMDataConfig: language={self.language!r}: unknown; valid: {', '.join(LANGUAGES)}")


@dataclass
class GFDMRunConfig:
    """A whole ``defi train gfdm`` run: the model, the loop, the data, the text tower."""

    model: GFDMConfig = field(default_factory=GFDMConfig)  # replaced by the preset's builder
    train: GFDMTrainConfig = field(default_factory=GFDMTrainConfig)
    data: GFDMDataConfig = field(default_factory=GFDMDataConfig)
    text: TextModelConfig = field(default_factory=TextModelConfig)


def gfdm_run_config(preset: str = "tiny", *layers: dict[str, Any]):
    """The ``GFDMRunConfig`` of the GFDM preset ``preset`` (``defi train gfdm --model``; svd also
    picks the released text tower, CLIP ViT-B/32) with ``layers`` (nested dicts like a ``--config``
    file, lowest first) over it. Raises ``ConfigError`` naming what is wrong."""
    try:
        base: dict[str, Any] = {"model": gfdm_config(preset).to_dict()}
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if preset == "svd":  # the released text tower: CLIP ViT-B/32 (512 wide)
        base["text"] = {"name": "ViT-B-32", "pretrained": "openai"}
    cfg = resolve_run_config(GFDMRunConfig, base, layers)
    if cfg.text.name == "tiny" and cfg.text.width != cfg.model.text_dim:
        raise ConfigError(f"text.width={cfg.text.width} (the tiny tower's output) disagrees with model.text_dim={cfg.model.text_dim}")
    return cfg


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
class ClipLanguage:
    """The text each clip trains with under ``mode`` (``training.gfdm.text.pick_language``):
    ``captions`` maps clip keys to their captions, read from ``labels/<source>/``."""

    def __init__(self, mode: str = "instruction", captions: dict[str, str] | None = None, source: str | None = None):
        self.mode, self.captions, self.source = mode, captions or {}, source

    def __call__(self, keys: list[str], instructions: list[str | None]) -> list[str | None]:
        from defi.training.gfdm.text import pick_language

        return [pick_language(self.mode, t, self.captions.get(k)) for k, t in zip(keys, instructions, strict=True)]


def caption_folder(corpus, given: str | None, mode: str) -> str:
    """The ``labels/`` folder of captions to read: the one ``given`` names (``labels/caption-<hash>``
    or ``caption-<hash>``), else the last finished `defi label captions` run's."""
    have = [n for n in corpus.label_folders() if n.startswith("caption-")]
    if given:
        name = given.rstrip("/").rsplit("/", 1)[-1]
        if name not in have:
            raise UsageError(f"--data.captions {given}: no such caption labels in {corpus.root}; have: {', '.join(have) or 'none'}")
        return name
    current = corpus.current_captions()
    if current is None:
        raise UsageError(
            f"--data.language {mode}: corpus {corpus.root} has no caption labels; "
            f"run `defi label captions --root {corpus.root}` first (or name some with --data.captions)"
        )
    return current


def clip_language(corpus, d) -> ClipLanguage:
    """The ``ClipLanguage`` of a run's data config (``language``, ``captions``)."""
    mode = getattr(d, "language", "instruction")
    if mode == "instruction":
        return ClipLanguage()
    name = caption_folder(corpus, getattr(d, "captions", None), mode)
    table = corpus.read_table(f"labels/{name}").select(["key", "caption"])
    captions = {k: c for k, c in zip(table.column("key").to_pylist(), table.column("caption").to_pylist(), strict=True) if c}
    return ClipLanguage(mode, captions, name)


def selection_texts(corpus, keys: list[str], language: ClipLanguage | None = None) -> list[str]:
    """Distinct non-empty texts of the selected clips, sorted: their instructions
    (clips.language), or what ``language`` picks from instructions and captions."""
    import pyarrow as pa
    import pyarrow.compute as pc

    clips = corpus.read_table("clips").select(["key", "language"])
    clips = clips.filter(pc.is_in(clips.column("key"), value_set=pa.array(keys, pa.string())))
    texts = clips.column("language").to_pylist()
    if language is not None:
        texts = language(clips.column("key").to_pylist(), texts)
    return sorted({t for t in texts if t})


class TextLookup:
    """Instruction -> embedding, from the corpus cache (texts seen for the first time, e.g. a
    <key>.lang.txt that differs from clips.language, are embedded and cached on the fly)."""

    def __init__(self, corpus, text_cfg, texts: list[str], text_dim: int, save=None):
        from defi.training.gfdm.text import embed_instructions

        self.corpus, self.cfg, self.text_dim, self.save = corpus, text_cfg, text_dim, save
        self.table: dict[str, Any] = {}
        self.encoder = None
        if texts:
            self.add(texts, embed_instructions)

    def add(self, texts: list[str], embed) -> None:
        embs = embed(self.corpus, texts, self.cfg, encoder=self.encoder, save=self.save)
        if embs.shape[1] != self.text_dim:
            raise UsageError(
                f"the text model gives {embs.shape[1]}-dim embeddings but model.text_dim="
                f"{self.text_dim}; set --model.text_dim {embs.shape[1]}"
            )
        self.table.update(zip(texts, embs, strict=True))

    def __call__(self, langs: list[str | None]):
        import numpy as np
        import torch

        from defi.training.gfdm.text import embed_instructions

        new = sorted({t for t in langs if t and t not in self.table})
        if new:
            self.add(new, embed_instructions)
        zero = np.zeros(self.text_dim, np.float32)
        emb = np.stack([self.table[t] if t else zero for t in langs])
        return torch.from_numpy(emb), torch.tensor([bool(t) for t in langs])


def gfdm_batches(stream: Iterator[dict], context: int, lookup: TextLookup, language: ClipLanguage | None = None) -> Iterator[dict]:
    """ClipDataset batches -> the recipe's batches (obs, future, text_emb, has_text); the text
    of each item is its instruction, or what ``language`` picks."""
    for batch in stream:
        if "frames" in batch:  # [B, context + T, 3, H, W] at stride k
            frames = batch["frames"]
            obs, future = frames[:, :context].flatten(1, 2), frames[:, context:]
        else:
            obs, future = batch["obs"], batch["next_obs"].unsqueeze(1)
        langs = list(batch.get("lang") or [None] * obs.shape[0])
        if language is not None:
            langs = language(list(batch["key"]), langs)
        text_emb, has_text = lookup(langs)
        yield {"obs": obs, "future": future, "text_emb": text_emb, "has_text": has_text}


class ForwardData(NamedTuple):
    """What a forward-model run (``train gfdm``, ``train joint``) trains on: the loader over the
    selection, the text of each clip, the data facts saved with every checkpoint, and
    ``make_batches(start_step)`` for the recipe."""

    dataset: Any
    language: ClipLanguage
    texts: list[str]
    contract: DataContract
    make_batches: Callable[[int], Iterator[dict]]


def forward_data(root: str, select: str, cfg, m, command: str, rank: int, world: int) -> ForwardData:
    """The ``ForwardData`` of a run config with ``train``, ``data`` (``GFDMDataConfig``) and
    ``text`` sections, for the GFDM config ``m`` (its context and future frames, text width).
    Bad input raises ``UsageError`` (one line)."""
    from defi.training.data import batch_stream, build_dataset

    d = cfg.data
    try:
        corpus = Corpus.open(root)
        dataset = build_dataset(corpus, select, d, cfg.train.seed, m.context_frames + m.future_frames, rank, world)
        language = clip_language(corpus, d)
        texts = selection_texts(corpus, dataset.keys, language)
        lookup = TextLookup(corpus, cfg.text, texts, m.text_dim, save=text_cache_saver(command, enabled=rank == 0))
    except SelectionError as e:
        raise UsageError(f"--select: {one_line(e)}") from None
    except (CorpusError, ValueError, FileNotFoundError) as e:
        raise UsageError(one_line(e)) from None
    contract = DataContract(
        image_size=m.image_size,
        gap=d.gap,
        context_frames=m.context_frames,
        future_frames=m.future_frames,
        text=to_dict(cfg.text),
        text_model_id=text_model_id(cfg.text),
    )

    def make_batches(start_step: int) -> Iterator[dict]:
        stream = batch_stream(dataset, cfg.train.batch_size, d.num_workers, start_step)
        return gfdm_batches(stream, m.context_frames, lookup, language)

    return ForwardData(dataset, language, texts, contract, make_batches)


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------
def run_train_gfdm(root: str, select: str, cfg) -> dict[str, Any]:
    """Train (or resume) the GFDM run ``cfg`` (a ``GFDMRunConfig``, see ``gfdm_run_config``) on
    the clips ``select`` picks from the corpus at ``root``. Returns the recipe's summary plus
    ``config``, ``selected_clips``, ``texts``, ``data_stats`` and ``wall_s``; writes
    run_config.json and run_record.json into ``cfg.train.out_dir``. User errors raise
    ``UsageError`` (one line)."""
    from defi.training.recipes.gfdm import last_checkpoint, train

    if cfg.model.pretrained_path and not Path(cfg.model.pretrained_path).exists():
        raise UsageError(f"pretrained SVD weights not found: {cfg.model.pretrained_path}")
    rank, world = process_group()
    out = Path(cfg.train.out_dir)
    check_resume(out, cfg)
    d, m = cfg.data, cfg.model
    data = forward_data(root, select, cfg, m, "train gfdm", rank, world)
    dataset, language, texts = data.dataset, data.language, data.texts
    out.mkdir(parents=True, exist_ok=True)
    main_rank = rank == 0
    contract = data.contract
    if main_rank:
        (out / RUN_CONFIG_FILE).write_text(
            json.dumps(
                {
                    **to_dict(cfg),
                    "root": root,
                    "select": select,
                    "selected_clips": len(dataset.keys),
                    "world_size": world,
                    "captions_used": language.source,
                },
                indent=2,
            )
        )

    t0 = time.perf_counter()
    try:
        with flush_denormals():
            result = train(m, cfg.train, data.make_batches, extra={"data": contract.to_dict()})  # a labeler/policy reads it back
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(one_line(e)) from None
    stats = dict(dataset.stats)
    if main_rank:
        record = {
            "command": "train gfdm",
            "root": root,
            "select": select,
            "selected_clips": len(dataset.keys),
            "texts": len(texts),
            "language": d.language,
            "captions_used": language.source,
            "text_model_id": contract.text_model_id,
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
        captions_used=language.source,
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
    texts = (
        "instructions"
        if cfg.data.language == "instruction"
        else f"texts (language {cfg.data.language}: captions from {res['captions_used']})"
    )
    params = sum(p.numel() for p in model.parameters())
    unet = sum(p.numel() for p in model.unet.parameters())
    lines = [
        f"gfdm ({m.backbone}, {m.objective}): {res['selected_clips']} clips selected, {res['texts']} distinct "
        f"{texts}, gap {gap}, {cfg.data.size} px, batch {cfg.train.batch_size}",
        f"  model    {params:,} parameters (U-Net {unet:,})",
    ]
    skipped = res["data_stats"].get("skipped:too_short", 0)
    if skipped:
        lines.append(f"  skipped  {skipped} clip reads too short for the gap")
    lines += progress_lines(res, cfg.train.steps, lambda: f"  loss     {res['first_loss']:.5g} -> {res['last_loss']:.5g}")
    return "\n".join(lines + output_lines(res))


GFDM_SPEC = train_spec("gfdm", gfdm_run_config, run_train_gfdm, summary_text, {"pretrained": "model.pretrained_path"})


def cmd_train_gfdm(args: argparse.Namespace) -> int:
    return run_command(GFDM_SPEC, args)


def add_gfdm_parser(sub) -> argparse.ArgumentParser:
    """Add ``gfdm`` to the ``train`` subparsers."""
    g = sub.add_parser(
        "gfdm",
        help="train a language-conditioned forward dynamics model (predicts o_t+k from o_t + instruction)",
        description="Train a GFDM on windows (o_t, o_t+k ...) from the clips a SQL query or manifest selects; "
        "instructions are embedded once by an open_clip text tower and cached in ROOT/text_embeddings. "
        "Re-running with the same --out resumes. Config: the --model size's defaults <- --config file "
        "<- --model.*/--train.*/--data.*/--text.* flags <- shortcut flags.",
    )
    add_input_flags(g, grids=True)
    g.add_argument(
        "--model",
        default="tiny",
        choices=tuple(GFDM_PRESETS),
        help="tiny: 64 px pixel U-Net for CPUs (default); svd: SVD img2vid's U-Net, 16 frames, 256 px",
    )
    g.add_argument("--pretrained", help="svd: local folder of SVD img2vid weights (diffusers layout: unet/, vae/)")
    add_run_flags(g)
    add_flags(g, GFDMRunConfig, "run config (model.*, train.*, data.*, text.*)")
    g.set_defaults(func=cmd_train_gfdm)
    return g
