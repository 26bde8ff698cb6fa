"""The run config: defaults <- file <- flags, every bad entry reported at once, nothing dropped."""

import argparse
import subprocess
import sys

import pytest
import yaml

from defi.pipelines.config import ConfigError, add_flags, from_dict, resolve, to_dict
from defi.pipelines.curate_config import CurateConfig


def _args(argv):
    p = argparse.ArgumentParser()
    add_flags(p, CurateConfig)
    return p.parse_args(argv)


def test_file_then_flags_override(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        yaml.safe_dump({"encode": {"fps": 5, "crf": 30}, "motion": {"min_frame_diff": 0.3}, "clip": {"prompts": ["a hand", "a robot"]}})
    )
    cfg = resolve(CurateConfig, str(f), _args(["--encode.fps", "12", "--windows.max_clip_s", "none", "--use-clip", "true"]))
    assert cfg.encode.fps == 12.0 and cfg.encode.crf == 30  # flag wins, file kept where no flag
    assert cfg.motion.min_frame_diff == 0.3 and cfg.windows.max_clip_s is None and cfg.use_clip is True
    assert cfg.clip.prompts == ["a hand", "a robot"]
    assert cfg.shots.detector == CurateConfig().shots.detector  # untouched default
    # the resolved config round-trips through its dict form
    assert to_dict(from_dict(CurateConfig, to_dict(cfg))) == to_dict(cfg)


def test_toml_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("use_dedup = false\n[encode]\nshort_side = 96\n")
    cfg = resolve(CurateConfig, str(f), None)
    assert cfg.use_dedup is False and cfg.encode.short_side == 96


def test_every_bad_entry_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        from_dict(CurateConfig, {"encode": {"fsp": 3, "crf": "high"}, "motoin": {}, "use_clip": "maybe"})
    msg = str(e.value)
    assert "unknown key 'encode.fsp'" in msg and "fps" in msg  # lists the valid keys
    assert "encode.crf" in msg and "unknown key 'motoin'" in msg and "use_clip" in msg


def test_operator_validation_names_the_section():
    with pytest.raises(ConfigError, match="encode.*crf must be in"):
        from_dict(CurateConfig, {"encode": {"crf": 99}})


def test_cli_dry_run_and_bad_flag():
    run = lambda *a: subprocess.run([sys.executable, "-m", "defi.pipelines.cli", "curate", *a], capture_output=True, text=True)
    p = run("--dry-run", "--encode.fps", "7", "--motion.min_frame_diff", "0.25")
    assert p.returncode == 0, p.stderr
    d = yaml.safe_load(p.stdout)
    assert d["encode"]["fps"] == 7.0 and d["motion"]["min_frame_diff"] == 0.25
    p = run("--dry-run", "--encode.fps", "fast")
    assert p.returncode == 2 and "encode.fps" in p.stderr and "Traceback" not in p.stderr
    p = run("x.mp4", "--root", "r", "--config", "/nonexistent.yaml")
    assert p.returncode == 2 and "does not exist" in p.stderr
