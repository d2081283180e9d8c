"""`make bench`: retrieval quality beside the baselines, then serving speed beside the plain
FastAPI baseline, each step printing the command that reproduces it.

    python -m bench.run_all [--data PATH] [--run RUN_DIR] [--quick]

Quality: trains MIND (and its K=1 baseline) on ml-100k into RUN_DIR unless it exists, then
`mind evaluate` scores MIND, MIND K=1, item-CF and popularity on the same test users.
Serving: the bare in-process pipeline, then `mind serve` and the plain one-request-at-a-time
FastAPI server measured interleaved in one sitting, on the 100k-item, d=64, K=4, top_n=100
workload.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "ml-100k" / "ml-100k.inter"
METHODS = ("MIND", "MIND K=1", "item-CF", "popularity")


def run(argv: list[str], capture: bool = False) -> str:
    print(f"\n$ {shlex.join(argv)}", flush=True)
    done = subprocess.run(argv, cwd=REPO_ROOT, check=True, text=True,
                          stdout=subprocess.PIPE if capture else None)
    return done.stdout or ""


def quality(data: str, run_dir: Path) -> None:
    mind = [sys.executable, "-m", "mind_recall.cli"]
    if not (run_dir / "metrics.json").is_file():
        run(mind + ["train", "--data", data, "--out", str(run_dir), "--threads", "1"])
    report = json.loads(run(mind + ["evaluate", "--run", str(run_dir)], capture=True))
    for setting, methods in report["metrics"].items():
        print(f"\n{setting} ({report['source']['n_users']} test users)")
        print(f"{'method':<12} {'Recall@20':>10} {'Recall@50':>10} {'NDCG@50':>9} {'HR@50':>7}")
        for name in METHODS:
            m = methods.get(name)
            if m:
                print(f"{name:<12} {m['recall@20']:>10.4f} {m['recall@50']:>10.4f} {m['ndcg@50']:>9.4f} {m['hitrate@50']:>7.3f}")


def serving(quick: bool) -> None:
    seconds = ["--seconds", "2"] if quick else []
    py = [sys.executable, "-m"]
    run(py + ["bench.pipeline", "--batch-sizes", "1,16,32,64"] + seconds)
    # both servers in one sitting, interleaved level by level, so they see the same machine load
    run(py + ["bench.load", "--server", "mind,plain", "--concurrency", "1,2,4,8,16,32,64"] + seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA) if DEFAULT_DATA.is_file() else "ml-100k")
    parser.add_argument("--run", type=Path, default=REPO_ROOT / "runs" / "ml100k")
    parser.add_argument("--quick", action="store_true", help="shorter serving measurements")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-serving", action="store_true")
    args = parser.parse_args(argv)
    if not args.skip_quality:
        quality(args.data, args.run)
    if not args.skip_serving:
        serving(args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
