"""DataContract: the typed record a training run saves with its checkpoints, and the layouts
checkpoints written before it hold."""

from __future__ import annotations

import pytest

from defi.schemas.contract import DataContract
from defi.schemas.gap import Gap

# extra["data"] exactly as `defi train gidm|gfdm|policy` wrote it before the record existed
OLD_GIDM = {"gap_s": None, "gap_frames": 2, "size": 32, "image_size": 32}
OLD_GFDM = {
    "gap_s": 0.5,
    "gap_frames": None,
    "size": 64,
    "image_size": 64,
    "context_frames": 1,
    "future_frames": 1,
    "text": {"name": "tiny", "pretrained": "", "width": 16},
    "text_model_id": "tiny-16",
}
OLD_POLICY = {
    "image_size": 64,
    "context_frames": 2,
    "horizon": 8,
    "frame_stride": 2,
    "action_mean": [0.0, 0.1, 0.2, 0.3],
    "action_std": [1.0, 1.0, 0.5, 0.001],
}


def test_old_layouts_read_unchanged_and_round_trip():
    gidm = DataContract.from_dict(OLD_GIDM)
    assert gidm == DataContract(image_size=32, gap=Gap.of_frames(2))
    gfdm = DataContract.from_dict(OLD_GFDM)
    assert gfdm.gap == Gap.of_seconds(0.5) and gfdm.text["width"] == 16 and gfdm.future_frames == 1
    policy = DataContract.from_dict(OLD_POLICY)
    assert policy.gap is None and policy.frame_stride == 2 and policy.action_std == (1.0, 1.0, 0.5, 0.001)
    for c in (gidm, gfdm, policy):
        d = c.to_dict()
        assert d["version"] == 1 and "size" not in d  # one image size, the model's
        assert DataContract.from_dict(d) == c


@pytest.mark.parametrize(
    "data, words",
    [
        ({"version": 2, "image_size": 32}, "version 2: this code reads version 1"),
        ({**OLD_GIDM, "gap_s": 1.0}, "not both"),
        ({**OLD_GIDM, "size": 48}, "size=48 disagrees with image_size=32"),
        ({**OLD_GIDM, "fps": 10}, "unknown key(s) ['fps']"),
        ({**OLD_POLICY, "action_std": [1.0]}, "action_mean has 4 dimensions, action_std 1"),
        ({"image_size": 4, "horizon": 0}, "image_size=4"),
    ],
)
def test_bad_records_are_refused_in_one_line(data, words):
    with pytest.raises(ValueError) as e:
        DataContract.from_dict(data)
    assert words in str(e.value) and "\n" not in str(e.value)
