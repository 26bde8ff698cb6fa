"""``bench/defi_ablation.py --smoke`` end to end: Meta-World data curated into a corpus, GIDM and
GFDM pretrained with the CLI, the five policy variants trained and evaluated with ``defi eval``;
the table has every variant with a Wilson interval per cell and the bootstrap interval of defi
minus scratch; the HTML draws a bar with whiskers per variant; re-running skips finished cells."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import defi.training.sim  # noqa: F401  (sets MUJOCO_GL before mujoco is first imported)

pytest.importorskip("metaworld")

BENCH = Path(__file__).resolve().parents[2] / "bench" / "defi_ablation.py"


def load_bench():
    sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("defi_ablation", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bootstrap_is_paired_and_covers_the_difference():
    mod = load_bench()
    rng = np.random.default_rng(0)
    y = (rng.random((3, 2, 50)) < 0.3).astype(float)
    x = np.maximum(y, (rng.random((3, 2, 50)) < 0.4).astype(float))  # x succeeds wherever y does, and more
    d, lo, hi = mod.bootstrap_diff(x, y, reps=500)
    assert d == pytest.approx(x.mean() - y.mean())
    assert 0 < lo < d < hi
    d0, lo0, hi0 = mod.bootstrap_diff(y, y, reps=200)  # paired: identical outcomes give exactly 0
    assert d0 == lo0 == hi0 == 0


def test_corpus_arguments_are_the_ones_make_corpus_reads():
    mod = load_bench()
    a = mod.parse(["--smoke", "--work", "unused"])
    from gidm_quality import train_sets

    ns = mod.corpus_args(a)
    assert train_sets(ns) == [("train_ds", ns.train_tasks, a.episodes, True, a.seed)]  # one camera: corner


@pytest.mark.slow  # builds a GIDM and a GFDM twice
def test_scratch_and_bc_cells_are_reused_only_when_the_model_shapes_match(tmp_path):
    mod = load_bench()
    a = mod.parse(["--smoke", "--settings", "A,B", "--work", str(tmp_path)])
    from defi.training.checkpoint import save_checkpoint
    from defi.training.gfdm.modeling_gfdm import GFDM
    from defi.training.gfdm import gfdm_tiny
    from defi.training.gidm.modeling_gidm import GIDM
    from defi.training.gidm import gidm_tiny

    def save(setting, gidm_dim):
        base = tmp_path / f"pretrain-{setting}"
        g, f = gidm_tiny(image_size=32, model_dim=gidm_dim), gfdm_tiny(image_size=32)
        save_checkpoint(base / "gidm" / "checkpoints" / "step-00000002", GIDM(g), g, step=2)
        save_checkpoint(base / "gfdm" / "checkpoints" / "step-00000002", GFDM(f, load_pretrained=False), f, step=2)

    save("A", 32)
    save("B", 32)
    cell = {"setting": "A", "variant": "scratch", "seed": 0, "per_task": {}, "episodes": []}
    (tmp_path / "cells" / "A").mkdir(parents=True)
    for v in ("scratch", "defi", "bc"):
        (tmp_path / "cells" / "A" / f"{v}-s0.json").write_text(json.dumps(cell | {"variant": v}))
    assert not mod.reuse_cell(tmp_path, a, "B", "defi", 0)  # loads pretrained weights: always run
    assert not mod.reuse_cell(tmp_path, a, "B", "scratch", 1)  # no cell of that seed in A
    assert not mod.reuse_cell(tmp_path, a, "A", "scratch", 0)  # the first setting runs its own
    assert mod.reuse_cell(tmp_path, a, "B", "scratch", 0)
    got = json.loads((tmp_path / "cells" / "B" / "scratch-s0.json").read_text())
    assert got == cell | {"setting": "B", "reused_from": "A"}
    # another model shape in B: scratch there is another network, so it runs
    save("B", 64)
    assert not mod.reuse_cell(tmp_path, a, "B", "bc", 0)
    assert not (tmp_path / "cells" / "B" / "bc-s0.json").exists()


@pytest.mark.slow  # ~4 min on the loaded 2-core box (data, 2 pretraining runs, 5 cells)
def test_smoke_run_end_to_end_and_resume(tmp_path, capsys):
    mod = load_bench()
    work = tmp_path / "abl"
    res = mod.main(["--smoke", "--work", str(work)])
    out = capsys.readouterr().out
    assert "smoke configuration, not the full run" in out and "[cell 5/5]" in out
    assert res["status"].startswith("complete") and res["cells_done"] == res["cells_expected"] == 5
    t = res["settings"]["A"]
    assert list(t["rows"]) == list(mod.VARIANTS)
    for row in t["rows"].values():
        for col in ("drawer-close-v3", "all"):
            c = row[col]
            lo, hi = c["wilson95"]
            assert c["episodes"] == 2 and 0 <= c["successes"] <= 2
            assert 0 <= lo <= c["mean"] <= hi <= 1
        rel = row["reliance"]  # the policy's demo MSE with its image, another sample's, a blank one
        assert all(np.isfinite(rel[k]) and rel[k] >= 0 for k in ("true", "other_same_task", "blank"))
    d = t["defi_minus_scratch"]
    assert d["bootstrap95"][0] <= d["diff"] <= d["bootstrap95"][1] and d["seeds"] == [0]
    saved = json.loads((work / "results.json").read_text())
    assert set(saved["settings"]["A"]["rows"]) == set(mod.VARIANTS)
    html = (work / "report.html").read_text()
    for v in mod.VARIANTS:
        assert f'data-variant="{v}" data-task="all"' in html
    assert html.count('class="whisker"') == 2 * len(mod.VARIANTS)
    for v in mod.VARIANTS:  # each cell trained a policy and evaluated it with the same env seed
        ev = json.loads((work / "cells" / "A" / f"{v}-s0" / "eval" / "results.json").read_text())
        assert ev["config"]["seed"] == mod.EVAL_SEED and ev["config"]["tasks"] == ["drawer-close-v3"]
    # resume: nothing re-runs, the cell files stay as they were
    stamps = {p: p.stat().st_mtime_ns for p in (work / "cells" / "A").glob("*.json")}
    res2 = mod.main(["--smoke", "--work", str(work), "--threads", "1"])
    out = capsys.readouterr().out
    assert out.count("done, skipped") == 5 and "[run] defi" not in out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert res2["settings"]["A"]["rows"] == t["rows"]
    # a follow-up variant runs after the main cells, beside them, against its own baseline
    res3 = mod.main(["--smoke", "--work", str(work), "--followups", "defi-gidm-frozen"])
    out = capsys.readouterr().out
    assert out.count("done, skipped") == 5 and "[follow-up 1/1] setting A defi-gidm-frozen seed 0" in out
    assert res3["cells_done"] == 5 and res3["status"].startswith("complete")
    t3 = res3["settings"]["A"]
    assert list(t3["rows"]) == [*mod.VARIANTS, "defi-gidm-frozen"] and t3["rows"]["defi"] == t["rows"]["defi"]
    f = t3["defi-gidm-frozen_minus_scratch"]
    assert f["baseline"] == "scratch" and f["bootstrap95"][0] <= f["diff"] <= f["bootstrap95"][1]
    assert "defi-gidm-frozen - scratch" in out and "(follow-up)" in out
    cfg = json.loads((work / "cells" / "A" / "defi-gidm-frozen-s0" / "run" / "run_config.json").read_text())
    assert cfg["policy"]["init"] == "defi" and cfg["policy"]["gidm_lr_scale"] == 0.0
    # a different configuration in the same folder is refused
    with pytest.raises(SystemExit, match="another configuration"):
        mod.main(["--quick", "--work", str(work)])
