"""Non-neural baselines of the protocol: popularity and item-based CF (cosine co-occurrence).

Both learn only from TRAIN users' sequences and return ``(U, n)`` int64 item rows
(``row = item index - 1``, ``-1`` where fewer), so the metric code scores every method alike.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

# Users scored per sparse product in item-CF: bounds the dense (items, users) score block.
CF_USERS_PER_BLOCK = 512


def item_counts(sequences: Iterable[np.ndarray], n_items: int) -> np.ndarray:
    """(n_items,) int64 interaction counts per item row; sequences hold item indices (0 = pad)."""
    counts = np.zeros(n_items + 1, dtype=np.int64)
    for seq in sequences:
        np.add.at(counts, np.asarray(seq, dtype=np.int64), 1)
    return counts[1:]


def popular_rows(counts: np.ndarray) -> np.ndarray:
    """(n_items,) rows ordered by count, descending; ties by row, ascending."""
    return np.argsort(-np.asarray(counts), kind="stable").astype(np.int64)


def _drop_excluded(candidates: np.ndarray, n: int, exclude: list[np.ndarray] | None) -> np.ndarray:
    """Keep each user's first ``n`` candidates (U, m) not in ``exclude[u]``; ``-1`` pads."""
    candidates = np.asarray(candidates, dtype=np.int64)
    if exclude is not None:
        span = int(max(candidates.max(initial=0), max((int(np.max(e, initial=0)) for e in exclude), default=0))) + 1
        keys = np.concatenate([u * span + np.asarray(e, dtype=np.int64) for u, e in enumerate(exclude)]
                              or [np.empty(0, np.int64)])
        user_of = np.arange(len(candidates), dtype=np.int64)[:, None]
        dropped = np.isin(user_of * span + candidates, keys) | (candidates < 0)
        order = np.argsort(dropped, axis=1, kind="stable")             # kept first, order preserved
        candidates = np.where(np.take_along_axis(dropped, order, axis=1), -1,
                              np.take_along_axis(candidates, order, axis=1))
    out = candidates[:, :n]
    if out.shape[1] < n:
        out = np.pad(out, ((0, 0), (0, n - out.shape[1])), constant_values=-1)
    return out


def popularity_topn(counts: np.ndarray, n_users: int, n: int,
                    exclude: list[np.ndarray] | None = None) -> np.ndarray:
    """(n_users, n) rows: the same most-popular list for everyone, minus excluded rows."""
    extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
    head = popular_rows(counts)[: n + extra]
    return _drop_excluded(np.broadcast_to(head, (n_users, len(head))), n, exclude)


def _user_item_matrix(sequences: list[np.ndarray], n_items: int) -> torch.Tensor:
    """Sparse binary (n_seq, n_items) float32 matrix: user u consumed row r."""
    pairs = {(u, int(i) - 1) for u, seq in enumerate(sequences) for i in np.asarray(seq) if i > 0}
    coords = torch.tensor(sorted(pairs), dtype=torch.int64).reshape(-1, 2).T
    values = torch.ones(coords.shape[1], dtype=torch.float32)
    return torch.sparse_coo_tensor(coords, values, (len(sequences), n_items),
                                   check_invariants=True).coalesce()


def item_cf_scores(train_sequences: list[np.ndarray], histories: np.ndarray, n_items: int,
                   include_self: bool = False) -> np.ndarray:
    """(U, n_items) float32: score of row j for user u = sum over history items i of cos(i, j).

    cos(i, j) = co-occurrence(i, j) / sqrt(n_i * n_j) over TRAIN users (binary). histories
    (U, L) int64 item indices (0 = pad; a repeated item counts once). ``include_self`` keeps
    cos(i, i) = 1 for items seen in training. Computed as ``(H Rn^T) Rn`` with Rn the
    column-normalised user-item matrix, so the (n_items, n_items) matrix is never built.
    """
    users_items = _user_item_matrix(train_sequences, n_items)           # (T, n_items)
    norms = torch.zeros(n_items).index_add_(0, users_items.indices()[1], users_items.values()).sqrt()
    inv = torch.where(norms > 0, 1.0 / norms.clamp(min=1e-12), torch.zeros_like(norms))
    item_of = users_items.indices()[1]
    rn = torch.sparse_coo_tensor(users_items.indices(), users_items.values() * inv[item_of],
                                 users_items.shape, check_invariants=True).coalesce()  # (T, n_items)
    rn_t = rn.t().coalesce()                                             # (n_items, T)
    hist = np.zeros((len(histories), n_items), dtype=np.float32)        # (U, n_items) binary
    user_of, pos = np.nonzero(np.asarray(histories) > 0)
    hist[user_of, np.asarray(histories)[user_of, pos] - 1] = 1.0
    out = np.empty_like(hist)
    for start in range(0, len(hist), CF_USERS_PER_BLOCK):
        block = torch.from_numpy(hist[start:start + CF_USERS_PER_BLOCK]).T  # (n_items, B)
        per_user = torch.sparse.mm(rn, block)                             # (T, B)
        out[start:start + CF_USERS_PER_BLOCK] = torch.sparse.mm(rn_t, per_user).T.numpy()
    if not include_self:
        out -= hist * (norms > 0).numpy()[None, :]
    return out


def item_cf_topn(train_sequences: list[np.ndarray], histories: np.ndarray, n_items: int, n: int,
                 exclude: list[np.ndarray] | None = None, include_self: bool = False) -> np.ndarray:
    """(U, n) rows by item-CF score, descending; rows scoring 0 are not candidates (``-1``).

    Self-similarity is left out by default: cos(i, i) = 1 would rank every history item first
    whatever its co-occurrences, which is not collaborative evidence (and it matches the spec's
    reference Recall@50 of 0.251 on ml-100k; with it, history items crowd the list).
    """
    scores = item_cf_scores(train_sequences, histories, n_items, include_self)
    if exclude is not None:
        for u, rows in enumerate(exclude):
            scores[u, np.asarray(rows, dtype=np.int64)] = -np.inf
    width = min(n, n_items)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :width]
    ranked = np.where(np.take_along_axis(scores, top, axis=1) > 0, top, -1).astype(np.int64)
    return np.pad(ranked, ((0, 0), (0, n - width)), constant_values=-1) if width < n else ranked
