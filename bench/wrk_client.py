"""The wrk load generator (C, epoll; a few % of a core at these rates) as bench/load.py's client.

The Python client of bench/load.py shares the 2 cores with the server and costs it most where
the server is fastest; wrk is how issue 11 was measured. One wrk thread, one keep-alive
connection per concurrent user, pre-formatted POST /recall requests rotating through a set of
bodies (a Lua script written next to the bench cache), statuses counted per response in Lua.
Latency percentiles are wrk's own histogram, over every response: a level where some answers
were refused (fast 503s) has its percentiles marked by its statuses, and ``bench.load``'s
comparison only counts levels without refusals.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

RESULT_MARK = "WRK_RESULT "

SCRIPT = r"""
local bodies = {BODIES}
local requests, counter = {}, 0
local threads = {}
statuses = {}   -- a global: done() reads each thread's copy with thread:get

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local headers = {["Content-Type"] = "application/json"}
  for i, body in ipairs(bodies) do
    requests[i] = wrk.format("POST", "/recall", headers, body)
  end
end

function request()
  counter = counter + 1
  return requests[(counter % #requests) + 1]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses")
    for status, n in pairs(counts) do
      merged[tostring(status)] = (merged[tostring(status)] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(merged) do
    table.insert(parts, string.format('"%s": %d', status, n))
  end
  io.write(string.format(
    '%s{"duration_us": %d, "requests": %d, "p50": %d, "p95": %d, "p99": %d, "socket_errors": %d, "statuses": {%s}}\n',
    "RESULT_MARK", summary.duration, summary.requests, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, table.concat(parts, ", ")))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def _lua_string(body: bytes) -> str:
    return "'" + body.decode().replace("\\", "\\\\").replace("'", "\\'") + "'"


def write_script(path: Path, bodies: list[bytes]) -> Path:
    """The Lua script rotating through ``bodies`` (JSON request bodies)."""
    lua = SCRIPT.replace("{BODIES}", "{" + ",\n".join(_lua_string(b) for b in bodies) + "}")
    path.write_text(lua.replace('"RESULT_MARK"', json.dumps(RESULT_MARK)))
    return path


def command(port: int, script: Path, concurrency: int, seconds: float) -> list[str]:
    return ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "5s", "-s", str(script),
            f"http://127.0.0.1:{port}/recall"]


def drive(port: int, script: Path, concurrency: int, seconds: float) -> dict:
    """One wrk run; the same keys as bench.load.drive (latencies in ms, req/s of 200 answers)."""
    run = subprocess.run(command(port, script, concurrency, seconds), capture_output=True, text=True,
                         timeout=seconds + 60)
    if run.returncode:
        raise RuntimeError(f"wrk exited {run.returncode}:\n{run.stdout}\n{run.stderr}")
    out = run.stdout
    line = next((line for line in out.splitlines() if line.startswith(RESULT_MARK)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result line:\n{out}")
    r = json.loads(line[len(RESULT_MARK):])
    statuses = {int(status): n for status, n in r["statuses"].items()}
    if r["socket_errors"]:
        statuses[0] = r["socket_errors"]            # 0: connect/read/write errors and timeouts
    ok = statuses.get(200, 0)
    return {"concurrency": concurrency, "requests": r["requests"], "ok": ok, "rps": ok / (r["duration_us"] / 1e6),
            "statuses": statuses, **{f"p{q}": r[f"p{q}"] / 1000 for q in (50, 95, 99)}}
