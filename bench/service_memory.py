"""Resident memory of `mind serve` per catalogue size (bytes per item), beside the index alone.

    python -m bench.service_memory [--items 10000,100000,1000000]

For each catalogue: builds (or reuses) the benchmark bundle (d=64, K=4, flat index), starts
the real service, waits for /readyz, and reads the server process's VmRSS. The per-item figure
is the slope between catalogue sizes, so the fixed cost of Python, torch and FastAPI is
reported apart from what each item costs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.load import free_port, running_server
from bench.pipeline import DEFAULT_CACHE, bench_bundle, machine

DIM, INTERESTS, MAX_LEN = 64, 4, 20


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", default="10000,100000,1000000")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    print(f"command: python -m bench.service_memory --items {args.items}")
    print(f"machine: {machine()}")
    print(f"{'items':>9} {'service RSS MiB':>16} {'index bytes (n*d*4) MiB':>24}")
    points = []
    for n_items in (int(n) for n in args.items.split(",")):
        bundle = bench_bundle(args.cache, n_items, DIM, INTERESTS, MAX_LEN)
        with running_server(bundle, free_port(), {}, args.cache / "server-memory.log") as server:
            rss = rss_bytes(server.pid)
        points.append((n_items, rss))
        print(f"{n_items:>9} {rss / 2**20:>16.1f} {n_items * DIM * 4 / 2**20:>24.1f}", flush=True)
    for (n0, r0), (n1, r1) in zip(points, points[1:]):
        print(f"{n0}->{n1} items: {(r1 - r0) / (n1 - n0):.0f} resident bytes per item "
              f"(flat index alone: {DIM * 4} B/item)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
