"""The bare serving pipeline in process (tower + FAISS + merge, no HTTP): requests/s per batch size.

    nice -n 10 .venv/bin/python -m bench.pipeline [--items 100000] [--dim 64] [--interests 4]
        [--history 20] [--top-n 100] [--batch-sizes 1,8,16,32,64] [--seconds 3]

This is exactly what the service's worker thread runs per batch (`service.pipeline.recall_batch`),
with the service's default compute settings (threads, FAISS BLAS threshold), so `bench/load.py` can report
HTTP throughput as a ratio of it. The bundle (random tower and item vectors, flat index) is
built once under --cache and reused.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import model  # noqa: F401  (before faiss: names OpenBLAS's kernel, model/__init__.py)
import faiss
import numpy as np
import torch

from model.bundle import Bundle, load_bundle, write_bundle
from service.pipeline import RecallQuery, RetrievalOptions, configure_compute, recall_batch
from service.settings import Settings
from service.state import search_pool, split_index

DEFAULT_CACHE = Path(os.environ.get("TMPDIR", "/tmp")) / "mind-recall-bench"


def cpu() -> str:
    """CPU count, model and OS, the part of the printout every benchmark shares."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass  # non-Linux: keep platform.processor()
    return f"nproc={os.cpu_count()} ({model}), {platform.system()} {platform.machine()}"


def machine() -> str:
    """CPU count and model, for the printout."""
    return (f"{cpu()}, torch {torch.__version__}, faiss {faiss.__version__}, "
            f"OpenBLAS kernel {os.environ.get('OPENBLAS_CORETYPE', 'auto')}")


def add_workload_arguments(parser, top_n: int = 100) -> None:
    """The serving workload every benchmark shares: catalogue size, d, K, history length, top_n."""
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--interests", type=int, default=4)
    parser.add_argument("--history", type=int, default=20, help="history length of every request (= max_len)")
    parser.add_argument("--top-n", type=int, default=top_n)


def _random_tower(n_items: int, dim: int, n_interests: int, max_len: int):
    """A randomly initialised MIND user tower and its item vectors (n_items, d)."""
    from model.config import ModelConfig
    from model.tower import MIND
    torch.manual_seed(0)
    mind = MIND(ModelConfig(n_items=n_items, embed_dim=dim, n_interests=n_interests, max_len=max_len)).eval()
    with torch.no_grad():
        vectors = mind.item_vectors().numpy()[1:]
    return mind.user_tower(), vectors


def bench_bundle(cache: Path, n_items: int, dim: int, n_interests: int, max_len: int) -> Path:
    """Build (once) and return a flat-index bundle of the requested shape."""
    path = cache / f"mind-bundle-{n_items}x{dim}-k{n_interests}-l{max_len}"
    if (path / "manifest.json").is_file():
        return path
    tower, vectors = _random_tower(n_items, dim, n_interests, max_len)
    rng = np.random.default_rng(0)
    return write_bundle(path, tower=tower, item_vectors=vectors, item_ids=[f"i{r}" for r in range(n_items)],
                        profile_vocab={}, popular_rows=rng.permutation(n_items).tolist(),
                        hyperparameters={"max_len": max_len, "dim": dim, "n_interests": n_interests},
                        metrics={}, index_type="flat")


def random_histories(bundle: Bundle, n: int, length: int, seed: int = 1) -> list[list[str]]:
    """``n`` histories of ``length`` random real item ids."""
    rows = np.random.default_rng(seed).integers(0, len(bundle.item_ids), size=(n, length))
    return [[bundle.item_ids[r] for r in row] for row in rows.tolist()]


def _run_batches(bundle: Bundle, queries: list[RecallQuery], batch_size: int, until: float, offset: int,
                 options: RetrievalOptions, settings: Settings | None, latencies: list[float]) -> int:
    """One worker: batches of ``batch_size`` until ``until``; returns the requests served."""
    if settings is not None:
        configure_compute(settings)       # OpenMP thread counts are per thread, as in the service
    served = 0
    while time.perf_counter() < until:
        batch = [queries[(offset + served + i) % len(queries)] for i in range(batch_size)]
        t0 = time.perf_counter()
        recall_batch(bundle, batch, options)
        latencies.append(time.perf_counter() - t0)
        served += batch_size
    return served


def measure(bundle: Bundle, batch_size: int, histories: list[list[str]], top_n: int, seconds: float,
            workers: int = 1, settings: Settings | None = None) -> dict:
    """Run batches of ``batch_size`` for ``seconds`` on ``workers`` threads at once (as the
    service's batch workers, each configured with ``settings``' thread counts); requests/s
    and per-batch latency (ms)."""
    options = RetrievalOptions.from_settings(settings or Settings())
    searchers = search_pool(settings) if settings is not None else None
    if searchers is not None:      # the flat index split as the service splits it
        bundle = split_index(bundle, settings.search_threads, searchers)
    queries = [RecallQuery(history=tuple(h), top_n=top_n) for h in histories]
    latencies: list[float] = []
    start, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(workers) as pool:
        served = sum(pool.map(lambda w: _run_batches(bundle, queries, batch_size, start + seconds, w * 997, options,
                                                     settings, latencies), range(workers)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    if searchers is not None:
        searchers.shutdown()
    ms = np.asarray(latencies) * 1000
    return {"batch": batch_size, "rps": served / elapsed, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "cpu_ms": cpu / max(served, 1) * 1000}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_arguments(parser)
    parser.add_argument("--batch-sizes", default="1,8,16,32,64")
    parser.add_argument("--seconds", type=float, default=3.0, help="per batch size")
    defaults = Settings()
    parser.add_argument("--torch-threads", type=int, default=defaults.torch_threads)
    parser.add_argument("--faiss-threads", type=int, default=defaults.faiss_threads)
    parser.add_argument("--search-threads", type=int, default=defaults.search_threads,
                        help="shards of the flat index one batch scans at once (the service's MIND_SEARCH_THREADS)")
    parser.add_argument("--faiss-blas-threshold", type=int, default=defaults.faiss_blas_threshold)
    parser.add_argument("--workers", type=int, default=1, help="threads running batches at once (the service's "
                        "MIND_BATCH_WORKERS), each with the thread counts above")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"command: python -m bench.pipeline {shlex.join(argv if argv is not None else sys.argv[1:])}")
    print(f"machine: {machine()}")
    settings = Settings(torch_threads=args.torch_threads, faiss_threads=args.faiss_threads,
                        search_threads=args.search_threads, faiss_blas_threshold=args.faiss_blas_threshold)
    configure_compute(settings)
    bundle = load_bundle(bench_bundle(args.cache, args.items, args.dim, args.interests, args.history))
    histories = random_histories(bundle, 4096, args.history)
    print(f"catalogue {args.items} x d={args.dim}, K={args.interests}, history {args.history}, top_n {args.top_n}, "
          f"torch threads {args.torch_threads}, faiss threads {args.faiss_threads}, "
          f"search threads {args.search_threads}, "
          f"blas threshold {args.faiss_blas_threshold}, {args.workers} worker thread(s)")
    print(f"{'batch':>6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>11}")
    for size in (int(s) for s in args.batch_sizes.split(",")):
        m = measure(bundle, size, histories, args.top_n, args.seconds, args.workers, settings)
        print(f"{m['batch']:>6} {m['rps']:>9.1f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} {m['cpu_ms']:>11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
