"""Overload drill of `mind serve`: saturation throughput, then an open-loop arrival rate of
``--factor`` x that for ``--seconds``; prints whether it stayed up, the 503 (+ Retry-After)
share, the p99 of accepted requests against the latency objective (MIND_LATENCY_OBJECTIVE_MS),
answers 200 per server CPU-second against saturation, the server's RSS before / during /
after, and how long latency takes to return to normal once the load stops.

    nice -n 10 .venv/bin/python -m bench.overload [--items 100000] [--factor 3] [--seconds 20]
        [--env MIND_LATENCY_OBJECTIVE_MS=100] [--env MIND_MAX_QUEUE=128]

Loopback only, bounded: every phase has a time limit and the open loop holds at most
``--max-connections`` connections (arrivals finding none free are counted, not queued).
Reuses bench/load.py (server start, request encoding, response reader, closed-loop driver).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from bench.load import _read_response, drive, free_port, request_bytes, running_server
from bench.pipeline import DEFAULT_CACHE, add_workload_arguments, bench_bundle, machine

TOOK_MS = re.compile(rb'"took_ms":\s*([0-9.eE+-]+)')
TICK_S = 0.005
KEEP_ALIVE_S = 4.0   # reuse an idle connection only this long (uvicorn's keep-alive timeout is 5 s)
DEFAULT_ENV = ("MIND_MAX_QUEUE=128", "MIND_REQUEST_TIMEOUT_MS=500", "MIND_LOG_REQUESTS=false")


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (/proc/<pid>/status VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kib / 1024


def cpu_s(pid: int, loop_only: bool = False) -> float:
    """User + system CPU seconds of ``pid`` so far (/proc/<pid>/stat), or of its main thread
    alone, which runs the event loop (/proc/<pid>/task/<pid>/stat)."""
    with open(f"/proc/{pid}/task/{pid}/stat" if loop_only else f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class OpenLoop:
    """Arrivals at a fixed rate over a bounded pool of keep-alive connections."""

    def __init__(self, port: int, requests: list[bytes], max_connections: int) -> None:
        self.port, self.requests, self.max_connections = port, requests, max_connections
        self.idle: list = []     # (connection, idle since); uvicorn closes keep-alives idle > 5 s
        self.opened = 0
        self.results: list[tuple[int, float, bool, float]] = []   # (status, seconds, has Retry-After, sent at)
        self.took_ms: list[float] = []     # the service's own took_ms of each answer 200
        self.failed_at: list[float] = []   # send times of requests the service never answered
        self.failure_kinds: dict[str, int] = {}
        self.unsent = 0          # arrivals finding every connection busy (client-side cap)

    async def _one(self, conn, payload: bytes) -> None:
        reader, writer = conn
        started = time.perf_counter()
        headers: dict = {}
        body: list[bytes] = []
        try:
            writer.write(payload)
            status = await _read_response(reader, headers, body)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as err:
            self.failed_at.append(started)
            self.failure_kinds[type(err).__name__] = self.failure_kinds.get(type(err).__name__, 0) + 1
            writer.close()
            self.opened -= 1
            return
        self.results.append((status, time.perf_counter() - started, b"retry-after" in headers, started))
        if status == 200 and (took := TOOK_MS.search(body[0])):
            self.took_ms.append(float(took.group(1)))
        self.idle.append((conn, time.perf_counter()))

    async def _connection(self):
        while self.idle:
            conn, since = self.idle.pop()
            if time.perf_counter() - since < KEEP_ALIVE_S:
                return conn
            conn[1].close()                                  # stale: the server may have closed it
            self.opened -= 1
        if self.opened >= self.max_connections:
            return None
        self.opened += 1
        try:
            return await asyncio.open_connection("127.0.0.1", self.port)
        except OSError as err:
            self.opened -= 1
            self.failed_at.append(time.perf_counter())
            self.failure_kinds[f"connect: {type(err).__name__}"] = self.failure_kinds.get(f"connect: {type(err).__name__}", 0) + 1
            return None

    async def run(self, rate: float, seconds: float) -> float:
        """Offer ``rate`` requests/s for ``seconds``; returns the rate actually offered."""
        tasks, sent, start = set(), 0, time.perf_counter()
        while (now := time.perf_counter()) < start + seconds:
            due = int((now - start) * rate) - sent - self.unsent
            for _ in range(due):
                conn = await self._connection()
                if conn is None:
                    self.unsent += 1
                    continue
                task = asyncio.create_task(self._one(conn, self.requests[sent % len(self.requests)]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            await asyncio.sleep(TICK_S)
        if tasks:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        for (_, writer), _ in self.idle:
            writer.close()
        return sent / seconds


def summarise(loop: OpenLoop) -> dict:
    statuses: dict[int, int] = {}
    for status, *_ in loop.results:
        statuses[status] = statuses.get(status, 0) + 1
    ok_ms = np.asarray([s for status, s, *_ in loop.results if status == 200]) * 1000
    shed = [has for status, _, has, _ in loop.results if status == 503]
    total = len(loop.results)
    return {"statuses": statuses, "answered": total, "errors": len(loop.failed_at), "failure_kinds": loop.failure_kinds, "unsent": loop.unsent,
            "shed_share": len(shed) / max(total, 1), "retry_after_share": sum(shed) / max(len(shed), 1),
            **{f"ok_p{q}": float(np.percentile(ok_ms, q)) if len(ok_ms) else float("nan") for q in (50, 99)},
            "took_p99": float(np.percentile(loop.took_ms, 99)) if loop.took_ms else float("nan")}


async def probe_ms(port: int, request: bytes, n: int, q: float = 50) -> float:
    """The ``q``-th percentile latency (ms) of ``n`` sequential requests on one connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        writer.write(request)
        await _read_response(reader)
        times.append(time.perf_counter() - started)
    writer.close()
    return float(np.percentile(times, q)) * 1000


PROBE_BURST = 5       # requests per probe, one after another on one connection
PROBE_GAP_S = 0.05    # idle time between two probes


async def probe_medians(port: int, request: bytes, probes: int) -> list[float]:
    """The median latencies (ms) of ``probes`` probes, PROBE_GAP_S apart: the recovery check's
    own pattern, so that 'normal' is what an idle server gives it (on some VMs the first
    requests after even 50 ms of idle take twice as long as back-to-back ones)."""
    seen = []
    for _ in range(probes):
        seen.append(round(await probe_ms(port, request, PROBE_BURST), 2))
        await asyncio.sleep(PROBE_GAP_S)
    return seen


async def recovery_s(port: int, request: bytes, normal_ms: float, limit_s: float = 60) -> tuple[float, list]:
    """Seconds after the load stops until a probe's median is back within normal variation
    (at most ``normal_ms``, the p90 of the quiet server's probe medians), and the probe
    medians (ms) seen."""
    start, seen = time.perf_counter(), []
    while time.perf_counter() - start < limit_s:
        seen.append(round(await probe_ms(port, request, PROBE_BURST), 2))
        if seen[-1] <= normal_ms:
            return time.perf_counter() - start, seen
        await asyncio.sleep(PROBE_GAP_S)
    return float("inf"), seen


def _prober(conn, port: int, request: bytes) -> None:
    """Probe process: answers ("probe", probes) with probe_medians and ("recover", normal_ms)
    with recovery_s until it receives None. Probing from its own process keeps the load client's
    after-effects (its CPU and its thousands of closing sockets) out of the recovery figure."""
    while (command := conn.recv()) is not None:
        kind, arg = command
        conn.send(asyncio.run(probe_medians(port, request, arg) if kind == "probe" else recovery_s(port, request, arg)))


class Prober:
    """A probe process started before the overload, asked for latencies over a pipe."""

    def __init__(self, port: int, request: bytes) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_prober, args=(child, port, request), daemon=True)
        self._process.start()

    def ask(self, kind: str, arg):
        self._conn.send((kind, arg))
        return self._conn.recv()

    def close(self) -> None:
        self._conn.send(None)
        self._process.join(timeout=10)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_arguments(parser)
    parser.add_argument("--saturation-concurrency", type=int, default=32)
    parser.add_argument("--saturation-seconds", type=float, default=5.0)
    parser.add_argument("--warmup-seconds", type=float, default=2.0, help="unmeasured load before saturation")
    parser.add_argument("--factor", type=float, default=3.0, help="offered load / saturation throughput")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the overload")
    parser.add_argument("--max-connections", type=int, default=512)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help=f"server environment (defaults: {' '.join(DEFAULT_ENV)})")
    parser.add_argument("--bundle", type=Path, default=None, help="serve this bundle instead of building one")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    return parser.parse_args(argv)


async def saturate(port: int, pid: int, requests: list[bytes], args) -> dict:
    """Closed-loop throughput at --saturation-concurrency, and the server's CPU seconds for it,
    after --warmup-seconds of the same load unmeasured (a fresh server's first seconds are
    slower: bench.load's warm-up)."""
    if args.warmup_seconds > 0:
        await drive(port, requests, args.saturation_concurrency, args.warmup_seconds, 10**9)
    cpu_start, loop_start = cpu_s(pid), cpu_s(pid, loop_only=True)
    saturation = await drive(port, requests, args.saturation_concurrency, args.saturation_seconds, 10**9)
    saturation["server_cpu_s"] = cpu_s(pid) - cpu_start
    saturation["loop_cpu_s"] = cpu_s(pid, loop_only=True) - loop_start
    return saturation


async def drill(port: int, pid: int, requests: list[bytes], saturation: dict, args) -> dict:
    prober = Prober(port, requests[0])
    quiet = prober.ask("probe", 20)
    normal, normal_p90 = float(np.percentile(quiet, 50)), float(np.percentile(quiet, 90))
    rate = saturation["rps"] * args.factor
    loop, rss = OpenLoop(port, requests, args.max_connections), [rss_mib(pid)]

    async def sample_rss():
        while True:
            await asyncio.sleep(0.5)
            rss.append(rss_mib(pid))
    sampler = asyncio.create_task(sample_rss())
    cpu_before, loop_before, client_before = cpu_s(pid), cpu_s(pid, loop_only=True), sum(os.times()[:2])
    offered = await loop.run(rate, args.seconds)
    cpu = {"server": cpu_s(pid) - cpu_before, "loop": cpu_s(pid, loop_only=True) - loop_before,
           "client": sum(os.times()[:2]) - client_before}
    sampler.cancel()
    recovered, probes = prober.ask("recover", normal_p90)
    prober.close()
    return {"normal_ms": normal, "normal_p90_ms": normal_p90, "saturation": saturation, "target_rate": rate, "offered_rate": offered,
            "rss_during": rss, "recovery_s": recovered, "probes": probes, "cpu": cpu, "seconds": args.seconds, **summarise(loop)}


def report(r: dict, env: dict, rss_before: float, rss_after: float, alive: bool) -> None:
    sat = r["saturation"]
    from service.settings import Settings
    objective = float(env.get("MIND_LATENCY_OBJECTIVE_MS", Settings.model_fields["latency_objective_ms"].default))
    print(f"normal latency (quiet server; medians of {PROBE_BURST} sequential requests, {PROBE_GAP_S * 1000:.0f} ms apart, "
          f"as the recovery probe): {r['normal_ms']:.2f} ms median, p90 {r['normal_p90_ms']:.2f} ms")
    print(f"saturation (same server env, MIND_LATENCY_OBJECTIVE_MS=0): {sat['rps']:.1f} req/s at concurrency "
          f"{sat['concurrency']} (p99 {sat['p99']:.1f} ms, statuses {sat['statuses']})")
    print(f"overload: target {r['target_rate']:.0f} req/s, offered {r['offered_rate']:.0f} req/s, "
          f"answered {r['answered']}, statuses {r['statuses']}, connection errors {r['errors']} {r['failure_kinds']}, "
          f"unsent (client connection cap) {r['unsent']}")
    print(f"CPU seconds during the overload ({r['cpu']['server'] + r['cpu']['client']:.1f} s of "
          f"{os.cpu_count() * r['seconds']:.0f} core-seconds on {os.cpu_count()} cores): server {r['cpu']['server']:.1f}, "
          f"load client {r['cpu']['client']:.1f}")
    answered = r["statuses"].get(200, 0)
    print(f"the server's event-loop thread: saturation {sat['loop_cpu_s']:.1f} CPU-s "
          f"({sat['loop_cpu_s'] / max(sat['ok'], 1) * 1e6:.0f} us per answer), overload {r['cpu']['loop']:.1f} CPU-s "
          f"({r['cpu']['loop'] / max(answered, 1) * 1e6:.0f} us per answer 200, "
          f"{r['cpu']['loop'] / max(r['answered'], 1) * 1e6:.0f} us per answer of any status)")
    per_cpu = {"saturation": sat["ok"] / max(sat["server_cpu_s"], 1e-9),
               "overload": answered / max(r["cpu"]["server"], 1e-9)}
    print(f"answers 200 per server CPU-second (robust to the CPU share the server got): saturation "
          f"{per_cpu['saturation']:.0f}, overload {per_cpu['overload']:.0f} "
          f"({per_cpu['overload'] / max(per_cpu['saturation'], 1e-9):.0%} of saturation; target >= 90%)")
    print(f"shed: {r['shed_share']:.1%} of answers were 503; {r['retry_after_share']:.1%} of those had Retry-After")
    print(f"accepted (client-measured, so including time queued in the kernel before the server reads it): "
          f"p50 {r['ok_p50']:.1f} ms, p99 {r['ok_p99']:.1f} ms "
          f"(latency objective {objective:.0f} ms; within: {r['ok_p99'] <= objective}); the service's own took_ms "
          f"(from when it read the request to its answer) p99 {r['took_p99']:.1f} ms")
    during = r["rss_during"]
    print(f"RSS MiB: before {rss_before:.1f}, during max {max(during):.1f} (last {during[-1]:.1f}), "
          f"after {rss_after:.1f}")
    print(f"recovery to normal latency after the load stopped and its answers came back (probed from a separate "
          f"process): {r['recovery_s']:.2f} s "
          f"(probe medians, ms: {r['probes'][:8]}{' ...' if len(r['probes']) > 8 else ''})")
    print(f"stayed up: {alive}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"command: python -m bench.overload {shlex.join(argv if argv is not None else sys.argv[1:])}")
    print(f"machine: {machine()} (shared with other jobs; the client runs on the same cores); "
          f"load average {os.getloadavg()}")
    env = dict(e.split("=", 1) for e in (*DEFAULT_ENV, *args.env))
    print(f"server env: {env}")
    bundle_path = args.bundle or bench_bundle(args.cache, args.items, args.dim, args.interests, args.history)
    print(f"bundle: {bundle_path}")
    ids = json.loads((bundle_path / "item_ids.json").read_text())
    rows = np.random.default_rng(7).integers(0, len(ids), size=(2048, args.history))
    requests = [request_bytes([ids[r] for r in row], args.top_n) for row in rows.tolist()]
    # Saturation is the service's capacity with every request served: measured on the same
    # server with no latency objective (with one, a closed loop of 32 users turns into a storm of
    # instant 503s, and the 'saturation' figure measures refusals instead of capacity).
    port = free_port()
    with running_server(bundle_path, port, dict(env, MIND_LATENCY_OBJECTIVE_MS="0"),
                        args.cache / "overload-saturation.log") as server:
        saturation = asyncio.run(saturate(port, server.pid, requests, args))
    port = free_port()
    with running_server(bundle_path, port, env, args.cache / "overload-server.log") as server:
        rss_before = rss_mib(server.pid)
        result = asyncio.run(drill(port, server.pid, requests, saturation, args))
        alive = server.poll() is None
        time.sleep(1)
        report(result, env, rss_before, rss_mib(server.pid) if alive else float("nan"), alive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
