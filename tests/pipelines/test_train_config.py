"""The Python entries of ``defi train`` resolve a run config exactly as the command line does: the
command each demo step prints (``demo.command_flags``) gives ``defi train ... --dry-run`` the
config the demo trains with, and the shortcut flags, the preset and the size rule behave the same
through both."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from defi.pipelines import demo
from defi.pipelines.command import shortcut_layer
from defi.pipelines.config import ConfigError, to_dict
from defi.pipelines.train import gidm_run_config, main
from defi.pipelines.train_gfdm import gfdm_run_config
from defi.pipelines.train_policy import policy_run_config


def _dry_run(capsys, argv: list[str]) -> dict:
    assert main([*argv, "--dry-run"]) == 0
    return json.loads(capsys.readouterr().out)


def _demo(tmp_path, top: dict | None = None, **shortcuts) -> demo.Context:
    """A demo Context of the demo's own fields ``top`` and its shortcut flags, as `defi demo` reads them."""
    layer = shortcut_layer(argparse.Namespace(**shortcuts), demo.DEMO_SHORTCUTS)
    return demo.Context(out=tmp_path, cfg=demo.demo_config(top or {}, layer))


@pytest.fixture
def ctx(tmp_path):
    return _demo(tmp_path, {"seed": 7}, gidm_steps=40, gap_frames=3, gidm_size=32, codebook_size=5)


def test_the_commands_the_demo_prints_give_its_configs(ctx, capsys):
    preset = ctx.cfg.gidm_model
    cfg = ctx.gidm_config()
    cli = _dry_run(capsys, ["gidm", "--root", "r", "--select", "s", "--model", preset, *demo.command_flags(cfg, gidm_run_config(preset))])
    assert to_dict(cfg) == cli
    assert (cfg.model.image_size, cfg.data.size, cfg.data.gap_frames, cfg.data.gap_s) == (32, 32, 3, None)
    assert (cfg.model.codebook_size, cfg.train.steps, cfg.train.ckpt_every, cfg.train.seed) == (5, 40, 20, 7)
    assert cfg.train.out_dir == str(ctx.gidm_run) and cfg.model.keypoint_temperature == 0.3

    cfg = ctx.gfdm_config()
    cli = _dry_run(capsys, ["gfdm", "--root", "r", "--select", "s", "--model", "tiny", *demo.command_flags(cfg, gfdm_run_config("tiny"))])
    assert to_dict(cfg) == cli
    assert (cfg.data.gap_frames, cfg.model.image_size, cfg.train.seed) == (3, 32, 7)  # the shortcuts set both models

    cfg = ctx.policy_config("scratch")
    cli = _dry_run(capsys, ["policy", *demo.command_flags(cfg, policy_run_config())])
    assert to_dict(cfg) == cli
    assert cfg.model.init == "scratch" and cfg.train.out_dir == str(ctx.policy_run("scratch"))


def test_a_demo_section_takes_any_field_of_its_command_and_refuses_the_demos_paths(tmp_path):
    ctx = _demo(tmp_path, {"gidm": {"train": {"lr": 3e-4}}, "eval": {"crf_chain": [18]}, "seed": 3}, gidm_steps=10)
    assert (ctx.gidm_config().train.lr, ctx.gidm_config().train.steps, ctx.cfg.eval.crf_chain) == (3e-4, 10, [18])
    # a section's steps carry their checkpoint and warm-up settings unless a layer gives them
    assert (ctx.cfg.gidm.train.ckpt_every, ctx.cfg.gidm.train.warmup_steps, ctx.cfg.policy.train.seed) == (5, 1, 3)
    with pytest.raises(ConfigError, match=r"policy\.out: the demo sets this itself"):
        demo.demo_config({"policy": {"out": "elsewhere"}})
    with pytest.raises(ConfigError, match=r"(?s)gidm section: .*steps=0: must be >= 1"):
        demo.demo_config({"gidm": {"train": {"steps": 0}}})
    with pytest.raises(ConfigError, match="unknown GIDM preset 'huge'"):
        demo.demo_config({"gidm_model": "huge"})


def test_shortcut_flags_are_the_layers_they_name(capsys, tmp_path):
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"data": {"gap_frames": 4}, "train": {"lr": 0.01}}))
    argv = ["gidm", "--root", "r", "--select", "s", "--out", "o", "--config", str(file), "--gap-s", "0.5", "--size", "48", "--steps", "9"]
    cli = _dry_run(capsys, argv)
    layers = [
        {"data": {"gap_frames": 4}, "train": {"lr": 0.01}},
        {"data": {"gap_s": 0.5, "gap_frames": None, "size": 48}, "train": {"steps": 9, "out_dir": "o"}},
    ]
    assert to_dict(gidm_run_config("keypoint", *layers)) == cli
    # the seconds flag replaces the file's frames; --size sets the model's side too
    assert (cli["data"]["gap_s"], cli["data"]["gap_frames"], cli["model"]["image_size"], cli["train"]["lr"]) == (0.5, None, 48, 0.01)


def test_bad_configs_name_the_problem():
    with pytest.raises(ConfigError, match="disagrees with model.image_size=32"):
        gidm_run_config("tiny", {"model": {"image_size": 32}}, {"data": {"size": 48}})
    with pytest.raises(ConfigError, match="unknown GIDM preset|valid"):
        gidm_run_config("huge")
    with pytest.raises(ConfigError, match="text.width=32"):
        gfdm_run_config("tiny", {"text": {"width": 32}})
    with pytest.raises(ConfigError, match="bottleneck='bogus'"):
        gidm_run_config("tiny", {"model": {"bottleneck": "bogus"}})
    assert Path(policy_run_config({"out": "x"}).train.out_dir) == Path("x")


def test_every_gidm_preset_is_a_cli_choice_and_the_demo_keeps_its_bottleneck(capsys, tmp_path):
    argv = ["gidm", "--root", "r", "--select", "s", "--out", "o", "--model", "keypoint-rvq"]
    m = _dry_run(capsys, argv)["model"]
    assert (m["bottleneck"], m["codebook_size"], m["vq_stages"], m["keypoints"], m["latent_dim"]) == ("rvq", 16, 8, 32, 16)
    # the demo's GIDM over that preset trains its codes unless a flag names another bottleneck
    m = _demo(tmp_path, {"gidm_model": "keypoint-rvq"}).gidm_config().model
    assert (m.bottleneck, m.codebook_size, m.vq_stages) == ("rvq", 16, 8)
    assert _demo(tmp_path, {"gidm_model": "keypoint-rvq"}, gidm_bottleneck="continuous").gidm_config().model.bottleneck == "continuous"
    assert _demo(tmp_path).gidm_config().model.bottleneck == "continuous"


def _load_gidm_bench():
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[2] / "bench" / "gidm_quality.py"
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location("gidm_quality", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_trains_the_presets_the_report_points_to(capsys):
    """bench/gidm_quality.py with no model flags trains the keypoint preset, ``--model
    keypoint-rvq`` its residual-VQ recipe, and every command the demo report's one line names
    (when the latent is short of its controls) is one the bench accepts."""
    import re

    from defi.pipelines.views.report import _short_of_controls

    bench = _load_gidm_bench()

    def model(argv: list[str]) -> dict:
        a = bench.parse(argv)
        return _dry_run(capsys, bench.train_args(a, "r", Path("o")))["model"]

    keys = ("bottleneck", "keypoints", "latent_dim", "patch_size", "changed_weight", "codebook_size", "vq_stages")
    default, rvq = model([]), model(["--model", "keypoint-rvq"])
    preset = to_dict(gidm_run_config("keypoint-rvq").model)
    assert {k: rvq[k] for k in keys} == {k: preset[k] for k in keys}
    assert {k: default[k] for k in keys[:5]} == {k: to_dict(gidm_run_config("keypoint").model)[k] for k in keys[:5]}
    assert (default["bottleneck"], rvq["bottleneck"], rvq["vq_stages"]) == ("continuous", "rvq", 8)

    for p, b in (("keypoint", "continuous"), ("keypoint-rvq", "rvq"), ("tiny", "vq")):
        cmds = re.findall(r"<code>\.venv/bin/python bench/gidm_quality\.py([^<]*)</code>", _short_of_controls(p, b))
        assert len(cmds) == 1
        bench.parse(cmds[0].split())  # exits on a flag the bench does not have
        assert ("--model keypoint-rvq" in cmds[0]) == (p == "keypoint-rvq")


def test_one_gap_rule_for_the_train_commands(capsys, tmp_path):
    """Seconds or frames, never both: the 1 s default when neither is given; a gap shortcut flag
    replaces the other unit from a --config file; both in one layer is a one-line error."""
    base = ["gidm", "--root", "r", "--select", "s", "--out", str(tmp_path / "o")]
    gap = lambda argv: (lambda d: (d["gap_s"], d["gap_frames"]))(_dry_run(capsys, [*base, *argv])["data"])  # noqa: E731
    assert gap([]) == (1.0, None)
    assert gap(["--gap-frames", "4"]) == (None, 4)
    seconds, frames = tmp_path / "s.json", tmp_path / "f.json"
    seconds.write_text(json.dumps({"data": {"gap_s": 0.5}}))
    frames.write_text(json.dumps({"data": {"gap_frames": 6}}))
    assert gap(["--config", str(seconds), "--gap-frames", "3"]) == (None, 3)
    assert gap(["--config", str(frames), "--gap-s", "0.25"]) == (0.25, None)
    assert main([*base, "--data.gap_s", "0.5", "--data.gap_frames", "3", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "give gap_s or gap_frames, not both" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="not both"):
        gidm_run_config("tiny", {"data": {"gap_s": 0.5, "gap_frames": 3}})
