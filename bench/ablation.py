"""K-ablation of MIND on ml-100k (issue 2, must-show 4): K = 1, 2, 4, 8; dynamic K on/off;
routing softmax axis; label-aware attention power p. Every variant gets the same budget
(epochs x positions sampled per train user) from the same seed, and is scored under the
protocol on validation and test users (full catalogue, history not excluded).

    nice -n 10 .venv/bin/python bench/ablation.py --data ../shared/data/ml-100k/ml-100k.inter

prints a Markdown table and writes it (with the command and machine) to bench/ablation.md
after every variant, so an interrupted run still leaves the finished rows.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from model.config import ModelConfig, TrainConfig
from model.data import build_dataset, load_interactions
from model.fit import Progress, fit, held_out_set, retrieval_metrics
from model.tower import MIND

LARGE_P = 20.0  # "hard" attention: pow is clamped at model.tower.MAX_ATTENTION_LOGIT anyway
VARIANTS: dict[str, dict] = {
    "default": {},
    "K=1": {"n_interests": 1},
    "K=2": {"n_interests": 2},
    "K=8": {"n_interests": 8},
    "no dynamic K": {"dynamic_k": False},
    "softmax over behaviors": {"routing_softmax": "behaviors"},
    "p=0 (mean)": {"pow_p": 0.0},
    "p=1": {"pow_p": 1.0},
    f"p={LARGE_P:g} (hard)": {"pow_p": LARGE_P},
    "init logit std 1": {"routing_init_std": 1.0},
    "init logit std 0.01": {"routing_init_std": 0.01},
}
COLUMNS = ("validation recall@20", "validation recall@50", "test recall@20", "test recall@50")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/ml-100k/ml-100k.inter")
    p.add_argument("--epochs", type=int, default=4, help="same for every variant")
    p.add_argument("--samples-per-user", type=int, default=20, help="positions per train user per epoch")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), help=f"subset of {list(VARIANTS)}")
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="override a ModelConfig/TrainConfig default for every variant (JSON values)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the CPU is shared)")
    return p.parse_args(argv)


def run_variant(ds, base: ModelConfig, overrides: dict, train: TrainConfig) -> dict:
    """Train one variant with early stopping on validation Recall@50; its best-epoch metrics."""
    config = dataclasses.replace(base, **overrides)
    torch.manual_seed(train.seed)
    model = MIND(config, {f: torch.as_tensor(t) for f, t in ds.item_side.items()})
    started = time.perf_counter()
    result = fit(model, ds, train, torch.device("cpu"), Progress(enabled=False))
    test = retrieval_metrics(model, held_out_set(ds, ds.test_users, config.max_len), torch.device("cpu"))
    return {"validation recall@20": result.best_validation["recall@20"],
            "validation recall@50": result.best_validation["recall@50"],
            "test recall@20": test["recall@20"], "test recall@50": test["recall@50"],
            "best_epoch": result.best_epoch, "train_s": time.perf_counter() - started}


def apply_overrides(settings: list[str], base: ModelConfig, train: TrainConfig
                    ) -> tuple[ModelConfig, TrainConfig]:
    """``field=json`` pairs applied to whichever config has the field."""
    for setting in settings:
        name, _, value = setting.partition("=")
        parsed = json.loads(value)
        if name in {f.name for f in dataclasses.fields(ModelConfig)}:
            base = dataclasses.replace(base, **{name: parsed})
        elif name in {f.name for f in dataclasses.fields(TrainConfig)}:
            train = dataclasses.replace(train, **{name: parsed})
        else:
            raise SystemExit(f"ablation: --set {setting}: no such ModelConfig/TrainConfig field")
    return base, train


def markdown(rows: dict[str, dict], command: str, base: ModelConfig, train: TrainConfig) -> str:
    lines = ["# MIND ablation on ml-100k", "",
             f"Command: `{command}`  ", f"Machine: {platform.machine()}, {os.cpu_count()} CPUs "
             f"(shared), torch {torch.__version__}, {platform.python_version()}  ",
             f"Budget per variant: {train.epochs} epochs x {train.samples_per_user or 'all'} positions per "
             f"train user, batch {train.batch_size}, lr {train.lr}, seed {train.seed}; best epoch by validation "
             "Recall@50. History items not excluded.  ",
             f"Base config: {json.dumps({k: v for k, v in dataclasses.asdict(base).items() if k not in ('profile_vocab_sizes', 'item_side_vocab_sizes')})}",
             "", "| variant | " + " | ".join(COLUMNS) + " | best epoch | train s |",
             "| --- |" + " --- |" * (len(COLUMNS) + 2)]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.4f}" for c in COLUMNS)
                     + f" | {row['best_epoch']} | {row['train_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        print(f"ablation: unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}", file=sys.stderr)
        return 2
    ds = build_dataset(load_interactions(args.data), k_core=5, seed=2020)
    base = ModelConfig(n_items=ds.n_items,
                       profile_vocab_sizes=tuple(len(ds.user_profile_vocabs[f]) for f in ds.profile_features),
                       item_side_vocab_sizes={f: len(v) for f, v in ds.item_side_vocabs.items()})
    train = TrainConfig(epochs=args.epochs, samples_per_user=args.samples_per_user, patience=args.epochs)
    base, train = apply_overrides(args.set, base, train)
    command = shlex.join(["python", "bench/ablation.py", *(argv if argv is not None else sys.argv[1:])])
    rows: dict[str, dict] = {}
    for name in args.variants:
        rows[name] = run_variant(ds, base, VARIANTS[name], train)
        print(f"{name}: " + ", ".join(f"{c} {rows[name][c]:.4f}" for c in COLUMNS), flush=True)
        Path(args.out).write_text(markdown(rows, command, base, train), encoding="utf-8")
    print(markdown(rows, command, base, train))
    return 0


if __name__ == "__main__":
    sys.exit(main())
