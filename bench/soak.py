"""Soak run of `mind serve`: a bounded number of requests (>= 100k) in rounds, sampling the
server's resident memory and open file descriptors after each; prints start / end / max and
the slope over the second half (after warm-up), per 10k requests.

    nice -n 10 .venv/bin/python -m bench.soak [--requests 100000] [--rounds 20] [--concurrency 16]

The mix per round: plain recalls (most), explain=true, a 4-request batch, and requests the
service must refuse (422); every round opens fresh connections, so a per-connection leak shows.
Reuses bench/load.py (server start, closed-loop driver).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from bench.load import drive, free_port, running_server
from bench.overload import rss_mib
from bench.pipeline import DEFAULT_CACHE, add_workload_arguments, bench_bundle, machine


def post(path: str, body) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


def request_mix(ids: list[str], history: int, top_n: int, n: int = 2000) -> list[bytes]:
    """``n`` pre-encoded requests: 80% recall, 10% explain, 5% batch of 4, 5% refused (422)."""
    rng = np.random.default_rng(11)
    out = []
    for i in range(n):
        rows = rng.integers(0, len(ids), size=history)
        body = {"history": [ids[r] for r in rows], "top_n": top_n}
        kind = i % 20
        if kind < 16:
            out.append(post("/recall", body))
        elif kind < 18:
            out.append(post("/recall", dict(body, explain=True)))
        elif kind == 18:
            out.append(post("/recall/batch", [body] * 4))
        else:
            out.append(post("/recall", dict(body, top_n=10**6)))
    return out


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    return float(np.polyfit(np.asarray(xs), np.asarray(ys), 1)[0]) if len(xs) > 1 else float("nan")


def soak(port: int, pid: int, requests: list[bytes], args) -> dict:
    per_round = args.requests // args.rounds
    served, samples, statuses = [0], [(rss_mib(pid), open_fds(pid))], {}
    for r in range(args.rounds):
        result = asyncio.run(drive(port, requests, args.concurrency, args.round_seconds, per_round))
        for code, count in result["statuses"].items():
            statuses[code] = statuses.get(code, 0) + count
        served.append(served[-1] + result["requests"])
        time.sleep(0.5)                     # let the server finish closing this round's connections
        samples.append((rss_mib(pid), open_fds(pid)))
        print(f"round {r + 1:>3}: {served[-1]:>7} requests, {result['rps']:.0f} ok/s, p99 {result['p99']:.1f} ms, "
              f"RSS {samples[-1][0]:.1f} MiB, fds {samples[-1][1]}", flush=True)
    return {"served": served, "rss": [s[0] for s in samples], "fds": [s[1] for s in samples], "statuses": statuses}


def report(r: dict) -> None:
    half = len(r["served"]) // 2
    x = [s / 10_000 for s in r["served"][half:]]
    for name, unit in (("rss", "MiB"), ("fds", "fds")):
        ys = r[name]
        print(f"{name.upper()}: start {ys[0]:.1f}, after round 1 {ys[1]:.1f}, end {ys[-1]:.1f}, max {max(ys):.1f} {unit}; "
              f"slope over the second half {slope(x, ys[half:]):+.3f} {unit} per 10k requests")
    print(f"requests {r['served'][-1]}, statuses {r['statuses']}")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_arguments(parser, top_n=50)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--round-seconds", type=float, default=120.0, help="time limit of one round")
    parser.add_argument("--bundle", type=Path, default=None, help="serve this bundle instead of building one")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"command: python -m bench.soak {shlex.join(argv if argv is not None else sys.argv[1:])}")
    print(f"machine: {machine()} (shared with other jobs; the client runs on the same cores)")
    bundle_path = args.bundle or bench_bundle(args.cache, args.items, args.dim, args.interests, args.history)
    print(f"bundle: {bundle_path}")
    ids = json.loads((bundle_path / "item_ids.json").read_text())
    requests = request_mix(ids, args.history, args.top_n)
    port = free_port()
    with running_server(bundle_path, port, {}, args.cache / "soak-server.log") as server:  # request logs on, as deployed
        report(soak(port, server.pid, requests, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
