"""Every config-driven command goes through one ``CommandSpec``: the same ``--dry-run`` format and
shortcut flags that set exactly what their dotted flags set."""

import json
from dataclasses import dataclass

import pytest

from defi.pipelines.captions import CAPTIONS_SPEC
from defi.pipelines.cli import CURATE_SPEC, main
from defi.pipelines.command import VALUE, CommandSpec, layered, run_command, shortcut_layer
from defi.pipelines.dedup import DEDUP_SPEC
from defi.pipelines.demo import DEMO_SPEC
from defi.pipelines.eval import EVAL_SPEC
from defi.pipelines.label import LABEL_SPEC
from defi.pipelines.train import GIDM_SPEC
from defi.pipelines.train_gfdm import GFDM_SPEC
from defi.pipelines.train_joint import JOINT_SPEC
from defi.pipelines.train_policy import POLICY_SPEC
from defi.pipelines.usage import UsageError

SPECS = {
    "curate": CURATE_SPEC,
    "dedup": DEDUP_SPEC,
    "label latent-actions": LABEL_SPEC,
    "label captions": CAPTIONS_SPEC,
    "train gidm": GIDM_SPEC,
    "train gfdm": GFDM_SPEC,
    "train joint": JOINT_SPEC,
    "train policy": POLICY_SPEC,
    "eval": EVAL_SPEC,
    "demo": DEMO_SPEC,
}

RUNNER = [("--local", [], "--runner", ["local"]), ("--address", ["ray://h:1"], "--ray.address", ["ray://h:1"])]
TRAIN = [
    ("--steps", ["7"], "--train.steps", ["7"]),
    ("--out", ["run"], "--train.out_dir", ["run"]),
    ("--no-progress", [], "--train.progress", ["false"]),
]
DATA = [
    ("--gap-s", ["0.5"], "--data.gap_s", ["0.5"]),
    ("--gap-frames", ["3"], "--data.gap_frames", ["3"]),
    ("--size", ["48"], "--data.size", ["48"]),
    ("--loader-workers", ["2"], "--data.num_workers", ["2"]),
]
# command -> (shortcut flag, its values, the dotted flag it stands for, its values)
PAIRS = {
    "curate": [("--address", ["ray://h:1"], "--ray.address", ["ray://h:1"]), ("--num-cpus", ["3"], "--ray.num_cpus", ["3"])],
    "dedup": RUNNER,
    "label latent-actions": RUNNER,
    "label captions": RUNNER,
    "train gidm": TRAIN + DATA,
    "train gfdm": [*TRAIN, *DATA, ("--pretrained", ["svd"], "--model.pretrained_path", ["svd"])],
    "train joint": TRAIN + DATA,
    "train policy": [
        ("--steps", ["7"], "--train.steps", ["7"]),
        ("--no-progress", [], "--train.progress", ["false"]),
        ("--init", ["bc"], "--model.init", ["bc"]),
        ("--horizon", ["4"], "--model.horizon", ["4"]),
    ],
    "eval": [],
    "demo": [
        ("--fps", ["8"], "--curate.encode.fps", ["8"]),
        ("--short-side", ["64"], "--curate.encode.short_side", ["64"]),
        ("--gidm-steps", ["7"], "--gidm.train.steps", ["7"]),
        ("--gidm-size", ["32"], "--gidm.data.size", ["32", "--gfdm.data.size", "32"]),
        ("--gap-frames", ["3"], "--gidm.data.gap_frames", ["3", "--gfdm.data.gap_frames", "3"]),
        ("--gidm-bottleneck", ["vq"], "--gidm.model.bottleneck", ["vq"]),
        ("--codebook-size", ["5"], "--gidm.model.codebook_size", ["5"]),
        ("--changed-weight", ["2"], "--gidm.model.changed_weight", ["2"]),
        ("--keypoints", ["8"], "--gidm.model.keypoints", ["8"]),
        ("--keypoint-temperature", ["0.5"], "--gidm.model.keypoint_temperature", ["0.5"]),
        ("--gfdm-steps", ["4"], "--gfdm.train.steps", ["4"]),
        ("--policy-steps", ["6"], "--policy.train.steps", ["6"]),
        ("--eval-episodes", ["3"], "--eval.episodes", ["3"]),
        ("--eval-max-steps", ["9"], "--eval.max_steps", ["9"]),
        ("--eval-seed", ["77"], "--eval.seed", ["77"]),
    ],
}


def dry_run(capsys, command: str, *flags: str) -> dict:
    assert main([*command.split(), *flags, "--dry-run"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # the whole of stdout is the config's JSON


@pytest.mark.parametrize("command", list(SPECS))
def test_every_dry_run_prints_its_config_as_json(capsys, tmp_path, command):
    cfg = dry_run(capsys, command)
    assert isinstance(cfg, dict) and cfg
    if command != "eval":  # (eval has no --config) what --dry-run prints is a config file giving the same config
        (tmp_path / "c.json").write_text(json.dumps(cfg))
        assert dry_run(capsys, command, "--config", str(tmp_path / "c.json")) == cfg


@pytest.mark.parametrize("command", list(SPECS))
def test_every_shortcut_sets_what_its_dotted_flag_sets(capsys, command):
    pairs = PAIRS[command]
    tested = {short.lstrip("-").replace("-", "_") for short, *_ in pairs}
    assert tested == set(SPECS[command].shortcuts) - {"cfg__gap_s", "cfg__gap_frames"}, "a shortcut without a case here"
    default = dry_run(capsys, command)
    for short, short_values, dotted, dotted_values in pairs:
        by_short = dry_run(capsys, command, short, *short_values)
        by_dotted = dry_run(capsys, command, dotted, *dotted_values)
        assert by_short == by_dotted, short
        assert by_short != default, f"{short} changed nothing"


def test_a_gap_flag_replaces_the_files_gap_in_either_unit(capsys, tmp_path):
    (tmp_path / "t.yaml").write_text("data:\n  gap_frames: 3\n")
    cfg = dry_run(capsys, "train gidm", "--config", str(tmp_path / "t.yaml"), "--gap-s", "0.5")
    assert (cfg["data"]["gap_s"], cfg["data"]["gap_frames"]) == (0.5, None)
    (tmp_path / "l.yaml").write_text("gap_s: 2.0\n")
    cfg = dry_run(capsys, "label latent-actions", "--config", str(tmp_path / "l.yaml"), "--gap-frames", "4")
    assert (cfg["gap_s"], cfg["gap_frames"]) == (None, 4)


def test_a_flag_set_to_its_value_wins_over_a_constant_another_implies():
    import argparse

    table = {"a": {"x": VALUE, "y": None}, "b": {"y": VALUE, "x": None}}
    assert shortcut_layer(argparse.Namespace(a=1, b=None), table) == {"x": 1, "y": None}
    assert shortcut_layer(argparse.Namespace(a=1, b=2), table) == {"x": 1, "y": 2}
    assert shortcut_layer(argparse.Namespace(a=None, b=False), table) == {}


@dataclass
class Probe:
    n: int = 0


def test_run_command_requires_inputs_checks_then_runs_and_summarises(capsys):
    import argparse

    calls = []
    spec = CommandSpec(
        name="probe",
        build=layered(Probe),
        shortcuts={"n": "n"},
        requires=("root",),
        check=lambda _args, cfg: calls.append(("check", cfg.n)),
        run=lambda _args, cfg: calls.append(("run", cfg.n)) or {"n": cfg.n},
        summary=lambda _args, res: res["n"],
    )
    args = argparse.Namespace(root=None, n="3", dry_run=False)
    with pytest.raises(UsageError, match="--root is required"):
        run_command(spec, args)
    assert calls == []
    args.root = "r"
    assert run_command(spec, args) == 3 and calls == [("check", 3), ("run", 3)]
    args.dry_run = True
    assert run_command(spec, args) == 0 and json.loads(capsys.readouterr().out) == {"n": 3}


def test_the_policy_section_is_model_and_its_old_name_still_reads(capsys, tmp_path):
    """``defi train policy``'s model section is ``model`` as in gidm/gfdm runs; ``--policy.FIELD``
    and a file's (or an older run's) ``policy:`` section still set it, the flag with a note."""
    cfg = dry_run(capsys, "train policy", "--model.head", "diffusion")
    assert cfg["model"]["head"] == "diffusion" and "policy" not in cfg
    assert main(["train", "policy", "--policy.head", "diffusion", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == cfg and "--policy.head is deprecated; use --model.head" in err
    help_ = " ".join(main_help(capsys, "train", "policy").split())
    assert "--model.head" in help_ and "--policy.head" not in help_
    (tmp_path / "old.yaml").write_text("policy:\n  horizon: 4\nmodel:\n  head: transformer\n")
    cfg = dry_run(capsys, "train policy", "--config", str(tmp_path / "old.yaml"))
    assert (cfg["model"]["horizon"], cfg["model"]["head"]) == (4, "transformer")


def main_help(capsys, *command: str) -> str:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    return capsys.readouterr().out
