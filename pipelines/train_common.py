"""What the ``defi train`` commands (gidm, gfdm, policy) share, in one place.

- Run configs: a command's whole config (``GIDMRunConfig``...) is a dataclass of sections (model,
  train, data...; each a torch-free config class). It is resolved from layers, each a nested dict
  like a ``--config`` file: the preset's defaults <- ``--config`` file <- generated
  ``--section.field`` flags <- the shortcut flags (``TRAIN_SHORTCUTS``; ``command.run_command``
  resolves them for every config-driven command). The Python entries
  (``gidm_run_config(preset, *layers)``...) take the same layers, so the CLI and the demo resolve a
  config the same way.
- The loader's settings: ``DataConfig`` (``training.data.build_dataset`` and ``batch_stream`` use them).
- Running: ``relaunch`` under torchrun for ``--workers N``, ``check_resume`` of a RUN_DIR,
  ``flush_denormals`` while training, ``progress_lines`` of the summaries.

Units: ``gap_s`` is seconds (k = max(1, round(gap_s * fps)) frames per clip), ``gap_frames`` is
encoded frames; ``size`` is the square input side in pixels.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from defi.schemas.gap import DEFAULT_GAP, Gap

from .command import GAP_SHORTCUTS, CommandSpec, add_dry_run_flag
from .config import ConfigError, from_dict, merge, to_dict
from .usage import UsageError, check_out_dir, int_at_least, one_line

RUN_CONFIG_FILE = "run_config.json"


@dataclass
class DataConfig:
    """How frame pairs are drawn from the selected clips (see ``training.data.ClipDataset``)."""

    gap_s: float | None = field(
        default=None, metadata={"help": "gap between o_t and o_t+k in seconds (k = max(1, round(gap_s * fps)) frames per clip)"}
    )
    gap_frames: int | None = field(default=None, metadata={"help": "gap in encoded frames; replaces gap_s"})
    size: int | None = field(default=None, metadata={"help": "square input side, px (default: model.image_size)"})
    pairs_per_clip: int | None = field(default=None, metadata={"help": "pairs drawn per clip per epoch (default: every t)"})
    shuffle_buffer: int = field(default=256, metadata={"help": "items mixed in the shuffle buffer"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})

    def __post_init__(self) -> None:
        errors = []
        try:
            gap = Gap.from_fields(self.gap_s, self.gap_frames, default=DEFAULT_GAP)
            self.gap_s, self.gap_frames = gap.to_dict()["gap_s"], gap.to_dict()["gap_frames"]  # the default, filled in
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


# ---------------------------------------------------------------------------------------------
# run configs
# ---------------------------------------------------------------------------------------------
def resolve_run_config(cls: type, base: dict[str, Any], layers: Sequence[dict[str, Any]]):
    """The run config ``cls`` (with ``model`` and ``data`` sections) of ``base`` (the preset's
    defaults) <- each of ``layers``. The image size has one source, ``model.image_size``:
    ``data.size`` (``--size``) only sets it, and is filled from it for display."""
    cfg = from_dict(cls, merge_layers(base, layers))
    cfg.data.size = cfg.model.image_size
    return cfg


def merge_layers(base: dict[str, Any], layers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``base`` (the preset's defaults) <- each of ``layers`` in turn. ``data.size`` sets the
    model's ``image_size``, unless a layer gives ``model.image_size`` explicitly (then the two
    must agree)."""
    data = dict(base)
    for layer in layers:
        data = merge(data, layer)
    explicit = any("image_size" in (layer.get("model") or {}) for layer in layers)
    size = (data.get("data") or {}).get("size")
    if size is not None:
        model = data.setdefault("model", {})
        if explicit and int(model["image_size"]) != int(size):
            raise ConfigError(f"--size {size} disagrees with model.image_size={model['image_size']}")
        model["image_size"] = int(size)
    return data


# the shortcut flags of ``add_run_flags`` (see ``command.Shortcuts``); gfdm adds --pretrained
TRAIN_SHORTCUTS: dict[str, Any] = {
    **GAP_SHORTCUTS,
    "size": "data.size",
    "loader_workers": "data.num_workers",
    "steps": "train.steps",
    "out": "train.out_dir",
    "no_progress": {"train.progress": False},
}


def add_input_flags(p: argparse.ArgumentParser, grids: bool) -> None:
    """``--root``, ``--select`` and ``--out`` of a model trained on a selection (``grids``: the
    run writes prediction grids)."""
    p.add_argument("--root", help="corpus root (local folder or fsspec URL); required unless --dry-run")
    p.add_argument(
        "--select",
        help='clips to train on: SQL returning key[, weight] (e.g. "SELECT key FROM clips WHERE kept") or a selection manifest path; '
        "required unless --dry-run",
    )
    grid = "grids/, " if grids else ""
    p.add_argument("--out", help=f"run folder: checkpoints/, {grid}metrics.jsonl, tb/, run_config.json; required unless --dry-run")


def add_run_flags(p: argparse.ArgumentParser, data_flags: bool = True, workers: bool = True) -> None:
    """The flags every ``defi train`` model shares: ``--config``, the data shortcuts, ``--steps``,
    ``--workers``, ``--dry-run``, ``--no-progress``."""
    p.add_argument("--config", help="YAML/TOML/JSON file with the run config's sections (see the flags below)")
    if data_flags:
        gap = p.add_mutually_exclusive_group()
        gap.add_argument("--gap-s", type=float, help="gap o_t -> o_t+k in seconds (same as --data.gap_s; default 1.0)")
        gap.add_argument("--gap-frames", type=int, help="gap in encoded frames (same as --data.gap_frames)")
        p.add_argument("--size", type=int, help="square input side in px; sets model.image_size too (default: the model's)")
        p.add_argument("--loader-workers", type=int, help="DataLoader worker processes (same as --data.num_workers)")
    p.add_argument("--steps", type=int, help="total optimizer steps (same as --train.steps)")
    if workers:
        p.add_argument(
            "--workers",
            type=int_at_least(1),
            default=1,
            help="training processes on this machine (data-parallel under torchrun: a GPU each when "
            "present, else gloo on CPU); under torchrun itself, WORLD_SIZE decides",
        )
    add_dry_run_flag(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def train_spec(model: str, make_config: Callable, run: Callable, summary: Callable, shortcuts: dict[str, Any] | None = None) -> CommandSpec:
    """The ``CommandSpec`` of ``defi train MODEL`` (gidm, gfdm, joint): the config is
    ``make_config(args.model, *layers)``; a run needs ``--root``, ``--select`` and ``--out`` (a run
    folder, ``check_run_dir``), relaunches under torchrun for ``--workers N``, is
    ``run(root, select, cfg)`` and prints rank 0's ``summary(result)``."""

    def print_summary(_args: argparse.Namespace, res: dict[str, Any]) -> None:
        if res["rank"] == 0:
            print(summary(res))

    return CommandSpec(
        name=f"train {model}",
        build=lambda args, *layers: make_config(args.model, *layers),
        shortcuts={**TRAIN_SHORTCUTS, **(shortcuts or {})},
        requires=("root", "select", "out"),
        check=lambda args, cfg: check_run_dir(cfg.train.out_dir, args.root),
        run=lambda args, cfg: run(args.root, args.select, cfg),
        summary=print_summary,
        errors=(),  # the recipes raise UsageError themselves
        relaunch=True,
    )


# ---------------------------------------------------------------------------------------------
# distributed
# ---------------------------------------------------------------------------------------------
def process_group() -> tuple[int, int]:
    """(rank, world_size) of this process: joins torchrun's process group when WORLD_SIZE > 1
    (gloo on CPU, NCCL on GPU; see ``training.distributed``). ``--workers N`` outside torchrun is
    handled by ``relaunch``."""
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


def relaunch(args: argparse.Namespace, model: str) -> int | None:
    """``defi train MODEL --workers N`` outside torchrun: run the same command as N processes under
    torchrun and return its exit code; None when this process should train itself."""
    if args.workers <= 1 or int(os.environ.get("WORLD_SIZE", "1") or 1) != 1 or args.dry_run:
        return None
    full = getattr(args, "argv", None) or sys.argv[1:]
    cmd = torchrun_argv(args.workers, [model, *full[full.index(model) + 1 :]])
    print(f"launching {args.workers} processes: {' '.join(cmd[1:])}", file=sys.stderr)
    return subprocess.run(cmd).returncode


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def text_cache_saver(command: str, enabled: bool = True) -> Callable[[Any, Any, str], None]:
    """``save`` for ``training.gfdm.embed_instructions``: new instruction embeddings go to
    ROOT/text_embeddings under the root's writer lock (a training run writes into the corpus
    only there). When the root is read-only, another writer holds it, or ``enabled`` is False
    (the ranks but the first of a distributed run), the run keeps them in memory and a cache it
    could not write is said once, in one line."""
    import uuid

    from defi.schemas.corpus import CorpusError

    from .lock import WriterLock

    said = False

    def save(corpus, rows, part: str) -> None:
        nonlocal said
        if not enabled:
            return
        try:
            with WriterLock(corpus, command, f"{command.replace(' ', '-')}-{uuid.uuid4().hex[:6]}"):
                corpus.write_part("text_embeddings", rows, part=part)
        except (CorpusError, OSError) as e:  # LockHeld is a CorpusError
            if not said:
                print(f"note: instruction embeddings not cached in {corpus.path('text_embeddings')}: {one_line(e)}", file=sys.stderr)
                said = True

    return save


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------
def check_run_dir(out: str, root: str | None) -> None:
    """Refuse a run folder that cannot be one (empty, a file, under a file, inside a corpus root)
    or that is a non-empty folder without a run to resume (no run_config.json): a run writes
    checkpoints/, metrics.jsonl and tb/ into it, and would mix them into unrelated files."""
    check_out_dir(out, "--out", root=root, reuse=lambda d: (Path(d) / RUN_CONFIG_FILE).is_file())


def check_resume(out: Path, cfg) -> None:
    """A RUN_DIR holds one model trained on one kind of pair: refuse another model config or
    another gap/size (the recipe compares the model config too, with a longer message)."""
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


@contextmanager
def flush_denormals():
    """Flush denormal floats to zero while training. Denormals (the zero-initialised output
    head's tiny early gradients and Adam moments) made CPU steps ~10x slower: 324 vs 25 ms/step for
    the tiny GIDM at 32 px, batch 16, on the 2-core dev box. Restored after (there is no getter,
    and False is torch's default)."""
    import torch

    flushed = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flushed:
            torch.set_flush_denormal(False)


def progress_lines(res: dict[str, Any], total_steps: int, loss_line: Callable[[], str]) -> list[str]:
    """The summary's resume, steps and loss lines (``loss_line()`` when steps ran)."""
    lines = []
    if res["resumed_from"]:
        lines.append(f"  resumed  from {res['resumed_from']} (step {res['start_step']})")
    if res["steps_run"]:
        lines.append(
            f"  steps    {res['start_step'] + 1}..{res['final_step']} of {total_steps} "
            f"in {res['wall_s']:.1f} s ({res['seconds_per_step'] * 1000:.0f} ms/step)"
        )
        lines.append(loss_line())
    else:
        lines.append(f"  steps    none to run: already at step {res['final_step']} of {total_steps}")
    return lines


def output_lines(res: dict[str, Any]) -> list[str]:
    """The summary's last lines: the last prediction grid, if the run writes them, and checkpoint."""
    grid = [f"  grid     {res['grid']}  (o_t | predicted | true)"] if res.get("grid") else []
    return [*grid, f"  checkpoint {res['last_checkpoint']}"]
