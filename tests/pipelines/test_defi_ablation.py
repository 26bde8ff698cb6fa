"""``bench/defi_ablation.py`` (issue 37's study): the target-task rule, the plan's order, the
bootstrap over pretraining seeds, finetuning seeds and episodes; and (slow) the ``--smoke``
configuration end to end: Meta-World data curated into a corpus, defi and entangled pretraining
with the CLI, the cells trained with ``defi train policy`` and evaluated with ``defi eval``, the
table with intervals, the curve with its probe, and a re-run that skips everything."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import defi.training.sim  # noqa: F401  (sets MUJOCO_GL before mujoco is first imported)
from defi.training.sim import HELD_OUT_TASKS, PRETRAIN_TASKS

pytest.importorskip("metaworld")

BENCH = Path(__file__).resolve().parents[2] / "bench" / "defi_ablation.py"


def load_bench():
    sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("defi_ablation", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_target_tasks_follow_the_rule():
    mod = load_bench()
    from metaworld.env_dict import MT50_V3

    full = mod.target_tasks(4)
    assert full == mod.target_tasks(4)  # deterministic
    assert len(set(full)) == 4 and set(full) <= set(MT50_V3)
    assert not set(full) & (set(PRETRAIN_TASKS) | set(HELD_OUT_TASKS))
    assert mod.target_tasks(2) == full[:2] and mod.target_tasks(1) == full[:1]  # quick and smoke: the same rule's prefix
    pool = sorted(set(MT50_V3) - set(PRETRAIN_TASKS) - set(HELD_OUT_TASKS))
    assert len(mod.target_tasks(len(pool))) == len(pool) == 37
    for name in ("full", "quick", "smoke"):
        a = mod.parse([] if name == "full" else [f"--{name}", "--work", "unused"])
        assert a.target_tasks == full[: a.targets]


def test_pretraining_sets_nest_and_the_plan_runs_blocks_in_order():
    mod = load_bench()
    a = mod.parse(["--work", "unused"])
    assert [mod.episodes_per_task(a, s) for s in a.curve] == [5, 10, 20, 40]
    sets = mod.corpus_sets(a)
    assert [s[0] for s in sets] == ["pre1", "pre2", "pre3", "pre4", "demos"]
    assert len({s[4] for s in sets}) == len(sets)  # each set its own layouts
    assert "dataset IN ('pre1', 'pre2', 'pre3')" in mod.pretrain_sql(a, "1") and "NOT has_actions" in mod.pretrain_sql(a, "1")
    items = mod.plan(a)
    cells = [it for it in items if it[0] == "cell"]
    assert len(cells) == 9 + 9 + 3 + 3 + 9 and len(items) - len(cells) == 3 + 3 + 3
    assert items[:2] == [("defi-pretrain", "1", 0), ("joint-pretrain", "1", 0)]
    # the block of p0 holds its defi, entangled and scratch cells, then the diffusion-head cells
    # (which read p0's runs), before p1's pretraining
    p1 = items.index(("defi-pretrain", "1", 1))
    assert [it[1] for it in items[2:p1]] == ["defi", "entangled", "scratch"] * 3 + ["defi-diffusion-head"] * 3
    assert items[-1] == ("cell", "defi", "2", 0, 2)
    q = mod.parse(["--quick", "--work", "unused"])
    assert q.policy_steps == a.policy_steps and q.batch_size == a.batch_size and not q.curve and not q.extras


def outcomes(rng, p, f, rate, t=2, n=30):
    return (rng.random((p, f, t, n)) < rate).astype(float)


def test_bootstrap_resamples_pretraining_seeds_and_is_paired():
    mod = load_bench()
    rng = np.random.default_rng(0)
    y = outcomes(rng, 1, 3, 0.3)
    x = np.maximum(y.repeat(3, 0), outcomes(rng, 3, 3, 0.4))  # 3 pretraining seeds, each above y
    d, lo, hi = mod.bootstrap(x, y, reps=500)
    assert d == pytest.approx(x.mean() - y.mean()) and 0 < lo < d < hi
    d0, lo0, hi0 = mod.bootstrap(y, y, reps=200)  # paired (same f, same episodes): identical outcomes give 0
    assert d0 == lo0 == hi0 == 0
    # a pretraining seed that fails everywhere widens the interval: the spread of pretraining counts
    good = np.ones((3, 3, 2, 30))
    _, lo_same, hi_same = mod.bootstrap(good, y, reps=500)
    spread = good.copy()
    spread[2] = 0
    _, lo_spread, hi_spread = mod.bootstrap(spread, y, reps=500)
    assert hi_same - lo_same < 0.2 < hi_spread - lo_spread
    assert lo_spread < 0.1 and lo_same > 0.5  # draws of mostly the failed seed pull the lower end down
    m, mlo, mhi = mod.bootstrap(y, reps=300)  # one variant: the mean with its interval
    assert m == pytest.approx(y.mean()) and mlo < m < mhi
    with pytest.raises(ValueError, match="paired arrays differ"):
        mod.bootstrap(x, outcomes(rng, 1, 2, 0.3))


def cell(variant, p, f, succ, size="1"):
    """A cell as run_cell writes it: one task, len(succ) episodes."""
    eps = [["t", i, bool(s)] for i, s in enumerate(succ)]
    return {
        "variant": variant,
        "size": size,
        "p": p,
        "f": f,
        "per_task": {"t": {"successes": sum(succ), "episodes": len(succ)}},
        "episodes": eps,
    }


def test_statistics_rows_comparisons_curve_and_trend():
    mod = load_bench()
    a = mod.parse(["--work", "unused"])
    a.target_tasks = ["t"]
    hit, miss = [1] * 8 + [0] * 2, [1] * 2 + [0] * 8
    cells = [cell("defi", p, f, hit) for p in (0, 1, 2) for f in (0, 1, 2)]
    cells += [cell("entangled", p, f, hit) for p in (0, 1) for f in (0, 1, 2)]  # p2 not run yet
    cells += [cell("scratch", None, f, miss) for f in (0, 1, 2)]
    cells += [cell("defi", 0, f, miss if size == "0.5" else hit, size) for size in ("0.25", "0.5", "2") for f in (0, 1, 2)]
    r2 = {"latent": 0.5, "pca_obs": 0.2, "obs+latent": 0.6}
    t = mod.statistics(cells, a, {"1": {"disp": r2, "cmd": r2}})
    assert t["rows"]["defi"]["all"]["mean"] == pytest.approx(0.8) and t["rows"]["defi"]["cells"] == 9
    assert t["rows"]["scratch"]["t"]["successes"] == 6 and len(t["rows"]["defi"]["per_seed"]) == 9
    ds = t["comparisons"]["defi - scratch"]
    assert ds["diff"] == pytest.approx(0.6) and ds["bootstrap95"][0] > 0 and ds["verdict"].startswith("positive")
    assert ds["pretrain_seeds"] == [[0, 1, 2], [None]] and ds["finetune_seeds"] == [0, 1, 2]
    de = t["comparisons"]["defi - entangled"]
    assert de["pretrain_seeds"][1] == [0, 1] and de["diff"] == 0 and de["verdict"] == "cannot tell the sign at this size"
    pts = t["curve"]["points"]
    assert [p["episodes_per_task"] for p in pts] == [5, 10, 20, 40] and pts[2]["probe"]["disp"]["latent"] == 0.5
    assert all(p["bootstrap95"][0] <= p["mean"] <= p["bootstrap95"][1] for p in pts)
    assert t["curve"]["trend"].startswith("decreasing at 5 -> 10 episodes/task")
    assert mod.trend(pts[:1]) == "no trend yet: 1 pretraining size finished"  # one point is no curve
    text = mod.table_text(t, ["t"], quick=True)
    assert "defi - entangled: cannot tell the sign at this size" in text and "+0.0 points" not in text
    svg = mod.curve_svg(t["curve"])
    assert svg.count('class="pt"') == 4 and svg.count('class="whisker"') == 4


def test_pretraining_is_needed_while_a_reader_is_not_kept(tmp_path):
    mod = load_bench()
    a = mod.parse(["--smoke", "--work", str(tmp_path)])
    items = mod.plan(a)
    pre = [it for it in items if it[0] != "cell"]
    assert pre == [("defi-pretrain", "1", 0), ("joint-pretrain", "1", 0), ("defi-pretrain", "0.5", 0)]
    assert all(mod.pretraining_needed(tmp_path, a, it, items) for it in pre)
    for it in items:  # every cell kept but scratch's
        if it[0] == "cell" and it[1] != "scratch":
            (tmp_path / "cells").mkdir(exist_ok=True)
            (tmp_path / "cells" / f"{mod.cell_name(*it[1:])}.json").write_text("{}")
    for size in ("1", "0.5"):  # the curve's probes kept
        mod.atomic_json(mod.pretrain_dir(tmp_path, size, 0) / "probe.json", {})
    needed = [it for it in pre if mod.pretraining_needed(tmp_path, a, it, items)]
    assert needed == [("defi-pretrain", "1", 0)]  # scratch takes its shapes from seed 0's defi runs
    (tmp_path / "pretrain" / "x0.5-p0" / "probe.json").unlink()
    assert mod.pretraining_needed(tmp_path, a, ("defi-pretrain", "0.5", 0), items)
    (tmp_path / "cells" / "scratch-s0.json").write_text("{}")
    assert not mod.pretraining_needed(tmp_path, a, ("defi-pretrain", "1", 0), items)


def test_kept_results_are_mirrored_and_restored(tmp_path):
    mod = load_bench()
    work, keep, work2 = tmp_path / "w", tmp_path / "k", tmp_path / "w2"
    mod.atomic_json(work / "config.json", {"a": 1})
    mod.atomic_json(work / "cells" / "defi-x1-p0-s0.json", {"variant": "defi"})
    mod.atomic_json(work / "cells" / "defi-x1-p0-s0" / "reliance.json", {"true": 0.5})
    mod.atomic_json(work / "pretrain" / "x1-p0" / "probe.json", {"disp": {}})
    (work / "pretrain" / "x1-p0" / "gidm").mkdir()
    (work / "pretrain" / "x1-p0" / "gidm" / "model.safetensors").write_bytes(b"x" * 100)  # not kept
    (work / "cells" / "defi-x1-p0-s0" / "eval").mkdir()
    (work / "cells" / "defi-x1-p0-s0" / "eval" / "results.json").write_text("{}")  # not kept
    mod.save_kept(work, keep)
    kept = sorted(str(f.relative_to(keep)) for f in keep.rglob("*") if f.is_file())
    assert kept == ["cells/defi-x1-p0-s0.json", "cells/defi-x1-p0-s0/reliance.json", "config.json", "pretrain/x1-p0/probe.json"]
    assert mod.restore_kept(work2, keep) == 4
    assert json.loads((work2 / "cells" / "defi-x1-p0-s0" / "reliance.json").read_text()) == {"true": 0.5}
    (work2 / "config.json").write_text('{"a": 2}')  # what WORK has is not overwritten
    assert mod.restore_kept(work2, keep) == 0 and json.loads((work2 / "config.json").read_text()) == {"a": 2}


@pytest.mark.slow  # several minutes on the loaded 2-core box (data, 3 pretraining runs + the joint one, 5 cells)
def test_smoke_run_end_to_end_and_resume(tmp_path, capsys):
    mod = load_bench()
    work, keep = tmp_path / "abl", tmp_path / "kept"
    res = mod.main(["--smoke", "--work", str(work), "--keep", str(keep)])
    out = capsys.readouterr().out
    target = mod.target_tasks(1)
    assert "smoke configuration, not the full run" in out and "target tasks (rule: MT50" in out and target[0] in out
    n_items = len(mod.plan(mod.parse(["--smoke", "--work", str(work)])))
    assert f"[{n_items}/{n_items}]" in out and "ETA" in out
    assert res["status"].startswith("complete") and res["cells_done"] == res["cells_expected"] == 5
    assert json.loads((work / "config.json").read_text())["target_tasks"] == target
    t = res["table"]
    assert list(t["rows"]) == ["defi", "entangled", "scratch", "defi-diffusion-head"]
    for row in t["rows"].values():
        for col in (*target, "all"):
            c = row[col]
            lo, hi = c["wilson95"]
            assert c["episodes"] == 2 and 0 <= c["successes"] <= 2 and 0 <= lo <= c["mean"] <= hi <= 1
        rel = row["reliance"]  # the policy's demo MSE with its image, another sample's, a blank one
        assert all(np.isfinite(rel[k]) and rel[k] >= 0 for k in ("true", "other_same_task", "blank"))
        assert [(s["p"], s["f"]) for s in row["per_seed"]] in ([(0, 0)], [(None, 0)])
    assert set(t["comparisons"]) == {"defi - scratch", "defi - entangled", "defi-diffusion-head - defi"}
    for d in t["comparisons"].values():
        assert d["bootstrap95"][0] <= d["diff"] <= d["bootstrap95"][1] and d["finetune_seeds"] == [0]
    pts = t["curve"]["points"]
    assert [p["episodes_per_task"] for p in pts] == [1, 2] and t["curve"]["trend"]
    for p in pts:  # each curve point's GIDM probed on the target demos, beside the observation-only control
        assert p["bootstrap95"][0] <= p["mean"] <= p["bootstrap95"][1]
        assert all(np.isfinite(p["probe"][k][f]) for k in ("disp", "cmd") for f in ("latent", "pca_obs"))
    assert "curve (defi, pretraining seed 0)" in out and "success with pretraining video:" in out
    svg = (work / "curve.svg").read_text()
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"') and svg.count('class="pt"') == 2
    html = (work / "report.html").read_text()
    assert 'class="chart curve"' in html and html.count('class="whisker"') == 2 * len(t["rows"]) + 2
    for v in t["rows"]:
        assert f'data-variant="{v}" data-task="all"' in html
    assert (work / "pretrain" / "x1-p0" / "joint" / "done").exists()
    cfg = json.loads((work / "cells" / "entangled-x1-p0-s0" / "run" / "run_config.json").read_text())
    assert cfg["model"]["init"] == "entangled"
    cfg = json.loads((work / "cells" / "defi-diffusion-head-x1-p0-s0" / "run" / "run_config.json").read_text())
    assert cfg["model"]["init"] == "defi" and cfg["model"]["head"] == "diffusion"
    for name in ("defi-x1-p0-s0", "entangled-x1-p0-s0", "scratch-s0", "defi-diffusion-head-x1-p0-s0", "defi-x0.5-p0-s0"):
        ev = json.loads((work / "cells" / name / "eval" / "results.json").read_text())
        assert ev["config"]["seed"] == mod.EVAL_SEED and ev["config"]["tasks"] == target
    # resume: nothing re-runs, the cell files stay as they were
    stamps = {p: p.stat().st_mtime_ns for p in (work / "cells").glob("*.json")}
    assert len(stamps) == 5
    res2 = mod.main(["--smoke", "--work", str(work), "--threads", "1"])
    out = capsys.readouterr().out
    assert out.count("done, skipped") == n_items and "[run] defi" not in out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert res2["table"]["rows"] == t["rows"] and res2["table"]["curve"] == t["curve"]
    # another machine: a new work folder restored from the kept results runs nothing, not even the
    # data, and reports the same table and curve (demo errors and probes included)
    kept = sorted(str(f.relative_to(keep)) for f in keep.rglob("*") if f.is_file())
    assert "config.json" in kept and "cells/scratch-s0.json" in kept and "cells/scratch-s0/reliance.json" in kept
    assert "pretrain/x0.5-p0/probe.json" in kept and "pretrain/x1-p0/probe.json" in kept and len(kept) == 1 + 5 + 5 + 2
    res3 = mod.main(["--smoke", "--work", str(tmp_path / "abl2"), "--keep", str(keep), "--threads", "1"])
    out = capsys.readouterr().out
    assert f"restored {len(kept)} kept result files" in out and "[run] defi" not in out
    assert out.count("skipped, every result that reads it is kept") == n_items - 5
    assert not (tmp_path / "abl2" / "corpus").exists()
    assert res3["table"]["rows"] == t["rows"] and res3["table"]["curve"] == t["curve"]
    # a different configuration in the same folder is refused
    with pytest.raises(SystemExit, match="another configuration"):
        mod.main(["--quick", "--work", str(work)])
