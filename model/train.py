"""`mind train --data PATH --out RUN_DIR`: train MIND and its K=1 baseline into a run directory.

Read top to bottom: the CLI (thin) -> data -> the objective -> the loop with validation and
early stopping -> data-parallel setup -> the K=1 baseline as a config -> save. Runs single-
process, or data-parallel when launched by `torchrun` (gloo on CPU, nccl on CUDA) with the
same arguments: each rank trains on its shard of the samples, every rank takes the same
number of steps (no all-reduce is left unmatched), weights stay identical across ranks, so
every rank computes the same validation metrics and takes the same early-stopping decision.
The run is staged beside RUN_DIR and renamed into place only when complete.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from model.artifacts import move_into_place, staging_dir
from model.config import (LOSSES, LR_SCHEDULES, PROFILE_FUSIONS, READOUTS, ROUTING_AXES, ROUTING_MAPS,
                          ModelConfig, TrainConfig)
from model.data import (FORMATS, HISTORY_FRACTION, SequenceDataset, data_config, holdout, load_dataset,
                        resolve_data_source, training_samples)
from model.device import DeviceError, resolve_device
from model.loss import full_softmax_loss, max_readout_loss, sampled_softmax_loss, sampling_distribution
from model.metrics import evaluate_rankings
from model.protocol import interest_diversity, tower_capsule_fn
from model.retrieval import multi_interest_topn
from model.run import K1_BASELINE, write_run_files
from model.tower import MIND

EARLY_STOP_METRIC = "recall@50"
COLLAPSED_COSINE = 0.8   # mean pairwise capsule cosine above this: the K capsules act as one vector
MODEL_DEFAULTS = ModelConfig(n_items=1)
TRAIN_DEFAULTS = TrainConfig()


# ---------------------------------------------------------------------------------------- CLI
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
    m = p.add_argument_group("model (defaults: the validation winners of bench/ablation.md)")
    m.add_argument("--embed-dim", type=int, default=MODEL_DEFAULTS.embed_dim)
    m.add_argument("--interests", type=int, default=MODEL_DEFAULTS.n_interests, help="K, maximum interests")
    m.add_argument("--max-len", type=int, default=MODEL_DEFAULTS.max_len, help="behaviours kept per user")
    m.add_argument("--routing-iters", type=int, default=MODEL_DEFAULTS.routing_iters)
    m.add_argument("--routing-softmax", choices=ROUTING_AXES, default=MODEL_DEFAULTS.routing_softmax)
    m.add_argument("--routing-maps", choices=ROUTING_MAPS, default=MODEL_DEFAULTS.routing_maps,
                   help="one bilinear map shared by all interests, or one per interest (ComiRec-DR)")
    m.add_argument("--no-dynamic-k", action="store_true", help="always use K interests")
    m.add_argument("--readout", choices=READOUTS, default=MODEL_DEFAULTS.readout,
                   help="training readout: label-aware attention (--pow-p), the closest capsule, or max over capsules")
    m.add_argument("--readout-smoothing", type=float, default=MODEL_DEFAULTS.readout_smoothing,
                   help="max readout: 0 = exact max over capsules; tau > 0 = tau * logsumexp(scores / tau)")
    m.add_argument("--pow-p", type=float, default=MODEL_DEFAULTS.pow_p, help="label-aware attention power")
    m.add_argument("--hidden-dim", type=int, default=MODEL_DEFAULTS.hidden_dim)
    m.add_argument("--routing-init-std", type=float, default=MODEL_DEFAULTS.routing_init_std,
                   help="std of the one-time seeded Gaussian draw of the initial routing logits")
    m.add_argument("--output-relu", action="store_true", help="ReLU after the second H layer too (the paper's)")
    m.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=MODEL_DEFAULTS.normalize,
                   help="L2-normalise item vectors and capsules (scores are cosines / --temperature)")
    m.add_argument("--temperature", type=float, default=MODEL_DEFAULTS.temperature, help="softmax temperature")
    m.add_argument("--profile-fusion", choices=PROFILE_FUSIONS, default=MODEL_DEFAULTS.profile_fusion,
                   help="how the user profile enters the capsules: the same vector into each, one projection per interest, or not at all")
    m.add_argument("--position-embedding", action=argparse.BooleanOptionalAction,
                   default=MODEL_DEFAULTS.position_embedding,
                   help="add a learned vector per history position (newest last) to each behaviour before the routing")
    m.add_argument("--behaviour-dropout", type=float, default=MODEL_DEFAULTS.behaviour_dropout,
                   help="training only: dropout on the behaviour vectors entering the routing")
    m.add_argument("--loss", choices=LOSSES, default=MODEL_DEFAULTS.loss)
    m.add_argument("--negatives", type=int, default=MODEL_DEFAULTS.n_negatives, help="shared negatives (sampled loss), at least")
    m.add_argument("--negatives-fraction", type=float, default=MODEL_DEFAULTS.negatives_fraction,
                   help="or this share of the catalogue as shared negatives when that is more")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=TRAIN_DEFAULTS.epochs)
    t.add_argument("--batch-size", type=int, default=TRAIN_DEFAULTS.batch_size)
    t.add_argument("--lr", type=float, default=TRAIN_DEFAULTS.lr)
    t.add_argument("--weight-decay", type=float, default=TRAIN_DEFAULTS.weight_decay)
    t.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=TRAIN_DEFAULTS.lr_schedule,
                   help="'plateau': multiply lr by --lr-decay after each validation pass without a new best")
    t.add_argument("--lr-decay", type=float, default=TRAIN_DEFAULTS.lr_decay)
    t.add_argument("--patience", type=int, default=TRAIN_DEFAULTS.patience)
    t.add_argument("--samples-per-user", type=int, default=TRAIN_DEFAULTS.samples_per_user,
                   help="positions sampled per train user per epoch (0 = all)")
    t.add_argument("--history-dropout", type=float, default=TRAIN_DEFAULTS.history_dropout,
                   help="training only: drop each history item but the most recent with this probability")
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
        torch.set_num_threads(args.threads)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        return fail(f"{out} already exists and is not empty (use --force to replace it once the new run is complete)")
    try:
        ds, data = training_data(args)
        config = model_config(args, ds)
        training = from_flags(TrainConfig, args)
    except (ValueError, OSError) as err:
        return fail(str(err))
    if ds.n_items == 0 or len(ds.train_users) == 0 or len(ds.val_users) == 0:
        return fail(f"{args.data}: too little data after the {args.k_core}-core filter ({ds.stats()})")
    try:
        device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
    except DeviceError as err:
        return fail(f"--device {args.device}: {err}")
    return run_training(ds, data, config, training, out, device,
                        baselines=not args.no_baselines, quiet=args.quiet)


# --------------------------------------------------------------------------------------- data
def training_data(args: argparse.Namespace) -> tuple[SequenceDataset, dict]:
    """This rank's dataset (torchrun's RANK / WORLD_SIZE: a Parquet log is read in part, see
    `model.data.load_dataset`) and the run's ``config.json["data"]``."""
    path = resolve_data_source(args.data)
    loader = {k: getattr(args, k) for k in ("fmt", "user_col", "item_col", "time_col", "sep") if getattr(args, k)}
    ds = load_dataset(path, k_core=args.k_core, seed=args.split_seed, rank=int(os.environ.get("RANK", "0")),
                      world=int(os.environ.get("WORLD_SIZE", "1")), **loader)
    return ds, data_config(path, k_core=args.k_core, seed=args.split_seed, **loader)


def from_flags(cls, args: argparse.Namespace, **extra):
    """The config dataclass ``cls`` of the flags named as its fields, plus ``extra``."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}, **extra)


def model_config(args: argparse.Namespace, ds: SequenceDataset) -> ModelConfig:
    return from_flags(ModelConfig, args, n_items=ds.n_items, n_interests=args.interests, n_negatives=args.negatives,
                      dynamic_k=not args.no_dynamic_k, init_seed=args.seed,
                      profile_vocab_sizes=tuple(len(ds.user_profile_vocabs[f]) for f in ds.profile_features),
                      item_side_vocab_sizes={f: len(v) for f, v in ds.item_side_vocabs.items()})


@dataclass(frozen=True)
class HeldOutSet:
    histories: torch.Tensor        # (U, L) int64
    profiles: torch.Tensor         # (U, P) int64
    target_rows: list[np.ndarray]  # per user, rows (index - 1)
    history_rows: list[np.ndarray]


def held_out_set(ds: SequenceDataset, users: np.ndarray, max_len: int) -> HeldOutSet:
    """The protocol's 80/20 cases of ``users`` as tensors for `retrieval_metrics`."""
    histories, targets, kept = holdout(ds, users, max_len, HISTORY_FRACTION)
    return HeldOutSet(torch.as_tensor(histories), torch.as_tensor(ds.profile_matrix(kept)),
                      [np.asarray(t) - 1 for t in targets],
                      [np.unique(h[h > 0]) - 1 for h in histories])


# ------------------------------------------------------------------------------ the objective
class Objective(nn.Module):
    """MIND plus its training loss; forward(history, profile, target) -> scalar loss. This is
    what DistributedDataParallel wraps, so every readout goes through one forward call."""

    def __init__(self, model: MIND, q: torch.Tensor, generator: torch.Generator):
        super().__init__()
        self.model = model
        self.q = q                     # (N + 1,) the sampled softmax's sampler
        self.generator = generator

    def forward(self, history: torch.Tensor, profile: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        config = self.model.config
        active = None
        if config.readout == "max":                                    # every capsule scores every item
            table = self.model.item_vectors()                          # (N + 1, d)
            user, active, _ = self.model.interests(history, profile, table)   # (B, K, d), (B, K)
        else:
            user, table = self.model(history, profile, target)         # (B, d), (N + 1, d)
        if config.loss == "sampled":
            return sampled_softmax_loss(user, table, target, self.q, config.shared_negatives, self.generator,
                                        config.temperature, active, config.readout_smoothing)
        if active is not None:
            return max_readout_loss(user, active, table, target, config.temperature, config.readout_smoothing)
        return full_softmax_loss(user, table, target, config.temperature)


# ------------------------------------------------------------------------------------- the loop
@dataclass
class FitResult:
    state_dict: dict
    best_epoch: int
    best_validation: dict
    history: list[dict] = field(default_factory=list)


def rank_batches(n: int, batch_size: int, rng: np.random.Generator, rank: int, world: int) -> list[np.ndarray]:
    """This rank's mini-batches of a shuffled 0..n-1. Every rank gets exactly n // world samples
    (up to world - 1 samples sit out this epoch) and so the same number of steps: an extra
    backward on one rank would leave DDP's gradient all-reduce unmatched and hang the others."""
    order = rng.permutation(n)
    order = order[:n - n % world][rank::world]
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def shard_batches(n: int, batch_size: int, rng: np.random.Generator, device: torch.device) -> list[np.ndarray]:
    """Mini-batches of a shuffled 0..n-1 of this rank's own samples, cut to the fewest any rank
    holds: every rank takes the same number of steps (see `rank_batches`)."""
    fewest = torch.tensor([n], device=device)
    dist.all_reduce(fewest, op=dist.ReduceOp.MIN)
    order = rng.permutation(n)[:int(fewest)]
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


class Progress:
    """A plain-text progress line on stderr: epoch, step, loss, samples/s."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.quiet = not enabled

    def step(self, epoch: int, step: int, steps: int, loss: float, rate: float) -> None:
        if self.enabled:
            print(f"\repoch {epoch:3d} [{step:5d}/{steps}] loss {loss:.4f}  {rate:,.0f} samples/s",
                  end="", file=sys.stderr, flush=True)

    def epoch(self, line: str) -> None:
        if not self.quiet:
            print(("\r" if self.enabled else "") + line, file=sys.stderr, flush=True)


def drop_history_items(histories: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Training augmentation: each item of ``histories`` (S, L) int64, left-padded, is replaced by
    the padding index 0 with probability ``rate``, except the most recent (last column), so no
    history becomes empty. rate 0 returns ``histories`` itself and draws nothing from ``rng``."""
    if rate <= 0:
        return histories
    dropped = rng.random(histories.shape) < rate                      # (S, L)
    dropped[:, -1] = False
    return np.where(dropped, 0, histories)


def train_epoch(objective: nn.Module, optimizer: torch.optim.Optimizer, ds: SequenceDataset,
                config: TrainConfig, max_len: int, epoch: int, device: torch.device, progress: Progress,
                rank: int = 0, world: int = 1) -> tuple[float, float]:
    """One pass over freshly sampled positions; returns (mean loss, samples/s)."""
    rng = np.random.default_rng(config.seed + epoch)
    histories, targets, users = training_samples(ds, max_len, rng, config.samples_per_user or None)
    profiles = torch.as_tensor(ds.profile_matrix(users))
    if ds.shard[1] > 1:  # samples of this rank's own train users (`load_dataset(rank, world)`)
        batches = shard_batches(len(targets), config.batch_size, rng, device)
    else:
        batches = rank_batches(len(targets), config.batch_size, rng, rank, world)
    histories = drop_history_items(histories, config.history_dropout, rng)   # after the shuffle: rate 0 is unchanged
    histories, targets = torch.as_tensor(histories), torch.as_tensor(targets)
    objective.train()
    total, seen, started = 0.0, 0, time.perf_counter()
    for step, rows in enumerate(batches, 1):
        rows = torch.as_tensor(rows)
        loss = objective(histories[rows].to(device), profiles[rows].to(device), targets[rows].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(rows)
        seen += len(rows)
        progress.step(epoch, step, len(batches), total / seen, seen / (time.perf_counter() - started))
    return total / max(seen, 1), seen / max(time.perf_counter() - started, 1e-9)


def fit(model: MIND, ds: SequenceDataset, config: TrainConfig, device: torch.device,
        progress: Progress, rank: int = 0, world: int = 1) -> FitResult:
    """Train until validation Recall@50 stops improving for ``patience`` evaluations; the best
    checkpoint is loaded back into ``model``."""
    q = sampling_distribution(torch.as_tensor(ds.train_item_counts))
    objective: nn.Module = Objective(model, q, torch.Generator().manual_seed(config.seed))
    if world > 1:
        objective = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(objective.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    cases = held_out_set(ds, ds.val_users, model.config.max_len)
    best = FitResult(copy.deepcopy(model.state_dict()), 0, {EARLY_STOP_METRIC: -1.0})
    waited = 0
    for epoch in range(1, config.epochs + 1):
        loss, rate = train_epoch(objective, optimizer, ds, config, model.config.max_len, epoch, device,
                                 progress, rank, world)
        if epoch % config.eval_every and epoch != config.epochs:
            continue
        validation = retrieval_metrics(model, cases, device)
        best.history.append({"epoch": epoch, "loss": loss, "samples_per_s": rate, **validation})
        progress.epoch(f"epoch {epoch:3d}  loss {loss:.4f}  {rate:,.0f} samples/s  "
                       f"val recall@50 {validation[EARLY_STOP_METRIC]:.4f}")
        if validation[EARLY_STOP_METRIC] > best.best_validation[EARLY_STOP_METRIC]:
            best.state_dict, best.best_epoch, best.best_validation = copy.deepcopy(model.state_dict()), epoch, validation
            waited = 0
        else:
            waited += 1
            if waited >= config.patience:
                break
            decay_lr(optimizer, config)
    model.load_state_dict(best.state_dict)
    return best


def decay_lr(optimizer: torch.optim.Optimizer, config: TrainConfig) -> None:
    """The "plateau" schedule: a validation pass without a new best multiplies lr by lr_decay."""
    if config.lr_schedule == "plateau":
        for group in optimizer.param_groups:
            group["lr"] *= config.lr_decay


# ------------------------------------------------------------------------------- validation
@torch.no_grad()
def user_interests(model: MIND, histories: torch.Tensor, profiles: torch.Tensor, device: torch.device
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(U, K, d) float32 capsules and (U, K) bool active mask, in eval mode, batched."""
    model.eval()
    table = model.item_vectors()
    capsules_of = tower_capsule_fn(lambda h, p: model.interests(h, p, table), model.config.max_len, device)
    return capsules_of(histories, profiles)


@torch.no_grad()
def retrieval_metrics(model: MIND, cases: HeldOutSet, device: torch.device,
                      exclude_history: bool = False) -> dict:
    """Recall/NDCG/HitRate @20/@50 over the full catalogue by exact inner product."""
    capsules, active = user_interests(model, cases.histories, cases.profiles, device)
    vectors = model.item_vectors()[1:].float().cpu().numpy()         # (n_items, d)
    ranked = multi_interest_topn(capsules, active, vectors, 50,
                                 cases.history_rows if exclude_history else None)
    return evaluate_rankings(ranked, cases.target_rows)


@torch.no_grad()
def capsule_diversity(model: MIND, cases: HeldOutSet, device: torch.device) -> dict:
    """Mean pairwise cosine of active capsules and the one-interest top-50 overlap (spec 5)."""
    capsules, active = user_interests(model, cases.histories, cases.profiles, device)
    return interest_diversity(capsules, active, model.item_vectors()[1:].float().cpu().numpy())


# ------------------------------------------------------------------------------ data-parallel
def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); joins the torchrun process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world


# --------------------------------------------------------------------------- runs and saving
def train_one(config: ModelConfig, ds: SequenceDataset, train_config: TrainConfig, device: torch.device,
              progress: Progress, rank: int, world: int) -> tuple[MIND, dict]:
    """Train one model; returns it (best checkpoint loaded) and its metrics."""
    torch.manual_seed(train_config.seed)
    model = MIND(config, {f: torch.as_tensor(t) for f, t in ds.item_side.items()}).to(device)
    result = fit(model, ds, train_config, device, progress, rank, world)
    test_cases = held_out_set(ds, ds.test_users, config.max_len)
    metrics = {"best_epoch": result.best_epoch, "validation": result.best_validation,
               "test": retrieval_metrics(model, test_cases, device),
               "test_history_excluded": retrieval_metrics(model, test_cases, device, exclude_history=True),
               "test_diversity": capsule_diversity(model, test_cases, device),
               "history": result.history, "world_size": world}
    return model, metrics


def save(model: MIND, metrics: dict, train_config: TrainConfig, data_config: dict, ds: SequenceDataset,
         out: Path) -> None:
    counts = ds.train_item_counts  # every train user's, also on a rank that holds a shard
    popularity = [int(i) for i in np.argsort(-counts[1:], kind="stable") + 1]
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    write_run_files(out, model.cpu(), train_config, data_config, ds.vocab_json(), ds.split_json(),
                    popularity, metrics, state)


def interest_report(k: int, metrics: dict, k1_metrics: dict | None) -> list[str]:
    """What an operator must see: the measured gain of K interests over one, and a loud warning
    when the capsules collapsed onto one vector."""
    cosine = metrics["test_diversity"]["capsule_cosine"]
    overlap = metrics["test_diversity"]["one_interest_overlap@50"]
    shown = [f"{v:.3f}" if v is not None else "n/a" for v in (cosine, overlap)]
    lines = [f"mind train: capsules: mean pairwise cosine {shown[0]}, one-interest top-50 overlap {shown[1]} (test users)"]
    if k1_metrics is None:
        lines.append("mind train: K=1 baseline not trained (--no-baselines): the gain of K interests is not measured")
    else:
        mine, one = metrics["test"][EARLY_STOP_METRIC], k1_metrics["test"][EARLY_STOP_METRIC]
        lines.append(f"mind train: K={k} vs K=1 test {EARLY_STOP_METRIC}: {mine:.4f} vs {one:.4f} "
                     f"({mine - one:+.4f}, {(mine - one) / max(one, 1e-12):+.1%})")
    if k > 1 and cosine is not None and cosine > COLLAPSED_COSINE:
        lines.append(f"mind train: WARNING: the {k} capsules are (nearly) collapsed: mean cosine {cosine:.3f} > "
                     f"{COLLAPSED_COSINE}; the interests are not distinct, and the one-interest overlap "
                     f"({shown[1]}) is how much of the list one interest alone already returns")
    return lines


def run_training(ds: SequenceDataset, data_config: dict, config: ModelConfig, train_config: TrainConfig,
                 out: Path, device: torch.device, baselines: bool = True, quiet: bool = False) -> int:
    rank, world = init_distributed(device)
    talk = rank == 0 and not quiet
    progress = Progress(enabled=talk)
    if talk:
        print(f"mind train: {ds.stats()} on {device} x{world}", file=sys.stderr)
    if rank == 0 and ds.profile_features and config.profile_fusion == "none":   # also with --quiet: what the model is
        print(f"mind train: the user profile features {list(ds.profile_features)} are not fused into the "
              "capsules (--profile-fusion none, the default: it kept the interests apart on ml-100k, "
              "bench/ablation.md); requests may send them, the model does not use them; "
              "--profile-fusion concat uses them", file=sys.stderr)
    k1 = dataclasses.replace(config, n_interests=1)   # the YouTube-DNN-style single-vector baseline
    variants = [("MIND", config, Path("."))] + ([("MIND K=1", k1, K1_BASELINE)] if baselines else [])
    staged = staging_dir(out) if rank == 0 else None
    try:
        results = {}
        for name, variant, subdir in variants:
            if talk:
                print(f"mind train: training {name} (K={variant.n_interests})", file=sys.stderr)
            model, results[name] = train_one(variant, ds, train_config, device, progress, rank, world)
            if rank == 0:
                (staged / subdir).mkdir(parents=True, exist_ok=True)
                save(model, results[name], train_config, data_config, ds, staged / subdir)
        if rank == 0:
            move_into_place(staged, out)
            print(f"mind train: wrote {out}; test recall@50: " +
                  ", ".join(f"{k} {v['test'][EARLY_STOP_METRIC]:.4f}" for k, v in results.items()))
            for line in interest_report(config.n_interests, results["MIND"], results.get("MIND K=1")):
                print(line)
    except BaseException:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
        raise
    finally:
        if world > 1:
            dist.destroy_process_group()
    return 0
