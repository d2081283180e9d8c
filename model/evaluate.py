"""`mind evaluate`: the ComiRec protocol on a run or a bundle, with the baselines beside MIND.

``mind evaluate --run RUN_DIR [--split test|validation] [--out DIR]`` rebuilds the run's
dataset and split from its saved data config and scores MIND, MIND K=1 (the run in
``RUN_DIR/baselines/k1`` when present), item-CF and popularity on the same users.
``mind evaluate --bundle BUNDLE_DIR [--data PATH]`` does the same through the bundle's
TorchScript tower and FAISS index (the data config comes from ``manifest["data"]``).
Prints JSON; writes ``report.md`` and ``recall_curve.png`` into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from model.device import DeviceError, resolve_device
from model.eval_sources import EvaluationError, EvalSource, bundle_source, run_source
from model.protocol import CUTOFFS, diversity_all, rank_all, score_all
from model.report import write_report
from model.run import K1_BASELINE


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``mind evaluate``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, metavar="RUN_DIR", help="run directory written by `mind train`")
    source.add_argument("--bundle", type=Path, metavar="BUNDLE_DIR", help="bundle written by `mind export`")
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="which held-out users to score (default: test)")
    parser.add_argument("--data", type=Path, metavar="PATH",
                        help="interaction log to rebuild the split from (default: the path saved "
                             "in the run config / bundle manifest)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="where report.md and recall_curve.png go (default: RUN_DIR/eval or BUNDLE_DIR/eval)")
    parser.add_argument("--device", default="cpu", help="torch device for the user tower (cpu, cuda, auto)")


def evaluate_source(source: EvalSource) -> tuple[dict, dict]:
    """Rank and score every method of ``source``; return (result JSON, Recall@N curves)."""
    rankings = rank_all(source.held, source.retrievers)
    metrics, curves = score_all(rankings, source.held.target_rows)
    result = {
        "source": source.info,
        "cutoffs": list(CUTOFFS),
        "metrics": metrics,
        "diversity": diversity_all(source.held, source.retrievers),
        "missing": source.missing,
    }
    return result, curves


def _device(name: str) -> torch.device:
    """The ``--device`` of the command (model.device's rule); an unusable one is an EvaluationError."""
    try:
        return resolve_device(name)
    except DeviceError as err:
        raise EvaluationError(f"--device {name}: {err}") from err


def main(args: argparse.Namespace) -> int:
    """Run the evaluation; exit 2 with a one-line message on bad input."""
    try:
        if args.run is not None:
            source = run_source(args.run, args.split, args.data, K1_BASELINE, _device(args.device))
            out_dir = args.out or args.run / "eval"
        else:
            source = bundle_source(args.bundle, args.split, args.data, _device(args.device))
            out_dir = args.out or args.bundle / "eval"
        result, curves = evaluate_source(source)
        command = "mind " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["evaluate"] else "mind evaluate"
        written = write_report(result, curves, Path(out_dir), command)
    except (EvaluationError, OSError) as err:
        print(f"mind evaluate: error: {err}", file=sys.stderr)
        return 2
    result["report"] = [str(p) for p in written]
    print(json.dumps(result, indent=2))
    return 0
