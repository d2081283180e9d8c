"""Top-N recall metrics of the ComiRec protocol (mind-spec section 3), averaged over users."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def hit_matrix(ranked_rows: np.ndarray, target_rows: Sequence[np.ndarray]) -> np.ndarray:
    """(U, n) bool: ``ranked_rows[u, r]`` is one of user u's targets (``-1`` never hits)."""
    ranked_rows = np.asarray(ranked_rows, dtype=np.int64)
    n_users = ranked_rows.shape[0]
    if len(target_rows) != n_users:
        raise ValueError(f"{n_users} ranked lists but {len(target_rows)} target lists")
    targets = [np.unique(np.asarray(t, dtype=np.int64)) for t in target_rows]
    span = int(max(ranked_rows.max(initial=0), max((t.max(initial=0) for t in targets), default=0))) + 1
    target_keys = np.concatenate([u * span + t for u, t in enumerate(targets)] or [np.empty(0, np.int64)])
    ranked_keys = np.arange(n_users, dtype=np.int64)[:, None] * span + ranked_rows
    return np.isin(ranked_keys, target_keys) & (ranked_rows >= 0)


def evaluate_rankings(ranked_rows: np.ndarray, target_rows: Sequence[np.ndarray],
                      ns: Sequence[int] = (20, 50)) -> dict[str, float]:
    """Recall@N, NDCG@N and HitRate@N, averaged over users.

    ranked_rows (U, n) int64: each user's candidates best first (``-1`` = no candidate; a
    list shorter than N counts as misses). target_rows: per user an array of held-out rows
    (duplicates count once; an empty one is an error). Recall@N = hits / |targets|;
    HitRate@N = 1 if any hit; NDCG@N with binary gains and IDCG over min(|targets|, N).
    Returns {"recall@N", "ndcg@N", "hitrate@N"} for every N in ``ns``.
    """
    n_targets = np.array([len(np.unique(t)) for t in target_rows], dtype=np.float64)  # (U,)
    if (n_targets == 0).any():
        raise ValueError(f"user {int(np.argmin(n_targets))} has no targets; every evaluated user needs one")
    hits = hit_matrix(ranked_rows, target_rows)                      # (U, n)
    widest = max(ns)
    if hits.shape[1] < widest:
        hits = np.pad(hits, ((0, 0), (0, widest - hits.shape[1])))
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
    hits = hit_matrix(ranked_rows, target_rows)[:, :max_n]
    if hits.shape[1] < max_n:
        hits = np.pad(hits, ((0, 0), (0, max_n - hits.shape[1])))
    return (np.cumsum(hits, axis=1) / n_targets[:, None]).mean(axis=0)
