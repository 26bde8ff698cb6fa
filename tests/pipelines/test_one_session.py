"""A user's session in one Python process, as the Python API and `defi demo` run it: Meta-World
episodes rendered headless, curated by the local runner's forked pool, then a GFDM (diffusers,
open_clip text tower) trained on the corpus. Rendering on a CPU loads Mesa's LLVM into the process,
and diffusers loads triton's: in that order the process died of a segmentation fault.

The session runs in a fresh interpreter: in this one an earlier test may have loaded triton
already, which hides the fault."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("metaworld")

SESSION = r"""
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
from defi.training.sim import generate

generate(["reach-v3"], 2, work / "ds", size=64, fps=20, max_steps=40, seed=0, workers=1, progress=False)

from defi.pipelines.config import from_dict
from defi.pipelines.curate import run_curate
from defi.pipelines.curate_config import CurateConfig

cfg = from_dict(
    CurateConfig,
    {
        "windows": {"clip_len_s": 30.0, "stride_s": 30.0, "min_clip_s": 0.2, "max_clip_s": 30.0},
        "encode": {"fps": 20, "short_side": 64},
        "use_dedup": False,
        "runner": "local",
        "motion": {"min_motion_mean": 0.0},
        "blur": {"min_blur": 0.0},
        "black": {"max_black_frac": 1.0},
    },
)
rec = run_curate([str(work / "ds")], str(work / "corpus"), cfg, progress=False)
assert rec["status"] == "done" and rec["counts"]["kept"] == 2, rec["counts"]

from defi.pipelines.train import main

rc = main([
    "gfdm", "--root", str(work / "corpus"), "--select", "SELECT key FROM clips WHERE kept",
    "--out", str(work / "gfdm"), "--gap-frames", "3", "--size", "32", "--steps", "2",
    "--model.block_out_channels", "16,32", "--model.down_block_types", "DownBlock2D,CrossAttnDownBlock2D",
    "--model.up_block_types", "CrossAttnUpBlock2D,UpBlock2D", "--model.cross_attention_dim", "16",
    "--model.text_dim", "16", "--text.width", "16", "--train.batch_size", "2", "--data.shuffle_buffer", "4",
    "--no-progress",
])
print(json.dumps({"train_rc": rc}))
"""


@pytest.mark.slow  # generate, curate, train: ~1 min on 2 cores
def test_generate_curate_then_train_in_one_process(tmp_path):
    run = subprocess.run([sys.executable, "-c", SESSION, str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"exit {run.returncode}:\n{run.stderr[-3000:]}"
    assert '{"train_rc": 0}' in run.stdout
    assert sorted(p.name for p in (tmp_path / "gfdm" / "checkpoints").iterdir()) == ["step-00000002"]
