"""Top-N recall metrics of the ComiRec protocol (mind-spec section 3), averaged over users."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model.retrieval import exclusion_mask


def hit_matrix(ranked_rows: np.ndarray, target_rows: Sequence[np.ndarray], width: int = 0) -> np.ndarray:
    """(U, max(n, width)) bool: ``ranked_rows[u, r]`` is one of user u's targets (``-1`` never
    hits); a list shorter than ``width`` misses in the columns past its end."""
    ranked_rows = np.asarray(ranked_rows, dtype=np.int64)
    if len(target_rows) != ranked_rows.shape[0]:
        raise ValueError(f"{ranked_rows.shape[0]} ranked lists but {len(target_rows)} target lists")
    targets = [np.asarray(t, dtype=np.int64) for t in target_rows]
    hits = exclusion_mask(ranked_rows, targets) & (ranked_rows >= 0)     # the same per-user membership test
    return np.pad(hits, ((0, 0), (0, max(0, width - hits.shape[1]))))


def evaluate_rankings(ranked_rows: np.ndarray, target_rows: Sequence[np.ndarray],
                      ns: Sequence[int] = (20, 50)) -> dict[str, float]:
    """{"recall@N", "ndcg@N", "hitrate@N"} for N in ``ns``, averaged over users.

    ranked_rows (U, n) int64 best first (``-1`` = none; a short list misses); target_rows:
    per user its held-out rows (duplicates count once; none is an error). NDCG with binary
    gains and IDCG over min(|targets|, N).
    """
    n_targets = np.array([len(np.unique(t)) for t in target_rows], dtype=np.float64)  # (U,)
    if (n_targets == 0).any():
        raise ValueError(f"user {int(np.argmin(n_targets))} has no targets; every evaluated user needs one")
    widest = max(ns)
    hits = hit_matrix(ranked_rows, target_rows, widest)              # (U, >= widest)
    discounts = 1.0 / np.log2(np.arange(widest) + 2.0)              # (widest,)
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])            # ideal[k] = IDCG of k hits
    result: dict[str, float] = {}
    for n in ns:
        top = hits[:, :n]
        n_hits = top.sum(axis=1)
        idcg = ideal[np.minimum(n_targets, n).astype(np.int64)]
        result[f"recall@{n}"] = float(np.mean(n_hits / n_targets))
        result[f"ndcg@{n}"] = float(np.mean((top * discounts[:n]).sum(axis=1) / idcg))
        result[f"hitrate@{n}"] = float(np.mean(n_hits > 0))
    return result


def recall_curve(ranked_rows: np.ndarray, target_rows: Sequence[np.ndarray], max_n: int = 100) -> np.ndarray:
    """(max_n,) float64: mean Recall@N for N = 1..max_n (one pass over the hit matrix)."""
    n_targets = np.array([len(np.unique(t)) for t in target_rows], dtype=np.float64)
    hits = hit_matrix(ranked_rows, target_rows, max_n)[:, :max_n]     # (U, max_n)
    return (np.cumsum(hits, axis=1) / n_targets[:, None]).mean(axis=0)


def capsule_cosine(capsules: np.ndarray, active: np.ndarray) -> float | None:
    """Mean over users with >= 2 ACTIVE capsules of the mean cosine over their distinct pairs
    (capsules (U, K, d), active (U, K) bool); 1.0 = collapsed, a zero capsule scores 0. None
    when no user has two active capsules (K=1: undefined, not 1)."""
    capsules = np.asarray(capsules, dtype=np.float64)
    active = np.asarray(active, dtype=bool)
    if capsules.ndim != 3 or active.shape != capsules.shape[:2]:
        raise ValueError(f"capsules must be (U, K, d) and active (U, K); got {capsules.shape} and {active.shape}")
    norms = np.linalg.norm(capsules, axis=2, keepdims=True)                   # (U, K, 1)
    unit = np.where(norms > 0, capsules / np.where(norms > 0, norms, 1.0), 0.0)
    unit = unit * active[..., None]                                           # inactive -> 0
    gram = np.einsum("ukd,ujd->ukj", unit, unit)                              # (U, K, K)
    k = active.sum(axis=1)                                                    # (U,)
    self_terms = np.einsum("ukk->u", gram)                                    # sum of |unit|^2
    pair_sum = (gram.sum(axis=(1, 2)) - self_terms) / 2.0                     # (U,) distinct pairs
    users = k >= 2
    if not users.any():
        return None
    return float(np.mean(pair_sum[users] / (k[users] * (k[users] - 1) / 2.0)))


def first_active(active: np.ndarray) -> np.ndarray:
    """(U, K) bool: only each user's lowest-numbered active capsule, as ``max_interests: 1``
    serves (the service keeps active capsules lowest index first)."""
    active = np.asarray(active, dtype=bool)
    return active & (np.cumsum(active, axis=1) == 1)


def mean_jaccard(rows_a: np.ndarray, rows_b: np.ndarray) -> float | None:
    """Mean over users of |A ∩ B| / |A ∪ B| of rows_a, rows_b (U, n) int64 (``-1`` ignored);
    users with both lists empty are skipped, None when every user is."""
    rows_a, rows_b = np.asarray(rows_a, dtype=np.int64), np.asarray(rows_b, dtype=np.int64)
    if rows_a.shape[0] != rows_b.shape[0]:
        raise ValueError(f"{rows_a.shape[0]} and {rows_b.shape[0]} users")
    values = []
    for a, b in zip(rows_a, rows_b):
        a, b = np.unique(a[a >= 0]), np.unique(b[b >= 0])
        union = len(np.union1d(a, b))
        if union:
            values.append(len(np.intersect1d(a, b, assume_unique=True)) / union)
    return float(np.mean(values)) if values else None


def majority_purity(labels: np.ndarray) -> float | None:
    """Mean over rows of labels (M, n) int64 (one per (user, interest): the planted cluster of
    each item it names, ``-1`` ignored) of the share of the most frequent label; None if no label."""
    rows = (row[row >= 0] for row in np.asarray(labels, dtype=np.int64))
    shares = [np.unique(row, return_counts=True)[1].max() / len(row) for row in rows if len(row)]
    return float(np.mean(shares)) if shares else None
