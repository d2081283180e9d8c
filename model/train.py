"""`mind train --data PATH --out RUN_DIR`: train MIND (and its K=1 baseline) into a run directory.

Runs single-process, or data-parallel when launched by `torchrun` (gloo on CPU, nccl on
CUDA) with the same arguments. The run is staged in a temporary directory beside RUN_DIR and
renamed into place only when complete, so a crash never leaves a half-written run.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from model.config import LOSSES, ROUTING_AXES, ModelConfig, TrainConfig
from model.data.formats import FORMATS

MODEL_DEFAULTS = ModelConfig(n_items=1)
TRAIN_DEFAULTS = TrainConfig()


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="PATH",
                   help="interaction log (u.data, ratings.dat, ratings.csv, RecBole .inter, CSV/TSV/Parquet) "
                        "or a dataset name: 'ml-100k' (local copy or download), 'synthetic' (built-in)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    p.add_argument("--force", action="store_true", help="replace an existing run at RUN_DIR (only once the new one is complete)")
    fmt = p.add_argument_group("input format (auto-detected unless given)")
    fmt.add_argument("--format", dest="fmt", choices=sorted(FORMATS))
    fmt.add_argument("--user-col"), fmt.add_argument("--item-col"), fmt.add_argument("--time-col")
    fmt.add_argument("--sep", help="field separator of a generic CSV/TSV file")
    data = p.add_argument_group("protocol")
    data.add_argument("--k-core", type=int, default=5, help="iterative k-core filter on users and items (default 5)")
    data.add_argument("--split-seed", type=int, default=2020, help="seed of the 8:1:1 user split (default 2020)")
    m = p.add_argument_group("model (defaults: the ml-100k ablation winners)")
    m.add_argument("--embed-dim", type=int, default=MODEL_DEFAULTS.embed_dim)
    m.add_argument("--interests", type=int, default=MODEL_DEFAULTS.n_interests, help="K, maximum interests")
    m.add_argument("--max-len", type=int, default=MODEL_DEFAULTS.max_len, help="behaviours kept per user")
    m.add_argument("--routing-iters", type=int, default=MODEL_DEFAULTS.routing_iters)
    m.add_argument("--routing-softmax", choices=ROUTING_AXES, default=MODEL_DEFAULTS.routing_softmax)
    m.add_argument("--no-dynamic-k", action="store_true", help="always use K interests")
    m.add_argument("--pow-p", type=float, default=MODEL_DEFAULTS.pow_p, help="label-aware attention power")
    m.add_argument("--hidden-dim", type=int, default=MODEL_DEFAULTS.hidden_dim)
    m.add_argument("--routing-init-std", type=float, default=MODEL_DEFAULTS.routing_init_std,
                   help="std of the one-time Gaussian draw of the initial routing logits (1 keeps capsules "
                        "apart; the small default lets them collapse on ml-100k, see bench/ablation.md)")
    m.add_argument("--output-relu", action="store_true", help="ReLU after the second H layer too (the paper's)")
    m.add_argument("--loss", choices=LOSSES, default=MODEL_DEFAULTS.loss)
    m.add_argument("--negatives", type=int, default=MODEL_DEFAULTS.n_negatives, help="shared negatives (sampled loss)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=TRAIN_DEFAULTS.epochs)
    t.add_argument("--batch-size", type=int, default=TRAIN_DEFAULTS.batch_size)
    t.add_argument("--lr", type=float, default=TRAIN_DEFAULTS.lr)
    t.add_argument("--patience", type=int, default=TRAIN_DEFAULTS.patience)
    t.add_argument("--samples-per-user", type=int, default=TRAIN_DEFAULTS.samples_per_user,
                   help="positions sampled per train user per epoch (0 = all)")
    t.add_argument("--seed", type=int, default=TRAIN_DEFAULTS.seed)
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    t.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = torch's default; 1 is much faster on a busy shared CPU)")
    t.add_argument("--no-baselines", action="store_true", help="skip training the MIND K=1 baseline")
    t.add_argument("--quiet", action="store_true", help="no progress output")


def fail(message: str) -> int:
    print(f"mind train: error: {message}", file=sys.stderr)
    return 2


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        return fail(f"{out} already exists and is not empty (use --force to replace it once the new run is complete)")
    try:
        ds, data_config = load_dataset(args)
    except (ValueError, OSError) as err:
        return fail(str(err))
    if ds.n_items == 0 or len(ds.train_users) == 0 or len(ds.val_users) == 0:
        return fail(f"{args.data}: too little data after the {args.k_core}-core filter ({ds.stats()})")
    from model.trainer import run_training
    return run_training(args, ds, data_config, model_config(args, ds), train_config(args), out)


def load_dataset(args: argparse.Namespace):
    from model.data import build_dataset, load_interactions
    from model.data.runfiles import data_config
    from model.data.sources import resolve_data_source

    path = resolve_data_source(args.data)
    loader = {k: getattr(args, k) for k in ("fmt", "user_col", "item_col", "time_col", "sep") if getattr(args, k)}
    interactions = load_interactions(path, **loader)
    ds = build_dataset(interactions, k_core=args.k_core, seed=args.split_seed)
    return ds, data_config(path, k_core=args.k_core, seed=args.split_seed, **loader)


def model_config(args: argparse.Namespace, ds) -> ModelConfig:
    return ModelConfig(
        n_items=ds.n_items, embed_dim=args.embed_dim, n_interests=args.interests, max_len=args.max_len,
        routing_iters=args.routing_iters, routing_softmax=args.routing_softmax, dynamic_k=not args.no_dynamic_k,
        pow_p=args.pow_p, hidden_dim=args.hidden_dim, routing_init_std=args.routing_init_std,
        output_relu=args.output_relu, loss=args.loss, n_negatives=args.negatives,
        profile_vocab_sizes=tuple(len(ds.user_profile_vocabs[f]) for f in ds.profile_features),
        item_side_vocab_sizes={f: len(v) for f, v in ds.item_side_vocabs.items()}, init_seed=args.seed)


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                       samples_per_user=args.samples_per_user, seed=args.seed, device=args.device)


def k1_config(config: ModelConfig) -> ModelConfig:
    """The YouTube-DNN-style single-vector baseline: the same model with K = 1."""
    return dataclasses.replace(config, n_interests=1)
