"""Retrieval maths of the service: pure functions over numpy arrays, no torch, no HTTP.

Everything speaks item *rows* (FAISS ids, ``row = item index - 1``). A batch of B requests
carries C candidate slots per request (K capsules x k fetched); ``row == -1`` is an empty
slot. Ties are always broken by the smaller row so that answers never depend on the order
in which candidates arrived (batch composition, FAISS internals).
"""
from __future__ import annotations

import numpy as np

EMPTY_ROW = -1


def fetch_size(top_n: int, n_excluded: int, overfetch: int, n_items: int) -> int:
    """Candidates to fetch per capsule so that one capsule alone still fills ``top_n``
    after ``n_excluded`` rows are removed; ``overfetch`` adds a margin at the boundary."""
    return max(1, min(n_items, top_n + n_excluded + overfetch))


def exact_scores(queries: np.ndarray, item_vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Inner products of each query with its own candidate rows.

    queries (Q, d) float32, rows (Q, k) int64 (-1 = empty) -> (Q, k) float32.
    Computed pair by pair, so a score does not depend on which other queries shared the
    FAISS call (BLAS blocking changes the last bits otherwise).
    """
    vectors = item_vectors[np.maximum(rows, 0)]                       # (Q, k, d)
    scores = np.einsum("qd,qkd->qk", queries, vectors)                # (Q, k)
    return np.where(rows >= 0, scores, -np.inf).astype(np.float32)


def exclusion_mask(rows: np.ndarray, excluded: list[np.ndarray]) -> np.ndarray:
    """rows (B, C) int64, excluded[b] = rows request b must not get -> (B, C) bool, True = drop."""
    n_slots = int(max(rows.max(initial=0), max((int(e.max(initial=0)) for e in excluded), default=0))) + 2
    keys = np.arange(rows.shape[0], dtype=np.int64)[:, None] * n_slots + rows + 1
    excluded_keys = np.concatenate(
        [b * n_slots + e.astype(np.int64) + 1 for b, e in enumerate(excluded)] or [np.empty(0, np.int64)])
    return np.isin(keys, excluded_keys)


def _best_copy(scores: np.ndarray, rows: np.ndarray, interest: np.ndarray, drop: np.ndarray):
    """Score -inf for dropped/empty slots and for every copy of a row but its best one.

    All arrays (B, C); returns the three re-ordered by row (copies adjacent)."""
    scores = np.where(drop | (rows < 0), -np.inf, scores)
    order = np.lexsort((interest, -scores, rows), axis=-1)            # row, best score, low interest
    rows = np.take_along_axis(rows, order, axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    interest = np.take_along_axis(interest, order, axis=1)
    duplicate = np.zeros(rows.shape, dtype=bool)
    duplicate[:, 1:] = rows[:, 1:] == rows[:, :-1]
    scores[duplicate] = -np.inf
    return scores, rows, interest


def _take_top(order: np.ndarray, scores, rows, interest, n: int):
    """Gather the first ``n`` slots of ``order`` (B, C); empty slots become row -1."""
    order = order[:, :n]
    top_scores = np.take_along_axis(scores, order, axis=1)
    top_rows = np.take_along_axis(rows, order, axis=1)
    top_interest = np.take_along_axis(interest, order, axis=1)
    empty = ~np.isfinite(top_scores)
    top_rows[empty] = EMPTY_ROW
    top_interest[empty] = EMPTY_ROW
    return top_rows, top_scores, top_interest


def merge_by_score(scores: np.ndarray, rows: np.ndarray, interest: np.ndarray, n: int,
                   drop: np.ndarray):
    """Best ``n`` distinct rows of each request by score.

    scores (B, C) float32, rows (B, C) int64, interest (B, C) int64 (capsule of the slot),
    drop (B, C) bool (excluded slots). A row found by several capsules keeps its best score
    and that capsule. Returns (rows, scores, interest), each (B, min(n, C)), best first,
    ties by smaller row; row -1 / score -inf where fewer candidates exist.
    """
    scores, rows, interest = _best_copy(scores, rows, interest, drop)
    order = np.lexsort((rows, -scores), axis=-1)
    return _take_top(order, scores, rows, interest, n)


def merge_round_robin(scores: np.ndarray, rows: np.ndarray, interest: np.ndarray, n: int,
                      drop: np.ndarray):
    """Like :func:`merge_by_score`, but interests take turns: the best item of each interest
    (in capsule order), then the second best of each, ... De-duplication as there."""
    scores, rows, interest = _best_copy(scores, rows, interest, drop)
    order = np.lexsort((rows, -scores, interest), axis=-1)            # grouped by interest
    scores = np.take_along_axis(scores, order, axis=1)
    rows = np.take_along_axis(rows, order, axis=1)
    interest = np.take_along_axis(interest, order, axis=1)
    position = np.broadcast_to(np.arange(rows.shape[1]), rows.shape)
    group_start = np.ones(rows.shape, dtype=bool)
    group_start[:, 1:] = interest[:, 1:] != interest[:, :-1]
    rank = position - np.maximum.accumulate(np.where(group_start, position, 0), axis=1)
    rank = np.where(np.isfinite(scores), rank, rows.shape[1])         # empties after all rounds
    turn = np.lexsort((interest, rank), axis=-1)
    return _take_top(turn, scores, rows, interest, n)


def popular_rows(popularity: np.ndarray, n: int, excluded: np.ndarray) -> np.ndarray:
    """Cold-start list: the ``n`` most popular rows (popularity (n_items,) int64, most
    popular first) that are not in ``excluded`` -> (<= n,) int64."""
    head = popularity[: n + excluded.size]
    return head[~np.isin(head, excluded)][:n]


def top_routing_positions(weights: np.ndarray, real: np.ndarray, n: int) -> np.ndarray:
    """History positions carrying most routing weight per interest.

    weights (K, L) float32, real (L,) bool (not padding) -> (K, <= n) int64 positions, heaviest
    first, ties by the more recent position."""
    masked = np.where(real[None, :], weights, -np.inf)
    recency = np.broadcast_to(-np.arange(weights.shape[1]), weights.shape)
    return np.lexsort((recency, -masked), axis=-1)[:, : min(n, int(real.sum()))]
