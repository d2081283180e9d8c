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
    python -m bench.diversity_curve --bundle BUNDLE_DIR [--data PATH]   # the served path

With ``--bundle`` the lists are the service's own: every test user's history (as external ids)
goes through ``service.pipeline.recall_batch`` on the loaded bundle, with the bundle's item
categories (item_categories.npy, from `mind export`) in the merge, exactly as `POST /recall`
answers it; category coverage is counted with those categories. When the bundle has them, the
curve is measured twice: merged over interests and categories (what the service does), and
with the categories withheld from the merge (interests only), to show what they add.
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
from model.retrieval import NO_CATEGORY

TOP_N = 50
LAMBDAS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
USERS_PER_MERGE = 512
REQUESTS_PER_BATCH = 64   # served mode: queries per recall_batch call (the service's batch maximum)
SERVED_COST = "tower+search+merge"


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


def largest_interest_share(interest: np.ndarray) -> float:
    """Mean share of a list (U, n) held by its most frequent interest (-1 = empty, ignored)."""
    shares = [np.bincount(r[r >= 0]).max() / (r >= 0).sum() for r in interest if (r >= 0).any()]
    return float(np.mean(shares)) if shares else float("nan")


def coverage_row(lam: float, ranked: np.ndarray, interest: np.ndarray, active: float, targets,
                 category_of_row: np.ndarray | None, seconds: float) -> dict:
    """One table row from (U, TOP_N) ranked rows (-1 = empty) and the interest of each."""
    valid = ranked >= 0
    row = {"lambda": lam, "recall@50": evaluate_rankings(ranked, targets, (TOP_N,))["recall@50"],
           "interests": float(distinct_per_row(np.maximum(interest, 0), valid & (interest >= 0)).mean()),
           "active": active, "categories": None, "ms_per_user": 1000 * seconds / len(ranked),
           "largest_share": largest_interest_share(interest)}
    if category_of_row is not None:
        cats = category_of_row[np.maximum(ranked, 0)]
        row["categories"] = float(distinct_per_row(np.maximum(cats, 0), valid & (cats >= 0)).mean())
    return row


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
        rows_out.append(coverage_row(lam, ranked, interest, float(active.sum(axis=1).mean()), held.target_rows,
                                     category_of_row, time.perf_counter() - started))
    return rows_out


def served_lists(bundle, queries, lam: float) -> tuple[list[dict], float]:
    """The service's answers (service.pipeline.recall_batch) to ``queries`` at diversity ``lam``,
    and the seconds they took (tower + search + merge)."""
    from dataclasses import replace
    from service.pipeline import RetrievalOptions, recall_batch

    answers, started = [], time.perf_counter()
    for start in range(0, len(queries), REQUESTS_PER_BATCH):
        batch = [replace(q, diversity=lam) for q in queries[start:start + REQUESTS_PER_BATCH]]
        answers += recall_batch(bundle, batch, RetrievalOptions())[0]
    return answers, time.perf_counter() - started


def dataset_categories(bundle, dataset_ids) -> np.ndarray | None:
    """(n_items,) the bundle's category of each dataset row (-1 none), or None without any."""
    if bundle.categories is None:
        return None
    of_row = bundle.categories.of_row
    return np.array([of_row[bundle.row_of[i]] if i in bundle.row_of else NO_CATEGORY for i in dataset_ids])


def served_curve(bundle, held, dataset_ids, lambdas, category_of_row: np.ndarray | None) -> list[dict]:
    """One row per lambda of the lists POST /recall serves from ``bundle`` for the held-out
    users; rows are dataset rows (the targets' numbering), categories counted with
    ``category_of_row`` (dataset rows; None = not counted)."""
    from service.pipeline import RecallQuery

    tokens = np.asarray(dataset_ids, dtype=object)
    queries = [RecallQuery(history=tuple(tokens[h[h > 0] - 1]), top_n=TOP_N) for h in held.histories]
    dataset_row = {item: r for r, item in enumerate(dataset_ids)}
    out = []
    for lam in lambdas:
        answers, seconds = served_lists(bundle, queries, lam)
        ranked = np.full((len(answers), TOP_N), -1, dtype=np.int64)
        interest = np.full((len(answers), TOP_N), -1, dtype=np.int64)
        for u, answer in enumerate(answers):
            for j, item in enumerate(answer["items"]):
                ranked[u, j] = dataset_row.get(item["item_id"], -1)
                interest[u, j] = -1 if item["interest"] is None else item["interest"]
        active = float(np.mean([a["interests"] for a in answers]))
        out.append(coverage_row(lam, ranked, interest, active, held.target_rows, category_of_row, seconds))
    return out


def bundle_main(args) -> None:
    """--bundle: the curve of the served lists, with and without the bundle's categories."""
    from dataclasses import replace
    from model.bundle import load_bundle
    from model.eval_sources import dataset_from_config, held_out_users

    bundle = load_bundle(args.bundle)
    ds = dataset_from_config(bundle.manifest.get("data") or {}, args.data, str(bundle.path / "manifest.json"))
    held = held_out_users(ds, "test", bundle.max_len)
    lambdas = [float(x) for x in args.lambdas.split(",")]
    cats = bundle.categories
    print(f"bundle {bundle.path.name} (model_version {bundle.model_version[:12]}), {len(held.histories)} test "
          f"users, {held.n_items} items, POST /recall lists (service.pipeline.recall_batch), exclude_history, "
          f"top_n {TOP_N}; categories: " + (f"{cats.feature!r} ({len(cats.names)} values, "
          f"{int((cats.of_row >= 0).sum())} items with one)" if cats else "none in this bundle"))
    counted = dataset_categories(bundle, ds.items.tokens[1:])
    print("merged over interests" + (" and categories (served):" if cats else " (served):"))
    print(table(served_curve(bundle, held, ds.items.tokens[1:], lambdas, counted), SERVED_COST))
    if cats is not None:
        print("the same bundle with its categories withheld from the merge (interests only); "
              "category coverage still counted with them:")
        withheld = replace(bundle, categories=None)
        print(table(served_curve(withheld, held, ds.items.tokens[1:], lambdas, counted), SERVED_COST))


def table(rows: list[dict], cost: str = "merge+search") -> str:
    lines = ["| lambda | Recall@50 | distinct interests in top-50 (of active) | largest interest's share "
             f"| distinct categories in top-50 | {cost} ms/user |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        cats = "n/a" if r["categories"] is None else f"{r['categories']:.2f}"
        lines.append(f"| {r['lambda']:g} | {r['recall@50']:.4f} | {r['interests']:.2f} ({r['active']:.2f}) | "
                     f"{r['largest_share']:.2f} | {cats} | {r['ms_per_user']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--run", type=Path, help="a run directory written by `mind train`")
    source.add_argument("--bundle", type=Path, help="a bundle written by `mind export` (or a bundle root): "
                                                   "the served lists and the bundle's own categories")
    parser.add_argument("--data", type=Path, help="without --run/--bundle: train the default model on this "
                                                  "log first; with --bundle: the log, if moved since export")
    parser.add_argument("--workdir", type=Path, default=Path("runs") / "diversity-curve")
    parser.add_argument("--category-feature", default="class", help="item side feature used as category")
    parser.add_argument("--lambdas", default=",".join(f"{x:g}" for x in LAMBDAS))
    parser.add_argument("train_flags", nargs="*", help="extra `mind train` flags with --data (after --)")
    args = parser.parse_args(argv)
    from model.eval_sources import dataset_from_config, read_json_file, run_source
    from model.run import K1_BASELINE

    print("command: python -m bench.diversity_curve " + shlex.join(argv))
    print("machine:", machine())
    if args.bundle is not None:
        bundle_main(args)
        return 0
    if args.run is None and args.data is None:
        parser.error("one of --run, --bundle or --data is required")
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
