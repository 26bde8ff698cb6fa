"""The recipe's outputs do not change unnoticed: a small ``curate -> train gidm -> train gfdm ->
train policy -> label latent-actions -> eval`` run, through the CLI, is fingerprinted and compared
with the fingerprint committed in ``tests/data/same_outputs.json`` (made by the code of the
commit that last wrote it).

What is compared: the corpus' clips (keys, frames, sizes, kept, actions, language, encoded bytes
exactly; scores to 1e-4), every checkpoint's tensors (names and shapes exactly; the sum of absolute
values to a relative 1e-4 and the signed sum to 1e-4 of it, so that other float rounding still
passes while any change of init, data order, loss or schedule does not), the latent-action labels
(keys exactly, each row's vector sums the same way) and eval's episodes (success and steps
exactly). Torch runs on one thread, whatever earlier tests in the process set.

A change that alters outputs on purpose rewrites the fingerprint, on purpose:
``DEFI_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -m slow tests/pipelines/test_same_outputs.py``,
and its commit says why."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from factories import moving_square, write_video

from defi.pipelines.cli import main as defi_main
from defi.schemas.tables import FRAME_SCORE_COLUMNS

pytest.importorskip("metaworld")
pytestmark = pytest.mark.slow  # six CLI runs at 32 px: about 2 min on 2 cores

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "same_outputs.json"
RTOL, ATOL = 1e-4, 1e-6
SIZE = 32
TINY_GFDM = [
    "--model.block_out_channels", "16,32",
    "--model.down_block_types", "DownBlock2D,CrossAttnDownBlock2D",
    "--model.up_block_types", "CrossAttnUpBlock2D,UpBlock2D",
    "--model.cross_attention_dim", "16",
    "--model.text_dim", "16",
    "--text.width", "16",
]  # fmt: skip


def sources(folder: Path) -> None:
    """3 robot episodes as a user brings them: mp4 + npz sidecar (4-wide actions, an instruction)."""
    folder.mkdir()
    for e in range(3):
        n = 24
        write_video(folder / f"ep{e}.mp4", moving_square(n, h=48, w=64, size=12, speed=2 + e), fps=10)
        t = np.linspace(0, 1, n, dtype=np.float32)
        actions = np.stack([np.sin(3 * t + e), np.cos(2 * t), t - 0.5, np.full(n, e / 3)], 1).astype(np.float32)
        np.savez(folder / f"ep{e}.npz", actions=actions, language=["push the block", "reach the goal"][e % 2])


def run(*argv: str) -> None:
    assert defi_main([*argv]) == 0, " ".join(argv)


def tensors(run_dir: Path) -> dict[str, list]:
    from safetensors.numpy import load_file

    (ckpt,) = sorted(run_dir.glob("checkpoints/step-*/model.safetensors"))[-1:]
    return {
        k: [list(v.shape), float(v.astype(np.float64).sum()), float(np.abs(v.astype(np.float64)).sum())]
        for k, v in sorted(load_file(ckpt).items())
    }


def near(s: float, a: float, want_s: float, want_a: float) -> bool:
    """A sum ``s`` with its sum of absolute values ``a``: ``a`` to RTOL, ``s`` to RTOL of ``a`` (a
    signed sum near 0 is all rounding: a bias vector's sum moves by 1e-5 with the thread count)."""
    return math.isclose(a, want_a, rel_tol=RTOL, abs_tol=ATOL) and abs(s - want_s) <= RTOL * max(a, want_a) + ATOL


def numeric_diffs(got: dict, want: dict) -> list[str]:
    """Checkpoint tensors (shape exactly, sums by ``near``) and label rows (key exactly, ``near``)."""
    out = []
    for name, tensors_ in got["checkpoints"].items():
        w = want["checkpoints"].get(name, {})
        if set(tensors_) != set(w):
            out.append(f"{name}: tensors {sorted(set(tensors_) ^ set(w))} differ")
            continue
        out += [f"{name}.{k}: {v} != {w[k]}" for k, v in tensors_.items() if v[0] != w[k][0] or not near(*v[1:], *w[k][1:])]
    if [r[0] for r in got["labels"]] != [r[0] for r in want["labels"]]:
        return [*out, "labels: other keys"]
    return out + [f"labels.{g[0]}: {g} != {w}" for g, w in zip(got["labels"], want["labels"], strict=True) if not near(*g[1:], *w[1:])]


def fingerprint(work: Path) -> dict:
    root = work / "corpus"
    clips = pq.read_table(sorted((root / "clips").rglob("*.parquet"))).to_pylist()
    exact = ("key", "start_frame", "end_frame", "start_s", "end_s", "kept", "has_actions", "language")
    exact += ("out_frames", "out_width", "out_height", "out_bytes")
    out = {
        "clips": [
            {k: c[k] for k in exact} | {"scores": {s: c[s] for s in FRAME_SCORE_COLUMNS}} for c in sorted(clips, key=lambda c: c["key"])
        ],
        "checkpoints": {name: tensors(work / name) for name in ("gidm", "gfdm", "policy")},
    }
    rows = sorted(pq.read_table(sorted((root / "labels").rglob("*.parquet"))).to_pylist(), key=lambda r: r["key"])
    vec = next(k for k, v in rows[0].items() if isinstance(v, list) and v and isinstance(v[0], float))
    out["labels"] = [[r["key"], float(np.sum(r[vec])), float(np.sum(np.abs(r[vec])))] for r in rows]
    ev = json.loads((work / "eval" / "results.json").read_text())
    out["eval"] = [[e["task"], e["episode"], bool(e["success"]), e["steps"]] for e in ev["episodes"]]
    return out


def close(a, b, path: str = "") -> list[str]:
    """Where ``a`` and ``b`` differ: numbers to RTOL/ATOL, everything else exactly."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))} differ"]
        return [d for k in a for d in close(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in close(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float | int) and not isinstance(b, bool):
        return [] if math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL) else [f"{path}: {a!r} != {b!r}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_the_recipe_gives_the_committed_outputs(tmp_path):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what earlier tests in this process set must not move the sums
    try:
        recipe(tmp_path)
    finally:
        torch.set_num_threads(threads)
    got = fingerprint(tmp_path)
    assert len(got["clips"]) >= 3 and all(c["has_actions"] for c in got["clips"] if c["kept"])
    assert got["labels"] and len(got["eval"]) == 2
    if os.environ.get("DEFI_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"wrote {GOLDEN}")
    want = json.loads(GOLDEN.read_text())
    diffs = numeric_diffs(got, want)
    diffs += close(
        {k: v for k, v in got.items() if k not in ("checkpoints", "labels")},
        {k: v for k, v in want.items() if k not in ("checkpoints", "labels")},
    )
    assert not diffs, f"{len(diffs)} outputs differ from {GOLDEN.name} (first: {diffs[:5]})"


def recipe(tmp_path: Path) -> None:
    """curate -> train gidm -> train gfdm -> train policy -> label -> eval, through the CLI."""
    sources(tmp_path / "src")
    root, sql = str(tmp_path / "corpus"), "SELECT key FROM clips WHERE kept"
    run(
        "curate", str(tmp_path / "src"), "--root", root, "--runner", "local", "--workers", "1", "--no-progress",
        "--use-dedup", "false", "--encode.fps", "10", "--encode.short_side", str(SIZE), "--windows.min_clip_s", "0.5",
        "--motion.min_motion_mean", "0", "--blur.min_blur", "0",
    )  # fmt: skip
    common = ["--root", root, "--select", sql, "--gap-frames", "2", "--size", str(SIZE), "--train.batch_size", "4"]
    common += ["--train.seed", "0", "--data.shuffle_buffer", "8", "--no-progress"]
    run("train", "gidm", "--model", "tiny", *common, "--steps", "4", "--out", str(tmp_path / "gidm"))
    run("train", "gfdm", "--model", "tiny", *common, "--steps", "3", "--out", str(tmp_path / "gfdm"), *TINY_GFDM)
    run(
        "train", "policy", "--root", root, "--select", sql + " AND has_actions", "--out", str(tmp_path / "policy"),
        "--gfdm", str(tmp_path / "gfdm"), "--gidm", str(tmp_path / "gidm"), "--horizon", "4", "--steps", "3",
        "--train.batch_size", "4", "--train.seed", "0", "--train.warmup_steps", "1", "--data.shuffle_buffer", "8",
        "--model.head_dim", "32", "--text.width", "16", "--no-progress",
    )  # fmt: skip
    run("label", "latent-actions", "--root", root, "--ckpt", str(tmp_path / "gidm"), "--local", "--no-progress")
    run(
        "eval", "--policy", str(tmp_path / "policy"), "--env", "metaworld", "--tasks", "reach-v3", "--episodes", "2",
        "--max-steps", "6", "--seed", "0", "--videos", "0", "--out", str(tmp_path / "eval"), "--no-progress",
    )  # fmt: skip


def test_a_sum_is_compared_at_the_scale_of_its_magnitude():
    assert near(-0.015053, 3.2, -0.015045, 3.2)  # a bias' signed sum moved by rounding: same
    assert not near(-0.015053, 3.2, -0.0150, 3.21)  # its magnitude moved: changed
    assert not near(0.5, 3.2, -0.5, 3.2)  # the sum moved by a third of the magnitude: changed


def test_the_comparison_catches_a_changed_number_and_passes_rounding():
    a = {"x": [1.0, {"y": 2.0}], "k": "abc"}
    assert close(a, {"x": [1.0 + 1e-9, {"y": 2.0}], "k": "abc"}) == []
    assert close(a, {"x": [1.001, {"y": 2.0}], "k": "abc"}) == [".x[0]: 1.0 != 1.001"]
    assert close(a, {"x": [1.0, {"y": 2.0}], "k": "abd"}) == [".k: 'abc' != 'abd'"]
    assert close(a, {"x": [1.0], "k": "abc"}) == [".x: length 2 != 1"]
