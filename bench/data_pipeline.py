"""Data layer speed: load an interaction log, build the dataset (k-core, vocabularies,
sequences, split), build every training sample, and generate the default synthetic data.

    nice -n 10 .venv/bin/python -m bench.data_pipeline [--data ml-100k] [--max-len 20] [--repeat 3]

Prints the best of `--repeat` wall times per step (seconds), the sizes, the command and the
machine, as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

from bench.index_recall import machine
from model.data import build_dataset, load_interactions, training_samples
from model.data.sources import resolve_data_source
from model.data.synthetic import generate, write_recbole


def best_of(repeat: int, step):
    """(best wall seconds, last result) of `repeat` calls of `step`."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = step()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="ml-100k", help="a path or a dataset name (see model.data.sources)")
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    path = resolve_data_source(args.data)
    t_load, interactions = best_of(args.repeat, lambda: load_interactions(path))
    t_build, ds = best_of(args.repeat, lambda: build_dataset(interactions))
    t_samples, (histories, _, _) = best_of(args.repeat, lambda: training_samples(ds, args.max_len))
    t_generate, synthetic = best_of(args.repeat, generate)
    with tempfile.TemporaryDirectory() as tmp:
        t_write, inter = best_of(args.repeat, lambda: write_recbole(synthetic, tmp, "synthetic"))
        t_reload, _ = best_of(args.repeat, lambda: load_interactions(inter))
    print(json.dumps({
        "command": " ".join([".venv/bin/python -m bench.data_pipeline", *sys.argv[1:]]),
        "machine": machine(),
        "data": str(path),
        "rows": len(interactions), "users": ds.n_users, "items": ds.n_items, "samples": len(histories),
        "seconds": {"load": round(t_load, 3), "build_dataset": round(t_build, 3),
                    "training_samples": round(t_samples, 3), "synthetic_generate": round(t_generate, 3),
                    "synthetic_write": round(t_write, 3), "synthetic_load": round(t_reload, 3)},
        "synthetic_rows": len(synthetic),
    }, indent=2))


if __name__ == "__main__":
    main()
