"""Where `mind serve` spends its CPU at saturation: py-spy samples of the server process while
the load client (this process) drives it closed-loop, summed by thread and by stage.

    nice -n 10 .venv/bin/python -m bench.profile_server [--concurrency 32] [--seconds 8]
        [--items 100000] [--env KEY=VALUE] [--top 25]

Needs py-spy (`pip install py-spy`; a dev dependency) and ptrace rights over a child process.
Prints the share of samples per thread (event loop vs batch worker) and per stage (HTTP
parsing, validation, JSON, logging, tower, FAISS, merge, ...), then the hottest leaf frames,
so the limit at saturation (event loop, JSON, tower or FAISS) is read off, not guessed.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from bench.load import drive, free_port, request_bytes, run_client, running_server
from bench.pipeline import DEFAULT_CACHE, add_workload_arguments, bench_bundle, machine

# stage -> substrings of a frame ("function (file:line)"); the first stage matched from the leaf up wins
STAGES = {
    "tower (torch)": ("run_tower", "torch/"),
    "FAISS search": ("search_capsules", "faiss"),
    "merge + exclusion": ("merge_candidates", "retrieval.py"),
    "encode ids": ("encode_queries",),
    "answer dicts": ("_ranked_answer", "explain_interests", "_cold_start_answer"),
    "metrics": ("prometheus_client",),
    "request validation (pydantic)": ("pydantic", "fastapi/_compat", "to_query"),
    "JSON parse/serialise": ("json", "orjson"),
    "logging": ("logging/", "observability.py:JsonLineFormatter", "format ("),
    "routing + middleware (starlette/fastapi)": ("starlette/", "fastapi/", "observability.py"),
    "HTTP protocol (uvicorn/httptools)": ("uvicorn/", "httptools"),
    "asyncio loop": ("asyncio/", "uvloop"),
}


def stage_of(frames: list[str]) -> str:
    for frame in reversed(frames):                     # leaf first
        for stage, needles in STAGES.items():
            if any(n in frame for n in needles):
                return stage
    return "other"


def summarise(raw: Path, top: int) -> None:
    threads, stages, leaves = collections.Counter(), collections.Counter(), collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        n = int(count)
        total += n
        thread = frames[0]
        kind = "batch worker" if "recall-worker" in stack or "run_batch" in stack else (
            "event loop" if "uvicorn" in stack or "asyncio" in stack or "uvloop" in stack else thread[:40])
        threads[kind] += n
        stages[stage_of(frames[1:])] += n
        leaves[frames[-1][:110]] += n
    print(f"\n{total} samples (active only)\nby thread:")
    for name, n in threads.most_common(8):
        print(f"  {n / total:6.1%}  {name}")
    print("by stage:")
    for name, n in stages.most_common():
        print(f"  {n / total:6.1%}  {name}")
    print(f"hottest leaf frames (top {top}):")
    for name, n in leaves.most_common(top):
        print(f"  {n / total:6.1%}  {name}")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_arguments(parser)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--env", action="append", default=["MIND_LOG_REQUESTS=true"], metavar="KEY=VALUE")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"command: python -m bench.profile_server {shlex.join(argv if argv is not None else sys.argv[1:])}")
    print(f"machine: {machine()}; load average {os.getloadavg()}")
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    bundle_path = bench_bundle(args.cache, args.items, args.dim, args.interests, args.history)
    ids = json.loads((bundle_path / "item_ids.json").read_text())
    rows = np.random.default_rng(7).integers(0, len(ids), size=(2048, args.history))
    requests = [request_bytes([ids[r] for r in row], args.top_n) for row in rows.tolist()]
    port, raw = free_port(), args.cache / "profile.raw"
    with running_server(bundle_path, port, dict(e.split("=", 1) for e in args.env), args.cache / "profile-server.log") as server:
        run_client(drive(port, requests, args.concurrency, 1.0, 10**9))          # warm
        spy_cmd = [spy, "record", "--pid", str(server.pid), "--duration", str(int(args.seconds)), "--rate", str(args.rate),
                   "--format", "raw", "--nonblocking", "--threads", "--output", str(raw)]
        recorder = threading.Thread(target=subprocess.run, args=(spy_cmd,), kwargs={"check": True, "capture_output": True})
        recorder.start()
        r = run_client(drive(port, requests, args.concurrency, args.seconds, 10**9))
        recorder.join(timeout=60)
    print(f"load during the profile: {r['rps']:.1f} req/s at concurrency {args.concurrency}, p50 {r['p50']:.1f} ms, "
          f"p99 {r['p99']:.1f} ms, statuses {r['statuses']}")
    summarise(raw, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
