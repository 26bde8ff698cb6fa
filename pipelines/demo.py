"""``defi demo``: the toolkit's main job on an embedded default, as an ordered list of named steps.

    inputs      generate web-style videos (shot cuts, static and moving content, several codecs and
                sizes), bad files, and Meta-World episodes: some written action-free (the stand-in
                for web video), some with actions and proprioception (held-out tasks)
    curate      `defi curate` of all of it into OUT/corpus
    train_gidm  `defi train gidm` of a tiny GIDM on the action-free clips only
    label       `defi label latent-actions` of every kept clip
    queries     the latent-action queries of docs/models.md
    probe       linear probes of the true robot action from the GIDM latent, beside controls
    train_gfdm  `defi train gfdm` of a tiny GFDM on the action-free clips; its predictions on held-out
                robot clips (o_t | predicted | true) as a PNG grid
    train_policy `defi train policy` of the DeFI policy (pretrained GFDM + GIDM) on the held-out robot
                clips with actions, and of the `scratch` variant at the same budget
    eval        `defi eval` of both on the held-out tasks, the same episodes (layout seeds) for both
    report      OUT/report.html: plots, tables, galleries, the eval table and rollout videos

Each step writes ``OUT/steps/<name>.json`` when it finishes. Running the demo again skips the
finished steps (each step is itself resumable: curate skips committed videos, training resumes from
its last checkpoint, labeling labels only new clips) and re-runs everything after the first step
that was not finished. A failing step is named and leaves the earlier steps' output in place.

Config: ``DemoConfig`` is the demo's own settings (inputs, seed, CPUs, the GIDM preset) and one
section per run it makes (``curate``, ``gidm``, ``label``, ``gfdm``, ``policy``, ``eval``), each that
command's own config class with the demo's layer (``SECTION_LAYERS``) over the command's defaults;
``demo_config(*layers)`` builds it and ``DEMO_SHORTCUTS`` are the short flags into it. Each step
prints the command line that makes the same run (``command_flags``).

Sizes: the steps' defaults (GFDM 30 steps at batch 8, two policies of 30 steps at batch 16, 2
episodes x 3 held-out tasks x 2 policies of at most 80 actions) are meant for `make demo` on a 2-core
machine. Measured on a quiet 2-core box (2026-11-26): train_gfdm 14 s, train_policy 15 s, eval 17 s,
the whole demo 275 s (Meta-World episodes 50 s, the GIDM 155 s). Under a heavy load (average 6-9,
a test run beside) the same three steps took 615 s, 461 s and 88 s. ``BIGGER`` (in ``defi demo
--help``) names the flags that run it bigger. Everything is generated locally; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np

from defi.training.gidm.configuration_gidm import BOTTLENECKS, GIDM_PRESETS
from defi.training.sim.evaluate import EvalConfig
from defi.training.sim.metaworld_env import HELD_OUT_TASKS, PRETRAIN_TASKS

from .command import VALUE, CommandSpec, add_dry_run_flag
from .config import ConfigError, DeprecatedSpelling, add_flags, flag_name, from_dict, merge, to_dict
from .curate_config import CurateConfig
from .label import LabelConfig
from .train import GIDMRunConfig, gidm_run_config
from .train_gfdm import GFDMRunConfig, gfdm_run_config
from .train_policy import PolicyRunConfig, policy_run_config
from .usage import UsageError, refuse_inside_corpus

# ---------------------------------------------------------------------------------------------
# configuration: the demo's own knobs, and one section per run it makes, each that command's config
# ---------------------------------------------------------------------------------------------
# The action-free tasks are the project's 8 pretraining tasks (bench/gidm_quality.py's), 4 episodes
# each: spreading a fixed number of episodes over more tasks shows the GIDM more kinds of hand motion
# for the same generation and training time (the comparison: docs/gidm-discrete-2026-11-26.md, section E).
ACTION_FREE_TASKS = list(PRETRAIN_TASKS)
PROBE_TASKS = list(HELD_OUT_TASKS[:3])


def curate_layer(top: Any) -> dict[str, Any]:
    """The demo's ``defi curate`` settings over ``CurateConfig``'s defaults: short windows for
    short inputs, and filters loose enough for the generated videos."""
    return {
        "windows": {"clip_len_s": 2.5, "stride_s": 2.5, "min_clip_s": 1.0, "max_clip_s": 3.0},
        "encode": {"fps": 10, "short_side": 96},
        "black": {"max_black_frac": 0.5},
        "motion": {"min_frame_diff": 0.1},
        "camera": {"max_camera_motion": 1.0},
        "runner": "local",
        "workers": top.num_cpus,
    }


def gidm_layer(top: Any) -> dict[str, Any]:
    """The demo's ``defi train gidm`` settings over the ``top.gidm_model`` preset."""
    return {
        "model": {"restart_interval": 50, "changed_weight": 30.0, "keypoints": 32, "keypoint_temperature": 0.3},
        "data": {"gap_frames": 5, "size": 64, "pairs_per_clip": 8, "shuffle_buffer": 256},
        "train": {"steps": 400, "batch_size": 32, "lr": 1e-3, "log_every": 25, "seed": top.seed},
    }


def label_layer(top: Any) -> dict[str, Any]:
    """The demo's ``defi label latent-actions`` settings: the local runner on the demo's CPUs."""
    return {"runner": "local", "workers": top.num_cpus}


def gfdm_layer(top: Any) -> dict[str, Any]:
    """The demo's ``defi train gfdm`` settings over the tiny preset."""
    return {
        "data": {"gap_frames": 5, "size": 64, "pairs_per_clip": 8, "shuffle_buffer": 256},
        "train": {"steps": 30, "batch_size": 8, "lr": 1e-3, "log_every": 5, "seed": top.seed},
    }


def policy_layer(top: Any) -> dict[str, Any]:
    """The demo's ``defi train policy`` settings (both variants, ``defi`` and ``scratch``)."""
    return {"train": {"steps": 30, "batch_size": 16, "lr": 1e-3, "log_every": 5, "seed": top.seed}}


def eval_layer(top: Any) -> dict[str, Any]:
    """The demo's ``defi eval`` settings: the probe tasks, on layouts the data never had."""
    tasks = [t for t in top.probe_tasks.split(",") if t]
    return {"tasks": tasks, "episodes": 2, "seed": 1000, "max_steps": 80, "videos": 1, "workers": 1}


def _build_section(name: str, top: Any, *layers: dict[str, Any]) -> Any:
    """The ``name`` section's config: that command's builder over its preset, the demo's layer,
    then ``layers``."""
    base = SECTION_LAYERS[name](top)
    data: dict[str, Any] = {}
    for layer in layers:
        data = merge(data, layer)
    if name in STEP_DERIVED:  # checkpoints and warm-up follow the step count a layer gives
        steps = int(merge(base, data).get("train", {}).get("steps", 1))
        base = merge(base, {"train": STEP_DERIVED[name](steps)})
    try:
        return SECTION_BUILDERS[name](top, base, data)
    except ValueError as e:  # ConfigError too
        raise ConfigError(f"{name} section: {e}") from None


# each section's command builder: (demo settings, the demo's layer, the given layer) -> its config
SECTION_BUILDERS: dict[str, Callable[[Any, dict[str, Any], dict[str, Any]], Any]] = {
    "curate": lambda _top, base, data: from_dict(CurateConfig, merge(base, data)),
    "gidm": lambda top, base, data: gidm_run_config(top.gidm_model, base, data),
    "label": lambda _top, base, data: from_dict(LabelConfig, merge(base, data)),
    "gfdm": lambda _top, base, data: gfdm_run_config("tiny", base, data),
    "policy": lambda _top, base, data: policy_run_config(base, data),
    "eval": lambda _top, base, data: from_dict(EvalConfig, merge(base, data)),
}
SECTION_LAYERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "curate": curate_layer,
    "gidm": gidm_layer,
    "label": label_layer,
    "gfdm": gfdm_layer,
    "policy": policy_layer,
    "eval": eval_layer,
}
STEP_DERIVED: dict[str, Callable[[int], dict[str, Any]]] = {
    "gidm": lambda n: {"ckpt_every": max(n // 2, 1), "warmup_steps": min(50, n // 10)},
    "gfdm": lambda n: {"ckpt_every": n, "grid_every": n, "warmup_steps": min(50, n // 10)},
    "policy": lambda n: {"ckpt_every": n, "warmup_steps": min(50, n // 10)},
}


@dataclass
class DemoKnobs:
    """The demo's own settings: its inputs, its CPUs and seed, the GIDM preset."""

    robot: bool = field(default=True, metadata={"help": "generate Meta-World episodes (needs the [sim] extra and EGL/OSMesa)"})
    action_free_tasks: str = field(
        default=",".join(ACTION_FREE_TASKS), metadata={"help": "Meta-World tasks written without actions (GIDM training data)"}
    )
    probe_tasks: str = field(
        default=",".join(PROBE_TASKS),
        metadata={"help": "held-out Meta-World tasks written with actions (probe, policy and eval data; also eval.tasks unless given)"},
    )
    episodes: int = field(default=4, metadata={"help": "episodes per action-free task"})
    probe_episodes: int = field(default=6, metadata={"help": "episodes per probe task"})
    robot_size: int = field(default=96, metadata={"help": "rendered frame side, pixels"})
    robot_steps: int = field(default=100, metadata={"help": "actions per episode at most"})
    gidm_model: str = field(
        default="keypoint",
        metadata={"help": "preset of the gidm section (defi train gidm --model): " + ", ".join(GIDM_PRESETS)},
    )
    num_cpus: int = field(
        default=2, metadata={"help": "worker processes of generation, curate and label (the local runner: no Ray start-up)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the generated inputs and of every training run (same seed, same demo)"})


def _section(name: str) -> Any:
    return field(default_factory=lambda: _build_section(name, DemoKnobs()))


@dataclass
class DemoConfig(DemoKnobs):
    """The whole demo: its own settings, then one section per run it makes, each the config of
    that command (``defi curate``, ``train gidm``, ``label latent-actions``, ``train gfdm``,
    ``train policy``, ``eval``) with the demo's settings over the command's defaults. The demo
    owns the runs' paths (under ``--out``) and trains both policy ``--init`` variants.

    Build it with ``demo_config(*layers)``: a section's defaults follow ``gidm_model``, ``seed``,
    ``num_cpus`` and ``probe_tasks``, which the constructor's defaults cannot see."""

    curate: CurateConfig = _section("curate")
    gidm: GIDMRunConfig = _section("gidm")
    label: LabelConfig = _section("label")
    gfdm: GFDMRunConfig = _section("gfdm")
    policy: PolicyRunConfig = _section("policy")
    eval: EvalConfig = _section("eval")


# keys of a section that the demo sets itself: a layer giving one is refused, naming it
DEMO_OWNED = {
    "gidm": ("train.out_dir",),
    "gfdm": ("train.out_dir",),
    "policy": ("root", "select", "gfdm", "gidm", "joint", "out", "train.out_dir", "model.init", "policy.init"),
}


def _dotted(layer: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in layer.items():
        out.update(_dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def demo_config(*layers: dict[str, Any]) -> DemoConfig:
    """The ``DemoConfig`` of ``layers`` (nested dicts like a ``--config`` file, lowest first):
    the demo's settings first, then each section built by its command's builder over the demo's
    layer for those settings. Every run's config is checked here, before any step runs: a bad
    value is a one-line error now, not a failed step later. Raises ``ConfigError``."""
    data: dict[str, Any] = {}
    for layer in layers:
        data = merge(data, layer)
    knobs = from_dict(DemoKnobs, {k: v for k, v in data.items() if k not in SECTION_LAYERS})
    sections = {}
    for name in SECTION_LAYERS:
        given = data.get(name) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"{name}: a section of fields, got {given!r}")
        default = _dotted(to_dict(_build_section(name, knobs))) if name in DEMO_OWNED else {}
        # what --dry-run printed reads back: an owned key at its unset value is not a request
        owned = sorted(k for k, v in _dotted(given).items() if k in DEMO_OWNED.get(name, ()) and v != default.get(k))
        if owned:
            raise ConfigError(
                f"{', '.join(f'{name}.{k}' for k in owned)}: the demo sets this itself (paths under --out, both policy variants)"
            )
        sections[name] = _build_section(name, knobs, given)
    return DemoConfig(**{f.name: getattr(knobs, f.name) for f in fields(DemoKnobs)}, **sections)


# ---------------------------------------------------------------------------------------------
# the steps
# ---------------------------------------------------------------------------------------------
@dataclass
class Context:
    out: Path
    cfg: DemoConfig
    results: dict[str, Any] = field(default_factory=dict)  # name -> result of each finished step

    @property
    def root(self) -> str:
        return str(self.out / "corpus")

    @property
    def inputs(self) -> Path:
        return self.out / "inputs"

    @property
    def gidm_run(self) -> Path:
        return self.out / "gidm"

    @property
    def gfdm_run(self) -> Path:
        return self.out / "gfdm"

    def policy_run(self, variant: str) -> Path:
        return self.out / "policy" / variant

    def eval_dir(self, variant: str) -> Path:
        return self.out / "eval" / variant

    # each run's config: its section of the DemoConfig, with the paths under OUT
    def gidm_config(self) -> GIDMRunConfig:
        return gidm_run_config(self.cfg.gidm_model, to_dict(self.cfg.gidm), {"train": {"out_dir": str(self.gidm_run)}})

    def gfdm_config(self) -> GFDMRunConfig:
        return gfdm_run_config("tiny", to_dict(self.cfg.gfdm), {"train": {"out_dir": str(self.gfdm_run)}})

    def policy_config(self, variant: str) -> PolicyRunConfig:
        paths = {"root": self.root, "select": PROBE_SELECT, "gfdm": str(self.gfdm_run), "gidm": str(self.gidm_run)}
        return policy_run_config(to_dict(self.cfg.policy), {**paths, "out": str(self.policy_run(variant)), "model": {"init": variant}})

    def gap_frames(self, run: GIDMRunConfig | GFDMRunConfig) -> int:
        """A run's pair gap in frames of the demo's clips (one frame rate, the curate section's)."""
        return run.data.gap.frames(self.cfg.curate.encode.fps)


@dataclass(frozen=True)
class Step:
    name: str
    does: str  # one line: what the step does, printed when it starts
    run: Callable[[Context], dict[str, Any]]  # returns a JSON-able result, saved in OUT/steps/<name>.json


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- inputs ------------------------------------------------------------------------------------
def _write(path: Path, frames, fps: int, codec: str = "libx264") -> None:
    import av

    frames = list(frames)
    h, w = frames[0].shape[:2]
    tmp = path.with_name(path.name + ".part")
    fmt = {".mp4": "mp4", ".mkv": "matroska", ".webm": "webm"}[path.suffix]
    # bitexact: no random segment UID or date in the container, so the same seed writes the same
    # bytes, hence the same source ids and clip keys (and the same training order downstream)
    with av.open(str(tmp), "w", format=fmt, options={"fflags": "+bitexact"}) as out:
        s = out.add_stream(codec, rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            s.options = {"preset": "veryfast", "crf": "20"}
        else:
            s.bit_rate = 2_000_000
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    tmp.rename(path)  # a killed run never leaves a half-written input that looks finished


def _texture(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.kron(small, np.ones((8, 8, 1), np.uint8))[:h, :w]


def _shots(lengths, h, w, seed):
    """Shots of different textures, each with an object moving across: cuts at known frames."""
    for s, n in enumerate(lengths):
        img = _texture(h, w, seed + 31 * s)
        for i in range(n):
            f = img.copy()
            x = 4 + i * 3 % (w - 40)
            f[h // 3 : h // 3 + 32, x : x + 32] = (250, 220, 30)
            yield f


def _pan(n, h, w, seed):
    big = _texture(h, w + 3 * n, seed)
    for i in range(n):
        yield big[:, 3 * i : 3 * i + w].copy()


def _audio_only(path: Path) -> None:
    import av

    with av.open(str(path), "w") as out:
        a = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray((0.1 * np.sin(np.arange(16000) / 10)).astype(np.float32)[None], format="fltp", layout="mono")
        frame.sample_rate = 16000
        for p in list(a.encode(frame)) + list(a.encode()):
            out.mux(p)


WEB_VIDEOS: dict[str, Callable[[Path], None]] = {
    "kitchen_3shots.mp4": lambda p: _write(p, _shots([72, 96, 60], 180, 320, 1), 24),
    "workshop_2shots.mp4": lambda p: _write(p, _shots([120, 90], 240, 320, 2), 30),
    "pan_over_still.mp4": lambda p: _write(p, _pan(96, 180, 320, 3), 24),
    "street_mpeg4.mkv": lambda p: _write(p, _shots([60, 60], 144, 256, 4), 25, codec="mpeg4"),
    "garden_vp9.webm": lambda p: _write(p, _shots([50, 70], 200, 200, 5), 20, codec="libvpx-vp9"),
    "static.mp4": lambda p: _write(p, (np.full((180, 320, 3), 90, np.uint8) for _ in range(72)), 24),
}


def step_inputs(ctx: Context) -> dict[str, Any]:
    web = ctx.inputs / "web"
    web.mkdir(parents=True, exist_ok=True)
    for name, make in WEB_VIDEOS.items():
        if not (web / name).exists():
            make(web / name)
    # bad files: each must become a `sources` row with its reason, never a crashed run
    (web / "empty.mp4").write_bytes(b"")
    (web / "not_a_video.mp4").write_text("hello\n" * 100)
    data = (web / "kitchen_3shots.mp4").read_bytes()
    (web / "truncated.mp4").write_bytes(data[: len(data) // 3])
    if not (web / "audio_only.mp4").exists():
        _audio_only(web / "audio_only.mp4")
    res: dict[str, Any] = {"web_files": sorted(p.name for p in web.iterdir() if not p.name.endswith(".part")), "robot": None}
    if ctx.cfg.robot:
        res["robot"] = _robot_inputs(ctx)
    return res


def _robot_inputs(ctx: Context) -> dict[str, Any] | None:
    c = ctx.cfg
    try:
        from defi.training.sim import generate
    except Exception as e:  # the [sim] extra is not installed
        _say(f"  no robot episodes: {type(e).__name__}: {e}")
        return {"error": f"{type(e).__name__}: {e}"}
    out: dict[str, Any] = {}
    sets = [
        ("robot_action_free", c.action_free_tasks, c.episodes, True, c.seed),
        ("robot_with_actions", c.probe_tasks, c.probe_episodes, False, c.seed + 1),
    ]
    for name, tasks, episodes, action_free, seed in sets:
        folder = ctx.inputs / name
        if (folder / "meta" / "info.json").exists():
            out[name] = json.loads((ctx.inputs / f"{name}.json").read_text())
            continue
        if folder.exists():  # a killed generation: start that dataset over
            shutil.rmtree(folder)
        _say(f"  rolling Meta-World experts: {tasks} x {episodes} episodes (action_free={action_free})")
        try:
            s = generate(
                tasks,
                episodes,
                folder,
                size=c.robot_size,
                seed=seed,
                action_noise=0.1,
                max_steps=c.robot_steps,
                action_free=action_free,
                workers=min(2, c.num_cpus),
                progress=True,
            )
        except Exception as e:  # no GL for MuJoCo here (see `make sysdeps`): go on with the web videos
            shutil.rmtree(folder, ignore_errors=True)
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            _say(f"  no robot episodes ({msg}); the demo goes on without them (no probe)")
            return {**out, "error": msg}
        out[name] = {k: s[k] for k in ("episodes_written", "frames", "success_rate") if k in s}
        out[name]["tasks"] = tasks.split(",")
        (ctx.inputs / f"{name}.json").write_text(json.dumps(out[name]))
    return out


# -- curate ------------------------------------------------------------------------------------
def step_curate(ctx: Context) -> dict[str, Any]:
    from defi.pipelines.curate import run_curate, summary_text
    from defi.schemas.corpus import Corpus

    cfg = ctx.cfg.curate
    inputs = [str(p) for p in sorted(ctx.inputs.iterdir()) if p.is_dir()]
    _say_command(f"defi curate {' '.join(inputs)} --root {ctx.root}", command_flags(cfg, CurateConfig()))
    rec = run_curate(inputs, ctx.root, cfg)
    print(summary_text(rec))
    if rec["status"] != "done":
        raise RuntimeError(f"curate ended with status {rec['status']}")
    corpus = Corpus.open(ctx.root)
    corpus.build_index()
    return {"run_id": rec["run_id"], "summary": corpus.summary(), "wall_s": rec["wall_s"]}


# -- train -------------------------------------------------------------------------------------
TRAIN_SELECT = "SELECT key FROM clips WHERE kept AND NOT has_actions"
PROBE_SELECT = "SELECT key FROM clips WHERE kept AND has_actions"


def _flags(layer: dict[str, Any], prefix: str = "") -> list[str]:
    """A config layer as the `--section.field value` flags that give it on the command line (a
    None is what a field holds when no flag sets it: left out)."""
    out: list[str] = []
    for k, v in layer.items():
        if isinstance(v, dict):
            out += _flags(v, f"{prefix}{k}.")
        elif v is not None:
            out += [flag_name(prefix + k), ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)]
    return out


def _changed(cfg: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """What ``cfg`` (a config's dict) sets differently from ``base``: the flags that make it."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        b = base.get(k)
        if isinstance(v, dict) and isinstance(b, dict):
            if d := _changed(v, b):
                out[k] = d
        elif v != b:
            out[k] = v
    return out


def command_flags(cfg: Any, base: Any) -> list[str]:
    """The flags that turn ``base`` (the command's config without them) into ``cfg``."""
    return _flags(_changed(to_dict(cfg), to_dict(base)))


def _say_command(command: str, flags: list[str]) -> None:
    _say(f"  {command} " + " ".join(f'"{a}"' if " " in a else a for a in flags))


def _losses(run: Path, *names: str) -> dict[str, Any]:
    """``steps`` (the last logged) and, per metric name, its [step, value] rows from metrics.jsonl."""
    metrics = _metrics(run)
    res: dict[str, Any] = {"steps": metrics[-1].get("step") if metrics else 0}
    for name in names:
        res[name] = [[m.get("step"), m.get(name)] for m in metrics if name in m]
    return res


def step_train_gidm(ctx: Context) -> dict[str, Any]:
    from defi.pipelines.train import run_train_gidm, summary_text

    cfg, preset = ctx.gidm_config(), ctx.cfg.gidm_model
    _say_command(
        f'defi train gidm --root {ctx.root} --select "{TRAIN_SELECT}" --model {preset}', command_flags(cfg, gidm_run_config(preset))
    )
    res = run_train_gidm(ctx.root, TRAIN_SELECT, cfg)
    print(summary_text(res))
    out = {"run": str(ctx.gidm_run), "select": TRAIN_SELECT, "bottleneck": cfg.model.bottleneck}
    return {**out, **_losses(ctx.gidm_run, "loss")}


# -- label -------------------------------------------------------------------------------------
def step_label(ctx: Context) -> dict[str, Any]:
    from defi.pipelines.label import run_label
    from defi.pipelines.label import summary_text as label_summary

    _say_command(f"defi label latent-actions --root {ctx.root} --gidm {ctx.gidm_run}", command_flags(ctx.cfg.label, LabelConfig()))
    rec = run_label(ctx.root, str(ctx.gidm_run), cfg=ctx.cfg.label)
    print(label_summary(rec))
    if rec["status"] != "done":
        raise RuntimeError(f"labeling ended with status {rec['status']}")
    from defi.schemas.corpus import Corpus

    Corpus.open(ctx.root).build_index()
    return {"labeler": rec["labeler"]["name"], "counts": dict(rec["counts"])}


# -- queries -----------------------------------------------------------------------------------
def demo_queries(view: str) -> list[tuple[str, str]]:
    """The latent-action queries of docs/models.md, on the labels view ``view``."""
    return [
        (
            "biggest latent actions",
            f"SELECT l.key, round(l.norm_mean, 3) AS norm_mean, round(l.norm_p90, 3) AS norm_p90, "
            f"round(c.motion_mean, 3) AS motion_mean, coalesce(c.language, regexp_extract(c.uri, '[^/]+$')) AS content "
            f"FROM {view} l JOIN clips c USING (key) WHERE c.kept AND l.num_steps > 0 "
            f"ORDER BY l.norm_mean DESC LIMIT 6",
        ),
        (
            "clips per dominant code",
            f"SELECT l.dominant_code, count(*) AS clips, round(avg(l.norm_mean), 3) AS norm_mean, "
            f"round(avg(c.motion_mean), 3) AS motion_mean, "
            f"mode(coalesce(c.language, regexp_extract(c.uri, '[^/]+$'))) AS most_common_content, "
            f"count(DISTINCT coalesce(c.language, c.uri)) AS contents FROM {view} l JOIN clips c USING (key) "
            f"WHERE c.kept AND l.dominant_code IS NOT NULL GROUP BY 1 ORDER BY clips DESC",
        ),
        (
            "most varied latent actions among moving clips",
            f"SELECT l.key, round(l.code_entropy, 3) AS code_entropy, l.dominant_code, "
            f"round(c.motion_mean, 3) AS motion_mean FROM {view} l JOIN clips c USING (key) "
            f"WHERE c.kept AND c.motion_mean > (SELECT median(motion_mean) FROM clips WHERE kept) "
            f"ORDER BY l.code_entropy DESC LIMIT 6",
        ),
    ]


def nearest_query(view: str, key: str) -> str:
    """``defi.pipelines.label.nearest_clips_sql`` (centred cosine) for the 6 clips nearest to
    ``key``, with each clip's content."""
    from defi.pipelines.label import nearest_clips_sql

    return (
        f"SELECT n.key, round(n.cosine, 3) AS cosine, coalesce(c.language, regexp_extract(n.uri, '[^/]+$')) AS content "
        f"FROM ({nearest_clips_sql(key, view, limit=6)}) n JOIN clips c USING (key) "
        f"ORDER BY isnan(n.cosine), n.cosine DESC"
    )


def step_queries(ctx: Context) -> dict[str, Any]:
    from defi.pipelines.cli import format_table
    from defi.schemas.corpus import Corpus

    corpus = Corpus.open(ctx.root)
    view = _view_name(ctx.results["label"]["labeler"])
    queries = demo_queries(view)
    first = corpus.query(queries[0][1]).to_pylist()
    if first:
        queries.append((f"nearest clips to {first[0]['key']} by latent cosine", nearest_query(view, first[0]["key"])))
    out = []
    for title, sql in queries:
        table = corpus.query(sql)
        print(f'\n-- {title}\n$ defi query "{sql}" --root {ctx.root}')
        print(format_table(table))
        out.append({"title": title, "sql": sql, "columns": table.column_names, "rows": table.to_pylist()})
    return {"view": view, "queries": out}


def _view_name(labeler: str) -> str:
    from defi.schemas.corpus import label_view_name

    return label_view_name(labeler)


# -- probe -------------------------------------------------------------------------------------
def step_probe(ctx: Context) -> dict[str, Any]:
    import torch

    from defi.training.checkpoint import load_checkpoint
    from defi.training.gidm.latent_probe import encode_all, probe, probe_pairs
    from defi.training.recipes.gidm import last_checkpoint

    gidm = ctx.gidm_config()
    try:
        pairs = probe_pairs(ctx.root, PROBE_SELECT, ctx.gap_frames(gidm), gidm.model.image_size)
    except ValueError as e:
        _say(f"  no probe: {e}")
        return {"skipped": str(e)}
    model, mcfg, _ = load_checkpoint(last_checkpoint(ctx.gidm_run))
    enc = encode_all(model, pairs["obs"], pairs["next_obs"], torch.device("cpu"))
    res = probe(pairs, enc, mcfg.num_codes)
    # a 2-D view of the latents: PCA of z, coloured by the direction of the true hand displacement
    z = enc["z"] - enc["z"].mean(0)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    xy = z @ vt[:2].T if vt.shape[0] >= 2 else np.concatenate([z @ vt[:1].T, np.zeros((len(z), 1))], 1)
    d = pairs["disp"]
    pick = np.random.default_rng(0).permutation(len(z))[:800]
    res["projection"] = {
        "x": xy[pick, 0].round(4).tolist(),
        "y": xy[pick, 1].round(4).tolist(),
        "angle": np.arctan2(d[pick, 1], d[pick, 0]).round(4).tolist(),
        "codes": enc["codes"].reshape(len(z), -1)[pick, 0].tolist() if enc["codes"] is not None else None,
    }
    res["tasks"] = sorted(set(pairs["task"].tolist()))
    r = res["r2"]
    _say(
        f"  R^2 of hand displacement: latent {r['disp']['latent']:.3f}, frame-diff PCA {r['disp']['pca_diff']:.3f}, "
        f"o_t-only PCA {r['disp']['pca_obs']:.3f} ({res['pairs']} pairs, {res['episodes']} episodes)"
    )
    return res


# -- train_gfdm --------------------------------------------------------------------------------
POLICY_VARIANTS = [("defi", "DeFI (pretrained GFDM + GIDM)"), ("scratch", "scratch (same architecture, random init)")]


def _metrics(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _no_robot_clips(ctx: Context) -> str | None:
    """Why the robot steps cannot run here (no robot episodes, or none with actions), or None."""
    from defi.schemas.corpus import Corpus

    robot = (ctx.results.get("inputs") or {}).get("robot")
    if not robot or (robot.get("error") and "robot_with_actions" not in robot):
        return "no Meta-World episodes were generated (--no-robot, or no [sim] extra / GL here)"
    n = Corpus.open(ctx.root).query(f"SELECT count(*) AS n FROM ({PROBE_SELECT})").to_pylist()[0]["n"]
    return None if n else "no kept robot clip with actions in the corpus"


def step_train_gfdm(ctx: Context) -> dict[str, Any]:
    from defi.pipelines.train_gfdm import run_train_gfdm, summary_text

    cfg = ctx.gfdm_config()
    _say_command(f'defi train gfdm --root {ctx.root} --select "{TRAIN_SELECT}" --model tiny', command_flags(cfg, gfdm_run_config("tiny")))
    print(summary_text(run_train_gfdm(ctx.root, TRAIN_SELECT, cfg)))
    res: dict[str, Any] = {"run": str(ctx.gfdm_run), "select": TRAIN_SELECT, **_losses(ctx.gfdm_run, "loss")}
    why = _no_robot_clips(ctx)
    if why:
        res["heldout"] = {"skipped": why}
    else:
        res["heldout"] = heldout_grid(ctx, ctx.gfdm_run / "heldout_grid.png")
    return res


def heldout_grid(ctx: Context, path: Path, rows: int = 4) -> dict[str, Any]:
    """The trained GFDM's predictions on held-out robot clips (tasks it never saw): a PNG grid of
    rows o_t | predicted | true, and the mean squared error of the prediction beside the error of
    copying o_t (the "nothing moves" baseline), over those rows."""
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader

    from defi.pipelines.train_gfdm import TextLookup, gfdm_batches, selection_texts
    from defi.schemas.corpus import Corpus
    from defi.training.checkpoint import load_checkpoint
    from defi.training.data import ClipDataset, collate_items
    from defi.training.gfdm import TextModelConfig
    from defi.training.recipes.gfdm import last_checkpoint, prediction_grid

    seed = ctx.cfg.gfdm.train.seed
    model, mcfg, _ = load_checkpoint(last_checkpoint(ctx.gfdm_run))
    saved = json.loads((ctx.gfdm_run / "run_config.json").read_text())
    corpus = Corpus.open(ctx.root)
    dataset = ClipDataset.from_corpus(
        corpus,
        PROBE_SELECT,
        gap_frames=ctx.gap_frames(ctx.cfg.gfdm),
        size=mcfg.image_size,
        pairs_per_clip=1,
        window=mcfg.context_frames + mcfg.future_frames,
        shuffle=True,
        seed=seed,
    )
    lookup = TextLookup(corpus, TextModelConfig(**saved["text"]), selection_texts(corpus, dataset.keys), mcfg.text_dim)
    loader = DataLoader(dataset, batch_size=rows, collate_fn=collate_items)
    batch = next(gfdm_batches(iter(loader), mcfg.context_frames, lookup))
    image = prediction_grid(model, batch, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    with torch.no_grad():
        model.eval()
        text = torch.where(batch["has_text"].view(-1, 1), batch["text_emb"], model.null_text.expand_as(batch["text_emb"]))
        pred = model.predict(batch["obs"], text, generator=torch.Generator().manual_seed(seed)).float()
    true, now = batch["future"].float(), batch["obs"][:, -3:].unsqueeze(1).float()
    return {
        "grid": str(path),
        "rows": int(true.shape[0]),
        "select": PROBE_SELECT,
        "clips": len(dataset.keys),
        "mse_predicted": float(((pred - true) ** 2).mean()),
        "mse_copy_ot": float(((now - true) ** 2).mean()),
    }


# -- train_policy ------------------------------------------------------------------------------
def step_train_policy(ctx: Context) -> dict[str, Any]:
    from defi.pipelines.train_policy import run_train_policy, summary_text

    why = _no_robot_clips(ctx)
    if why:
        _say(f"  no policy: {why}")
        return {"skipped": why}
    out: dict[str, Any] = {"select": PROBE_SELECT, "steps": ctx.cfg.policy.train.steps}
    for variant, _ in POLICY_VARIANTS:
        cfg = ctx.policy_config(variant)
        flags = command_flags(cfg, policy_run_config())
        i = flags.index("--train.out_dir")  # --out sets it
        _say_command("defi train policy", flags[:i] + flags[i + 2 :])
        print(summary_text(run_train_policy(ctx.root, PROBE_SELECT, cfg)))
        run = ctx.policy_run(variant)
        losses = _losses(run, "loss", "action_l1")
        out[variant] = {"run": str(run), "loss": losses["loss"], "action_l1": losses["action_l1"]}
    return out


# -- eval --------------------------------------------------------------------------------------
def step_eval(ctx: Context) -> dict[str, Any]:
    from defi.pipelines.eval import run_eval, summary_text

    trained = ctx.results.get("train_policy") or {}
    if trained.get("skipped"):
        return {"skipped": trained["skipped"]}
    cfg = ctx.cfg.eval
    out: dict[str, Any] = {"tasks": cfg.tasks, "episodes": cfg.episodes, "seed": cfg.seed, "max_steps": cfg.max_steps}
    for variant, _ in POLICY_VARIANTS:
        run, dest = ctx.policy_run(variant), ctx.eval_dir(variant)
        flags = " ".join(command_flags(cfg, EvalConfig()))
        command = f"defi eval --policy {run} {flags} --out {dest}"
        _say(f"  {command}")
        s = run_eval(str(run), cfg, str(dest), progress=True, command=command)
        print(summary_text(s))
        out[variant] = {
            "command": command,
            "per_task": s["per_task"],
            "seconds": s["seconds"],
            "report": s["report"],
            "episodes": s["episodes"],
            "videos": sorted(str(p) for p in (dest / "videos").glob("*.mp4")),
        }
    return out


# -- report ------------------------------------------------------------------------------------
def step_report(ctx: Context) -> dict[str, Any]:
    from defi.pipelines.views.report import write_report

    path = ctx.out / "report.html"
    secs = step_seconds(ctx.out)
    info = write_report(ctx, path, [(s.name, s.does, secs.get(s.name)) for s in STEPS], POLICY_VARIANTS)
    _say(f"  open {path}")
    return {"path": str(path), **info}


STEPS: list[Step] = [
    Step("inputs", "generate videos, bad files and Meta-World episodes", step_inputs),
    Step("curate", "curate everything into a corpus (defi curate)", step_curate),
    Step("train_gidm", "train a tiny GIDM on the action-free clips (defi train gidm)", step_train_gidm),
    Step("label", "label every kept clip with latent actions (defi label latent-actions)", step_label),
    Step("queries", "run the latent-action queries of docs/models.md (defi query)", step_queries),
    Step("probe", "probe the true robot actions from the latent, beside observation-only controls", step_probe),
    Step("train_gfdm", "train a tiny GFDM on the action-free clips (defi train gfdm)", step_train_gfdm),
    Step(
        "train_policy",
        "finetune the DeFI policy, and scratch at the same budget, on the held-out robot clips (defi train policy)",
        step_train_policy,
    ),
    Step("eval", "roll both policies out on the held-out tasks, same seeds (defi eval)", step_eval),
    Step("report", "write report.html", step_report),
]


# ---------------------------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------------------------
class StepFailed(Exception):
    def __init__(self, step: str, error: BaseException):
        super().__init__(f"step '{step}' failed: {type(error).__name__}: {error}")
        self.step = step


def _state_path(out: Path, name: str) -> Path:
    return out / "steps" / f"{name}.json"


def run_steps(out: Path, cfg: DemoConfig, steps: list[Step] | None = None, start_at: str | None = None) -> Context:
    """Run ``steps`` in order, skipping those finished earlier with the same config, up to the
    first one that was not; ``start_at`` re-runs from that step on. Raises ``StepFailed``."""
    steps = STEPS if steps is None else steps
    names = [s.name for s in steps]
    if start_at is not None and start_at not in names:
        raise ValueError(f"unknown step {start_at!r}; steps: {', '.join(names)}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "steps").mkdir(exist_ok=True)
    ctx = Context(out=out, cfg=cfg)
    cfg_json = json.loads(json.dumps(to_dict(cfg), default=_json_default))  # as the state files hold it
    rerun = False
    for i, step in enumerate(steps, 1):
        state = _state_path(out, step.name)
        rerun = rerun or step.name == start_at
        if not rerun and state.exists():
            saved = json.loads(state.read_text())
            if saved.get("status") == "done" and saved.get("config") == cfg_json:
                ctx.results[step.name] = saved["result"]
                _say(f"[{i}/{len(steps)}] {step.name}: done earlier ({saved['seconds']:.0f} s), skipped")
                continue
        rerun = True  # every later step depends on this one
        _say(f"[{i}/{len(steps)}] {step.name}: {step.does}")
        state.unlink(missing_ok=True)
        t = time.time()
        try:
            result = step.run(ctx)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            raise StepFailed(step.name, e) from e
        seconds = time.time() - t
        ctx.results[step.name] = result
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"status": "done", "seconds": seconds, "config": cfg_json, "result": result}, default=_json_default))
        tmp.rename(state)
        _say(f"[{i}/{len(steps)}] {step.name}: done in {seconds:.0f} s")
    return ctx


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "isoformat"):
        return o.isoformat()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def step_seconds(out: Path, steps: list[Step] | None = None) -> dict[str, float]:
    """Seconds each finished step took, from OUT/steps/*.json."""
    res = {}
    for s in STEPS if steps is None else steps:
        p = _state_path(out, s.name)
        if p.exists():
            res[s.name] = json.loads(p.read_text()).get("seconds", 0.0)
    return res


BIGGER = (
    "The defaults are sized for `make demo` on a 2-core machine (under 10 minutes, set-up included), far too "
    "small for a working policy. To run it bigger: --episodes 40 --probe-episodes 20 --robot-steps 150 "
    "(more data), --gidm-steps 5000 --gfdm-steps 5000 --policy-steps 3000 (longer training), "
    "--eval-episodes 20 --eval-max-steps 150 (tighter intervals), --num-cpus N; on a GPU the training "
    "steps use it. Any field of a run's config is a flag too: --gidm.train.lr 3e-4, --curate.motion.min_frame_diff 0.2 "
    "(--dry-run prints them all). Re-run with --from STEP to redo a step and everything after it."
)

# the shortcut flags: dest -> the section keys it sets (see command.Shortcuts)
DEMO_SHORTCUTS: dict[str, Any] = {
    "fps": "curate.encode.fps",
    "short_side": "curate.encode.short_side",
    "gidm_steps": "gidm.train.steps",
    "gidm_size": {"gidm.data.size": VALUE, "gfdm.data.size": VALUE},
    "gap_frames": {"gidm.data.gap_frames": VALUE, "gidm.data.gap_s": None, "gfdm.data.gap_frames": VALUE, "gfdm.data.gap_s": None},
    "gidm_bottleneck": "gidm.model.bottleneck",
    "codebook_size": "gidm.model.codebook_size",
    "changed_weight": "gidm.model.changed_weight",
    "keypoints": "gidm.model.keypoints",
    "keypoint_temperature": "gidm.model.keypoint_temperature",
    "gfdm_steps": "gfdm.train.steps",
    "policy_steps": "policy.train.steps",
    "eval_episodes": "eval.episodes",
    "eval_max_steps": "eval.max_steps",
    "eval_seed": "eval.seed",
}
# each shortcut's type and help sentence; the flag's default is read from the default DemoConfig
SHORTCUT_HELP: dict[str, tuple[type, str]] = {
    "fps": (int, "clip frame rate after curation"),
    "short_side": (int, "clip short side after curation, pixels"),
    "gidm_steps": (int, "GIDM training steps"),
    "gidm_size": (int, "GIDM and GFDM input frame side, pixels"),
    "gap_frames": (int, "k: the GIDM's and GFDM's pair gap in clip frames"),
    "gidm_bottleneck": (str, "GIDM latent: " + ", ".join(BOTTLENECKS) + "; default: the preset's"),
    "codebook_size": (int, "latent-action codes per codebook; default: the preset's"),
    "changed_weight": (float, "GIDM loss weight on pixels that changed, 0 for plain MSE"),
    "keypoints": (int, "GIDM soft-argmax keypoints, 0 for the transformer encoder"),
    "keypoint_temperature": (float, "soft-argmax temperature the GIDM keypoints start from (learned)"),
    "gfdm_steps": (int, "GFDM training steps"),
    "policy_steps": (int, "policy finetuning steps, DeFI and scratch alike"),
    "eval_episodes": (int, "evaluation episodes per held-out task, per policy"),
    "eval_max_steps": (int, "actions per evaluation episode at most"),
    "eval_seed": (int, "evaluation layout seed, unseen by the data"),
}
SECTION_GROUPS = {
    "curate": "the `defi curate` run (defi curate --help)",
    "gidm": "the `defi train gidm` run over the --gidm-model preset (defaults shown: keypoint's)",
    "label": "the `defi label latent-actions` run",
    "gfdm": "the `defi train gfdm` run over the tiny preset",
    "policy": "the `defi train policy` runs, --init defi and scratch alike",
    "eval": "the `defi eval` runs of both policies, on the same episodes",
}


def add_demo_arguments(p) -> None:
    p.epilog = BIGGER
    p.usage = "%(prog)s [--out OUT] [--fresh] [--from STEP] [--config FILE] [--dry-run] [--SHORTCUT V ...] [--FIELD V ...] [--SECTION.FIELD V ...]"

    p.add_argument("--out", default="demo", help="output folder: inputs/, corpus/, gidm/, steps/, report.html (default: demo)")
    p.add_argument("--fresh", action="store_true", help="delete OUT first and start over")
    p.add_argument("--from", dest="start_at", metavar="STEP", help=f"re-run from this step on ({', '.join(s.name for s in STEPS)})")
    p.add_argument("--config", help="YAML/TOML/JSON file with the demo's fields and any section's (gidm: {train: {lr: ...}}, ...)")
    add_dry_run_flag(p)
    g = p.add_argument_group("shortcuts", "the usual knobs of the runs' sections; each wins over the --config file and the section flags")
    defaults = to_dict(DemoConfig())
    for dest, (tp, sentence) in SHORTCUT_HELP.items():
        target = DEMO_SHORTCUTS[dest]
        keys = [target] if isinstance(target, str) else [k for k, v in target.items() if v is VALUE]
        shown = defaults
        for part in keys[0].split("."):
            shown = shown[part]
        where = ", ".join(keys)
        help_ = f"{sentence} ({where})" if "default" in sentence else f"{sentence} ({where}; default: {shown})"
        g.add_argument("--" + dest.replace("_", "-"), type=tp, metavar=tp.__name__.upper() if tp is not str else "NAME", help=help_)
    for dest in DEMO_SHORTCUTS:  # the snake_case spellings these flags had as DemoConfig fields
        new = "--" + dest.replace("_", "-")
        if new != f"--{dest}":
            g.add_argument(
                f"--{dest}", dest=dest, type=p._option_string_actions[new].type, help=argparse.SUPPRESS, action=DeprecatedSpelling, new=new
            )
    owned = tuple(f"{name}.{key}" for name, keys in DEMO_OWNED.items() for key in keys)
    add_flags(p, DemoConfig, groups=SECTION_GROUPS, hidden=owned)


def run_demo(args, cfg: DemoConfig) -> int:
    """Run (or resume) the demo's steps into ``args.out``; prints where its outputs are. Returns
    the exit code: 1 when a step failed."""
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    t = time.time()
    try:
        ctx = run_steps(out, cfg, start_at=args.start_at)
    except ValueError as e:
        raise UsageError(str(e)) from None
    except StepFailed as e:
        _say(f"defi demo: {e}")
        _say(f"  the earlier steps' output is in {out}; run the same command again to resume from '{e.step}'")
        return 1
    secs = step_seconds(out)
    print(f"\ndemo done in {time.time() - t:.0f} s (steps: " + ", ".join(f"{k} {v:.0f}s" for k, v in secs.items()) + ")")
    rep = ctx.results.get("report", {})
    if rep.get("path"):
        print(f"report: {rep['path']}")
    print(f'corpus: {ctx.root}  (defi query "SELECT ..." --root {ctx.root}; duckdb {ctx.root}/index.duckdb)')
    return 0


DEMO_SPEC = CommandSpec(
    name="demo",
    build=lambda _args, *layers: demo_config(*layers),
    shortcuts=DEMO_SHORTCUTS,
    check=lambda args, _cfg: refuse_inside_corpus(args.out),
    run=run_demo,
    summary=lambda _args, rc: rc,  # run_demo prints as the steps go
    errors=(),  # run_demo's are one line already; a failed step is exit 1
)
