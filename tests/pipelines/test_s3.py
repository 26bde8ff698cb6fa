"""`defi curate s3://bucket/raw/ --root s3://bucket/corpus` end to end against a real
S3-compatible server (moto's, on loopback): inputs read through fsspec, parts, shards and run
records written to the bucket, `defi query` over the S3 root, shards read back with webdataset
(`pipe:`) and with the training ShardReader, and a re-run that skips everything and removes what
a killed run left behind (the parts of a unit its pending marker names), while a part that no
sources part and no marker explain stops the run and stays where it is.

The endpoint reaches every process (the CLI, its Ray workers, webdataset's pipe) through
``AWS_ENDPOINT_URL``, which botocore (hence s3fs) honours; nothing in defi knows about moto.
"""

import hashlib
import io
import json
import logging
import os
import shlex
import socket
import subprocess
import sys

import av
import numpy as np
import pytest
import webdataset as wds
from factories import pan, scenes, write_video

from defi.schemas.corpus import Corpus

pytestmark = pytest.mark.slow

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")
pytest.importorskip("s3fs")

BUCKET = "defi-test"
ROOT = f"s3://{BUCKET}/corpus"
# name -> (frames, shots)
VIDEOS = {
    "a_two_shots.mp4": (lambda: scenes([30, 36], h=64, w=80, seed=1), 2),
    "b_pan.mp4": (lambda: pan(40, h=64, w=96, seed=2), 1),
    "c_three_shots.mp4": (lambda: scenes([24, 30, 24], h=64, w=96, seed=3), 3),
}
BAD = {"junk.mp4": "unreadable_container"}
CFG = {
    "windows": {"clip_len_s": 10, "stride_s": 10, "max_clip_s": None, "min_clip_s": 0.5},
    "shots": {"min_shot_s": 0.5},
    "encode": {"fps": 8, "short_side": 48},
    "motion": {"min_frame_diff": 0.2},
    "shards": {"videos_per_unit": 2},
    "ray": {"num_cpus": 2},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keys(client, prefix: str) -> dict[str, int]:
    """Object key -> size, listed by boto3 (independently of fsspec and its caches)."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out


@pytest.fixture(scope="module")
def s3():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # this process reads the corpus too, and webdataset's pipe inherits it
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def _curate(tmp_path) -> tuple[subprocess.CompletedProcess, dict]:
    r = _curate_cli(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    url = r.stdout.split("run record: ")[1].strip()
    assert url.startswith(ROOT + "/runs/")
    return r, Corpus.open(ROOT).read_json(url[len(ROOT) + 1 :])


def _curate_cli(tmp_path) -> subprocess.CompletedProcess:
    (tmp_path / "cfg.json").write_text(json.dumps(CFG))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "defi.pipelines.cli",
            "curate",
            f"s3://{BUCKET}/raw/",
            "--root",
            ROOT,
            "--config",
            str(tmp_path / "cfg.json"),
            "--no-progress",
        ],
        cwd=tmp_path,
        env=dict(os.environ, RAY_AUTH_MODE="disabled"),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def curated(s3, tmp_path_factory):
    local = tmp_path_factory.mktemp("inputs")
    for name, (frames, _) in VIDEOS.items():
        write_video(local / name, frames(), fps=24)
        s3.upload_file(str(local / name), BUCKET, f"raw/{name}")
    s3.put_object(Bucket=BUCKET, Key="raw/junk.mp4", Body=b"not a video\n" * 100)
    s3.put_object(Bucket=BUCKET, Key="raw/notes.txt", Body=b"not listed: not a video extension")
    work = tmp_path_factory.mktemp("work")
    r, rec = _curate(work)
    return s3, work, r, rec


def test_sources_are_read_from_s3(curated):
    s3, work, r, rec = curated
    assert rec["status"] == "done" and rec["root"] == ROOT
    assert rec["counts"]["videos"] == len(VIDEOS) + len(BAD) and rec["source_errors"] == {"unreadable_container": 1}
    rows = {row["uri"]: row for row in Corpus.open(ROOT).query("SELECT uri, error, width, height, num_frames FROM sources").to_pylist()}
    assert set(rows) == {f"s3://{BUCKET}/raw/{n}" for n in [*VIDEOS, *BAD]}
    a = rows[f"s3://{BUCKET}/raw/a_two_shots.mp4"]
    assert (a["error"], a["width"], a["height"], a["num_frames"]) == (None, 80, 64, 66)
    assert rows[f"s3://{BUCKET}/raw/junk.mp4"]["error"] == "unreadable_container"


def test_everything_is_written_to_the_bucket(curated):
    s3, work, r, rec = curated
    keys = _keys(s3, "corpus/")
    assert "corpus/corpus.json" in keys and f"corpus/runs/{rec['run_id']}.json" in keys
    # 4 videos, 2 per unit: two units, each with its sources, clips and shards parts
    for table in ("sources", "clips", "shards"):
        assert len([k for k in keys if k.startswith(f"corpus/{table}/part-")]) == 2, (table, sorted(keys))
    tars = [k for k in keys if k.endswith(".tar")]
    assert len(tars) == rec["counts"]["shards"] >= 1
    # nothing landed on local disk instead (a root misread as a relative path would)
    assert sorted(os.listdir(work)) == ["cfg.json"]


def test_query_over_the_s3_root(curated):
    s3, work, r, rec = curated
    c = Corpus.open(ROOT)
    assert not c.is_local
    got = {os.path.basename(x["uri"]): x["n"] for x in c.query("SELECT uri, count(*) AS n FROM clips GROUP BY 1").to_pylist()}
    assert got == {name: shots for name, (_, shots) in VIDEOS.items()}
    cuts = c.query("SELECT start_frame, end_frame FROM clips WHERE uri LIKE '%c_three_shots.mp4' ORDER BY 1").to_pylist()
    assert [(x["start_frame"], x["end_frame"]) for x in cuts] == [(0, 24), (24, 54), (54, 78)]
    # the CLI (a fresh process, its own S3 client) agrees with the run record
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "defi.pipelines.cli",
            "query",
            "SELECT count(*) FILTER (WHERE kept) AS kept, count(*) AS clips FROM clips",
            "--root",
            ROOT,
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == {"kept": rec["counts"]["kept"], "clips": rec["counts"]["clips"]} and rec["counts"]["kept"] > 0
    info = json.loads(
        subprocess.run(
            [sys.executable, "-m", "defi.pipelines.cli", "info", ROOT, "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert (info["videos"], info["videos_ok"], info["video_errors"]) == (len(VIDEOS) + len(BAD), len(VIDEOS), {"unreadable_container": 1})
    assert (info["clips_kept"], info["shards"]) == (rec["counts"]["kept"], rec["counts"]["shards"])
    assert info["shard_bytes"] == sum(_keys(s3, "corpus/shards/shard-").values())


def test_shards_read_back_from_s3(curated):
    s3, work, r, rec = curated
    c = Corpus.open(ROOT)
    kept = {x["key"]: x for x in c.query("SELECT key, shard, out_frames, out_width, out_height FROM clips WHERE kept").to_pylist()}
    shards = c.query("SELECT shard, num_samples, size_bytes, sha256 FROM shards").to_pylist()
    seen = {}
    for s in shards:
        url = c.shard_url(s["shard"])
        assert url == f"{ROOT}/shards/{s['shard']}"
        body = s3.get_object(Bucket=BUCKET, Key=f"corpus/shards/{s['shard']}")["Body"].read()
        assert (len(body), hashlib.sha256(body).hexdigest()) == (s["size_bytes"], s["sha256"])
        # webdataset has no s3 opener of its own: stream the object through fsspec in a pipe
        cat = f"{shlex.quote(sys.executable)} -c 'import fsspec, shutil, sys; shutil.copyfileobj(fsspec.open(sys.argv[1]).open(), sys.stdout.buffer)' {shlex.quote(url)}"
        n = 0
        for sample in wds.WebDataset(f"pipe:{cat}", shardshuffle=False):
            meta = json.loads(sample["json"])
            with av.open(io.BytesIO(sample["mp4"])) as f:
                frames = np.stack([fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)])
            seen[sample["__key__"]] = (s["shard"], frames.shape)
            assert meta["num_frames"] == len(frames) and frames.std() > 1  # real pictures, not blank
            n += 1
        assert n == s["num_samples"]
    assert set(seen) == set(kept)
    for key, (shard, shape) in seen.items():
        k = kept[key]
        assert shard == k["shard"] and shape == (k["out_frames"], k["out_height"], k["out_width"], 3)
    # the training reader opens the same URLs through fsspec (seekable range reads)
    from defi.schemas.shards import ShardReader

    reader = ShardReader([c.shard_url(s["shard"]) for s in shards])
    assert sorted(x.key for x in reader) == sorted(kept) and not any(k.startswith("error:") for k in reader.stats)


def test_rerun_skips_everything_and_cleans_leftovers(curated):
    s3, work, r, rec = curated
    before = _keys(s3, "corpus/")
    # a part no sources part and no pending marker explain: the corpus was changed outside defi;
    # the rerun stops with one line and deletes nothing (on a bucket as on a disk)
    stray = "corpus/clips/part-u0000000000000bad.parquet"
    s3.put_object(Bucket=BUCKET, Key=stray, Body=b"PAR1 of unknown origin")
    refused = _curate_cli(work)
    assert refused.returncode == 2 and f"{BUCKET}/{stray}" in refused.stderr, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr
    assert {k: v for k, v in _keys(s3, "corpus/").items() if "/runs/" not in k} == {
        **{k: v for k, v in before.items() if "/runs/" not in k},
        stray: len(b"PAR1 of unknown origin"),
    }
    s3.delete_object(Bucket=BUCKET, Key=stray)
    for k in set(_keys(s3, "corpus/runs/")) - set(before):  # the refused run's record, if it wrote one
        s3.delete_object(Bucket=BUCKET, Key=k)
    # what a killed run leaves: the pending marker of the unit it was committing, that unit's
    # clips part (no sources part yet), a shard with no row, a temp file
    unit = "u00000000deadbeef"
    s3.put_object(Bucket=BUCKET, Key=f"corpus/pending/{unit}.json", Body=json.dumps({"unit": unit, "run_id": "killed"}).encode())
    s3.put_object(Bucket=BUCKET, Key=f"corpus/clips/part-{unit}.parquet", Body=b"PAR1 half written")
    s3.put_object(Bucket=BUCKET, Key="corpus/shards/shard-000099.tar", Body=b"\0" * 1024)
    s3.put_object(Bucket=BUCKET, Key="corpus/shards/.tmp-0123-shard-000100.tar", Body=b"\0" * 10)
    r2, rec2 = _curate(work)
    assert rec2["status"] == "done" and rec2["counts"]["skipped_done"] == len(VIDEOS) + len(BAD)
    assert rec2["counts"].get("videos", 0) == 0
    assert {k: rec2["cleaned"][k] for k in ("parts", "shards")} == {"parts": 1, "shards": 2}
    after = _keys(s3, "corpus/")
    assert after == {**before, f"corpus/runs/{rec2['run_id']}.json": after[f"corpus/runs/{rec2['run_id']}.json"]}
    c = Corpus.open(ROOT)
    assert c.query("SELECT count(*) - count(DISTINCT key) AS dups FROM clips").to_pylist() == [{"dups": 0}]
