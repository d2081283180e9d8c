"""Data path vs polars, in the same sitting: our `load_interactions` + `build_dataset` against
polars' own read + iterative 5-core filter + sort, on synthetic ``user_id,item_id,timestamp``
logs (20 rows a user, Zipf-like item popularity).

    nice -n 10 .venv/bin/python -m bench.data_pipeline [--rows 2000000] [--curve 1000000,4000000,16000000] [--repeat 3]

Each measurement runs in a fresh subprocess (wall time from the read to the sorted result;
peak RSS of the whole process, imports included, from wait4), polars and ours interleaved.
Prints one JSON object: the command, the machine, the load average beside every pair, and
per size the median seconds and peak MiB of both and their ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROWS_PER_USER = 20
ITEMS_PER_USER = 0.5
K_CORE = 5
SEED = 0


def write_log(path: Path, rows: int) -> None:
    """A deterministic synthetic log: uniform users, Zipf(0.9) items, random seconds."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    rng = np.random.default_rng(SEED)
    n_users = max(1, rows // ROWS_PER_USER)
    n_items = max(1000, int(n_users * ITEMS_PER_USER))
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    table = pa.table({"user_id": rng.integers(1, n_users + 1, rows),
                      "item_id": rng.choice(n_items, rows, p=popularity / popularity.sum()) + 1,
                      "timestamp": rng.integers(1_500_000_000, 1_600_000_000, rows)})
    pa_csv.write_csv(table, path, pa_csv.WriteOptions(quoting_style="none"))


def run_polars(path: str) -> dict:
    """polars' read + iterative k-core + sort (ids read as polars infers them: integers)."""
    import polars as pl

    start = time.perf_counter()
    df = pl.read_csv(path)
    while True:
        before = df.height
        df = df.filter((pl.len().over("user_id") >= K_CORE) & (pl.len().over("item_id") >= K_CORE))
        if df.height == before:
            break
    df = df.sort(["user_id", "timestamp"], maintain_order=True)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "interactions": df.height, "users": df["user_id"].n_unique(),
            "items": df["item_id"].n_unique()}


def run_ours(path: str) -> dict:
    """`load_interactions` + `build_dataset` (string ids, natural order, sequences, split)."""
    from model.data import build_dataset, load_interactions

    start = time.perf_counter()
    log = load_interactions(path)
    loaded = time.perf_counter()
    ds = build_dataset(log, k_core=K_CORE)
    done = time.perf_counter()
    return {"seconds": done - start, "load": loaded - start, "build": done - loaded,
            "interactions": ds.stats()["interactions"], "users": ds.n_users, "items": ds.n_items}


def measure(which: str, path: Path) -> dict:
    """Run one side in a fresh interpreter; its result plus peak RSS (MiB) from wait4."""
    child = subprocess.Popen([sys.executable, "-m", "bench.data_pipeline", "--child", which, str(path)],
                             stdout=subprocess.PIPE, text=True)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{which} on {path} failed with exit code {child.returncode}")
    return {**json.loads(out), "peak_mib": usage.ru_maxrss / 1024}


def compare(path: Path, rows: int, repeat: int) -> dict:
    """Interleaved polars / ours runs on one log; medians and ratios."""
    runs: dict[str, list[dict]] = {"polars": [], "ours": []}
    loads = []
    for _ in range(repeat):
        loads.append(round(os.getloadavg()[0], 2))
        for which in runs:
            runs[which].append(measure(which, path))
    med = {w: {k: float(np.median([r[k] for r in rs])) for k in ("seconds", "peak_mib")} for w, rs in runs.items()}
    same = all(runs["ours"][0][k] == runs["polars"][0][k] for k in ("interactions", "users", "items"))
    return {"rows": rows, "loadavg_1min": loads, "same_users_items_interactions": same,
            "polars": {k: round(v, 2) for k, v in med["polars"].items()},
            "ours": {k: round(v, 2) for k, v in med["ours"].items()},
            "ours_load_build_s": [round(float(np.median([r[k] for r in runs["ours"]])), 2) for k in ("load", "build")],
            "time_ratio": round(med["ours"]["seconds"] / med["polars"]["seconds"], 2),
            "memory_ratio": round(med["ours"]["peak_mib"] / med["polars"]["peak_mib"], 2),
            "sizes": {k: runs["ours"][0][k] for k in ("users", "items", "interactions")}}


def machine() -> str:
    # Imported here, not at the top: the measured children import this module, and
    # bench.pipeline brings torch and FAISS, which would inflate both sides' peak memory.
    import polars
    import pyarrow

    from bench.pipeline import cpu
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu()}, {memory:.0f} GiB, python {platform.python_version()}, numpy {np.__version__}, "
            f"pyarrow {pyarrow.__version__}, polars {polars.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="the headline log size")
    parser.add_argument("--curve", default="1000000,4000000,16000000", help="more sizes, comma-separated ('' for none)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs per side and size (median shown)")
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps((run_polars if args.child[0] == "polars" else run_ours)(args.child[1])))
        return
    sizes = [args.rows] + [int(s) for s in args.curve.split(",") if s]
    results = []
    with tempfile.TemporaryDirectory(prefix="data-bench-") as tmp:
        for rows in sizes:
            path = Path(tmp) / f"log-{rows}.csv"
            write_log(path, rows)
            results.append(compare(path, rows, args.repeat if rows == args.rows else 1))
            path.unlink()
    print(json.dumps({"command": " ".join([".venv/bin/python -m bench.data_pipeline", *sys.argv[1:]]),
                      "machine": machine(), "k_core": K_CORE, "results": results}, indent=2))


if __name__ == "__main__":
    main()
