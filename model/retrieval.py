"""Multi-interest retrieval: every active capsule queries the item index, lists merge by score.

Pure functions over arrays. Item *rows* (FAISS ids) are ``item index - 1`` (see
docs/architecture.md); everything here speaks rows.
"""
from __future__ import annotations

import faiss
import numpy as np

# Users merged per FAISS call: bounds the (users, K, fetch) candidate arrays in memory.
USERS_PER_SEARCH = 8192


def exact_index(item_vectors: np.ndarray) -> faiss.Index:
    """Exact inner-product FAISS index over ``item_vectors`` (n_items, d); ids are rows."""
    vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def merge_by_score(scores: np.ndarray, rows: np.ndarray, n: int,
                   exclude_keys: np.ndarray | None = None, n_rows: int = 0) -> np.ndarray:
    """Merge per-capsule candidate lists of each user into one top-``n`` list.

    scores (U, C) float32 and rows (U, C) int64 hold every candidate of a user (all capsules
    concatenated; ``-inf`` score or row ``-1`` = no candidate). A row seen several times keeps
    its best score. ``exclude_keys`` are ``user * n_rows + row`` keys (user = position in this
    batch) that must not be returned. Returns (U, n) int64 rows, best first, ``-1`` where a
    user has fewer than ``n`` candidates.
    """
    scores = np.where(rows < 0, -np.inf, scores).astype(np.float64)
    n_users = rows.shape[0]
    if exclude_keys is not None and exclude_keys.size:
        keys = np.arange(n_users, dtype=np.int64)[:, None] * n_rows + rows
        scores[np.isin(keys, exclude_keys) & (rows >= 0)] = -np.inf
    # Sort each user's candidates by (row, score descending): the first of each run of equal
    # rows is that row's best score; later copies are dropped.
    order = np.lexsort((-scores, rows), axis=-1)                        # (U, C)
    rows_sorted = np.take_along_axis(rows, order, axis=1)
    scores_sorted = np.take_along_axis(scores, order, axis=1)
    duplicate = np.zeros_like(rows_sorted, dtype=bool)
    duplicate[:, 1:] = rows_sorted[:, 1:] == rows_sorted[:, :-1]
    scores_sorted[duplicate] = -np.inf
    width = min(n, rows.shape[1])
    top = np.argsort(-scores_sorted, axis=1, kind="stable")[:, :width]  # (U, width)
    ranked = np.take_along_axis(rows_sorted, top, axis=1)
    ranked[~np.isfinite(np.take_along_axis(scores_sorted, top, axis=1))] = -1
    if width < n:
        ranked = np.pad(ranked, ((0, 0), (0, n - width)), constant_values=-1)
    return ranked.astype(np.int64)


def _exclude_keys(exclude: list[np.ndarray] | None, start: int, stop: int, n_rows: int) -> np.ndarray | None:
    """Keys ``local_user * n_rows + row`` of the excluded rows of users ``start..stop-1``."""
    if exclude is None:
        return None
    parts = [np.asarray(exclude[u], dtype=np.int64) for u in range(start, stop)]
    local = [np.full(len(p), u - start, dtype=np.int64) * n_rows + p for u, p in enumerate(parts, start)]
    return np.concatenate(local) if local else np.empty(0, dtype=np.int64)


def multi_interest_topn(capsules: np.ndarray, active: np.ndarray,
                        item_vectors: np.ndarray | faiss.Index, n: int,
                        exclude: list[np.ndarray] | None = None) -> np.ndarray:
    """Top-``n`` item rows per user from the user's active capsules.

    capsules (U, K, d) float32; active (U, K) bool (inactive capsules never query);
    item_vectors (n_items, d) float32 with row r = item index r + 1, or a FAISS index over
    them (ids = rows). exclude: per user an array of rows never to return (e.g. history).
    Each active capsule fetches its top ``n + max |exclude|`` by inner product (enough that
    exclusions and cross-capsule duplicates never shorten the merged list), lists merge by
    score, a row keeps its best score. Returns (U, n) int64 rows, ``-1`` where fewer exist.
    """
    capsules = np.asarray(capsules, dtype=np.float32)
    active = np.asarray(active, dtype=bool)
    if capsules.ndim != 3 or active.shape != capsules.shape[:2]:
        raise ValueError(f"capsules must be (U, K, d) and active (U, K); got {capsules.shape} and {active.shape}")
    index = item_vectors if isinstance(item_vectors, faiss.Index) else exact_index(item_vectors)
    if exclude is not None and len(exclude) != capsules.shape[0]:
        raise ValueError(f"exclude has {len(exclude)} entries for {capsules.shape[0]} users")
    n_rows = index.ntotal
    extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
    fetch = max(1, min(n + extra, n_rows))
    n_users, n_interests, _ = capsules.shape
    out = np.full((n_users, n), -1, dtype=np.int64)
    for start in range(0, n_users, USERS_PER_SEARCH):
        stop = min(start + USERS_PER_SEARCH, n_users)
        block_active = active[start:stop]                               # (u, K)
        queries = np.ascontiguousarray(capsules[start:stop][block_active])  # (Q, d)
        scores = np.full((stop - start, n_interests, fetch), -np.inf, dtype=np.float32)
        rows = np.full((stop - start, n_interests, fetch), -1, dtype=np.int64)
        if len(queries):
            found_scores, found_rows = index.search(queries, fetch)     # (Q, fetch) each
            scores[block_active], rows[block_active] = found_scores, found_rows
        out[start:stop] = merge_by_score(scores.reshape(stop - start, -1), rows.reshape(stop - start, -1),
                                         n, _exclude_keys(exclude, start, stop, n_rows), n_rows)
    return out
