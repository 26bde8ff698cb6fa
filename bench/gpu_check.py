"""One pass of the whole recipe on a generated corpus, on a device, with step rates and memory:
the check to run on the first GPU machine (``bench/gpu_check.sh`` installs, runs the GPU-marked
tests, then this on ``cuda`` and on ``cpu`` and prints both tables side by side).

    python bench/gpu_check.py --device cuda --work /tmp/gpucheck
    python bench/gpu_check.py --device cpu --quick          # what the CPU test runs

Steps (each the real ``defi`` command in its own process): ``sim generate`` (Meta-World expert
episodes) -> ``curate`` -> ``train gidm`` -> ``train gfdm --model tiny`` -> ``train gfdm --model
svd`` (random SVD weights at 64 px, 2 steps; ``--quick``: 4 frames, 32-64 wide) -> ``train policy`` with the MLP head and with
the diffusion head -> ``label latent-actions`` -> ``eval``. For each: exit code, wall seconds,
the rate the command reports (ms/step, clips/s) and, on CUDA, the peak GPU memory in use while it
ran (``nvidia-smi``, polled). A failing step is reported with its last error line and the next
steps that need it are skipped; the exit code is 1 if any step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROBOT_SELECT = "SELECT key FROM clips WHERE kept AND has_actions"
ALL_SELECT = "SELECT key FROM clips WHERE kept"


@dataclass
class Step:
    name: str
    argv: list[str]
    needs: tuple[str, ...] = ()
    rc: int | None = None
    seconds: float = 0.0
    rate: str = ""
    gpu_peak_mib: float | None = None
    error: str = ""
    extra: dict = field(default_factory=dict)


class GpuPoller:
    """Peak ``memory.used`` of GPU 0 (MiB) while a command runs, from ``nvidia-smi`` every 0.2 s."""

    def __init__(self):
        self.peak: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout.strip()
                used = float(out.splitlines()[0])
                self.peak = used if self.peak is None else max(self.peak, used)
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=6)


def steps_for(work: Path, device: str, quick: bool, n_train: int | None = None) -> list[Step]:
    """The recipe's commands on ``work``; ``quick``: the smallest sizes that still run each one;
    ``n_train``: optimizer steps of the gidm, gfdm tiny and policy runs (default 4 quick, else 60)."""
    n_train = n_train or (4 if quick else 60)
    dev = ["--train.device", device, "--no-progress"]
    robot, corpus = str(work / "robot"), str(work / "corpus")
    text = ["--text.name", "tiny", "--text.width", "64"]
    policy = [
        "train",
        "policy",
        "--root",
        corpus,
        "--select",
        ROBOT_SELECT,
        "--gfdm",
        str(work / "gfdm"),
        "--gidm",
        str(work / "gidm"),
        "--steps",
        str(n_train),
        "--train.batch_size",
        "8",
        "--train.ckpt_every",
        str(n_train),
        *text,
        *dev,
    ]
    return [
        Step(
            "sim generate",
            [
                "sim",
                "generate",
                "--tasks",
                "reach-v3,push-v3",
                "--episodes",
                "2" if quick else "6",
                "--out",
                robot,
                "--max-steps",
                "40" if quick else "80",
            ]
            + ["--no-progress"],
        ),
        Step("curate", ["curate", robot, "--root", corpus, "--no-progress"], needs=("sim generate",)),
        Step(
            "train gidm",
            ["train", "gidm", "--root", corpus, "--select", ALL_SELECT, "--out", str(work / "gidm"), "--model", "tiny"]
            + ["--steps", str(n_train), "--train.batch_size", "16", "--gap-frames", "2", *dev],
            needs=("curate",),
        ),
        Step(
            "train gfdm tiny",
            ["train", "gfdm", "--root", corpus, "--select", ALL_SELECT, "--out", str(work / "gfdm"), "--model", "tiny"]
            + ["--steps", str(n_train), "--train.batch_size", "16", "--gap-frames", "2", *text, *dev],
            needs=("curate",),
        ),
        Step(
            "train gfdm svd",
            ["train", "gfdm", "--root", corpus, "--select", ALL_SELECT, "--out", str(work / "gfdm-svd"), "--model", "svd"]
            + ["--size", "64", "--steps", "2", "--train.batch_size", "1", "--gap-frames", "1", "--model.text_dim", "64", *text, *dev]
            # --quick: the svd code path at a width whose AdamW state fits a CPU box (the full
            # U-Net trains 1.6 B parameters: ~26 GB of weights, gradients and moments)
            + (["--model.num_frames", "4", "--model.future_frames", "4", "--model.block_out_channels", "32,64,64,64"] if quick else []),
            needs=("curate",),
        ),
        Step(
            "train policy mlp",
            [*policy, "--out", str(work / "policy-mlp"), "--horizon", "4"],
            needs=("train gidm", "train gfdm tiny"),
        ),
        Step(
            "train policy diffusion",
            [*policy, "--out", str(work / "policy-diffusion"), "--horizon", "4", "--model.head", "diffusion"],
            needs=("train gidm", "train gfdm tiny"),
        ),
        Step(
            "label",
            ["label", "latent-actions", "--root", corpus, "--ckpt", str(work / "gidm"), "--no-progress"],
            needs=("train gidm",),
        ),
        Step(
            "eval",
            ["eval", "--policy", str(work / "policy-diffusion"), "--tasks", "reach-v3", "--episodes", "2", "--max-steps", "20"]
            + ["--out", str(work / "eval"), "--seed", "0", "--no-progress"],
            needs=("train policy diffusion",),
        ),
    ]


RATE = re.compile(r"(\d+(?:\.\d+)?) (ms/step|clips/s)")


def run_step(step: Step, defi: list[str], device: str, env: dict) -> None:
    t = time.perf_counter()
    poll = GpuPoller() if device.startswith("cuda") and shutil.which("nvidia-smi") else None
    if poll:
        with poll:
            p = subprocess.run([*defi, *step.argv], capture_output=True, text=True, env=env)
        step.gpu_peak_mib = poll.peak
    else:
        p = subprocess.run([*defi, *step.argv], capture_output=True, text=True, env=env)
    step.seconds = time.perf_counter() - t
    step.rc = p.returncode
    found = RATE.findall(p.stdout + p.stderr)
    step.rate = " ".join(f"{v} {u}" for v, u in found[-1:])
    if p.returncode != 0:
        lines = [ln for ln in (p.stderr or p.stdout).strip().splitlines() if ln.strip()]
        step.error = lines[-1][:200] if lines else f"exit {p.returncode}"


def table(steps: list[Step], device: str) -> str:
    rows = [f"{'step':<24}{'status':<8}{'seconds':>9}  {'rate':<18}{'GPU MiB':>9}", "-" * 72]
    for s in steps:
        status = "skipped" if s.rc is None else ("ok" if s.rc == 0 else "FAILED")
        mem = "" if s.gpu_peak_mib is None else f"{s.gpu_peak_mib:.0f}"
        rows.append(f"{s.name:<24}{status:<8}{s.seconds:>9.1f}  {s.rate:<18}{mem:>9}")
        if s.error:
            rows.append(f"    {s.error}")
    return f"device {device}\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="torch device the training steps use: cuda or cpu")
    ap.add_argument("--work", default="", help="scratch folder (default: a new one under /tmp); emptied first")
    ap.add_argument("--quick", action="store_true", help="smallest sizes (4 training steps, 2 episodes per task): the CPU test's run")
    ap.add_argument("--steps", type=int, default=0, help="optimizer steps of the gidm, gfdm tiny and policy runs (0: 4 quick, else 60)")
    ap.add_argument("--skip", default="", help="comma-separated step names to leave out (e.g. 'train gfdm svd')")
    ap.add_argument("--json", default="", help="also write the results to this JSON file")
    a = ap.parse_args(argv)
    if a.device not in ("cpu", "cuda") and not a.device.startswith("cuda:"):
        ap.error(f"--device {a.device}: use cpu or cuda")
    work = Path(a.work or f"/tmp/defi-gpu-check-{a.device.replace(':', '')}-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    if a.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # label and eval pick the GPU when one is visible
    defi = [sys.executable, "-m", "defi.pipelines.cli"]
    steps = steps_for(work, a.device, a.quick, a.steps or None)
    skip = {n.strip() for n in a.skip.split(",") if n.strip()}
    unknown = skip - {s.name for s in steps}
    if unknown:
        ap.error(f"--skip {', '.join(sorted(unknown))}: unknown; valid: {', '.join(s.name for s in steps)}")
    steps = [s for s in steps if s.name not in skip]
    done: dict[str, bool] = {n: True for n in skip}
    t0 = time.perf_counter()
    for s in steps:
        if all(done.get(n) for n in s.needs):
            print(f"[{time.perf_counter() - t0:6.0f} s] {s.name} ...", flush=True)
            run_step(s, defi, a.device, env)
        done[s.name] = s.rc == 0
    print(table(steps, a.device))
    print(f"total {time.perf_counter() - t0:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps([{k: v for k, v in vars(s).items()} for s in steps], indent=2))
    return 0 if all(s.rc == 0 for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
