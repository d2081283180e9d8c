"""One training loop for every variant: mini-batch Adam, validation Recall@50, early stopping.

Works single-process and under `torchrun` (DistributedDataParallel): each rank trains on its
shard of the samples; weights stay identical across ranks, so every rank computes the same
validation metrics and takes the same early-stopping decision without extra communication.
"""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from model.config import TrainConfig
from model.data import SequenceDataset, holdout, training_samples
from model.loss import full_softmax_loss, sampled_softmax_loss, sampling_distribution
from model.metrics import evaluate_rankings
from model.retrieval import multi_interest_topn
from model.tower import MIND

EARLY_STOP_METRIC = "recall@50"
HISTORY_FRACTION = 0.8
EVAL_BATCH = 1024


@dataclass
class FitResult:
    state_dict: dict
    best_epoch: int
    best_validation: dict
    history: list[dict] = field(default_factory=list)


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


@torch.no_grad()
def user_interests(model: MIND, histories: torch.Tensor, profiles: torch.Tensor, device: torch.device
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(U, K, d) float32 capsules and (U, K) bool active mask, in eval mode, batched."""
    model.eval()
    table = model.item_vectors()
    caps, act = [], []
    for start in range(0, len(histories), EVAL_BATCH):
        c, a, _ = model.interests(histories[start:start + EVAL_BATCH].to(device),
                                  profiles[start:start + EVAL_BATCH].to(device), table)
        caps.append(c.float().cpu().numpy())
        act.append(a.cpu().numpy())
    return np.concatenate(caps), np.concatenate(act)


@torch.no_grad()
def retrieval_metrics(model: MIND, cases: HeldOutSet, device: torch.device,
                      exclude_history: bool = False) -> dict:
    """Recall/NDCG/HitRate @20/@50 over the full catalogue by exact inner product."""
    capsules, active = user_interests(model, cases.histories, cases.profiles, device)
    vectors = model.item_vectors()[1:].float().cpu().numpy()         # (n_items, d)
    ranked = multi_interest_topn(capsules, active, vectors, 50,
                                 cases.history_rows if exclude_history else None)
    return evaluate_rankings(ranked, cases.target_rows)


def _batches(n: int, batch_size: int, rng: np.random.Generator, rank: int, world: int):
    order = rng.permutation(n)[rank::world]
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


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


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, ds: SequenceDataset,
                config: TrainConfig, loss_name: str, sampler: dict, epoch: int,
                device: torch.device, progress: Progress, rank: int = 0, world: int = 1) -> tuple[float, float]:
    """One pass over freshly sampled positions; returns (mean loss, samples/s)."""
    rng = np.random.default_rng(config.seed + epoch)
    max_len = sampler["max_len"]
    histories, targets, users = training_samples(ds, max_len, rng, config.samples_per_user or None)
    profiles = ds.profile_matrix(users)
    model.train()
    steps = -(-len(targets) // (config.batch_size * world))
    total, seen, started = 0.0, 0, time.perf_counter()
    for step, rows in enumerate(_batches(len(targets), config.batch_size, rng, rank, world), 1):
        h = torch.as_tensor(histories[rows], device=device)
        p = torch.as_tensor(profiles[rows], device=device)
        t = torch.as_tensor(targets[rows], device=device)
        user, table = model(h, p, t)
        if loss_name == "full":
            loss = full_softmax_loss(user, table, t)
        else:
            loss = sampled_softmax_loss(user, table, t, sampler["q"], sampler["n_negatives"], sampler["generator"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(rows)
        seen += len(rows)
        progress.step(epoch, step, steps, total / seen, seen / (time.perf_counter() - started))
    return total / max(seen, 1), seen / max(time.perf_counter() - started, 1e-9)


def fit(model: MIND, ds: SequenceDataset, config: TrainConfig, device: torch.device,
        progress: Progress, wrapped: nn.Module | None = None, rank: int = 0, world: int = 1) -> FitResult:
    """Train until validation Recall@50 stops improving for ``patience`` evaluations."""
    wrapped = wrapped if wrapped is not None else model
    optimizer = torch.optim.Adam(wrapped.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    cases = held_out_set(ds, ds.val_users, model.config.max_len)
    sampler = {"max_len": model.config.max_len, "n_negatives": model.config.n_negatives,
               "q": sampling_distribution(torch.as_tensor(ds.item_counts(ds.train_users))),
               "generator": torch.Generator().manual_seed(config.seed)}
    best = FitResult(copy.deepcopy(model.state_dict()), 0, {EARLY_STOP_METRIC: -1.0})
    waited = 0
    for epoch in range(1, config.epochs + 1):
        loss, rate = train_epoch(wrapped, optimizer, ds, config, model.config.loss, sampler,
                                 epoch, device, progress, rank, world)
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
    model.load_state_dict(best.state_dict)
    return best
