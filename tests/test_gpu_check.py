"""``bench/gpu_check.sh --device cpu``: the GPU check's rehearsal on CPU runs every step of the
recipe (generate, curate, train gidm/gfdm tiny/gfdm svd/policy with both heads, label, eval) and
prints its table; so the script is known to work before the first GPU machine runs it."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # every command of the recipe at its smallest: ~2-4 min on 2 cores
def test_gpu_check_rehearsal_on_cpu_runs_every_step():
    pytest.importorskip("metaworld")
    p = subprocess.run(["bash", "bench/gpu_check.sh", "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    out = p.stdout
    assert p.returncode == 0, out[-3000:] + p.stderr[-2000:]
    names = ["sim generate", "curate", "train gidm", "train gfdm tiny", "train gfdm svd", "train policy mlp", "train policy diffusion"]
    for name in [*names, "label", "eval"]:
        line = next((ln for ln in out.splitlines() if ln.startswith(name + " ")), "")
        assert " ok " in line, (name, out[-3000:])
    assert "ms/step" in out and "clips/s" in out and "gpu_check:" in out
