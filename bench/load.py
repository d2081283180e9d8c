"""HTTP load benchmark of `mind serve`: throughput and latency percentiles per concurrency level.

    nice -n 10 .venv/bin/python -m bench.load [--items 100000] [--dim 64] [--interests 4]
        [--history 20] [--top-n 100] [--concurrency 1,4,16,32,64] [--seconds 5] [--max-requests 20000]
        [--server mind,plain,mind+MIND_BATCH_WAIT_MS=2] [--client auto|wrk|python]

Starts each server as a subprocess on a free loopback port (service defaults unless --env
KEY=VALUE), warms each up (--warmup-seconds of unmeasured load), then drives them,
interleaved level by level so that all see the same machine load (printed per row), from
another process: wrk (bench/wrk_client.py; `--client auto` picks
it when it is on the PATH, as issue 11 measured) or this process's lean asyncio HTTP/1.1
keep-alive client. Either way one connection per concurrent user, pre-encoded bodies of 20
random real item ids. Before the servers start it measures the bare in-process pipeline
(bench/pipeline.py, with the server's batch workers) on the same bundle, and prints HTTP
throughput as a ratio of it. Prints the command, the machine and the client.
"""
from __future__ import annotations

import argparse
import contextlib
import asyncio
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench import wrk_client
from bench.pipeline import DEFAULT_CACHE, add_workload_arguments, bench_bundle, machine, measure, random_histories

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 120


def request_body(history: list[str], top_n: int) -> bytes:
    return json.dumps({"history": history, "top_n": top_n}).encode()


def request_bytes(history: list[str], top_n: int) -> bytes:
    body = request_body(history, top_n)
    head = (f"POST /recall HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def _read_response(reader: asyncio.StreamReader, headers: dict | None = None, body: list | None = None) -> int:
    """Read one HTTP/1.1 response with a Content-Length body; return its status (and fill
    ``headers`` {lower-case name: value}, bytes, and append the body to ``body``, when given:
    bench/overload.py)."""
    status = int((await reader.readline()).split(b" ", 2)[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if headers is not None:
            headers[name.lower()] = value.strip()
        if name.lower() == b"content-length":
            length = int(value)
    payload = await reader.readexactly(length)
    if body is not None:
        body.append(payload)
    return status


async def _user(port: int, requests: list[bytes], offset: int, until: float, budget: list[int],
                latencies: list[float], statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while time.perf_counter() < until and budget[0] > 0:
            budget[0] -= 1
            start = time.perf_counter()
            writer.write(requests[i % len(requests)])
            status = await _read_response(reader)
            if status == 200:                # percentiles of answers only: a fast 503 is no answer
                latencies.append(time.perf_counter() - start)
            statuses[status] = statuses.get(status, 0) + 1
            i += 1
    finally:
        writer.close()


async def drive(port: int, requests: list[bytes], concurrency: int, seconds: float, max_requests: int) -> dict:
    """``concurrency`` keep-alive users for ``seconds`` (or ``max_requests`` in all); req/s and
    latency percentiles count 200 answers only (a 503 is fast and no answer)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    budget = [max_requests]
    start = time.perf_counter()
    await asyncio.gather(*(_user(port, requests, u * 997, start + seconds, budget, latencies, statuses)
                           for u in range(concurrency)))
    elapsed = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    ok = statuses.get(200, 0)
    return {"concurrency": concurrency, "requests": sum(statuses.values()), "ok": ok, "rps": ok / elapsed,
            "statuses": statuses,
            **{f"p{q}": float(np.percentile(ms, q)) if len(ms) else float("nan") for q in (50, 95, 99)}}


def run_client(coroutine):
    """Run on uvloop when installed: the client shares the CPUs with the server."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVERS = {  # --server name -> module run as the server (both take --bundle and --port)
    "mind": ["mind_recall.cli", "serve"],
    "plain": ["bench.plain_server"],   # the one-request-at-a-time FastAPI baseline
}


def start_server(bundle: Path, port: int, env: dict[str, str], log_path: Path, kind: str = "mind") -> subprocess.Popen:
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", *SERVERS[kind], "--bundle", str(bundle),
                             "--port", str(port)], cwd=REPO_ROOT, env=dict(os.environ, **env),
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}; log: {log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc
        except OSError:
            pass  # not listening yet
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server not ready in {READY_TIMEOUT_S} s; log: {log_path}")


@contextlib.contextmanager
def running_server(bundle: Path, port: int, env: dict[str, str], log_path: Path, kind: str = "mind"):
    """A ready server for the ``with`` block; SIGTERM and its exit code printed on the way out."""
    server = start_server(bundle, port, env, log_path, kind)
    try:
        yield server
    finally:
        server.send_signal(signal.SIGTERM)
        # uvicorn re-raises SIGTERM after its graceful shutdown: `mind serve` turns that into
        # exit 0, bench/plain_server.py (uvicorn.run as is) dies of it: -15 there is normal.
        print(f"{kind} server exit code after SIGTERM: {server.wait(timeout=60)}")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_arguments(parser)
    parser.add_argument("--concurrency", default="1,4,16,32,64")
    parser.add_argument("--seconds", type=float, default=5.0, help="per concurrency level")
    parser.add_argument("--max-requests", type=int, default=20_000, help="per concurrency level")
    parser.add_argument("--warmup-seconds", type=float, default=3.0,
                        help="unmeasured load per server (one caller) before the first level")
    parser.add_argument("--pipeline-seconds", type=float, default=3.0, help="0 skips the in-process baseline")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="server environment")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator: wrk (C; auto picks it when installed) or the asyncio client here")
    parser.add_argument("--server", default="mind",
                        help="comma list of servers measured interleaved, level by level, in one sitting: mind = "
                             "`mind serve`; plain = bench/plain_server.py, the unbatched FastAPI baseline; "
                             "mind+KEY=VALUE[+...] = mind with extra environment (e.g. mind+MIND_BATCH_WAIT_MS=2)")
    args = parser.parse_args(argv)
    args.servers = [spec.strip() for spec in args.server.split(",")]
    if args.client == "auto":
        args.client = "wrk" if wrk_client.available() else "python"
    elif args.client == "wrk" and not wrk_client.available():
        parser.error("--client wrk: wrk is not on the PATH (Debian: apt-get install wrk)")
    for spec in args.servers:
        if spec.split("+")[0] not in SERVERS:
            parser.error(f"--server {spec!r}: the name must be one of {sorted(SERVERS)}")
    return args


def _pipeline_baseline(bundle_path: Path, args) -> float:
    """Best requests/s of the bare pipeline over batch sizes 16, 32 and 64 (the server's largest batch),
    with the server's compute settings and as many batches at once as it has batch workers (and,
    printed beside it, one batch at a time: under load the server runs one batch at a time)."""
    from model.bundle import load_bundle
    from service.pipeline import configure_compute
    from service.settings import Settings, batch_workers_of
    settings = Settings(**{k.removeprefix("MIND_").lower(): v for k, v in (e.split("=", 1) for e in args.env)})
    configure_compute(settings)
    workers = batch_workers_of(settings, "cpu")
    bundle = load_bundle(bundle_path)
    histories = random_histories(bundle, 4096, args.history)
    best = {n: max(measure(bundle, size, histories, args.top_n, args.pipeline_seconds, n, settings)["rps"]
                   for size in (16, 32, 64)) for n in sorted({1, workers})}
    print("bare pipeline (in-process, no HTTP): " + ", ".join(f"{rps:.1f} req/s with {n} batch(es) at once"
                                                              for n, rps in best.items())
          + f"; the ratios below are to the {workers}-batch figure")
    return best[workers]


HEADER = (f"{'server':<24} {'conc':>5} {'ok':>7} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
          f"{'vs bare':>8}  {'load avg':>14}  statuses")


def row(name: str, r: dict, baseline: float | None) -> str:
    """One table line of a ``drive`` result, with the machine's load average beside it."""
    ratio = f"{r['rps'] / baseline:.0%}" if baseline else "-"
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{name:<24} {r['concurrency']:>5} {r['ok']:>7} {r['rps']:>8.1f} {r['p50']:>8.2f} {r['p95']:>8.2f} "
            f"{r['p99']:>8.2f} {ratio:>8}  {load:>14}  {r['statuses']}")


def qualifies(r: dict, p99_ms: float) -> bool:
    """A level counts for "best req/s at p99 <= X" when its p99 is within X and at most 1% of its
    requests were not answered 200 (wrk's percentiles include fast 503s)."""
    return r["p99"] <= p99_ms and r["ok"] >= 0.99 * r["requests"]


def compare(results: dict[str, list[dict]], baseline: float | None, p99_ms: float = 50.0) -> None:
    """Each non-plain server against the plain one: the issue-11 targets."""
    plain = results.get("plain")
    for name, rows in results.items():
        if name == "plain" or plain is None:
            continue
        at = {r["concurrency"]: r for r in rows}
        base = {r["concurrency"]: r for r in plain}
        best = max((r["rps"] for r in rows if qualifies(r, p99_ms)), default=0.0)
        best_plain = max((r["rps"] for r in plain if qualifies(r, p99_ms)), default=0.0)
        print(f"{name} vs plain:")
        if 1 in at and 1 in base:
            print(f"  concurrency 1 p50: {at[1]['p50']:.2f} vs {base[1]['p50']:.2f} ms (target <=)")
        if 2 in at and 2 in base:
            print(f"  concurrency 2 req/s: {at[2]['rps']:.1f} vs {base[2]['rps']:.1f} (target >=)")
        ratio = f"{best / best_plain:.2f}x" if best_plain else "no plain level qualifies"
        print(f"  best req/s at p99 <= {p99_ms:.0f} ms (and <= 1% refused): {best:.1f} vs {best_plain:.1f} = {ratio} "
              f"(target >= 3x)")
        if baseline:
            print(f"  best HTTP req/s / bare pipeline: {max(r['rps'] for r in rows) / baseline:.0%} (target >= 70%)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"command: python -m bench.load {shlex.join(argv if argv is not None else sys.argv[1:])}")
    print(f"machine: {machine()}; load average at start {os.getloadavg()}")
    bundle_path = bench_bundle(args.cache, args.items, args.dim, args.interests, args.history)
    baseline = _pipeline_baseline(bundle_path, args) if args.pipeline_seconds > 0 else None
    ids = json.loads((bundle_path / "item_ids.json").read_text())
    rows = np.random.default_rng(7).integers(0, len(ids), size=(2048, args.history))
    requests = [request_bytes([ids[r] for r in row], args.top_n) for row in rows.tolist()]
    env = dict(e.split("=", 1) for e in args.env)
    script = None
    if args.client == "wrk":
        bodies = [request_body([ids[r] for r in row], args.top_n) for row in rows[:256].tolist()]
        script = wrk_client.write_script(args.cache / "load-wrk.lua", bodies)
        shown = wrk_client.command(0, Path("load-wrk.lua"), 1, args.seconds)
        client = f"wrk, one thread, keep-alive ({shlex.join(shown)} per level, the script in --cache)"
    else:
        client = "bench/load.py's asyncio keep-alive client, another process"
    print(f"catalogue {args.items} x d={args.dim}, K={args.interests}, history {args.history}, "
          f"top_n {args.top_n}; server env {args.env or 'defaults'}; client: {client}")
    results: dict[str, list[dict]] = {spec: [] for spec in args.servers}
    with contextlib.ExitStack() as stack:
        ports = {}
        for spec in args.servers:
            name, *extra = spec.split("+")
            ports[spec] = free_port()
            stack.enter_context(running_server(bundle_path, ports[spec], dict(env, **dict(e.split("=", 1) for e in extra)),
                                               args.cache / f"server-{ports[spec]}.log", name))

        def measure(spec: str, concurrency: int, seconds: float) -> dict:
            if script is not None:
                return wrk_client.drive(ports[spec], script, concurrency, seconds)
            return run_client(drive(ports[spec], requests, concurrency, seconds, args.max_requests))
        # Without it the first server's first level ran cold and the second one's warm: in
        # both orders, whichever went second won concurrency 1 by 0.1-0.3 ms (bench/README.md,
        # "Serving, ninth pass").
        for spec in args.servers if args.warmup_seconds > 0 else ():
            measure(spec, 1, args.warmup_seconds)
        print(HEADER)
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            for spec in args.servers:          # interleaved: every server sees the same machine load
                r = measure(spec, concurrency, args.seconds)
                results[spec].append(r)
                print(row(spec, r, baseline if not spec.startswith("plain") else None), flush=True)
    compare(results, baseline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
