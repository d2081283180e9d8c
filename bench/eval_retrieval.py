"""Offline evaluation retrieval: users/s of `multi_interest_topn` (one batched exact FAISS search
for all active capsules, pair-by-pair scores, merge, de-duplication, history exclusion) and of the item-CF baseline.

    nice -n 10 .venv/bin/python -m bench.eval_retrieval [--users 5000] [--items 100000] [--dim 64]
        [--interests 4] [--history 20] [--top-n 100]
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time

import numpy as np

from model.baselines import item_cf_topn
from model.index import flat_index
from model.retrieval import multi_interest_topn
from bench.pipeline import add_workload_arguments, machine


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5000)
    add_workload_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    items = rng.normal(size=(args.items, args.dim)).astype(np.float32)          # (n_items, d)
    capsules = rng.normal(size=(args.users, args.interests, args.dim)).astype(np.float32)
    active = rng.random((args.users, args.interests)) < 0.75                     # (U, K)
    active[:, 0] = True
    histories = rng.integers(1, args.items + 1, size=(args.users, args.history))  # (U, L) indices
    exclude = [h - 1 for h in histories]
    index = flat_index(items)

    print(f"command: {shlex.join([sys.executable, '-m', 'bench.eval_retrieval', *sys.argv[1:]])}")
    print(f"machine: {machine()}")
    print(f"users={args.users} items={args.items} d={args.dim} K={args.interests} "
          f"(active capsules {int(active.sum())}) history={args.history} top_n={args.top_n}")
    for label, kwargs in (("MIND top-n, history kept", {}), ("MIND top-n, history excluded", {"exclude": exclude}),
                          ("  + diversity 1 (greedy merge)", {"exclude": exclude, "diversity": 1.0})):
        start = time.perf_counter()
        multi_interest_topn(capsules, active, items, args.top_n, index=index, **kwargs)
        took_s = time.perf_counter() - start
        print(f"{label:32s} {took_s:7.2f} s  {args.users / took_s:9.0f} users/s")
    train = [rng.integers(1, args.items + 1, size=rng.integers(5, 60)) for _ in range(4 * args.users)]
    start = time.perf_counter()
    item_cf_topn(train, histories, args.items, args.top_n, exclude)
    took_s = time.perf_counter() - start
    print(f"{'item-CF top-n (fit + score)':32s} {took_s:7.2f} s  {args.users / took_s:9.0f} users/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
