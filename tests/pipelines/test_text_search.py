"""Text search over stored CLIP embeddings (`defi query|select|browse --text`): a clips table
whose embeddings were made by a tiny random CLIP (`defi-tiny`, seed 0), one of them planted as
the text's own embedding under the same model; the ranking must equal the cosine ranking
computed here with numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from defi.curate.clip_score import ClipScorer, embed_texts
from defi.pipelines.cli import main
from defi.schemas.corpus import Corpus
from defi.schemas.records import ClipRecord, clips_table
from defi.schemas.selection import read_selection

TEXT = "a hand opens a drawer"
SCORER = ClipScorer(model="defi-tiny", pretrained=None, seed=0)
OTHER = ClipScorer(model="defi-tiny-64", pretrained=None, seed=0)


def record(key: str, emb, scorer=SCORER, kept: bool = True) -> ClipRecord:
    r = ClipRecord(key=key, source_id=key[:16].ljust(16, "0"), start_frame=0, end_frame=10, start_s=0.0, end_s=1.0, uri=f"file://{key}.mp4")
    if emb is not None:
        r.clip_embedding = [float(x) for x in emb]
        r.operators = [scorer.lineage()]
    if not kept:
        r.reject("too_static")
    return r


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """root, {key: stored embedding} of the kept clips the tiny model embedded."""
    tmp = tmp_path_factory.mktemp("textsearch")
    text = embed_texts([TEXT], "defi-tiny", None, 0)[0]
    rng = np.random.default_rng(0)
    embs = {}
    for i in range(8):
        v = rng.normal(size=text.shape)
        embs[f"clip{i}"] = (v / np.linalg.norm(v)).astype(np.float32)
    embs["match"] = text.astype(np.float32)  # what a clip showing exactly the text would store
    embs["opposite"] = (-text).astype(np.float32)
    c = Corpus.create(str(tmp / "corpus"))
    records = [record(k, v) for k, v in embs.items()]
    records.append(record("noemb", None))  # curated without --use_clip
    records.append(record("rejected", text, kept=False))
    c.write_part("clips", clips_table(records), part="batch0")
    return str(tmp / "corpus"), embs, text


def ranking(embs: dict, text: np.ndarray) -> list[str]:
    keys = sorted(embs)
    sims = np.array([float(np.dot(embs[k], text) / (np.linalg.norm(embs[k]) * np.linalg.norm(text))) for k in keys])
    return [keys[i] for i in np.argsort(-sims, kind="stable")]


def test_query_text_ranks_by_cosine_to_the_stored_embeddings(corpus, capsys):
    root, embs, text = corpus
    assert main(["query", "--root", root, "--text", TEXT, "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    keys = [r["key"] for r in rows]
    assert keys[0] == "match" and keys[-1] == "opposite" and "rejected" not in keys and "noemb" not in keys
    assert keys == ranking(embs, text)  # the default SQL: kept clips, best first
    assert rows[0]["text_score"] == pytest.approx(1.0, abs=1e-5) and rows[-1]["text_score"] == pytest.approx(-1.0, abs=1e-5)
    # the SQL can join text_scores itself: every embedded clip is scored, rejected ones too
    sql = "SELECT key, text_score FROM text_scores ORDER BY text_score DESC"
    assert main(["query", sql, "--root", root, "--text", TEXT, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "key,text_score" and len(lines) == 1 + len(embs) + 1


def test_select_and_browse_by_text(corpus, tmp_path, capsys):
    root, embs, text = corpus
    out = tmp_path / "top.parquet"
    assert main(["select", "--root", root, "--text", TEXT, "--top", "3", "--out", str(out)]) == 0
    assert "ranked by CLIP similarity" in capsys.readouterr().out
    assert sorted(read_selection(str(out)).column("key").to_pylist()) == sorted(ranking(embs, text)[:3])
    out2 = tmp_path / "where.parquet"
    assert main(["select", "--root", root, "--text", TEXT, "--where", "text_score > 0.99", "--out", str(out2)]) == 0
    assert read_selection(str(out2)).column("key").to_pylist() == ["match"]
    page = tmp_path / "page.html"
    assert main(["browse", "--root", root, "--text", TEXT, "--no-previews", "--no-progress", "--out", str(page)]) == 0
    html = page.read_text()
    assert "text_score" in html and html.index("match") < html.index("opposite")


def test_text_search_bad_input_is_one_line(corpus, tmp_path, capsys):
    def fails(argv) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    root, embs, _ = corpus
    bare = Corpus.create(str(tmp_path / "bare"))
    bare.write_part("clips", clips_table([record("a", None), record("b", None)]), part="p0")
    assert "--use_clip true" in fails(["query", "--root", str(tmp_path / "bare"), "--text", TEXT])
    assert "give SQL" in fails(["query", "--root", root])
    assert "--text is empty" in fails(["query", "--root", root, "--text", " "])
    assert "--top" in fails(["select", "--root", root, "--top", "2", "--out", str(tmp_path / "x.parquet")])
    assert "no stored embeddings were made by it" in fails(["query", "--root", root, "--text", TEXT, "--clip-model", "ViT-B-32"])


def test_two_clip_models_need_a_choice(corpus, tmp_path, capsys):
    root, embs, text = corpus
    mixed = Corpus.create(str(tmp_path / "mixed"))
    other = embed_texts([TEXT], "defi-tiny-64", None, 0)[0]
    mixed.write_part("clips", clips_table([record(k, v) for k, v in embs.items()] + [record("big", other, OTHER)]), part="p0")
    assert main(["query", "--root", str(tmp_path / "mixed"), "--text", TEXT]) == 2
    err = capsys.readouterr().err
    assert "from 2 models" in err and "--clip-model" in err
    sql = "SELECT key FROM text_scores ORDER BY text_score DESC"
    assert main(["query", sql, "--root", str(tmp_path / "mixed"), "--text", TEXT, "--clip-model", "defi-tiny-64", "--format", "json"]) == 0
    assert [json.loads(ln)["key"] for ln in capsys.readouterr().out.splitlines()] == ["big"]  # only the clips that model embedded


def test_text_score_of_a_prompt_equals_curates_own_clip_score(tmp_path, capsys):
    """Through a real `defi curate --use_clip true`: the model is found from the clips' lineage, and
    the text_score of one of curate's prompts is the score curate stored for it."""
    from factories import moving_square, scenes, write_video

    (tmp_path / "v").mkdir()
    write_video(tmp_path / "v" / "a.mp4", scenes([48, 48], h=96, w=128), fps=24)
    write_video(tmp_path / "v" / "b.mp4", moving_square(72, h=96, w=128), fps=24)
    root = str(tmp_path / "corpus")
    flags = ["--use_clip", "true", "--clip.model", "defi-tiny", "--clip.pretrained", "none", "--runner", "local", "--no-progress"]
    assert main(["curate", str(tmp_path / "v"), "--root", root, *flags]) == 0
    capsys.readouterr()
    prompt = "hands manipulating objects"  # one of curate's default prompts
    sql = f"SELECT t.text_score, c.clip_scores['{prompt}'] AS stored FROM text_scores t JOIN clips c USING (key)"
    assert main(["query", sql, "--root", root, "--text", prompt, "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) >= 2
    for r in rows:
        assert r["text_score"] == pytest.approx(r["stored"], abs=1e-5)
