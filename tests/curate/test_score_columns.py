"""One list of score columns (schemas.tables.SCORE_COLUMNS): every scorer declares the columns it
fills and returns them; together the scorers fill every column; the record stores a declared
score in its column and any other in extra_scores; the report plots the frame scores."""

import numpy as np
from factories import pan

from defi.curate.base import Frames
from defi.curate.clip_score import ClipScorer
from defi.curate.filters import BlackFrames, Blur, CameraMotion, Duration, Motion, Resolution
from defi.pipelines.views.report import SCORES
from defi.schemas.records import ClipRecord
from defi.schemas.tables import CLIPS, FRAME_SCORE_COLUMNS, SCORE_COLUMNS

FRAME_SCORERS = (Duration, Resolution, Motion, CameraMotion, Blur, BlackFrames)


def test_the_scorers_together_declare_every_score_column_once():
    declared = [c for s in (*FRAME_SCORERS, ClipScorer) for c in s.columns]
    assert sorted(declared) == sorted(SCORE_COLUMNS) and len(set(declared)) == len(declared)
    assert all(CLIPS.field(c).type == "float" for c in SCORE_COLUMNS)


def test_each_frame_scorer_returns_its_declared_columns():
    f = np.stack(list(pan(12, 48, 64)))
    frames = Frames(f, np.arange(12) / 12.0, np.arange(12))
    for scorer in FRAME_SCORERS:
        scores, _ = scorer()(frames)
        assert set(scorer.columns) <= set(scores), scorer.name
        assert all(np.isfinite(scores[c]) for c in scorer.columns), scorer.name


def test_the_record_stores_declared_scores_in_columns_and_others_apart():
    r = ClipRecord(key="k", source_id="s", uri="u", shot_index=0, clip_index=0, start_frame=0, end_frame=1, start_s=0.0, end_s=1.0)
    r.set_scores({name: float(i) for i, name in enumerate(SCORE_COLUMNS)} | {"short_side": 64.0})
    assert [getattr(r, name) for name in SCORE_COLUMNS] == [float(i) for i in range(len(SCORE_COLUMNS))]
    assert r.extra_scores == {"short_side": 64.0}
    assert [c for c, _ in SCORES if c in FRAME_SCORE_COLUMNS] == [c for c in FRAME_SCORE_COLUMNS if c != "motion_p90"]


def test_a_new_score_column_reaches_the_row_without_a_record_field(monkeypatch):
    """Adding a scorer is its class, its config field and its column in ``FRAME_SCORE_COLUMNS``:
    the record needs no field of its own (``asdict`` would drop an undeclared attribute)."""
    import defi.schemas.records as records

    monkeypatch.setattr(records, "SCORE_COLUMNS", {**SCORE_COLUMNS, "sharpness_new": "a new score"})
    r = ClipRecord(key="k", source_id="s", uri="u", shot_index=0, clip_index=0, start_frame=0, end_frame=1, start_s=0.0, end_s=1.0)
    r.set_scores({"sharpness_new": 0.25, "blur": 3.0})
    row = r.to_row()
    assert row["sharpness_new"] == 0.25 and row["blur"] == 3.0 and r.extra_scores == {}
    empty = ClipRecord(key="k", source_id="s", uri="u", shot_index=0, clip_index=0, start_frame=0, end_frame=1, start_s=0.0, end_s=1.0)
    assert empty.to_row()["sharpness_new"] is None
