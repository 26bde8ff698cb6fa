"""``defi train policy`` end to end on a tiny corpus of robot clips (20 Hz rows, clips at 10 fps)
with tiny random GFDM and GIDM runs: trains, writes checkpoints/metrics/TensorBoard, resumes; the
action statistics cover every row; bad input is one line naming the problem."""

import io
import json

import numpy as np
import pytest
import torch
from factories import shard_writers, write_clip_sample, write_video

from defi.pipelines.cli import main as defi_main
from defi.schemas.corpus import Corpus
from defi.schemas.keys import clip_key
from defi.schemas.records import clips_table
from defi.training.checkpoint import load_checkpoint, save_checkpoint
from defi.training.gfdm.modeling_gfdm import GFDM
from defi.training.gfdm import gfdm_tiny
from defi.training.gidm.modeling_gidm import GIDM
from defi.training.gidm import gidm_tiny

S = 32
pytestmark = pytest.mark.slow  # GFDM/GIDM builds and CLI runs: ~90 s for the module on 2 busy cores


def npy(a):
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def frames(n, seed):
    rng = np.random.default_rng(seed)
    x0 = int(rng.integers(0, S - 8))
    for i in range(n):
        f = np.full((S, S, 3), 40, np.uint8)
        x = (x0 + 2 * i) % (S - 8)
        f[10:18, x : x + 8] = 220
        yield f


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trainpolicy")
    c = Corpus.create(str(tmp / "corpus"))
    writers = shard_writers(c, 1)
    recs = []
    for e in range(3):  # 3 episodes: 8 frames at 10 fps over 16 rows at 20 Hz
        n = 8
        rows = np.stack([np.full(2 * n, 0.5), np.linspace(-1, 1, 2 * n), np.zeros(2 * n), np.full(2 * n, e)], 1)
        key = clip_key(f"{e + 1:016x}", 0, n, {})
        mp4 = write_video(tmp / f"ep{e}.mp4", frames(n, e), fps=10).read_bytes()
        recs.append(
            write_clip_sample(
                writers,
                0,
                key,
                mp4,
                n,
                10.0,
                S,
                uri=f"file://ep{e}.mp4",
                members={
                    "actions.npy": npy(rows[::2].astype(np.float32)),
                    "rows.actions.npy": npy(rows.astype(np.float32)),
                    "rows.proprio.npy": npy(np.stack([np.linspace(0, 1, 2 * n), np.full(2 * n, e), np.zeros(2 * n)], 1).astype(np.float32)),
                    "lang.txt": "push the block",
                },
                meta={
                    "action_dim": 4,
                    "row_fps": 20.0,
                    "frame_rows": list(range(0, 2 * n, 2)),
                    "row_times_s": [i / 20 for i in range(2 * n)],
                },
                has_actions=True,
                language="push the block",
                kind="robot",
            )
        )
    key = clip_key("f" * 16, 0, 8, {})  # a clip without actions
    mp4 = write_video(tmp / "human.mp4", frames(8, 9), fps=10).read_bytes()
    recs.append(write_clip_sample(writers, 0, key, mp4, 8, 10.0, S, uri="file://human.mp4", has_actions=False))
    writers[0].close()
    c.write_part("clips", clips_table(recs), part="b0")
    torch.manual_seed(0)
    g = GFDM(gfdm_tiny(image_size=S, block_out_channels=(16, 32, 32), cross_attention_dim=32), load_pretrained=False)
    save_checkpoint(tmp / "gfdm" / "checkpoints" / "step-00000001", g, g.config, step=1)
    i = GIDM(gidm_tiny(image_size=S, model_dim=32))
    save_checkpoint(tmp / "gidm" / "checkpoints" / "step-00000001", i, i.config, step=1)
    return tmp, str(tmp / "corpus")


def argv(tmp, root, out, *more):
    return [
        "train",
        "policy",
        "--root",
        root,
        "--select",
        "SELECT key FROM clips WHERE has_actions",
        "--gfdm",
        str(tmp / "gfdm"),
        "--gidm",
        str(tmp / "gidm"),
        "--out",
        str(out),
        "--horizon",
        "4",
        "--train.batch_size",
        "4",
        "--train.log_every",
        "1",
        "--train.ckpt_every",
        "2",
        "--no-progress",
        *more,
    ]


def test_train_policy_trains_resumes_and_records(setup, capsys):
    tmp, root = setup
    out = tmp / "run"
    assert defi_main(argv(tmp, root, out, "--steps", "2")) == 0
    printed = capsys.readouterr().out
    assert "policy (defi" in printed and "48 action rows" in printed
    ck = sorted((out / "checkpoints").glob("step-*"))
    assert [p.name for p in ck] == ["step-00000002"]
    model, cfg, state = load_checkpoint(ck[-1])
    assert cfg.init == "defi" and cfg.action_dim == 4 and cfg.horizon == 4 and cfg.image_size == S
    # the mean/std cover all 48 rows at 20 Hz (the 24 per-frame rows would give the same mean here,
    # so check the std of the ramp column, which differs between the two)
    ramp = np.concatenate([np.linspace(-1, 1, 16)] * 3)
    assert model.action_std[1].item() == pytest.approx(ramp.std(), rel=1e-4)
    assert state["extra"]["data"]["frame_stride"] == 2
    assert "push the block" in state["extra"]["instructions"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2 and (out / "tb").is_dir()
    # re-running with more steps resumes from step 2
    assert defi_main(argv(tmp, root, out, "--steps", "4")) == 0
    printed = capsys.readouterr().out
    assert "resumed" in printed and "steps    3..4 of 4" in printed
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_the_same_seed_gives_the_same_policy(setup, tmp_path, capsys):
    """train.seed fixes the random parts' initial weights as well as the data order, whatever the
    process drew before: two runs in one process give the same weights, another seed others."""
    tmp, root = setup

    def weights(name, seed):
        assert defi_main(argv(tmp, root, tmp_path / name, "--steps", "1", "--init", "scratch", "--train.seed", seed)) == 0
        return load_checkpoint(tmp_path / name / "checkpoints" / "step-00000001")[0].state_dict()

    a, b, c = weights("a", "3"), weights("b", "3"), weights("c", "4")
    capsys.readouterr()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("init", ["bc", "scratch"])
def test_other_inits_through_the_cli(setup, tmp_path, init, capsys):
    tmp, root = setup
    assert defi_main(argv(tmp, root, tmp_path / init, "--steps", "1", "--init", init)) == 0
    assert f"policy ({init}" in capsys.readouterr().out


def test_bad_input_is_one_line(setup, tmp_path, capsys):
    tmp, root = setup

    def err(*a):
        rc = defi_main(list(a))
        e = capsys.readouterr().err.strip()
        assert rc == 2 and len(e.splitlines()) == 1, e
        return e

    base = argv(tmp, root, tmp_path / "x", "--steps", "1")
    no_actions = [a if a != "SELECT key FROM clips WHERE has_actions" else "SELECT key FROM clips WHERE NOT has_actions" for a in base]
    assert "no clip in the selection has actions" in err(*no_actions)
    swapped = [str(tmp / "gidm") if a == str(tmp / "gfdm") else a for a in base]
    assert "a 'gidm' checkpoint where a 'gfdm' checkpoint is expected" in err(*swapped)
    assert "init='dagger'" in err(*base, "--model.init", "dagger")


def test_diffusion_head_with_proprio_through_the_cli(setup, tmp_path, capsys):
    """--model.head diffusion --data.proprio: the data sets state_dim and the state statistics,
    the checkpoint keeps them, and the saved policy samples the same chunk for the same seed."""
    tmp, root = setup
    out = tmp_path / "diff"
    more = ("--steps", "2", "--model.head", "diffusion", "--model.diffusion_infer_steps", "3", "--data.proprio", "true")
    assert defi_main(argv(tmp, root, out, *more)) == 0
    printed = capsys.readouterr().out
    assert "diffusion head" in printed and "by part: gfdm" in printed and "head " in printed
    model, cfg, _ = load_checkpoint(sorted((out / "checkpoints").glob("step-*"))[-1])
    assert cfg.head == "diffusion" and cfg.state_dim == 3
    # rows' proprio: column 0 a ramp 0..1 per episode, column 1 the episode index 0, 1, 2
    assert model.state_mean[1].item() == pytest.approx(1.0) and model.state_std[1].item() == pytest.approx(np.std([0, 1, 2]), rel=1e-4)
    obs, text, state = torch.rand(2, 3, S, S), None, torch.rand(2, 3)
    a = model.predict(obs, text, state, torch.Generator().manual_seed(1))
    b = model.predict(obs, text, state, torch.Generator().manual_seed(1))
    assert a.shape == (2, 4, 4) and torch.equal(a, b)


def test_release_preset_needs_an_svd_gfdm(setup, tmp_path, capsys):
    tmp, root = setup
    rc = defi_main(argv(tmp, root, tmp_path / "rel", "--steps", "1", "--model.preset", "release"))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "--model.preset release needs a 'svd' GFDM" in err and "'unet2d'" in err


def test_two_workers_under_torchrun(setup, tmp_path, capfd):
    """--workers 2 relaunches the same command as two gloo processes; rank 0 alone writes the run."""
    tmp, root = setup
    out = tmp_path / "ddp"
    assert defi_main(argv(tmp, root, out, "--steps", "2", "--workers", "2")) == 0
    printed = capfd.readouterr()
    assert "launching 2 processes" in printed.err and printed.out.count("policy (defi") == 1
    _, _, state = load_checkpoint(sorted((out / "checkpoints").glob("step-*"))[-1])
    assert state["extra"]["world_size"] == 2
    assert json.loads((out / "run_config.json").read_text())["world_size"] == 2


def joint_argv(root, out, *more):
    return [
        "train",
        "joint",
        "--root",
        root,
        "--select",
        "SELECT key FROM clips",
        "--out",
        str(out),
        "--gidm-model",
        "tiny",
        "--size",
        str(S),
        "--gap-frames",
        "2",
        "--gidm.model_dim",
        "32",
        "--gfdm.block_out_channels",
        "16,32,32",
        "--gfdm.cross_attention_dim",
        "32",
        "--train.batch_size",
        "4",
        "--train.log_every",
        "1",
        "--no-progress",
        *more,
    ]


def test_train_joint_then_policy_entangled(setup, tmp_path, capsys):
    """`defi train joint` trains the one model on both losses (action-free clips included) and
    resumes; `--init entangled --joint RUN` starts the policy from its GFDM, projection and GIDM."""
    from defi.pipelines.train_policy import build_policy, fill_policy_config, policy_run_config
    from defi.training.checkpoint import load_model

    tmp, root = setup
    joint = tmp_path / "joint"
    assert defi_main(joint_argv(root, joint, "--steps", "2")) == 0
    printed = capsys.readouterr().out
    assert "joint (gfdm unet2d regression + gidm): 4 clips selected" in printed and "parameters gfdm" in printed
    rows = [json.loads(x) for x in (joint / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["forward_loss"] > 0 and r["inverse_loss"] > 0 for r in rows)
    assert defi_main(joint_argv(root, joint, "--steps", "3")) == 0
    assert "steps    3..3 of 3" in capsys.readouterr().out
    assert defi_main(joint_argv(root, joint, "--steps", "3", "--gidm.latent_dim", "12")) == 2
    assert "different config (gidm)" in capsys.readouterr().err

    base = [a for a in argv(tmp, root, tmp_path / "ent", "--steps", "1", "--init", "entangled")]
    for flag in ("--gfdm", "--gidm"):  # the joint run replaces both
        i = base.index(flag)
        del base[i : i + 2]
    assert defi_main([*base, "--joint", str(joint)]) == 0
    assert "policy (entangled" in capsys.readouterr().out
    _, cfg, _ = load_model(tmp_path / "ent", expect="policy")
    assert cfg.init == "entangled"
    # the policy's parts are the joint run's, weight for weight, before finetuning
    run = policy_run_config({"root": root, "select": "SELECT key FROM clips", "joint": str(joint), "model": {"init": "entangled"}})
    fill_policy_config(run)
    policy = build_policy(run)
    source = load_model(joint, expect="joint")[0]
    for name in ("gfdm", "project", "gidm"):
        mine, theirs = getattr(policy, name).state_dict(), getattr(source, name).state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in theirs), name

    def err(*a):
        rc = defi_main(list(a))
        e = capsys.readouterr().err.strip()
        assert rc == 2 and len(e.splitlines()) == 1, e
        return e

    assert "--init entangled needs --joint" in err(*base)
    assert "a 'gfdm' checkpoint where a 'joint' checkpoint is expected" in err(*base, "--joint", str(tmp / "gfdm"))
