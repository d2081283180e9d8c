"""Orchestration of `mind train`: device and process group, MIND and its K=1 baseline, the
test metrics of the best checkpoints, and the staged, atomically published run directory."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from model.config import ModelConfig, TrainConfig
from model.fit import Progress, fit, held_out_set, retrieval_metrics
from model.run import K1_BASELINE, publish, staging_dir, write_run_files
from model.tower import MIND


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda given but CUDA is not available (is a CUDA build of torch installed?)")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); joins the torchrun process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world


def train_one(config: ModelConfig, ds, train_config: TrainConfig, device: torch.device,
              progress: Progress, rank: int, world: int) -> tuple[MIND, dict]:
    """Train one model; returns it (best checkpoint loaded) and its metrics."""
    torch.manual_seed(train_config.seed)
    side = {f: torch.as_tensor(t) for f, t in ds.item_side.items()}
    model = MIND(config, side).to(device)
    wrapped = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    result = fit(model, ds, train_config, device, progress, wrapped, rank, world)
    test_cases = held_out_set(ds, ds.test_users, config.max_len)
    metrics = {"best_epoch": result.best_epoch, "validation": result.best_validation,
               "test": retrieval_metrics(model, test_cases, device),
               "test_history_excluded": retrieval_metrics(model, test_cases, device, exclude_history=True),
               "history": result.history, "world_size": world}
    return model, metrics


def save(model: MIND, metrics: dict, train_config: TrainConfig, data_config: dict, ds, out: Path) -> None:
    counts = ds.item_counts(ds.train_users)
    popularity = [int(i) for i in np.argsort(-counts[1:], kind="stable") + 1]
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    write_run_files(out, model.cpu(), train_config, data_config, ds.vocab_json(), ds.split_json(),
                    popularity, metrics, state)


def run_training(args: argparse.Namespace, ds, data_config: dict, config: ModelConfig,
                 train_config: TrainConfig, out: Path) -> int:
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        device = pick_device(train_config.device, local_rank)
    except RuntimeError as err:
        print(f"mind train: error: {err}", file=sys.stderr)
        return 2
    rank, world = init_distributed(device)
    progress = Progress(enabled=not args.quiet and rank == 0)
    if rank == 0 and not args.quiet:
        print(f"mind train: {ds.stats()} on {device} x{world}", file=sys.stderr)
    variants = [("MIND", config, Path("."))]
    if not args.no_baselines:
        from model.train import k1_config

        variants.append(("MIND K=1", k1_config(config), K1_BASELINE))
    staged = staging_dir(out) if rank == 0 else None
    try:
        summary = {}
        for name, variant, subdir in variants:
            if rank == 0 and not args.quiet:
                print(f"mind train: training {name} (K={variant.n_interests})", file=sys.stderr)
            model, metrics = train_one(variant, ds, train_config, device, progress, rank, world)
            summary[name] = metrics["test"]["recall@50"]
            if rank == 0:
                (staged / subdir).mkdir(parents=True, exist_ok=True)
                save(model, metrics, train_config, data_config, ds, staged / subdir)
        if rank == 0:
            publish(staged, out)
            print(f"mind train: wrote {out}; test recall@50: " +
                  ", ".join(f"{k} {v:.4f}" for k, v in summary.items()))
    except BaseException:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
        raise
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0
