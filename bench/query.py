"""Query time of `defi query`'s engine on synthetic clip indexes of 1M and 10M rows.

Goal (foundation issue): a filter + group-by at 10M rows under 0.5 s on 2 cores.
Run: .venv/bin/python bench/query.py [--rows 1000000 10000000] [--threads 2] [--compare]
``--compare`` also times DuckDB's own ``read_parquet`` views over the same parts (how queries ran
before they were made read-only at the engine), alternating with ``Corpus.query``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import duckdb
import numpy as np
import pyarrow as pa

from defi.schemas.corpus import Corpus
from defi.schemas.tables import CLIPS

SQL = (
    "SELECT reject_reason, count(*) AS n, avg(motion_mean) AS motion, sum(duration_s) / 3600 AS hours "
    "FROM clips WHERE motion_mean > 2.5 AND clip_score_max > 0.2 GROUP BY 1 ORDER BY 2 DESC"
)


def synth(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    reasons = np.array([None, "low_motion", "too_short", "blurry", "duplicate"], dtype=object)
    r = rng.integers(0, 5, n)
    start = rng.random(n) * 3600
    cols = {}
    for f in CLIPS:
        if f.name == "key":
            cols[f.name] = pa.array(np.char.add("k", np.arange(n).astype(str)).astype(object))
        elif f.name == "source_id":
            cols[f.name] = pa.array(np.char.add("s", (np.arange(n) // 100).astype(str)).astype(object))
        elif f.name == "kept":
            cols[f.name] = pa.array(r == 0)
        elif f.name == "reject_reason":
            cols[f.name] = pa.array(reasons[r], pa.string())
        elif f.name in ("motion_mean", "clip_score_max", "blur"):
            cols[f.name] = pa.array(rng.random(n).astype(np.float32) * (10 if f.name == "motion_mean" else 1))
        elif f.name == "start_s":
            cols[f.name] = pa.array(start)
        elif f.name == "end_s":
            cols[f.name] = pa.array(start + 4.0)
        elif f.name == "duration_s":
            cols[f.name] = pa.array(np.full(n, 4.0))
        else:
            cols[f.name] = pa.nulls(n, f.type)
    return pa.table(cols, schema=CLIPS)


def read_parquet_query(c: Corpus, sql: str, threads: int) -> pa.Table:
    """The same SQL over plain ``read_parquet`` views (no engine lock): the comparison point."""
    con = duckdb.connect(config={"threads": threads})
    try:
        files = ", ".join("'" + p.replace("'", "''") + "'" for p in c.parts("clips"))
        con.execute(f"CREATE VIEW clips AS SELECT * FROM read_parquet([{files}], union_by_name=true)")
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--part-rows", type=int, default=1_000_000)
    ap.add_argument("--compare", action="store_true", help="also time plain read_parquet views, alternating")
    args = ap.parse_args()
    print(f"{'rows':>12} {'parts':>6} {'write s':>8} {'query s (best of 5)':>20} {'goal':>6}")
    for n in args.rows:
        with tempfile.TemporaryDirectory() as d:
            c = Corpus.create(d)
            t0 = time.perf_counter()
            parts = 0
            for i in range(0, n, args.part_rows):
                c.write_part("clips", synth(min(args.part_rows, n - i), seed=i), part=f"{parts:05d}")
                parts += 1
            write_s = time.perf_counter() - t0
            times, plain = [], []
            for _ in range(5):
                t0 = time.perf_counter()
                res = c.query(SQL, threads=args.threads)
                times.append(time.perf_counter() - t0)
                if args.compare:
                    t0 = time.perf_counter()
                    read_parquet_query(c, SQL, args.threads)
                    plain.append(time.perf_counter() - t0)
            best = min(times)
            print(
                f"{n:>12,} {parts:>6} {write_s:>8.1f} {best:>20.3f} {'ok' if best < 0.5 else 'MISS':>6}"
                + (f"   read_parquet views {min(plain):.3f}" if plain else "")
            )
            assert res.num_rows == 5
    print(f"query: {SQL}")


if __name__ == "__main__":
    main()
