"""`mind evaluate --run RUN_DIR | --bundle BUNDLE_DIR`: the ComiRec protocol with the baselines.

Rebuilds the dataset and split from the saved data config and scores MIND, MIND K=1 (a run's
``baselines/k1``), item-CF and popularity on the same users; a bundle through its own tower
and FAISS index. Prints JSON; writes ``report.md`` and ``recall_curve.png`` into ``--out``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
from pathlib import Path

from model.device import DeviceError, resolve_device
from model.eval_sources import EvaluationError, bundle_source, run_source
from model.protocol import CUTOFFS, diversity_all, rank_all, score_all
from model.run import K1_BASELINE

SETTING_TITLES = {
    "history_included": "History items NOT excluded from the candidates",
    "history_excluded": "History items excluded from the candidates",
}
METRIC_COLUMNS = ("recall@20", "recall@50", "ndcg@20", "ndcg@50", "hitrate@20", "hitrate@50")
DIVERSITY_COLUMNS = {"capsule_cosine": "capsule cosine", "one_interest_overlap@50": "1-interest overlap@50"}
DIVERSITY_NOTE = ("capsule cosine: mean pairwise cosine of a user's active capsules (n/a: one capsule); "
                  "1-interest overlap@50: mean Jaccard of the top-50 served with the first interest alone "
                  "(`max_interests: 1`) and the merged top-50. Near 1: the interests are one vector; "
                  "- : not a multi-interest method.")


def configure_parser(parser: argparse.ArgumentParser) -> None:
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


def main(args: argparse.Namespace) -> int:
    """Run the evaluation; exit 2 with a one-line message on bad input."""
    try:
        device = resolve_device(args.device)   # model.device's rule, as `mind train` has it
        if args.run is not None:
            source = run_source(args.run, args.split, args.data, K1_BASELINE, device)
            out_dir = args.out or args.run / "eval"
        else:
            source = bundle_source(args.bundle, args.split, args.data, device)
            out_dir = args.out or args.bundle / "eval"
        metrics, curves = score_all(rank_all(source.held, source.retrievers), source.held.target_rows)
        result = {"source": source.info, "cutoffs": list(CUTOFFS), "metrics": metrics,
                  "diversity": diversity_all(source.held, source.retrievers), "missing": source.missing}
        command = "mind " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["evaluate"] else "mind evaluate"
        written = write_report(result, curves, Path(out_dir), command)
    except (EvaluationError, OSError, DeviceError) as err:
        flag = f"--device {args.device}: " if isinstance(err, DeviceError) else ""
        print(f"mind evaluate: error: {flag}{err}", file=sys.stderr)
        return 2
    result["report"] = [str(p) for p in written]
    print(json.dumps(result, indent=2))
    return 0


# ---- report.md and recall_curve.png ----

def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def metrics_table(per_method: dict[str, dict[str, float]],
                  diversity: dict[str, dict[str, float | None]] | None = None) -> str:
    """Markdown table: one row per method, one column per metric (4 decimals), and the two
    diversity numbers for the methods in ``diversity`` (``n/a`` where undefined, ``-`` if absent)."""
    extra = tuple(DIVERSITY_COLUMNS) if diversity else ()
    head = "| method | " + " | ".join([*METRIC_COLUMNS, *(DIVERSITY_COLUMNS[c] for c in extra)]) + " |"
    rule = "| --- |" + " ---: |" * (len(METRIC_COLUMNS) + len(extra))
    rows = [f"| {name} | " + " | ".join([*(f"{m[c]:.4f}" for c in METRIC_COLUMNS),
                                         *(_cell(diversity[name][c]) if name in diversity else "-"
                                           for c in extra)]) + " |"
            for name, m in per_method.items()]
    return "\n".join([head, rule, *rows])


def render_markdown(result: dict, command: str, plot_note: str) -> str:
    """The whole report.md: what was evaluated, how, one table per setting, the plot."""
    src = result["source"]
    lines = [
        "# MIND evaluation (ComiRec protocol)", "",
        f"Command: `{command}`", "",
        f"- source: {src['kind']} `{src['path']}`",
        f"- data: `{src['data']}`; split `{src['split']}`: {src['n_users']} users, "
        f"{src['n_items']} items, full-catalogue retrieval (FAISS exact inner product for runs, "
        "the bundle's own index for bundles), capsules' lists merged by score",
        "- history = first 80% of each sequence (last max_len items), targets = remaining 20%",
    ]
    recorded = (src.get("run_metrics") or {}).get(src["split"], {})  # metrics.json keys: test, validation
    if "recall@50" in recorded and "MIND" in result["metrics"].get("history_included", {}):
        lines.append(f"- MIND Recall@50 recorded by training for this split: {recorded['recall@50']:.4f}; "
                     f"this evaluation: {result['metrics']['history_included']['MIND']['recall@50']:.4f}")
    lines += [f"- {name}: not evaluated ({why})" for name, why in result.get("missing", {}).items()]
    diversity = result.get("diversity") or {}
    if diversity:
        lines.append(f"- {DIVERSITY_NOTE}")
    for setting, per_method in result["metrics"].items():
        lines += ["", f"## {SETTING_TITLES.get(setting, setting)}", "",
                  metrics_table(per_method, diversity.get(setting))]
    lines += ["", "## Recall@N, N = 1..100", "", plot_note, ""]
    return "\n".join(lines)


def plot_recall_curves(curves: dict[str, dict[str, list[float]]], path: Path) -> str:
    """Draw Recall@N per method (one panel per setting) into ``path``; return a report line
    (without matplotlib, the ``plot`` extra, it says nothing was drawn)."""
    if importlib.util.find_spec("matplotlib") is None:
        return "matplotlib is not installed (`pip install mind-recall[plot]`): no plot drawn."
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4.5), squeeze=False)
    for ax, (setting, per_method) in zip(axes[0], curves.items()):
        for name, curve in per_method.items():
            ax.plot(range(1, len(curve) + 1), curve, label=name)
        ax.set(title=SETTING_TITLES.get(setting, setting), xlabel="N", ylabel="Recall@N")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"![Recall@N]({path.name})"


def write_report(result: dict, curves: dict[str, dict[str, list[float]]], out_dir: Path,
                 command: str) -> list[Path]:
    """Write report.md (and recall_curve.png when matplotlib is present); return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "recall_curve.png"
    note = plot_recall_curves(curves, png)
    report = out_dir / "report.md"
    report.write_text(render_markdown(result, command, note), encoding="utf-8")
    return [report, png] if png.exists() else [report]
