"""Do K interests beat one vector end to end, on data we do not have? (issue 9, must-show 2)

For an interaction log, runs the product as an operator would:
`mind train` (the defaults) and `mind train --interests 1` -> `mind export` of each ->
`mind serve` (a real server on a free 127.0.0.1 port) -> POST /recall for every held-out test
user of the run's split (history = first 80% of the sequence, as the protocol), with and
without `max_interests: 1`, top_n = 50, the service's default `exclude_history: true`.
Prints Recall@50 of each answer set, item-CF's on the same users, the capsule cosine of the
served tower, the one-interest overlap of the served answers, and a verdict line.

    python -m bench.interests_e2e --data PATH [--format FMT] [--workdir DIR] [-- extra mind train flags]
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from bench.load import REPO_ROOT, free_port, running_server
from bench.pipeline import machine
from model.metrics import capsule_cosine, evaluate_rankings, mean_jaccard

TOP_N = 50
MAX_COSINE = MAX_OVERLAP = 0.8      # issue 9: capsules distinct enough to retrieve different things
CLIENTS = 8                         # concurrent POST /recall callers
# A quality check, not a load test: a generous deadline and no latency-based shedding (0 = queue
# bound only), so a busy machine does not refuse answers.
SERVER_ENV = {"MIND_DEVICE": "cpu", "MIND_REQUEST_TIMEOUT_MS": "60000", "MIND_LATENCY_OBJECTIVE_MS": "0",
              "MIND_LOG_REQUESTS": "false"}
RETRIES = 20                        # a 503 (shed) answer is asked again after its Retry-After


def mind(*args: str) -> str:
    """Run the `mind` CLI as a subprocess; exit on failure; return its stdout."""
    command = [sys.executable, "-m", "mind_recall.cli", *args]
    print("$ mind " + shlex.join(args), flush=True)
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"mind {args[0]} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


def train_and_export(workdir: Path, name: str, train_args: list[str]) -> Path:
    """`mind train ... --out workdir/name` then `mind export`; returns the bundle directory."""
    run_dir, bundle_dir = workdir / name, workdir / f"{name}-bundle"
    for line in mind("train", *train_args, "--out", str(run_dir), "--no-baselines", "--quiet").splitlines()[-4:]:
        print("  " + line)
    mind("export", "--run", str(run_dir), "--out", str(bundle_dir))
    return bundle_dir


def held_out_of_run(run_dir: Path):
    """(HeldOut test users of the run's own split, item tokens by dataset index)."""
    from model.eval_sources import dataset_from_config, held_out_users, read_json_file
    from model.run import config_max_len

    config = read_json_file(run_dir / "config.json")
    ds = dataset_from_config(config["data"], None, str(run_dir / "config.json"),
                             read_json_file(run_dir / "vocab.json"), read_json_file(run_dir / "split.json"))
    return held_out_users(ds, "test", config_max_len(config)), list(ds.items.tokens)


def recall_bodies(held, tokens: list[str]) -> list[dict]:
    """One POST /recall body per held-out user: history ids oldest first, and the profile."""
    bodies = []
    for u, history in enumerate(held.histories):
        profile = {f: str(v[u]) for f, v in held.profile_values.items() if v[u]}
        body = {"history": [tokens[i] for i in history[history > 0]], "top_n": TOP_N}
        bodies.append({**body, "profile": profile} if profile else body)
    return bodies


def recall_rows(port: int, bodies: list[dict], row_of: dict[str, int]) -> np.ndarray:
    """(U, TOP_N) dataset rows answered by the server (-1 = fewer items)."""
    def ask(body: dict) -> list[int]:
        for _ in range(RETRIES):
            response = client.post(f"http://127.0.0.1:{port}/recall", json=body)
            if response.status_code != 503:
                break
            time.sleep(float(response.headers.get("Retry-After", "1")))
        response.raise_for_status()
        return [row_of[item["item_id"]] for item in response.json()["items"]]

    out = np.full((len(bodies), TOP_N), -1, dtype=np.int64)
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(CLIENTS) as pool:
        for u, rows in enumerate(pool.map(ask, bodies)):
            out[u, :len(rows)] = rows[:TOP_N]
    return out


def served_cosine(bundle_dir: Path) -> float | None:
    """Capsule cosine of the exported tower on the test users (what the server runs)."""
    from model.eval_sources import bundle_source
    from model.protocol import source_capsules

    source = bundle_source(bundle_dir, "test", None, "cpu")
    return capsule_cosine(*source_capsules(source.retrievers["MIND"], source.held))


def serve_and_ask(bundle_dir: Path, bodies: list[dict], row_of: dict[str, int], workdir: Path) -> dict:
    """Recall@50 with all interests and with max_interests 1, and their overlap."""
    port = free_port()
    with running_server(bundle_dir, port, SERVER_ENV, workdir / f"{bundle_dir.name}.log"):
        started = time.perf_counter()
        full = recall_rows(port, bodies, row_of)
        one = recall_rows(port, [{**b, "max_interests": 1} for b in bodies], row_of)
        took = time.perf_counter() - started
    print(f"  {2 * len(bodies)} POST /recall in {took:.1f} s")
    return {"full": full, "one": one, "overlap": mean_jaccard(one, full)}


def verdict(mind_row: dict, k1_row: dict, item_cf: float) -> str:
    checks = {
        f"capsule cosine <= {MAX_COSINE}": mind_row["cosine"] is not None and mind_row["cosine"] <= MAX_COSINE,
        f"one-interest overlap <= {MAX_OVERLAP}": mind_row["overlap"] is not None and mind_row["overlap"] <= MAX_OVERLAP,
        "Recall@50 >= --interests 1": mind_row["recall@50"] >= k1_row["recall@50"],
        "Recall@50 > item-CF": mind_row["recall@50"] > item_cf,
    }
    failed = [name for name, ok in checks.items() if not ok]
    return "verdict: PASS (" + "; ".join(checks) + ")" if not failed else "verdict: FAIL: " + "; ".join(failed)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="interaction log (any format `mind train` reads)")
    parser.add_argument("--format", help="passed to `mind train --format`")
    parser.add_argument("--sep"), parser.add_argument("--user-col"), parser.add_argument("--item-col")
    parser.add_argument("--time-col")
    parser.add_argument("--workdir", type=Path, help="keep runs, bundles and server logs here (default: a temp dir)")
    parser.add_argument("train_flags", nargs="*", help="extra `mind train` flags for both runs (after --)")
    return parser.parse_args(argv)


def loader_flags(args: argparse.Namespace) -> list[str]:
    pairs = (("--format", args.format), ("--sep", args.sep), ("--user-col", args.user_col),
             ("--item-col", args.item_col), ("--time-col", args.time_col))
    return [part for flag, value in pairs if value for part in (flag, value)]


def run(args: argparse.Namespace, workdir: Path) -> dict:
    from model.baselines import item_cf_topn

    train_args = ["--data", str(args.data), *loader_flags(args), "--threads", "1", *args.train_flags]
    bundles = {"MIND": train_and_export(workdir, "mind", train_args),
               "--interests 1": train_and_export(workdir, "k1", [*train_args, "--interests", "1"])}
    held, tokens = held_out_of_run(workdir / "mind")
    row_of = {token: r for r, token in enumerate(tokens[1:])}
    bodies = recall_bodies(held, tokens)
    rows = {}
    for name, bundle in bundles.items():
        answers = serve_and_ask(bundle, bodies, row_of, workdir)
        rows[name] = {"recall@50": evaluate_rankings(answers["full"], held.target_rows, (TOP_N,))["recall@50"],
                      "recall@50 max_interests=1": evaluate_rankings(answers["one"], held.target_rows,
                                                                     (TOP_N,))["recall@50"],
                      "cosine": served_cosine(bundle), "overlap": answers["overlap"]}
    cf = item_cf_topn(held.train_sequences, held.histories, held.n_items, TOP_N, held.history_rows())
    item_cf = evaluate_rankings(cf, held.target_rows, (TOP_N,))["recall@50"]
    return {"users": len(bodies), "rows": rows, "item-CF recall@50": item_cf,
            "verdict": verdict(rows["MIND"], rows["--interests 1"], item_cf)}


def report(result: dict) -> None:
    def cell(value):
        return "n/a" if value is None else f"{value:.4f}"

    print(f"\n{result['users']} test users, top_n {TOP_N}, exclude_history true (the service default)\n")
    print("| model | Recall@50 | Recall@50, max_interests 1 | capsule cosine | one-interest overlap@50 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, row in result["rows"].items():
        print(f"| {name} | {cell(row['recall@50'])} | {cell(row['recall@50 max_interests=1'])} | "
              f"{cell(row['cosine'])} | {cell(row['overlap'])} |")
    print(f"| item-CF | {cell(result['item-CF recall@50'])} | | | |\n")
    print(result["verdict"])


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    print("command: python -m bench.interests_e2e " + shlex.join(argv))
    print("machine:", machine())
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="interests-e2e-") as tmp:
            result = run(args, Path(tmp))
    report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
