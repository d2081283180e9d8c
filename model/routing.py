"""Behaviour-to-interest (B2I) dynamic routing: the multi-interest extractor of MIND.

Everything here is per user: the routing logits start, for every user, from the same
Gaussian draw made once at construction (a buffer, saved with the model) and are refined
inside one forward call only. Nothing is carried between calls or summed over the batch,
so a user's capsules depend on that user's behaviours alone, and serving is deterministic.
"""
from __future__ import annotations

import torch
from torch import nn

# TorchScript cannot close over float globals, so the scripted functions below take these as
# default arguments (evaluated in Python, compiled in as constants).
MASKED_LOGIT = -1e9  # stands for -inf without producing NaN when a whole row is masked
SQUASH_EPS = 1e-9    # keeps z / |z| finite for a zero capsule


def squash(z: torch.Tensor, eps: float = SQUASH_EPS) -> torch.Tensor:
    """squash(z) = |z|^2 / (1 + |z|^2) * z / |z| over the LAST (embedding) axis; norms < 1."""
    sq_norm = (z * z).sum(-1, keepdim=True)
    return z * (sq_norm / (1.0 + sq_norm)) / torch.sqrt(sq_norm + eps)


def interest_count(n_real: torch.Tensor, max_interests: int, dynamic: bool) -> torch.Tensor:
    """K'_u = max(1, min(K, floor(log2(n_real)))) per user (B,) int64; K when not dynamic."""
    if not dynamic:
        return torch.full_like(n_real, max_interests)
    log2 = torch.floor(torch.log2(n_real.clamp(min=1).double())).long()
    return log2.clamp(min=1, max=max_interests)


def routing_weights(logits: torch.Tensor, mask: torch.Tensor, active: torch.Tensor,
                    over_interests: bool, masked_logit: float = MASKED_LOGIT) -> torch.Tensor:
    """Masked routing softmax. logits (B, L, K), mask (B, L) bool, active (B, K) bool -> (B, L, K).

    Padding positions and inactive interests always get exactly zero weight.
    """
    keep = mask.unsqueeze(2) & active.unsqueeze(1)                    # (B, L, K)
    masked = logits.masked_fill(~keep, masked_logit)
    weights = torch.softmax(masked, dim=2 if over_interests else 1)
    return weights * keep.to(weights.dtype)


def pool(weights: torch.Tensor, mapped: torch.Tensor) -> torch.Tensor:
    """z_j = sum_i w_ij * (S e_i): weights (B, L, K), mapped (B, L, d) or (B, L, K, d) -> (B, K, d)."""
    if mapped.dim() == 4:
        return torch.einsum("blk,blkd->bkd", weights, mapped)
    return torch.einsum("blk,bld->bkd", weights, mapped)


def agreement(capsules: torch.Tensor, mapped: torch.Tensor) -> torch.Tensor:
    """c_j . (S e_i): capsules (B, K, d), mapped (B, L, d) or (B, L, K, d) -> (B, L, K)."""
    if mapped.dim() == 4:
        return torch.einsum("bkd,blkd->blk", capsules, mapped)
    return torch.einsum("bkd,bld->blk", capsules, mapped)


class B2IRouting(nn.Module):
    """Dynamic routing from behaviour embeddings to K interest capsules (spec section 1.2)."""

    def __init__(self, dim: int, n_interests: int, max_len: int, iterations: int = 3,
                 softmax_over_interests: bool = True, dynamic_k: bool = True, seed: int = 2020,
                 init_std: float = 1.0, per_interest_maps: bool = False):
        super().__init__()
        self.n_interests = n_interests
        self.iterations = iterations
        self.over_interests = softmax_over_interests
        self.dynamic_k = dynamic_k
        # The bilinear map, a trained parameter: S (d x d) shared by every interest (the paper),
        # or (K, d, d) with one W_j per interest (ComiRec-DR), whose learned differences make the
        # capsules differ by content even when the initial logits are all equal.
        shape = (n_interests, dim, dim) if per_interest_maps else (dim, dim)
        self.S = nn.Parameter(torch.randn(shape) * dim ** -0.5)
        # Initial routing logits b_ij ~ N(0, init_std^2): drawn once from a seeded generator, stored with
        # the model, never updated. The LAST row goes with the newest behaviour (histories are
        # left-padded, most recent last): a history of length L < max_len uses the last L rows.
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("initial_logits", torch.randn(max_len, n_interests, generator=generator) * init_std)

    def map_behaviours(self, behaviours: torch.Tensor) -> torch.Tensor:
        """behaviours (B, L, d) -> S e_i (B, L, d), or W_j e_i for every interest j (B, L, K, d)."""
        if self.S.dim() == 3:
            return torch.einsum("bld,ked->blke", behaviours, self.S)
        return torch.matmul(behaviours, self.S.t())

    def forward(self, behaviours: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """behaviours (B, L, d) left-padded, mask (B, L) bool (True = real behaviour), L <= max_len.

        Returns capsules (B, K, d) (inactive ones all-zero), active (B, K) bool and the final
        routing weights (B, K, L).
        """
        batch, length = mask.shape
        n_real = mask.long().sum(1)                                                      # (B,)
        k_user = interest_count(n_real, self.n_interests, self.dynamic_k)                # (B,)
        active = torch.arange(self.n_interests, device=mask.device).unsqueeze(0) < k_user.unsqueeze(1)
        mapped = self.map_behaviours(behaviours)                            # (B, L, d) or (B, L, K, d)
        mapped_fixed = mapped.detach()
        start = self.initial_logits.size(0) - length
        logits = self.initial_logits[start:].unsqueeze(0).expand(batch, length, self.n_interests)
        capsules = torch.zeros(batch, self.n_interests, behaviours.size(2), device=behaviours.device)
        weights = torch.zeros_like(logits)
        for it in range(self.iterations):
            weights = routing_weights(logits, mask, active, self.over_interests)         # (B, L, K)
            last = it == self.iterations - 1
            source = mapped if last else mapped_fixed
            capsules = squash(pool(weights, source))                                     # (B, K, d)
            if not last:   # stop-gradient: the logit update carries no gradient
                logits = logits + agreement(capsules.detach(), mapped_fixed)
        capsules = capsules * active.unsqueeze(2).to(capsules.dtype)
        return capsules, active, weights.transpose(1, 2)
