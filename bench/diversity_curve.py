"""The serve-time diversity trade-off (issue 9, must-show 3): Recall@50 against interest
coverage and category coverage for several lambda of the `POST /recall` field `diversity`.

For a trained run (or one trained here with the default `mind train`), every held-out test
user's active capsules search the catalogue and their lists are merged by model.retrieval.merge
exactly as the service does, with `exclude_history` (the service default), top_n = 50:
- Recall@50 under the protocol (history = first 80%, targets = the rest);
- interest coverage: distinct interests among the 50 items (and the active interests per user);
- category coverage: distinct item categories among the 50 (the first value of an item side
  feature, e.g. ml-100k's genre `class`; "n/a" when the data has none, as Amazon Toys);
- the merge's cost per user.

    python -m bench.diversity_curve --run RUN_DIR [--category-feature class] [--lambdas 0,0.1,...]
    python -m bench.diversity_curve --data PATH --workdir DIR   # trains DIR/run first (default config)
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.pipeline import machine
from model.index import flat_index
from model.metrics import evaluate_rankings

TOP_N = 50
LAMBDAS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
USERS_PER_MERGE = 512
NO_CATEGORY = -1


def train_default(data: Path, workdir: Path, extra: list[str]) -> Path:
    """`mind train --data DATA --out WORKDIR/run` with the defaults (once; reused when present)."""
    run_dir = workdir / "run"
    if not (run_dir / "checkpoint.pt").is_file():
        command = [sys.executable, "-m", "mind_recall.cli", "train", "--data", str(data), "--out", str(run_dir),
                   "--no-baselines", "--quiet", "--threads", "1", *extra]
        print("$ " + shlex.join(command[2:]), flush=True)
        subprocess.run(command, check=True)
    return run_dir


def categories(ds, feature: str | None) -> np.ndarray | None:
    """(n_items,) int64 category of each row (first token of ``feature``; -1 none), or None."""
    if not feature or feature not in ds.item_side:
        return None
    first = np.asarray(ds.item_side[feature], dtype=np.int64)[1:, 0]           # (n_items,), 0 = none
    return np.where(first > 0, first, NO_CATEGORY)


def distinct_per_row(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(U,) number of distinct values among each row's valid entries (values (U, n) >= 0)."""
    span = int(values.max(initial=0)) + 1
    keys = np.where(valid, np.arange(len(values))[:, None] * span + values, -1)
    unique = np.unique(keys[keys >= 0])
    return np.bincount(unique // span, minlength=len(values))


def curve(retriever, held, category_of_row: np.ndarray | None, lambdas) -> list[dict]:
    """One row per lambda: Recall@50, interest coverage, category coverage, ms per user."""
    from model.protocol import source_capsules
    from model.retrieval import BOUNDARY_MARGIN, fetch_size, merge, search

    capsules, active = source_capsules(retriever, held)                          # (U, K, d), (U, K)
    excluded = held.history_rows()
    vectors = np.asarray(retriever.item_vectors, dtype=np.float32)
    index = retriever.index if retriever.index is not None else flat_index(vectors)
    widest = max(len(e) for e in excluded)
    rows_out = []
    for lam in lambdas:
        k = fetch_size(TOP_N, widest, BOUNDARY_MARGIN, len(vectors), lam)
        ranked = np.full((len(capsules), TOP_N), -1, dtype=np.int64)
        interest = np.full((len(capsules), TOP_N), -1, dtype=np.int64)
        started = time.perf_counter()
        for start in range(0, len(capsules), USERS_PER_MERGE):
            block = slice(start, start + USERS_PER_MERGE)
            scores, rows = search(index, vectors, capsules[block], active[block], k)
            lam_block = np.full(len(rows), lam)
            ranked[block], _, interest[block] = merge(scores, rows, excluded[block], TOP_N, "score",
                                                      lam_block, category_of_row)
        per_user_ms = 1000 * (time.perf_counter() - started) / len(capsules)
        valid = ranked >= 0
        row = {"lambda": lam, "recall@50": evaluate_rankings(ranked, held.target_rows, (TOP_N,))["recall@50"],
               "interests": float(distinct_per_row(np.maximum(interest, 0), valid).mean()),
               "active": float(active.sum(axis=1).mean()), "categories": None, "ms_per_user": per_user_ms}
        if category_of_row is not None:
            cats = category_of_row[np.maximum(ranked, 0)]
            row["categories"] = float(distinct_per_row(np.maximum(cats, 0), valid & (cats >= 0)).mean())
        rows_out.append(row)
    return rows_out


def table(rows: list[dict]) -> str:
    lines = ["| lambda | Recall@50 | distinct interests in top-50 (of active) | distinct categories in top-50 "
             "| merge+search ms/user |", "| ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        cats = "n/a" if r["categories"] is None else f"{r['categories']:.2f}"
        lines.append(f"| {r['lambda']:g} | {r['recall@50']:.4f} | {r['interests']:.2f} ({r['active']:.2f}) | "
                     f"{cats} | {r['ms_per_user']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="a run directory written by `mind train`")
    source.add_argument("--data", type=Path, help="train the default model on this log first")
    parser.add_argument("--workdir", type=Path, default=Path("runs") / "diversity-curve")
    parser.add_argument("--category-feature", default="class", help="item side feature used as category")
    parser.add_argument("--lambdas", default=",".join(f"{x:g}" for x in LAMBDAS))
    parser.add_argument("train_flags", nargs="*", help="extra `mind train` flags with --data (after --)")
    args = parser.parse_args(argv)
    from model.eval_sources import dataset_from_config, read_json_file, run_source
    from model.run import K1_BASELINE

    print("command: python -m bench.diversity_curve " + shlex.join(argv))
    print("machine:", machine())
    run_dir = args.run or train_default(args.data, args.workdir, args.train_flags)
    src = run_source(run_dir, "test", None, K1_BASELINE, "cpu")
    config = read_json_file(run_dir / "config.json")
    ds = dataset_from_config(config["data"], None, str(run_dir / "config.json"))
    category_of_row = categories(ds, args.category_feature)
    print(f"{src.info['n_users']} test users, {src.info['n_items']} items, exclude_history, top_n {TOP_N}; "
          f"categories: {args.category_feature if category_of_row is not None else 'none in this data'}")
    print(table(curve(src.retrievers["MIND"], src.held, category_of_row,
                      [float(x) for x in args.lambdas.split(",")])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
