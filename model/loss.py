"""Training losses: full softmax over the catalogue, or sampled softmax with logQ correction."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from model.routing import MASKED_LOGIT


def full_softmax_loss(user: torch.Tensor, table: torch.Tensor, target: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """user (B, d), table (N + 1, d) with row 0 = padding, target (B,) item indices -> scalar."""
    logits = user @ table[1:].t() / temperature                       # (B, N)
    return F.cross_entropy(logits, target - 1)


def best_capsule_scores(scores: torch.Tensor, active: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Each item's score over the ACTIVE capsules: scores (B, K, ...) , active (B, K) -> (B, ...).

    smoothing 0: the max (what retrieval's merge by score ranks by); tau > 0: the smooth max
    tau * logsumexp(s / tau), which gives every capsule a share of the gradient by how close
    it is to the item (tau -> 0 is the max)."""
    hidden = ~active.view(active.shape + (1,) * (scores.dim() - 2))
    scores = scores.masked_fill(hidden, MASKED_LOGIT)
    if smoothing <= 0 or scores.size(1) == 1:                         # K = 1: exactly the score itself
        return scores.max(dim=1).values
    return smoothing * torch.logsumexp(scores / smoothing, dim=1)


def max_readout_loss(interests: torch.Tensor, active: torch.Tensor, table: torch.Tensor,
                     target: torch.Tensor, temperature: float = 1.0, smoothing: float = 0.0) -> torch.Tensor:
    """Full softmax where each item's logit is its best score over the ACTIVE capsules: the
    ranking that retrieval's merge-by-score serves. interests (B, K, d), active (B, K) bool,
    table (N + 1, d), target (B,) -> scalar."""
    scores = torch.einsum("bkd,nd->bkn", interests, table[1:])        # (B, K, N)
    return F.cross_entropy(best_capsule_scores(scores, active, smoothing) / temperature, target - 1)


def sampling_distribution(item_counts: torch.Tensor, power: float = 0.75) -> torch.Tensor:
    """(N + 1,) counts -> (N + 1,) probabilities (row 0 = padding gets 0); smoothed popularity."""
    weights = (item_counts.double() + 1.0).pow(power)
    weights[0] = 0.0
    return (weights / weights.sum()).float()


def sampled_softmax_loss(user: torch.Tensor, table: torch.Tensor, target: torch.Tensor,
                         probabilities: torch.Tensor, n_negatives: int,
                         generator: torch.Generator | None = None, temperature: float = 1.0,
                         active: torch.Tensor | None = None, smoothing: float = 0.0) -> torch.Tensor:
    """Sampled softmax with negatives shared across the batch and logQ correction.

    user (B, d), table (N + 1, d), target (B,), probabilities (N + 1,) the sampler's q.
    Every logit (score / temperature) is corrected by -log(n_negatives * q_j) so the estimate is
    unbiased w.r.t. the popularity-skewed sampler; a negative equal to the row's target is
    masked out. With ``active`` (B, K) bool, ``user`` is (B, K, d) capsules and every item is
    scored by its best active capsule (the "max" readout, as retrieval ranks; ``smoothing``: see
    `best_capsule_scores`).
    """
    negatives = torch.multinomial(probabilities, n_negatives, replacement=True, generator=generator)
    negatives = negatives.to(table.device)
    log_q = torch.log(probabilities.to(table.device) * n_negatives)   # (N + 1,)
    if active is None:
        positive = (user * table[target]).sum(1)                      # (B,)
        negative = user @ table[negatives].t()                        # (B, S)
    else:
        positive = best_capsule_scores(torch.einsum("bkd,bd->bk", user, table[target]), active, smoothing)
        negative = best_capsule_scores(torch.einsum("bkd,sd->bks", user, table[negatives]), active, smoothing)
    positive = positive / temperature - log_q[target]
    negative = negative / temperature - log_q[negatives]
    negative = negative.masked_fill(negatives.unsqueeze(0) == target.unsqueeze(1), MASKED_LOGIT)
    logits = torch.cat([positive.unsqueeze(1), negative], dim=1)      # (B, 1 + S)
    return F.cross_entropy(logits, torch.zeros_like(target))
