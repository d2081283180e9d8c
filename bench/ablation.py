"""Ablation of MIND's training settings on one dataset: validation and test Recall@50, the mean
pairwise capsule cosine and the one-interest top-50 overlap of every variant, beside item-CF.

    python bench/ablation.py --data ../shared/data/amazon-toys/toys.csv \\
        --variant default '{}' --variant K=1 '{"n_interests": 1}' --seeds 2020 2021

A variant is a name and JSON overrides of ModelConfig/TrainConfig fields (applied on top of
``--set``, applied on top of the defaults). Every variant is trained with early stopping on
validation Recall@50 and scored under the protocol (full catalogue, history not excluded).
One Markdown row per (variant, seed) is appended to ``--out`` as soon as it is finished, so
an interrupted run keeps its rows; the command and the machine head the table.
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

from model.baselines import item_cf_topn
from model.config import ModelConfig, TrainConfig
from model.data import build_dataset, load_interactions
from model.metrics import evaluate_rankings
from model.train import (Progress, capsule_diversity, fit, held_out_set, retrieval_metrics)
from model.tower import MIND

COLUMNS = ("val R@50", "test R@20", "test R@50", "capsule cos", "1-interest overlap", "best epoch", "train s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/ml-100k/ml-100k.inter")
    p.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"), default=[],
                   help="a named variant: JSON overrides of ModelConfig/TrainConfig fields")
    p.add_argument("--set", default="{}", metavar="JSON", help="overrides applied to every variant")
    p.add_argument("--seeds", type=int, nargs="+", default=[2020], help="training seeds (one row each)")
    p.add_argument("--out", default=None, help="Markdown file to append rows to (default: print only)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the CPU is shared)")
    p.add_argument("--item-cf", action="store_true", help="also score item-CF on the same test users")
    return p.parse_args(argv)


def split_overrides(values: dict) -> tuple[dict, dict]:
    """JSON overrides -> (ModelConfig fields, TrainConfig fields); unknown names are an error."""
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - model_fields - train_fields
    if unknown:
        raise SystemExit(f"ablation: no such ModelConfig/TrainConfig field(s): {sorted(unknown)}")
    return ({k: v for k, v in values.items() if k in model_fields},
            {k: v for k, v in values.items() if k in train_fields})


def run_variant(ds, overrides: dict, seed: int) -> dict:
    """Train one variant with early stopping on validation Recall@50; its best-epoch metrics."""
    model_over, train_over = split_overrides(overrides)
    config = ModelConfig(n_items=ds.n_items, init_seed=seed,
                         profile_vocab_sizes=tuple(len(ds.user_profile_vocabs[f]) for f in ds.profile_features),
                         item_side_vocab_sizes={f: len(v) for f, v in ds.item_side_vocabs.items()}, **model_over)
    train = TrainConfig(**{**train_over, "seed": seed})
    torch.manual_seed(seed)
    model = MIND(config, {f: torch.as_tensor(t) for f, t in ds.item_side.items()})
    started = time.perf_counter()
    result = fit(model, ds, train, torch.device("cpu"), Progress(enabled=False))
    took = time.perf_counter() - started
    print("  validation recall@50 by epoch: " + " ".join(f"{h['recall@50']:.4f}" for h in result.history),
          file=sys.stderr, flush=True)
    cases = held_out_set(ds, ds.test_users, config.max_len)
    test = retrieval_metrics(model, cases, torch.device("cpu"))
    diversity = capsule_diversity(model, cases, torch.device("cpu"))
    return {"val R@50": result.best_validation["recall@50"], "test R@20": test["recall@20"],
            "test R@50": test["recall@50"], "capsule cos": diversity["capsule_cosine"],
            "1-interest overlap": diversity["one_interest_overlap@50"], "best epoch": result.best_epoch,
            "train s": took, "samples/s": result.history[-1]["samples_per_s"] if result.history else 0.0}


def item_cf_row(ds, max_len: int) -> dict:
    cases = held_out_set(ds, ds.test_users, max_len)
    val = held_out_set(ds, ds.val_users, max_len)
    scores = {}
    train_sequences = [ds.sequences[int(u)] for u in ds.train_users]
    for name, c in (("val", val), ("test", cases)):
        ranked = item_cf_topn(train_sequences, c.histories.numpy(), ds.n_items, 50)
        scores[name] = evaluate_rankings(ranked, c.target_rows)
    return {"val R@50": scores["val"]["recall@50"], "test R@20": scores["test"]["recall@20"],
            "test R@50": scores["test"]["recall@50"]}


def cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def header(command: str) -> str:
    return (f"\nCommand: `{command}`  \nMachine: {platform.machine()}, {os.cpu_count()} CPUs (shared), "
            f"torch {torch.__version__}, Python {platform.python_version()}\n\n"
            "| variant | overrides | seed | " + " | ".join(COLUMNS) + " |\n" + "| --- " * (len(COLUMNS) + 3) + "|\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    ds = build_dataset(load_interactions(args.data), k_core=5, seed=2020)
    common = json.loads(args.set)
    command = shlex.join(["python", "bench/ablation.py", *(argv if argv is not None else sys.argv[1:])])
    out = Path(args.out) if args.out else None
    text = header(command)
    print(f"{ds.stats()}{text}", end="", flush=True)
    if out:
        with out.open("a", encoding="utf-8") as f:
            f.write(text)
    if args.item_cf:
        emit(out, "item-CF", "", "-", item_cf_row(ds, ModelConfig(n_items=1).max_len))
    for seed in args.seeds:
        for name, overrides in args.variant:
            values = {**common, **json.loads(overrides)}
            emit(out, name, json.dumps(values), seed, run_variant(ds, values, seed))
    return 0


def emit(out: Path | None, name: str, values: str, seed, row: dict) -> None:
    """Print one table row and append it to ``out`` right away."""
    line = f"| {name} | `{values}` | {seed} | " + " | ".join(cell(row.get(c)) for c in COLUMNS) + " |\n"
    print(line, end="", flush=True)
    if out:
        with out.open("a", encoding="utf-8") as f:
            f.write(line)


if __name__ == "__main__":
    sys.exit(main())
