"""Source URIs are canonical: one spelling per video whether a folder was walked, the file was
named (relative, ./, //, ..), or a manifest listed it, from any current folder."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from factories import moving_square, write_video

from defi.pipelines.sources import SourceError, canonical_uri, list_sources

DEFI = str(Path(sys.executable).with_name("defi"))


def test_same_video_one_uri_from_any_spelling(tmp_path, monkeypatch):
    (tmp_path / "in1" / "sub").mkdir(parents=True)
    write_video(tmp_path / "in1" / "good.mp4", moving_square(4), fps=8)
    write_video(tmp_path / "in1" / "sub" / "b.mp4", moving_square(4), fps=8)
    (tmp_path / "m.csv").write_text("uri\nin1/good.mp4\n")
    want = str(tmp_path / "in1" / "good.mp4")
    monkeypatch.chdir(tmp_path)
    spellings = [
        ["in1"],
        ["in1/good.mp4"],
        ["./in1//good.mp4"],
        ["in1/sub/../good.mp4"],
        [want],
        [f"file://{want}"],
        ["in1/*.mp4"],
        ["m.csv"],
        ["in1", "in1/good.mp4", "m.csv"],
    ]
    for inputs in spellings:
        uris = [s.uri for s in list_sources(inputs)]
        assert want in uris and all(os.path.isabs(u) for u in uris), (inputs, uris)
        assert len(uris) == len(set(uris)), (inputs, uris)  # no video twice
    walked = [s.uri for s in list_sources(["in1"])]
    assert walked == [want, str(tmp_path / "in1" / "sub" / "b.mp4")]
    # another current folder, the same uris
    monkeypatch.chdir(tmp_path / "in1" / "sub")
    assert [s.uri for s in list_sources(["..", "../good.mp4"])] == walked


def test_urls_are_normalised():
    assert canonical_uri("HTTPS://Example.COM/a//b/../c.mp4?x=1") == "https://example.com/a/c.mp4?x=1"
    assert canonical_uri("s3://bucket/raw//x/./v.mp4") == "s3://bucket/raw/x/v.mp4"
    assert canonical_uri("s3://bucket/raw/") == "s3://bucket/raw/"


def test_refused_inputs_create_nothing(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        list_sources([str(tmp_path / "no_such_folder")])
    with pytest.raises(SourceError, match="empty"):
        list_sources([""])
    r = subprocess.run([DEFI, "curate", str(tmp_path / "no_such_folder"), "--root", str(tmp_path / "c")], capture_output=True, text=True)
    assert r.returncode == 2 and "does not exist" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()
