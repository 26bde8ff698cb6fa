"""Text search over the stored CLIP embeddings: `defi query|browse|select --text "a hand opens a drawer"`.

`defi curate --use_clip true` stores each clip's CLIP embedding (``clips.clip_embedding``: the
unit-norm mean of its keyframes' image embeddings, ``curate.clip_score``) and, in
``operators_json``, the model that made it (``clip`` operator: ``model``, ``pretrained``,
``seed``). ``text_scores`` embeds the text with that same model (``curate.clip_score.embed_texts``)
and scores every clip whose embedding that model made: ``text_score`` = cosine similarity of the
text and clip embeddings, in [-1, 1]. The scores are a table ``text_scores(key, text_score)``
that the query's SQL can join (``Corpus.query(..., tables=...)``); with ``--text`` and no SQL the
commands rank the kept clips by it (``DEFAULT_SQL``).

The model: the one that made the stored embeddings when there is one; when several curate runs
used different models, ``--clip-model`` names one (and only its clips are scored: embeddings of
different models do not compare). ``--clip-pretrained`` replaces the stored weights' tag or path
(a checkpoint moved since curation).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from defi.schemas.corpus import Corpus

from .usage import UsageError

TABLE = "text_scores"
DEFAULT_SQL = (
    "SELECT c.key, t.text_score, c.uri, c.start_s, c.end_s, c.language\n"
    "FROM text_scores t JOIN clips c USING (key)\nWHERE c.kept\nORDER BY t.text_score DESC LIMIT 20"
)
HOW_TO = "curate with `--use_clip true` (the model from --clip.model/--clip.pretrained) to store them"


def _clip_params(operators_json: str | None) -> dict[str, Any] | None:
    """The ``clip`` operator's (model, pretrained, seed) in a clip's lineage, or None."""
    try:
        ops = json.loads(operators_json or "[]")
    except ValueError:
        return None
    for op in ops if isinstance(ops, list) else []:
        if isinstance(op, dict) and op.get("name") == "clip":
            p = op.get("params") or {}
            return {"model": p.get("model"), "pretrained": p.get("pretrained"), "seed": int(p.get("seed") or 0)}
    return None


def stored_clip_models(corpus: Corpus) -> list[tuple[dict[str, Any], int, list[str]]]:
    """(model params, clips, the operators_json values that name it) for every CLIP model that
    made stored embeddings, most clips first."""
    rows = corpus.query("SELECT operators_json AS ops, count(*) AS n FROM clips WHERE clip_embedding IS NOT NULL GROUP BY 1").to_pylist()
    counts: Counter = Counter()
    lineages: dict[str, list[str]] = {}
    params: dict[str, dict] = {}
    for r in rows:
        p = _clip_params(r["ops"]) or {"model": None, "pretrained": None, "seed": 0}
        ident = json.dumps(p, sort_keys=True)
        params[ident] = p
        counts[ident] += r["n"]
        lineages.setdefault(ident, []).append(r["ops"])
    return [(params[i], n, lineages[i]) for i, n in counts.most_common()]


def _describe(p: dict[str, Any]) -> str:
    return f"{p['model']}" + (f" ({p['pretrained']})" if p.get("pretrained") else " (random weights)")


def text_scores(root_or_corpus, text: str, clip_model: str | None = None, clip_pretrained: str | None = None, device: str = "cpu"):
    """``(table, facts)``: the Arrow table ``(key, text_score)`` of every clip whose stored CLIP
    embedding the chosen model made (see the module doc), and ``facts`` {model, pretrained, seed,
    clips}. Raises ``UsageError`` (one line) for an empty text, a corpus without stored
    embeddings, or an ambiguous or absent model."""
    import numpy as np
    import pyarrow as pa

    from defi.curate.clip_score import embed_texts

    corpus = root_or_corpus if isinstance(root_or_corpus, Corpus) else Corpus.open(str(root_or_corpus))
    if not text or not text.strip():
        raise UsageError("--text is empty; give the text to rank clips by, e.g. --text 'a hand opens a drawer'")
    models = stored_clip_models(corpus)
    if not models:
        raise UsageError(f"corpus {corpus.root} has no stored CLIP embeddings; {HOW_TO}")
    if clip_model is not None:
        chosen = [m for m in models if m[0]["model"] == clip_model]
        if not chosen:
            have = ", ".join(_describe(m[0]) for m in models)
            raise UsageError(f"--clip-model {clip_model}: no stored embeddings were made by it; stored: {have}")
    elif len(models) > 1:
        have = ", ".join(f"{_describe(m[0])}: {n} clips" for m in models for n in [m[1]])
        raise UsageError(f"the stored CLIP embeddings come from {len(models)} models ({have}); pick one with --clip-model")
    else:
        chosen = models
    params = dict(chosen[0][0])
    if params["model"] is None:
        raise UsageError(f"corpus {corpus.root}: the stored CLIP embeddings do not name their model (no clip operator in operators_json)")
    if clip_pretrained is not None:
        params["pretrained"] = clip_pretrained
    lineages = [ops for m in chosen for ops in m[2]]
    try:
        q = embed_texts([text], params["model"], params["pretrained"], params["seed"], device)[0].astype(np.float32)
    except (ValueError, RuntimeError, OSError) as e:
        raise UsageError(f"cannot load CLIP model {_describe(params)}: {' '.join(str(e).split())[:300]}") from None
    vec = "[" + ", ".join(repr(float(x)) for x in q) + "]::FLOAT[]"
    wanted = pa.table({"ops": pa.array(lineages, pa.string())})
    sql = (
        f"SELECT c.key, list_cosine_similarity(c.clip_embedding, {vec})::DOUBLE AS text_score FROM clips c "
        "WHERE c.clip_embedding IS NOT NULL AND c.operators_json IN (SELECT ops FROM __lineages)"
    )
    if any(ops is None for ops in lineages):
        sql += " OR (c.clip_embedding IS NOT NULL AND c.operators_json IS NULL)"
    table = corpus.query(sql, tables={"__lineages": wanted})
    scores = table.group_by("key").aggregate([("text_score", "max")]).rename_columns(["key", "text_score"])
    return scores, {**params, "clips": scores.num_rows}


def search_tables(root: str, text: str | None, clip_model: str | None, clip_pretrained: str | None) -> dict[str, Any]:
    """``{"text_scores": table}`` for ``Corpus.query(tables=...)`` when ``text`` is given, else {}."""
    if text is None:
        if clip_model is not None or clip_pretrained is not None:
            raise UsageError("--clip-model/--clip-pretrained go with --text")
        return {}
    table, _ = text_scores(root, text, clip_model, clip_pretrained)
    return {TABLE: table}


def add_text_flags(p, what: str) -> None:
    """``--text``, ``--clip-model``, ``--clip-pretrained`` for a command whose SQL can read the
    ``text_scores`` table (``what``: how that command uses it, for the help)."""
    p.add_argument(
        "--text",
        help=f"rank clips by CLIP similarity to this text: adds the table text_scores(key, text_score) {what} "
        "(needs embeddings from `defi curate --use_clip true`)",
    )
    p.add_argument("--clip-model", help="with --text: the open_clip model of the stored embeddings to use (default: the only one)")
    p.add_argument("--clip-pretrained", help="with --text: its weights, an open_clip tag or local file (default: as stored)")
