"""``--model.preset release`` at the release's model size (SVD img2vid GFDM, random weights) on
CPU at 64 px: it builds, its parts have the release's parameter counts, one training step moves
only the trainable parts, and one closed-loop Meta-World step samples a 10-step chunk."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "policy_release.py"


@pytest.mark.slow  # a 1.6 B-parameter GFDM on CPU: ~50 s and ~8 GiB
def test_release_preset_builds_steps_and_evaluates_on_cpu(capsys):
    spec = importlib.util.spec_from_file_location("policy_release", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["policy_release"] = mod
    spec.loader.exec_module(mod)
    res = mod.main(["--image-size", "64"])
    counts = res["counts"]
    # SVD img2vid's spatio-temporal U-Net plus its VAE: about 1.6 B parameters, all frozen
    assert 1.5e9 < counts["gfdm"][0] < 1.7e9 and counts["gfdm"][1] == 0
    for part in ("project", "gidm", "resampler", "conditioning", "head"):
        assert counts[part][0] == counts[part][1] > 0, part
    assert res["loss"] == res["loss"] and res["chunk_shape"] == (1, 10, 4)
    printed = capsys.readouterr().out
    assert "total" in printed and "one training step" in printed
    pytest.importorskip("metaworld")
    assert res["env_stepped"]
