import math

import pytest

from defi.schemas.gap import DEFAULT_GAP, Gap


def test_frames_and_seconds_convert_per_clip_rate():
    assert Gap.of_frames(10).frames(5.0) == 10 and Gap.of_frames(10).frames(60.0) == 10
    half = Gap.of_seconds(0.5)
    assert [half.frames(f) for f in (20.0, 10.0, 3.0, 1.0)] == [10, 5, 2, 1]  # round, at least 1
    assert DEFAULT_GAP.frames(10.0) == 10 and DEFAULT_GAP.unit == "seconds"


def test_stored_form_round_trips_and_reads_old_checkpoints():
    for g in (Gap.of_frames(3), Gap.of_seconds(0.25)):
        assert Gap.from_dict(g.to_dict()) == g
    # the dict older checkpoints hold (run config's data section, extra["data"])
    assert Gap.from_dict({"gap_s": None, "gap_frames": 2, "size": 32}) == Gap.of_frames(2)
    assert Gap.from_dict({"gap_s": 0.2}) == Gap.of_seconds(0.2)
    assert Gap.from_dict({}) is None and Gap.from_dict(None, default=Gap.of_frames(1)) == Gap.of_frames(1)
    assert Gap.from_fields(gap_frames=4, default=DEFAULT_GAP) == Gap.of_frames(4)
    assert Gap.from_fields(default=DEFAULT_GAP) == DEFAULT_GAP
    with pytest.raises(ValueError, match="not both"):  # one rule everywhere: both is an error
        Gap.from_fields(gap_s=1.0, gap_frames=4)
    assert Gap.of_frames(4).suffix() == "k4" and Gap.of_seconds(0.5).suffix() == "g0.5s"


@pytest.mark.parametrize(
    "value, unit, words",
    [
        (0, "frames", ">= 1"),
        (-2, "frames", ">= 1"),
        (2.5, "frames", "whole number"),
        (0.0, "seconds", "> 0"),
        (-1.0, "seconds", "> 0"),
        (math.nan, "seconds", "finite"),
        (math.inf, "seconds", "finite"),
        ("3", "frames", "not a number"),
        (1, "hours", "unknown"),
    ],
)
def test_bad_values_named(value, unit, words):
    with pytest.raises(ValueError, match=words):
        Gap(value, unit)


def test_seconds_need_a_frame_rate():
    with pytest.raises(ValueError, match="fps"):
        Gap.of_seconds(1.0).frames(0.0)
