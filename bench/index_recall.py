"""HNSW and IVF recall@100 against exact search on a synthetic catalogue, with build and
search times, using the same build/tune code as `mind export` (model/index.py).

    nice -n 10 .venv/bin/python -m bench.index_recall [--items 200000] [--dim 64]

The catalogue is clustered (items around random centres, as trained item embeddings are);
the index is tuned on one set of capsule-like queries and measured on another.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from model.index import build_index, exact_top_k, perturbed_queries, recall_at_k, tune_index
from bench.pipeline import machine

N_CLUSTERS = 1000
CLUSTER_SPREAD = 0.5     # per-dimension noise around a centre of unit per-dimension scale


def clustered_catalogue(n_items: int, dim: int, n_clusters: int = N_CLUSTERS, seed: int = 0) -> np.ndarray:
    """(n_items, dim) float32 item vectors around ``n_clusters`` random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    items = centres[rng.integers(0, n_clusters, n_items)]
    items += CLUSTER_SPREAD * rng.standard_normal((n_items, dim), dtype=np.float32)
    return items


def measure(kind: str, items: np.ndarray, tune_q: np.ndarray, test_q: np.ndarray,
            exact: np.ndarray, k: int) -> dict:
    """Build, tune and measure one index kind; times in seconds / milliseconds per query."""
    start = time.perf_counter()
    index, _ = build_index(items, kind)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    tuned = tune_index(index, items, tune_q, k=k)
    tune_s = time.perf_counter() - start
    start = time.perf_counter()
    rows = index.search(test_q, k)[1]
    search_ms = 1000 * (time.perf_counter() - start) / len(test_q)
    return {"kind": kind, "params": tuned["params"], "build_s": build_s, "tune_s": tune_s,
            "search_ms_per_query": search_ms, "recall": recall_at_k(rows, exact)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args(argv)
    print(f"command: {' '.join([sys.executable, '-m', 'bench.index_recall', *sys.argv[1:]])}")
    print(f"machine: {machine()}")
    items = clustered_catalogue(args.items, args.dim)
    tune_q = perturbed_queries(items, 256, seed=1)
    test_q = perturbed_queries(items, args.queries, seed=2)     # held out from tuning
    exact = exact_top_k(items, test_q, args.k)
    print(f"catalogue: {args.items} items, d={args.dim}, {N_CLUSTERS} clusters; "
          f"{args.queries} held-out queries, recall@{args.k} vs exact IndexFlatIP")
    print(f"{'index':6} {'params':18} {'build s':>8} {'tune s':>7} {'ms/query':>9} {'recall':>7}")
    for kind in ("flat", "ivf", "hnsw"):
        r = measure(kind, items, tune_q, test_q, exact, args.k)
        params = ",".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        print(f"{kind:6} {params:18} {r['build_s']:8.1f} {r['tune_s']:7.1f} "
              f"{r['search_ms_per_query']:9.3f} {r['recall']:7.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
