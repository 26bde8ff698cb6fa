"""`defi curate --address` against a real two-node Ray cluster on loopback: a head and a second
node started with `ray start`, each with one CPU, and the run record shows both processed videos.
Part of the input sits on an S3-compatible server (moto's) whose endpoint only the driver's
environment names: the workers must get it from the driver (``ray_adapter.storage_env``).

The nodes are started with ``ray start --block`` in their own process groups and stopped by
killing those groups: ``ray stop`` would kill every Ray process on the machine, including runs
that are not ours.
"""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from factories import pan, scenes, write_video

from defi.pipelines.ray_adapter import storage_env
from defi.schemas.corpus import Corpus

# Ray's CLI through this interpreter: no dependence on a `ray` script beside it on PATH
RAY = [sys.executable, "-m", "ray.scripts.scripts"]
ENV = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
CFG = {
    "windows": {"clip_len_s": 10, "stride_s": 10, "max_clip_s": None, "min_clip_s": 0.5},
    "shots": {"min_shot_s": 0.5},
    "encode": {"fps": 8, "short_side": 48},
    "motion": {"min_frame_diff": 0.2},
    "shards": {"videos_per_unit": 2},
}
N_LOCAL, N_S3 = 4, 2
N_VIDEOS = N_LOCAL + N_S3
BUCKET = "defi-cluster"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive_nodes(address: str) -> int:
    r = subprocess.run([*RAY, "status", f"--address={address}"], env=ENV, capture_output=True, text=True)
    return r.stdout.count(" node_") if r.returncode == 0 else 0


def _start_node(args: list[str], temp_dir: str) -> subprocess.Popen:
    # each node gets its own temp dir (sockets, logs) and its own fixed ports, so two nodes on
    # one machine do not collide with each other or with other Ray instances on it
    ports = [
        f"--node-manager-port={_free_port()}",
        f"--object-manager-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
    ]
    cmd = [
        *RAY,
        "start",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        *ports,
        *args,
    ]
    env = dict(ENV, **CREDENTIALS)
    for k in [k for k in env if k.startswith("AWS_ENDPOINT_URL") or k in ("AWS_REGION", "AWS_DEFAULT_REGION")]:
        del env[k]
    with open(os.path.join(temp_dir, "ray-start.log"), "w") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(p: subprocess.Popen) -> None:
    """Kill one node: its `ray start --block` and every process it started (same process group;
    workers have their own groups and exit when their raylet dies)."""
    try:  # the group outlives its leader: kill it even if `ray start` itself has exited
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait(timeout=30)


def _wait(cond, timeout: float, what: str, procs=()) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        dead = [p for p in procs if p.poll() is not None]
        assert not dead, f"ray start exited with {dead[0].returncode} while waiting for {what}"
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def cluster():
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # unix socket paths must stay short (~107 bytes): temp dirs directly under /tmp
    dirs = [tempfile.mkdtemp(prefix="defi-rh-", dir="/tmp"), tempfile.mkdtemp(prefix="defi-rw-", dir="/tmp")]
    procs = []
    try:
        procs.append(
            _start_node(
                [
                    "--head",
                    f"--port={port}",
                    "--include-dashboard=false",
                    f"--ray-client-server-port={_free_port()}",
                    f"--dashboard-port={_free_port()}",
                ],
                dirs[0],
            )
        )
        _wait(lambda: _alive_nodes(address) >= 1, 60, "the head node", procs)
        procs.append(_start_node([f"--address={address}"], dirs[1]))
        _wait(lambda: _alive_nodes(address) >= 2, 60, "the second node", procs)
        yield address
    finally:
        for p in reversed(procs):
            _stop(p)
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def s3_endpoint():
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
        ).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


def test_storage_env_forwards_endpoints_not_secrets():
    env = {
        "AWS_ENDPOINT_URL": "http://a",
        "AWS_ENDPOINT_URL_S3": "http://b",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "FSSPEC_S3_ENDPOINT_URL": "http://c",
        "FSSPEC_S3_SECRET": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SESSION_TOKEN": "x",
        "HOME": "/root",
    }
    assert storage_env(env) == {
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://a",
        "AWS_ENDPOINT_URL_S3": "http://b",
        "FSSPEC_S3_ENDPOINT_URL": "http://c",
    }


@pytest.mark.slow
def test_curate_on_two_nodes_uses_both(cluster, s3_endpoint, tmp_path):
    import boto3

    inputs = tmp_path / "in"
    inputs.mkdir()
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    for i in range(N_VIDEOS):
        frames = scenes([30, 30], h=64, w=80, seed=i) if i % 2 else pan(40, h=64, w=96, seed=i)
        write_video(inputs / f"v{i}.mp4", frames, fps=24)
        if i >= N_LOCAL:  # these live on S3 only
            s3.upload_file(str(inputs / f"v{i}.mp4"), BUCKET, f"raw/v{i}.mp4")
            os.unlink(inputs / f"v{i}.mp4")
    (tmp_path / "cfg.json").write_text(json.dumps(CFG))
    root = str(tmp_path / "corpus")
    # the endpoint and region are in the driver's environment only
    env = dict(ENV, **CREDENTIALS, AWS_ENDPOINT_URL=s3_endpoint, AWS_DEFAULT_REGION="us-east-1")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "defi.pipelines.cli",
            "curate",
            str(inputs),
            f"s3://{BUCKET}/raw/",
            "--root",
            root,
            "--address",
            cluster,
            "--config",
            str(tmp_path / "cfg.json"),
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "nodes    2:" in r.stdout, r.stdout
    run_id = r.stdout.split("run record: ")[1].strip().rsplit("/", 1)[-1][: -len(".json")]
    rec = json.loads(open(os.path.join(root, "runs", f"{run_id}.json")).read())
    assert rec["status"] == "done" and rec["ray"]["address"] == cluster and rec["ray"]["nodes"] == 2
    assert rec["ray"]["cpus"] == 2
    # both nodes processed videos, and together every video exactly once
    assert len(rec["nodes"]) == 2 and min(rec["nodes"].values()) >= 1, rec["nodes"]
    assert sum(rec["nodes"].values()) == N_VIDEOS
    c = Corpus.open(root)
    errors = c.query("SELECT uri, error, error_detail FROM sources WHERE error IS NOT NULL").to_pylist()
    assert errors == [], errors  # the S3 videos were read by workers that only know the endpoint from the driver
    assert c.query("SELECT count(*) AS n FROM sources WHERE uri LIKE 's3://%'").to_pylist() == [{"n": N_S3}]
    # odd videos have two shots, even ones one: one clip per shot
    assert c.query("SELECT count(*) AS n FROM clips").to_pylist() == [{"n": N_VIDEOS // 2 * 3}]
    kept = c.query("SELECT count(*) AS n FROM clips WHERE kept").to_pylist()[0]["n"]
    assert kept > 0 and c.query("SELECT sum(num_samples) AS n FROM shards").to_pylist() == [{"n": kept}]
