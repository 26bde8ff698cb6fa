"""``defi eval``: a tiny policy rolled out for 2 short episodes of one Meta-World task, end to end:
results.json with the Wilson interval, one rollout mp4, and a report whose video plays in headless
Chromium. Plus the pieces: Wilson bounds, the H.264 round trip, bad input as one line."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from browser import check_page, find_chromium

import defi.training.sim  # noqa: F401  (sets MUJOCO_GL before mujoco is first imported)

pytest.importorskip("metaworld")

from defi.pipelines.cli import main as defi_main
from defi.pipelines.runner import RunnerError
from defi.training.checkpoint import save_checkpoint
from defi.training.policy.modeling_policy import DeFiPolicy
from defi.training.policy import PolicyConfig
from defi.training.sim import instruction_for
from defi.training.sim.envs import ENVS, MetaWorldEnvConfig
from defi.training.sim.evaluate import EvalConfig, H264RoundTrip, evaluate, wilson


def test_wilson_interval():
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    lo, hi = wilson(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.7225, abs=1e-3)


def test_round_trip_returns_each_frame_lossy_but_close():
    trip = H264RoundTrip(32, 32, crf=23)
    y, x = np.mgrid[:32, :32]
    for i in range(5):
        img = np.stack([(x * 8 + i) % 256, (y * 8) % 256, np.full_like(x, 100)], -1).astype(np.uint8)
        out = trip(img)
        assert out.shape == img.shape
        err = np.abs(out.astype(int) - img.astype(int)).mean()
        assert 0 < err < 12


@pytest.fixture(scope="module")
def policy_run(tmp_path_factory):
    """A bc policy (no GFDM/GIDM needed) with small random weights, saved as a run folder."""
    torch.manual_seed(0)
    cfg = PolicyConfig(init="bc", image_size=32, horizon=4, text_dim=8, head_dim=32, bc_width=8)
    policy = DeFiPolicy(cfg)
    run = tmp_path_factory.mktemp("policy")
    save_checkpoint(
        run / "checkpoints" / "step-00000001",
        policy,
        cfg,
        step=1,
        extra={"data": {"frame_stride": 2}, "instructions": {instruction_for("reach-v3"): [0.1] * 8}},
    )
    return run


def test_diffusion_proprio_policy_evaluates_deterministically_given_seed(tmp_path):
    """A diffusion head samples each chunk from its episode's own seeded stream, and the env's
    proprioception is fed to a policy that takes it; a policy wanting another width is refused."""
    torch.manual_seed(0)
    run = tmp_path / "diff"
    cfg = PolicyConfig(init="bc", image_size=32, horizon=4, text_dim=0, head_dim=32, bc_width=8, head="diffusion", state_dim=4)
    cfg.diffusion_infer_steps = 2
    save_checkpoint(run / "checkpoints" / "step-00000001", DeFiPolicy(cfg), cfg, step=1, extra={"data": {"frame_stride": 2}})
    ecfg = EvalConfig(tasks=["reach-v3"], episodes=2, max_steps=8, videos=2, seed=3, workers=1)
    a = evaluate(str(run), ecfg, progress=False)
    b = evaluate(str(run), ecfg, progress=False)
    assert [r.steps for r in a["episodes"]] == [r.steps for r in b["episodes"]] == [8, 8]
    for ra, rb in zip(a["episodes"], b["episodes"], strict=True):
        assert np.array_equal(ra.frames, rb.frames)  # the same sampled actions moved the arm alike
        assert not np.array_equal(ra.frames[0], ra.frames[-1])  # and they did move it
    bad = tmp_path / "bad"
    cfg3 = PolicyConfig(init="bc", image_size=32, horizon=4, text_dim=0, head_dim=32, bc_width=8, state_dim=3)
    save_checkpoint(bad / "checkpoints" / "step-00000001", DeFiPolicy(cfg3), cfg3, step=1, extra={"data": {"frame_stride": 2}})
    with pytest.raises(ValueError, match="policy state_dim 3 does not match Meta-World's state_dim 4"):
        evaluate(str(bad), ecfg, progress=False)


def test_eval_is_deterministic_given_seed(policy_run):
    cfg = EvalConfig(tasks=["reach-v3"], episodes=2, max_steps=12, videos=0, seed=3)
    a = evaluate(str(policy_run), cfg, progress=False)
    b = evaluate(str(policy_run), cfg, progress=False)
    assert [r.steps for r in a["episodes"]] == [r.steps for r in b["episodes"]] == [12, 12]
    assert a["per_task"] == b["per_task"]
    assert all(v > 0 for v in a["timings"].values())


@pytest.mark.slow  # two runs of 2 spawned workers, each importing torch and MuJoCo: ~13 s on 2 busy cores
def test_eval_with_spawned_workers_gives_the_in_process_episodes(policy_run):
    """workers > 1 runs on the local runner (spawned, ordered): the same episodes in the same
    order as in process; an episode that fails in a worker is a RunnerError, not a hang."""
    cfg = EvalConfig(tasks=["reach-v3"], episodes=2, max_steps=8, videos=1, seed=3, workers=1)
    a = evaluate(str(policy_run), cfg, progress=False)
    b = evaluate(str(policy_run), dataclasses.replace(cfg, workers=2), progress=False)

    def key(r):
        return (r.task, r.episode, r.success, r.steps, r.steps_to_success)

    assert [key(r) for r in b["episodes"]] == [key(r) for r in a["episodes"]]
    assert [r.episode for r in b["episodes"]] == [0, 1] and b["per_task"] == a["per_task"]
    assert np.array_equal(a["episodes"][0].frames, b["episodes"][0].frames) and b["episodes"][1].frames is None
    with pytest.raises(RunnerError, match=r"(?s)stage eval episode failed on item \d.*no-such-preset"):
        evaluate(str(policy_run), dataclasses.replace(cfg, workers=2, preset="no-such-preset"), progress=False)


@pytest.mark.slow  # Chromium start and real-time playback, ~15 s
def test_defi_eval_writes_report_with_playing_video(policy_run, tmp_path, capsys):
    if find_chromium() is None:
        pytest.skip("no Chromium on PATH")
    out = tmp_path / "eval"
    rc = defi_main(
        [
            "eval",
            "--policy",
            str(policy_run),
            "--env",
            "metaworld",
            "--tasks",
            "reach-v3",
            "--episodes",
            "2",
            "--seed",
            "1",
            "--max-steps",
            "16",
            "--videos",
            "1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "reach-v3" in printed and "report" in printed
    res = json.loads((out / "results.json").read_text())
    t = res["per_task"]["reach-v3"]
    assert t["episodes"] == 2 and 0 <= t["successes"] <= 2 and len(t["wilson95"]) == 2
    assert [e["steps"] for e in res["episodes"]] == [16, 16] or any(e["success"] for e in res["episodes"])
    vids = sorted((out / "videos").glob("*.mp4"))
    assert [v.name for v in vids] == ["reach-v3-000.mp4"]
    report = check_page(out / "report.html", timeout_s=60)
    assert report["videos"] == 1 and report["playing"] == 1, report
    assert report["broken"] == [] and report["console_errors"] == []


def test_bad_input_is_one_line(policy_run, tmp_path, capsys):
    rc = defi_main(["eval", "--policy", str(policy_run), "--tasks", "no-such-task-v3", "--episodes", "1", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "no-such-task-v3" in err
    rc = defi_main(["eval", "--policy", str(tmp_path), "--tasks", "reach-v3", "--out", str(tmp_path / "y")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--policy" in err


def test_policy_of_another_action_width_is_refused_naming_both(tmp_path, capsys):
    """The env's declared action_dim decides: a 6-wide policy in Meta-World (4) fails before any
    episode, in one line naming both widths, from the API and from ``defi eval``."""
    run = tmp_path / "six"
    cfg = PolicyConfig(init="bc", image_size=32, horizon=4, text_dim=0, head_dim=32, bc_width=8, action_dim=6)
    save_checkpoint(run / "checkpoints" / "step-00000001", DeFiPolicy(cfg), cfg, step=1, extra={"data": {"frame_stride": 2}})
    with pytest.raises(ValueError, match="^policy action_dim 6 does not match Meta-World's action_dim 4$"):
        evaluate(str(run), EvalConfig(tasks=["reach-v3"], episodes=1, max_steps=2), progress=False)
    rc = defi_main(["eval", "--policy", str(run), "--tasks", "reach-v3", "--episodes", "1", "--out", str(tmp_path / "x"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "policy action_dim 6" in err and "Meta-World's action_dim 4" in err
    assert not (tmp_path / "x" / "results.json").exists()


class ReachOnlyEnvConfig(MetaWorldEnvConfig):
    """A second registry entry: Meta-World restricted to reach-v3, declaring a 7-wide action when
    ``action_dim`` is overridden below."""

    name = "reach-only"
    title = "reach-only Meta-World"

    @classmethod
    def tasks(cls) -> list[str]:
        return ["reach-v3"]


class WideReachEnvConfig(ReachOnlyEnvConfig):
    name = "wide-reach"
    title = "wide-reach Meta-World"
    action_dim = 7


def test_env_flag_reaches_evaluation(policy_run, tmp_path, monkeypatch, capsys):
    """``defi eval --env NAME`` rolls in ``ENVS[NAME]``: its task list, its declared action width,
    and its name in results.json."""
    monkeypatch.setitem(ENVS, ReachOnlyEnvConfig.name, ReachOnlyEnvConfig)
    monkeypatch.setitem(ENVS, WideReachEnvConfig.name, WideReachEnvConfig)
    args = ["eval", "--policy", str(policy_run), "--episodes", "1", "--max-steps", "4", "--videos", "0", "--no-progress"]
    rc = defi_main([*args, "--env", "reach-only", "--tasks", "push-v3", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "unknown reach-only Meta-World task(s) ['push-v3']; valid: reach-v3" in err  # push-v3 is a Meta-World task
    rc = defi_main([*args, "--env", "wide-reach", "--tasks", "reach-v3", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "policy action_dim 4 does not match wide-reach Meta-World's action_dim 7" in err
    rc = defi_main([*args, "--env", "reach-only", "--tasks", "reach-v3", "--out", str(tmp_path / "c")])
    assert rc == 0
    res = json.loads((tmp_path / "c" / "results.json").read_text())
    assert res["env"] == "reach-only" and [e["steps"] for e in res["episodes"]] == [4]
    with pytest.raises(SystemExit) as e:
        defi_main([*args, "--env", "no-such-env", "--tasks", "reach-v3", "--out", str(tmp_path / "d")])
    assert e.value.code == 2 and "invalid choice: 'no-such-env'" in capsys.readouterr().err


class ShortTopEnvConfig(ReachOnlyEnvConfig):
    """An env whose own horizon and camera differ from Meta-World's defaults."""

    name = "short-top"
    title = "short-top Meta-World"
    camera = "topview"
    max_steps = 3


def test_an_env_gives_its_own_horizon_and_camera_unless_asked(policy_run, tmp_path, monkeypatch):
    """``defi eval --env NAME`` without ``--max-steps``/``--camera`` runs NAME's horizon and camera
    (not Meta-World's 150 steps and corner camera) and records them; given ones win."""
    monkeypatch.setitem(ENVS, ShortTopEnvConfig.name, ShortTopEnvConfig)
    assert EvalConfig().for_env(ShortTopEnvConfig) == EvalConfig(max_steps=3, camera="topview")
    assert EvalConfig(max_steps=9, camera="corner2").for_env(ShortTopEnvConfig).max_steps == 9
    args = ["eval", "--policy", str(policy_run), "--env", "short-top", "--tasks", "reach-v3", "--episodes", "1", "--videos", "0"]
    assert defi_main([*args, "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert (res["config"]["max_steps"], res["config"]["camera"]) == (3, "topview")
    assert all(e["steps"] <= 3 for e in res["episodes"])
