"""``--help`` and resolving a run config import no torch: the package ``__init__``s, the model
configs, ``TrainConfig`` and the checkpoint registry are torch-free, so no command pays for
torch (seconds) before it needs a model."""

from __future__ import annotations

import subprocess
import sys

HELPS = [
    "--help",
    "train --help",
    "train gidm --help",
    "train gfdm --help",
    "train policy --help",
    "label latent-actions --help",
    "eval --help",
]

SCRIPT = """
import contextlib, io, sys
from defi.pipelines.cli import main
for argv in sys.argv[1:]:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main(argv.split())
        except SystemExit as e:
            assert e.code in (0, None), (argv, e.code)
    assert len(out.getvalue()) > 200, argv
    assert "torch" not in sys.modules, argv
from defi.pipelines.train import gidm_run_config
from defi.pipelines.train_gfdm import gfdm_run_config
from defi.pipelines.train_policy import policy_run_config
from defi.training.registry import config_class
gidm_run_config("keypoint", {"data": {"gap_frames": 3}}), gfdm_run_config("tiny"), policy_run_config({"out": "x"})
[config_class(n) for n in ("gidm", "gfdm", "policy")]
assert "torch" not in sys.modules, "run configs"
print("ok")
"""


def test_help_and_run_configs_do_not_import_torch():
    r = subprocess.run([sys.executable, "-c", SCRIPT, *HELPS], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
