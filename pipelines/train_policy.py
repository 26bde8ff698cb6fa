"""``defi train policy``: finetune the DeFI policy on the labeled robot clips of a selection.

``defi train policy --root ROOT --select SQL|MANIFEST --gfdm RUN --gidm RUN --out RUN_DIR
[--init defi|scratch|no-gfdm-pretrain|no-gidm-pretrain|bc]`` (or ``--init entangled --joint RUN``) loads the pretrained GFDM and GIDM
(a run folder's latest checkpoint, or a checkpoint folder), embeds the selection's instructions
once (the corpus' text-embedding cache), builds the shard loader with action chunks
(``ActionChunkDataset(horizon=H)``: every recorded row, at the robot's rate) and runs the recipe
``training.recipes.policy``. Re-running with the same RUN_DIR resumes.

Python: ``run_train_policy(root, select, policy_run_config(*layers))``, what the command and ``defi demo`` both
call.

Config: one ``PolicyRunConfig`` (policy = ``PolicyConfig``, train = ``TrainConfig``, data =
``PolicyDataConfig``, text = the GFDM's ``TextModelConfig``), resolved as defaults <- ``--config``
file <- generated flags <- shortcut flags (``--init``, ``--steps``, ``--horizon``). The resolved
config goes to ``RUN_DIR/run_config.json``; what evaluation needs to see frames as training did
(size, context frames, instruction embeddings) is stamped into each checkpoint's ``extra``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from defi.schemas.contract import DataContract
from defi.schemas.corpus import Corpus
from defi.schemas.gap import Gap
from defi.schemas.selection import resolve_selection
from defi.training.gfdm import TextModelConfig
from defi.training.policy import INITS, PolicyConfig
from defi.training.recipes.configuration import TrainConfig

from .config import add_flags, from_dict, merge, rename_sections, to_dict
from .command import CommandSpec, run_command
from .train_common import (
    RUN_CONFIG_FILE,
    add_run_flags,
    check_run_dir,
    flush_denormals,
    process_group,
    progress_lines,
    text_cache_saver,
)


@dataclass
class PolicyDataConfig:
    """How policy items are drawn from the selected clips (``training.data.ActionChunkDataset``)."""

    gap_s: float | None = field(
        default=None, metadata={"help": "gap o_t -> o_t+k of the true future (forward/consistency losses), seconds; default 1 frame"}
    )
    pairs_per_clip: int | None = field(default=None, metadata={"help": "items drawn per clip per epoch (default: every t)"})
    shuffle_buffer: int = field(default=512, metadata={"help": "items mixed in the shuffle buffer"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    stats_clips: int = field(default=500, metadata={"help": "clips read for the action mean/std"})
    proprio: bool = field(
        default=False,
        metadata={
            "help": "give the policy the robot's proprioception (observation.state) at o_t as an input token; "
            "every selected clip must carry it, and its width sets model.state_dim"
        },
    )

    def __post_init__(self) -> None:
        errors = []
        try:
            Gap.from_fields(self.gap_s)
        except ValueError as e:
            errors.append(str(e))
        if self.pairs_per_clip is not None and self.pairs_per_clip < 1:
            errors.append(f"pairs_per_clip={self.pairs_per_clip!r}: must be >= 1 (or null: every t)")
        if self.shuffle_buffer < 0 or self.num_workers < 0 or self.stats_clips < 1:
            errors.append("shuffle_buffer and num_workers must be >= 0, stats_clips >= 1")
        if errors:
            raise ValueError("invalid PolicyDataConfig: " + "; ".join(errors))


def _policy_train_default() -> TrainConfig:
    return TrainConfig(steps=2000, lr=3e-4, warmup_steps=100, batch_size=32, ckpt_every=500, out_dir="")


def _path(help_: str):
    return field(default="", metadata={"help": help_})


@dataclass
class PolicyRunConfig:
    """A whole ``defi train policy`` run: its inputs, the policy, the loop, the data, the GFDM's text tower."""

    root: str = _path("corpus root (local folder or fsspec URL)")
    select: str = _path("clips with actions: SQL returning key[, weight] or a manifest")
    gfdm: str = _path("GFDM run or checkpoint folder (not used by --init bc)")
    gidm: str = _path("GIDM run or checkpoint folder (not used by --init bc)")
    joint: str = _path("joint forward + inverse run or checkpoint folder (`defi train joint`): what --init entangled starts from")
    out: str = _path("run folder: checkpoints/, metrics.jsonl, tb/, run_config.json")
    model: PolicyConfig = field(default_factory=PolicyConfig)
    train: TrainConfig = field(default_factory=_policy_train_default)
    data: PolicyDataConfig = field(default_factory=PolicyDataConfig)
    text: TextModelConfig = field(default_factory=TextModelConfig)

    # the section's name in run configs written before it was ``model`` (as in gidm/gfdm runs);
    # ``--policy.FIELD`` stays a hidden alias of ``--model.FIELD``
    RENAMED: ClassVar[dict[str, str]] = {"policy": "model"}


def policy_run_config(*layers: dict[str, Any]):
    """The ``PolicyRunConfig`` of the defaults with ``layers`` (nested dicts like a ``--config``
    file, lowest first) over them; ``train.out_dir`` is ``out``. Raises ``ConfigError``."""
    data: dict[str, Any] = {}
    for layer in layers:
        data = merge(data, rename_sections(PolicyRunConfig, layer))
    data = with_policy_preset(data)
    cfg = from_dict(PolicyRunConfig, data)
    cfg.train.out_dir = cfg.out
    return cfg


def with_policy_preset(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the values of its ``model.preset`` (``PRESETS``) beneath it: the preset fills
    what no layer sets, so every explicit value wins. ``bc`` has no future branch, so a preset's
    GFDM-feature and latent-token settings do not apply to it."""
    from defi.training.policy.configuration_policy import INIT_VARIANTS, PRESETS

    policy = data.get("model") or {}
    name = policy.get("preset") if isinstance(policy, dict) else None
    if not name or name not in PRESETS:  # an unknown name is refused by PolicyConfig, naming the valid ones
        return data
    values = dict(PRESETS[name])
    init = INIT_VARIANTS.get(policy.get("init") or "defi")
    if init is not None and not init.future_branch:
        for key in ("resampler_queries", "resampler_depth", "latent_tokens"):
            values.pop(key, None)
    return merge({"model": values}, data)


# ---------------------------------------------------------------------------------------------
# the pieces: pretrained parts, instruction embeddings, action statistics
# ---------------------------------------------------------------------------------------------
def fill_policy_config(cfg) -> None:
    """Set ``cfg.model.gfdm/gidm/image_size/context_frames/text_dim/text_model`` from the GFDM and
    GIDM checkpoints' configs (and check them: types, image sizes), without loading weights."""
    from defi.training.checkpoint import CheckpointError, load_model_config

    pc = cfg.model
    if pc.future_branch:
        parts = {}
        for flag in ("joint",) if pc.variant.joint else ("gfdm", "gidm"):
            if not getattr(cfg, flag):
                raise ValueError(f"--init {pc.init} needs --{flag} (a run or checkpoint folder)")
            try:
                parts[flag] = load_model_config(getattr(cfg, flag), expect=flag)
            except CheckpointError as e:
                raise CheckpointError(f"--{flag} {e}") from None
        if pc.variant.joint:
            from defi.training.gfdm import GFDMConfig
            from defi.training.gidm import GIDMConfig

            parts = {"gfdm": GFDMConfig.from_dict(parts["joint"].gfdm), "gidm": GIDMConfig.from_dict(parts["joint"].gidm)}
        gfdm_cfg, gidm_cfg = parts["gfdm"], parts["gidm"]
        if gfdm_cfg.image_size != gidm_cfg.image_size:
            raise ValueError(f"GFDM image_size {gfdm_cfg.image_size} differs from GIDM image_size {gidm_cfg.image_size}")
        from defi.training.policy.configuration_policy import PRESET_BACKBONE

        want = PRESET_BACKBONE.get(pc.preset)
        if want and gfdm_cfg.backbone != want:
            raise ValueError(
                f"--model.preset {pc.preset} needs a {want!r} GFDM; --gfdm {cfg.gfdm} is a {gfdm_cfg.backbone!r} one "
                f"(train it with `defi train gfdm --model {want}`)"
            )
        pc.gfdm, pc.gidm = gfdm_cfg.to_dict(), gidm_cfg.to_dict()
        pc.image_size, pc.context_frames, pc.text_dim = gfdm_cfg.image_size, gfdm_cfg.context_frames, gfdm_cfg.text_dim
    pc.text_model = dataclasses.asdict(cfg.text)
    cfg.model = type(pc).from_dict(pc.to_dict())  # validate the filled config


def build_policy(cfg) -> Any:
    """The ``DeFiPolicy`` of ``cfg.model`` (filled by ``fill_policy_config``): pretrained parts
    loaded from ``cfg.gfdm`` / ``cfg.gidm`` where the variant keeps them, random ones of the same
    architecture elsewhere; ``entangled``: GFDM, projection and GIDM from the joint run ``cfg.joint``."""
    from defi.training.checkpoint import load_model
    from defi.training.policy.modeling_policy import DeFiPolicy

    pc = cfg.model
    if pc.variant.joint:  # the three parts of the future branch as the joint run left them
        joint = load_model(cfg.joint, expect="joint", inference=False)[0]
        policy = DeFiPolicy(pc, gfdm=joint.gfdm, gidm=joint.gidm)
        policy.project.load_state_dict(joint.project.state_dict())
        return policy
    gfdm = gidm = None
    if pc.future_branch and pc.variant.pretrained_gfdm:
        gfdm = load_model(cfg.gfdm, expect="gfdm", inference=False)[0]
    if pc.future_branch and pc.variant.pretrained_gidm:
        gidm = load_model(cfg.gidm, expect="gidm", inference=False)[0]
    return DeFiPolicy(pc, gfdm=gfdm, gidm=gidm)


def instruction_table(corpus, selection, text_cfg) -> dict[str, list[float]]:
    """Instruction text -> embedding for every distinct instruction of the selected clips
    (``""`` -> zeros is added by the caller), from the corpus cache."""
    from defi.training.gfdm.text import embed_instructions

    keys = selection.column("key").to_pylist()
    texts: set[str] = set()
    for i in range(0, len(keys), 5000):
        part = ", ".join("'" + k.replace("'", "''") + "'" for k in keys[i : i + 5000])
        texts |= {
            r["language"]
            for r in corpus.query(f"SELECT DISTINCT language FROM clips WHERE key IN ({part}) AND language IS NOT NULL").to_pylist()
        }
    texts.discard("")
    ordered = sorted(texts)
    if not ordered:
        return {}
    embs = embed_instructions(corpus, ordered, text_cfg, save=text_cache_saver("train policy"))
    return {t: [float(x) for x in e] for t, e in zip(ordered, embs, strict=True)}


class RowStats(NamedTuple):
    """What the selected clips' recorded rows decide: action mean/std [A] and width, the rows
    counted, the frame stride, and (``proprio``) the proprioception's mean/std [P] and width."""

    mean: Any
    std: Any
    action_dim: int
    rows: int
    stride: int
    state_mean: Any = None
    state_std: Any = None
    state_dim: int = 0


def action_stats(dataset, limit: int, proprio: bool = False) -> RowStats:
    """Statistics over every recorded row of up to ``limit`` selected clips, read in one pass (std
    floored at 1e-3 so a constant dimension does not blow up); the frame stride is the rows per
    encoded frame (2 for a 20 Hz robot curated at 10 fps), the median over those clips.
    ``proprio``: the proprioception's too; ValueError naming a clip with actions and none."""
    import numpy as np

    from defi.schemas.shards import ShardReader

    keys = set(dataset.keys[:limit])
    reader = ShardReader([dataset.shard_urls[s] for s in sorted(dataset.shard_urls)], keys=keys)
    rows, strides, states = [], [], []
    for s in reader:
        a, p, _, rate = s.rows()
        if a is not None and len(a):
            rows.append(a[np.isfinite(a).all(1)])
            strides.append(max(1, round(rate / float(s.meta.fps))))
        if proprio:
            if a is not None and p is None:
                raise ValueError(f"--data.proprio: clip {s.key} has actions but no proprioception (observation.state)")
            if p is not None and len(p):
                states.append(p[np.isfinite(p).all(1)])
    if not rows:
        raise ValueError("no clip in the selection has actions (curate robot episodes with actions, or select WHERE has_actions)")
    allr = np.concatenate(rows)
    out = RowStats(allr.mean(0), np.maximum(allr.std(0), 1e-3), int(allr.shape[1]), len(allr), int(np.median(strides)))
    if not proprio:
        return out
    if not states:
        raise ValueError("--data.proprio: no selected clip carries proprioception (observation.state)")
    alls = np.concatenate(states)
    return out._replace(state_mean=alls.mean(0), state_std=np.maximum(alls.std(0), 1e-3), state_dim=int(alls.shape[1]))


def policy_batches(stream, texts: dict, text_dim: int, context: int, state: bool = False):
    """ActionChunkDataset batches -> the recipe's policy batches (``obs``, ``text_emb``, ``action_chunk``,
    ``action_mask``, ``future``, and ``state`` when the policy takes proprioception)."""
    import torch

    zero = [0.0] * text_dim
    for b in stream:
        obs = b["context"].flatten(1, 2) if context > 1 else b["obs"]
        out = {"obs": obs, "action_chunk": b["action_chunk"], "action_mask": b["action_mask"], "future": b["next_obs"]}
        if text_dim:
            out["text_emb"] = torch.tensor([texts.get(t, zero) for t in b["lang"]], dtype=torch.float32)
        if state:
            if not torch.is_tensor(b.get("state")):
                raise ValueError("--data.proprio: a batch holds clips without proprioception (observation.state)")
            out["state"] = b["state"]
        yield out


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------
def run_train_policy(root: str, select: str, cfg) -> dict[str, Any]:
    """Finetune (or resume) the policy run ``cfg`` (a ``PolicyRunConfig``, see
    ``policy_run_config``) on the clips ``select`` (SQL or a manifest path) picks from the corpus
    at ``root``, into ``cfg.out``: build the policy, the loader and the action statistics, train.
    ``cfg.root`` and ``cfg.select`` (a config file's) are set to these, as run_config.json records
    them. Returns the recipe's summary plus ``config``, ``selected_clips``, ``action_rows`` and
    ``wall_s``. Raises ValueError (one line) for bad input."""
    import numpy as np
    import torch

    from defi.training.data import ActionChunkDataset, batch_stream
    from defi.training.recipes.loop import seed_all
    from defi.training.recipes.policy import train_policy

    cfg.root, cfg.select = root, select
    for name in ("root", "select", "out"):
        if not getattr(cfg, name):
            raise ValueError(f"--{name} is required")
    out = Path(cfg.out)
    saved = out / RUN_CONFIG_FILE
    fill_policy_config(cfg)
    if saved.is_file() and any((out / "checkpoints").glob("step-*")):
        old = rename_sections(PolicyRunConfig, json.loads(saved.read_text())).get("model", {})
        diff = [k for k, v in to_dict(cfg.model).items() if k not in ("action_dim", "state_dim") and old.get(k) != v]
        if diff:
            raise ValueError(f"{out} already holds a policy run with a different policy config ({', '.join(diff[:4])}); use a new --out")
    rank, world_size = process_group()
    corpus = Corpus.open(cfg.root)
    selection = resolve_selection(corpus, cfg.select)
    pc = cfg.model
    dataset = ActionChunkDataset(
        selection,
        corpus.shard_url,
        gap=Gap.from_fields(cfg.data.gap_s, default=Gap.of_frames(1)),
        size=pc.image_size,
        pairs_per_clip=cfg.data.pairs_per_clip,
        shuffle=True,
        shuffle_buffer=cfg.data.shuffle_buffer,
        seed=cfg.train.seed,
        horizon=pc.horizon,
        context=pc.context_frames,
        rank=rank,
        world_size=world_size,
    )
    if pc.state_dim and not cfg.data.proprio:
        raise ValueError(f"model.state_dim={pc.state_dim} needs --data.proprio (the data sets the width)")
    stats = action_stats(dataset, cfg.data.stats_clips, proprio=cfg.data.proprio)
    mean, std, n_rows, stride = stats.mean, stats.std, stats.rows, stats.stride
    # the data decides the widths
    pc = cfg.model = type(pc).from_dict({**pc.to_dict(), "action_dim": stats.action_dim, "state_dim": stats.state_dim})
    # the parts built at random (head, projection, scratch's whole model) follow train.seed, not
    # whatever the process drew before (the recipe seeds again for the loop)
    seed_all(cfg.train.seed)
    policy = build_policy(cfg)
    policy.action_mean.copy_(torch.as_tensor(mean))
    policy.action_std.copy_(torch.as_tensor(std))
    if cfg.data.proprio:
        policy.state_mean.copy_(torch.as_tensor(stats.state_mean))
        policy.state_std.copy_(torch.as_tensor(stats.state_std))
    texts = {}
    if pc.text_dim:  # rank 0 fills the corpus' embedding cache first; the others then read it
        from defi.training.distributed import barrier

        if rank == 0:
            texts = instruction_table(corpus, selection, cfg.text)
        barrier()
        if rank != 0:
            texts = instruction_table(corpus, selection, cfg.text)
    if texts and len(next(iter(texts.values()))) != pc.text_dim:
        raise ValueError(
            f"instruction embeddings are {len(next(iter(texts.values())))} wide, the policy wants "
            f"{pc.text_dim} (--text.* must be the GFDM's text model)"
        )
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        saved.write_text(
            json.dumps({**to_dict(cfg), "selected_clips": len(dataset.keys), "action_rows": n_rows, "world_size": world_size}, indent=2)
        )
    contract = DataContract(
        image_size=pc.image_size,
        context_frames=pc.context_frames,
        horizon=pc.horizon,
        frame_stride=stride,
        action_mean=np.asarray(mean).tolist(),
        action_std=np.asarray(std).tolist(),
    )
    extra = {"data": contract.to_dict(), "instructions": texts}

    def make_batches(start_step: int):
        stream = batch_stream(dataset, cfg.train.batch_size, cfg.data.num_workers, start_step)
        return policy_batches(stream, texts, pc.text_dim, pc.context_frames, state=bool(pc.state_dim))

    t0 = time.perf_counter()
    with flush_denormals():
        result = train_policy(policy, cfg.train, make_batches, extra=extra)
    result.update(
        config=cfg,
        selected_clips=len(dataset.keys),
        action_rows=n_rows,
        wall_s=time.perf_counter() - t0,
        data_stats=dict(dataset.stats),
        rank=rank,
        world_size=world_size,
    )
    return result


def summary_text(res: dict[str, Any]) -> str:
    from defi.training.policy.modeling_policy import num_parameters, parameter_counts

    cfg = res["config"]
    m = res["model"]
    lines = [
        f"policy ({cfg.model.init}, {cfg.model.head} head, H={cfg.model.horizon}): {res['selected_clips']} clips, "
        f"{res['action_rows']} action rows, {num_parameters(m, True):,} trainable / {num_parameters(m):,} parameters",
        "  parameters (trainable) by part: " + ", ".join(f"{k} {n:,} ({t:,})" for k, (n, t) in parameter_counts(m).items()),
    ]
    lines += progress_lines(
        res,
        cfg.train.steps,
        lambda: f"  loss     {res['first_loss']:.4g} -> {res['last_loss']:.4g}; action L1 {res['first_l1']:.4g} -> {res['last_l1']:.4g}",
    )
    lines.append(f"  checkpoint {res['checkpoint']}")
    return "\n".join(lines)


def _print_summary(_args: argparse.Namespace, res: dict[str, Any]) -> None:
    if res["rank"] == 0:
        print(summary_text(res))


# the shortcut flags of `defi train policy` (see ``command.Shortcuts``)
POLICY_SHORTCUTS: dict[str, Any] = {
    "init": "model.init",
    "horizon": "model.horizon",
    "steps": "train.steps",
    "no_progress": {"train.progress": False},
}

POLICY_SPEC = CommandSpec(
    name="train policy",
    build=lambda _args, *layers: policy_run_config(*layers),
    shortcuts=POLICY_SHORTCUTS,
    requires=("root", "select", "out"),  # the run config's own fields: a --config file may give them
    check=lambda _args, cfg: check_run_dir(cfg.out, cfg.root),
    run=lambda _args, cfg: run_train_policy(cfg.root, cfg.select, cfg),
    summary=_print_summary,
    errors=(
        "defi.pipelines.config.ConfigError",
        "defi.schemas.selection.SelectionError",
        "defi.schemas.corpus.CorpusError",
        "defi.training.checkpoint.CheckpointError",
        "ValueError",
    ),
    relaunch=True,
)


def cmd_train_policy(args: argparse.Namespace) -> int:
    return run_command(POLICY_SPEC, args)


def add_policy_parser(sub) -> argparse.ArgumentParser:
    """Add ``policy`` to ``defi train``'s subparsers."""
    p = sub.add_parser(
        "policy",
        help="finetune the DeFI policy (GFDM + GIDM + action head) on labeled robot clips",
        description="Finetune the DeFI policy on the robot clips with actions a SQL query or manifest selects: "
        "GFDM features of the predicted future -> projection -> pretrained GIDM encoder -> action "
        "head -> H actions. Re-running with the same --out resumes. Config: defaults <- --config <- "
        "--model.*/--train.*/--data.*/--text.* flags <- shortcut flags.",
    )
    p.add_argument("--init", choices=INITS, help="what starts pretrained (same as --model.init; default defi)")
    p.add_argument("--horizon", type=int, help="actions per chunk (same as --model.horizon)")
    add_run_flags(p, data_flags=False, workers=True)
    add_flags(p, PolicyRunConfig, "run config (root, select, ..., model.*, train.*, data.*, text.*)")
    p.set_defaults(func=cmd_train_policy)
    return p
