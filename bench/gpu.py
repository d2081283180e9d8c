"""The GPU run in one shot: tower throughput per batch size, `mind serve --device` under load,
and a check that the device's answers agree with the CPU's.

    python -m bench.gpu                      # CUDA, full size (a few minutes)
    python -m bench.gpu --device cpu --quick # CI-sized, no GPU needed (tests/test_bench_gpu.py)

1. Tower histories/s at batch 1, 8, 64, 256 and 1024 on the device (whole batches, one call
   each, synchronised), beside the CPU's.
2. The service with ``MIND_DEVICE=<device>`` under closed-loop load at several concurrencies,
   printed with the same table as bench/load.py (the tower runs whole batches on CUDA; the
   FAISS index stays on the CPU).
3. Agreement: the same requests through the pipeline on the device and on the CPU: identical
   ids in the same order, scores within ``--tolerance``; an order difference is accepted
   only between items whose scores are within it (near-ties). Exit code 1 when they disagree.
Every phase is bounded in time, so the full run stays well inside 10 minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench.load import HEADER, drive, free_port, request_bytes, row, run_client, running_server
from bench.pipeline import DEFAULT_CACHE, add_workload_arguments, bench_bundle, machine, random_histories
from model.bundle import load_bundle
from service.pipeline import RecallQuery, RetrievalOptions, bucket_shapes, configure_compute, recall_batch
from service.settings import Settings

TOWER_BATCHES = (1, 8, 64, 256, 1024)


def tower_rate(bundle, batch: int, seconds: float) -> float:
    """Histories/s of one tower call on ``batch`` histories (inputs already on the device)."""
    rng = np.random.default_rng(0)
    history = torch.from_numpy(rng.integers(1, len(bundle.item_ids) + 1, size=(batch, bundle.max_len))).to(bundle.device)
    profile = torch.zeros((batch, len(bundle.profile_features)), dtype=torch.int64, device=bundle.device)
    sync = torch.cuda.synchronize if bundle.device.type == "cuda" else (lambda: None)
    calls, start = 0, time.perf_counter()
    with torch.inference_mode():
        bundle.tower(history, profile)                       # warm (kernels, allocator)
        sync()
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or calls < 3:
            bundle.tower(history, profile)
            calls += 1
        sync()
    return batch * calls / (time.perf_counter() - start)


def tower_table(bundles: dict, batches: tuple[int, ...], seconds: float) -> None:
    print(f"\n1. tower histories/s per call size (one call per batch)\n{'batch':>6} "
          + " ".join(f"{name:>14}" for name in bundles))
    for batch in batches:
        print(f"{batch:>6} " + " ".join(f"{tower_rate(b, batch, seconds):>14,.0f}" for b in bundles.values()), flush=True)


def service_table(bundle_path: Path, device: str, args) -> None:
    ids = json.loads((bundle_path / "item_ids.json").read_text())
    rows = np.random.default_rng(7).integers(0, len(ids), size=(2048, args.history))
    requests = [request_bytes([ids[r] for r in r_], args.top_n) for r_ in rows.tolist()]
    env = {"MIND_DEVICE": device, "MIND_LOG_REQUESTS": "false", "MIND_MAX_BATCH_SIZE": str(args.max_batch_size)}
    port = free_port()
    print(f"\n2. mind serve under load, server env {env}")
    with running_server(bundle_path, port, env, args.cache / f"gpu-server-{port}.log"):
        print(HEADER)
        for concurrency in args.concurrency:
            r = run_client(drive(port, requests, concurrency, args.seconds, 10**9))
            print(row(f"mind --device {device}", r, None), flush=True)


def agreement(cpu, dev, args) -> bool:
    """Same requests on both bundles; prints the figures, returns whether they agree."""
    options = RetrievalOptions.from_settings(Settings())
    queries = [RecallQuery(history=tuple(h), top_n=args.top_n) for h in random_histories(cpu, args.agreement, args.history, seed=5)]
    cpu_answers, _ = recall_batch(cpu, queries, options)
    dev_answers, _ = recall_batch(dev, queries, replace(options, tower_shapes=bucket_shapes(len(queries))))
    same, explained, max_diff = 0, 0, 0.0
    for a, b in zip(cpu_answers, dev_answers):
        ids_a, ids_b = [i["item_id"] for i in a["items"]], [i["item_id"] for i in b["items"]]
        scores_a, scores_b = np.array([i["score"] for i in a["items"]]), np.array([i["score"] for i in b["items"]])
        diff = float(np.abs(scores_a - scores_b).max()) if len(scores_a) == len(scores_b) else float("inf")
        max_diff = max(max_diff, diff)
        same += ids_a == ids_b
        # an order difference is a near-tie when rank by rank the scores still agree within tolerance
        explained += ids_a != ids_b and diff <= args.tolerance
    ok = max_diff <= args.tolerance
    print(f"\n3. agreement, {len(queries)} requests, {dev.device} vs cpu: identical ids and order {same}/{len(queries)}, "
          f"near-tie order differences {explained}, max |score difference| rank by rank {max_diff:.2e} "
          f"(tolerance {args.tolerance:g}): {'AGREE' if ok else 'DISAGREE'}")
    return ok


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_arguments(parser)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="CI size: small batches, short levels")
    parser.add_argument("--concurrency", default=None, help="default 1,8,32,64,128 (quick: 1,4)")
    parser.add_argument("--seconds", type=float, default=None, help="per level (default 4; quick 1)")
    parser.add_argument("--max-batch-size", type=int, default=256, help="MIND_MAX_BATCH_SIZE of the served run")
    parser.add_argument("--agreement", type=int, default=None, help="requests compared (default 512; quick 32)")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest accepted |score difference|")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in (args.concurrency or ("1,4" if args.quick else "1,8,32,64,128")).split(",")]
    args.seconds = args.seconds or (1.0 if args.quick else 4.0)
    args.agreement = args.agreement or (32 if args.quick else 512)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"command: python -m bench.gpu {shlex.join(argv if argv is not None else sys.argv[1:])}")
    print(f"machine: {machine()}; load average {os.getloadavg()}")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench.gpu: --device cuda but torch sees no GPU (run with --device cpu for the CI-sized check)")
        return 2
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}")
    configure_compute(Settings())
    path = bench_bundle(args.cache, args.items, args.dim, args.interests, args.history)
    print(f"catalogue {args.items} x d={args.dim}, K={args.interests}, history {args.history}, top_n {args.top_n}")
    cpu = load_bundle(path)
    dev = load_bundle(path, device=args.device)
    batches = TOWER_BATCHES[:3] if args.quick else TOWER_BATCHES
    tower_table({"cpu": cpu} if args.device == "cpu" else {"cpu": cpu, args.device: dev}, batches,
                0.2 if args.quick else 1.5)
    service_table(path, args.device, args)
    return 0 if agreement(cpu, dev, args) else 1


if __name__ == "__main__":
    sys.exit(main())
