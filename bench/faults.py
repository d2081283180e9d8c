"""Fault drills against real `mind serve` processes on loopback; prints one figure block per drill.

    nice -n 10 .venv/bin/python -m bench.faults [--items 20000] [--drills swap,corrupt,missing,sigterm,worker]

- swap:    new bundle versions hot-swapped with POST /admin/reload under closed-loop load,
           plus a refused (corrupt) one: failed requests must be 0.
- corrupt: the served bundle's files overwritten in place: answers unchanged, reload refused
           (422), reload failure metric +1.
- missing: the bundle root missing at start (watched): /readyz 503 with the reason, /healthz
           200, the log line; seconds until ready once a bundle is exported into it.
- sigterm: SIGTERM under open-loop load: every request sent before the signal is answered,
           exit code 0.
- worker:  uvicorn's process supervisor (--workers 2): SIGKILL one worker under load; the
           supervisor starts a replacement; seconds until two workers answer again.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from bench.drill_bundles import corrupt_in_place, export_version, requests_for
from bench.load import REPO_ROOT, drive, free_port, start_server
from bench.overload import OpenLoop
from bench.pipeline import DEFAULT_CACHE, machine

TOKEN = "drill-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE_ENV = {"MIND_ADMIN_TOKEN": TOKEN, "MIND_LOG_REQUESTS": "false", "MIND_WARMUP_BATCHES": "1"}


def load_in_thread(port: int, requests: list[bytes], concurrency: int, seconds: float) -> tuple[threading.Thread, list]:
    """Closed-loop load (bench/load.py's driver) in a thread; the list gets its result or error."""
    out: list = []

    def run():
        try:
            out.append(asyncio.run(drive(port, requests, concurrency, seconds, 10**9)))
        except Exception as err:  # a dropped connection is a drill failure: report it, don't hide it
            out.append(err)
    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def reload_failures(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    line = next((l for l in text.splitlines() if l.startswith("mind_recall_reloads_total") and 'result="failure"' in l), None)
    return float(line.rsplit(" ", 1)[1]) if line else 0.0


def drill_swap(work: Path, args) -> None:
    root = work / "swap-root"
    root.mkdir()
    export_version(root, 0, args.items)
    port, requests = free_port(), requests_for(args.items)
    server = start_server(root, port, BASE_ENV, work / "swap.log")
    base, versions, codes = f"http://127.0.0.1:{port}", [], []
    try:
        thread, out = load_in_thread(port, requests, 16, args.swap_seconds)
        for seed in range(1, args.swaps + 1):
            time.sleep(args.swap_seconds / (args.swaps + 2))
            export_version(root, seed, args.items)
            answer = httpx.post(f"{base}/admin/reload", headers=AUTH, timeout=120)
            codes.append(answer.status_code)
            versions.append(answer.json().get("model_version", answer.text)[:12])
        bad = export_version(root, 99, args.items)
        corrupt_in_place(bad / "index.faiss")
        refused = httpx.post(f"{base}/admin/reload", headers=AUTH, timeout=120)
        thread.join()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    result = out[0]
    failed = result if isinstance(result, Exception) else sum(v for k, v in result["statuses"].items() if k != 200)
    print(f"[swap] {args.swaps} reloads under load (concurrency 16, {args.swap_seconds:.0f} s): statuses {codes}, "
          f"versions {versions}; corrupt version refused: {refused.status_code}")
    if not isinstance(result, Exception):
        print(f"[swap] requests {result['requests']}, 200s {result['ok']}, failed {failed}, "
              f"p99 {result['p99']:.1f} ms, {result['rps']:.0f} req/s")
    else:
        print(f"[swap] FAILED: load client error {failed!r}")


def drill_corrupt(work: Path, args) -> None:
    served = export_version(work / "corrupt-bundle", 0, args.items)
    port, query = free_port(), {"history": [f"i{r}" for r in range(0, 200, 10)], "top_n": 50}
    server = start_server(served, port, BASE_ENV, work / "corrupt.log")
    base = f"http://127.0.0.1:{port}"
    try:
        before = httpx.post(f"{base}/recall", json=query, timeout=30).json()
        failures = reload_failures(base)
        for name in ("user_tower.pt", "index.faiss", "item_vectors.npy", "item_ids.json"):
            corrupt_in_place(served / name)
        after = httpx.post(f"{base}/recall", json=query, timeout=30).json()
        refused = httpx.post(f"{base}/admin/reload", headers=AUTH, json={"path": str(served)}, timeout=60)
        counted = reload_failures(base) - failures
        still = httpx.post(f"{base}/recall", json=query, timeout=30).json()
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    same = after["items"] == before["items"] == still["items"]
    print(f"[corrupt] 4 served files overwritten in place: answers unchanged {same}; reload -> "
          f"{refused.status_code} ({refused.json()['error'][:110]}...); failure metric +{counted:.0f}; exit {code}")


def wait_http(url: str, want: int, limit_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        try:
            if httpx.get(url, timeout=2).status_code == want:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.05)
    return float("inf")


def spawn(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(argv, cwd=REPO_ROOT, env=dict(os.environ, **env), stdout=out, stderr=subprocess.STDOUT)


def drill_missing(work: Path, args) -> None:
    root, port, log = work / "missing-root", free_port(), work / "missing.log"
    env = dict(BASE_ENV, MIND_WATCH_INTERVAL_S="0.5")
    server = spawn([sys.executable, "-m", "mind_recall.cli", "serve", "--bundle", str(root), "--port", str(port)],
                   env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", 200, 60)
        ready, health = httpx.get(f"{base}/readyz"), httpx.get(f"{base}/healthz")
        export_version(root, 0, args.items)
        exported = time.monotonic()
        became_ready = wait_http(f"{base}/readyz", 200, 60)
        took = time.monotonic() - exported
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    line = next((l for l in log.read_text().splitlines() if '"level": "error"' in l), "(none)")
    print(f"[missing] /readyz {ready.status_code} {ready.json()}; /healthz {health.status_code}")
    print(f"[missing] log: {line[:220]}")
    print(f"[missing] ready {took:.2f} s after the bundle was exported (watch 0.5 s): {became_ready < 60}; exit {code}")


async def _load_then_signal(port: int, requests: list[bytes], rate: float, seconds: float, server) -> tuple:
    loop = OpenLoop(port, requests, 256)
    run = asyncio.create_task(loop.run(rate, seconds))
    await asyncio.sleep(seconds / 2)
    signalled = time.perf_counter()
    server.send_signal(signal.SIGTERM)
    await run
    return loop, signalled


def drill_sigterm(work: Path, args) -> None:
    bundle = export_version(work / "sigterm-bundle", 0, args.items)
    port, requests = free_port(), requests_for(args.items)
    server = start_server(bundle, port, dict(BASE_ENV, MIND_BATCH_WAIT_MS="20"), work / "sigterm.log")
    loop, signalled = asyncio.run(_load_then_signal(port, requests, args.sigterm_rate, 4.0, server))
    code = server.wait(timeout=60)
    before = [r for r in loop.results if r[3] < signalled]
    in_flight = [r for r in before if r[3] + r[1] > signalled]
    lost = [t for t in loop.failed_at if t < signalled]
    statuses: dict[int, int] = {}
    for status, *_ in before:
        statuses[status] = statuses.get(status, 0) + 1
    print(f"[sigterm] open loop {args.sigterm_rate:.0f} req/s, SIGTERM after 2 s: sent before the signal "
          f"{len(before) + len(lost)}, answered {statuses}, in flight at the signal {len(in_flight)} "
          f"(all answered: {all(r[0] == 200 for r in in_flight)}), lost {len(lost)}; "
          f"refused after the signal {len(loop.failed_at) - len(lost)}; exit code {code}")


def children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


def workers_of(pid: int) -> set[int]:
    """uvicorn's worker processes (multiprocessing also starts a resource tracker)."""
    found = set()
    for child in children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in cmdline:
            found.add(child)
    return found


def wait_workers(pid: int, log: Path, n: int = 2, limit_s: float = 120) -> set[int]:
    """Wait until ``n`` workers finished their startup (bundle loaded); their pids."""
    start = time.monotonic()
    while log.read_text().count("Application startup complete") < n and time.monotonic() - start < limit_s:
        time.sleep(0.1)
    return workers_of(pid)


def drill_worker(work: Path, args) -> None:
    bundle = export_version(work / "worker-bundle", 0, args.items)
    port, requests = free_port(), requests_for(args.items)
    env = dict(BASE_ENV, MIND_BUNDLE=str(bundle), MIND_TORCH_THREADS="1", MIND_FAISS_THREADS="1")
    log = work / "worker.log"
    server = spawn([sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app", "--port", str(port),
                    "--workers", "2", "--no-access-log"], env, log)
    try:
        first = wait_workers(server.pid, log)
        loop = OpenLoop(port, requests, 64)
        thread = threading.Thread(target=lambda: asyncio.run(loop.run(args.sigterm_rate, 8.0)))
        thread.start()
        time.sleep(2)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        while (len(workers_of(server.pid) - {victim}) < 2) and time.monotonic() - killed < 60:
            time.sleep(0.05)
        replaced = time.monotonic() - killed
        while log.read_text().count("Application startup complete") < 3 and time.monotonic() - killed < 120:
            time.sleep(0.05)                              # the replacement loaded and warmed its bundle
        ready = time.monotonic() - killed
        thread.join()
        now = workers_of(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    statuses: dict[int, int] = {}
    for status, *_ in loop.results:
        statuses[status] = statuses.get(status, 0) + 1
    summary = (f"open loop {args.sigterm_rate:.0f} req/s for 8 s: answered {statuses}, lost with the killed "
               f"worker {len(loop.failed_at)} (its in-flight requests and connections)")
    print(f"[worker] uvicorn --workers 2: killed worker {victim} (SIGKILL); workers {sorted(first)} -> {sorted(now)}; "
          f"replacement process after {replaced:.2f} s, serving (startup complete) after {ready:.2f} s; "
          f"supervisor exit {code}")
    print(f"[worker] load during the drill: {summary}")


DRILLS = {"swap": drill_swap, "corrupt": drill_corrupt, "missing": drill_missing, "sigterm": drill_sigterm,
          "worker": drill_worker}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--drills", default=",".join(DRILLS))
    parser.add_argument("--swaps", type=int, default=3)
    parser.add_argument("--swap-seconds", type=float, default=15.0)
    parser.add_argument("--sigterm-rate", type=float, default=300.0)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"command: python -m bench.faults {shlex.join(argv if argv is not None else sys.argv[1:])}")
    print(f"machine: {machine()} (shared with other jobs)")
    work = args.cache / f"faults-{os.getpid()}"
    work.mkdir(parents=True)
    for name in args.drills.split(","):
        DRILLS[name](work, args)
    print(f"logs: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
