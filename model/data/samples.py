"""Training samples and held-out evaluation cases of the protocol (spec section 3).

Histories are (rows, max_len) int64, left-padded with 0, most recent item last.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from model.data.dataset import SequenceDataset

# Guards floor(n * fraction) against float error (0.29 * 100 = 28.999...).
FLOOR_TOLERANCE = 1e-9


def training_samples(ds: "SequenceDataset", max_len: int, rng: np.random.Generator | None = None,
                     max_per_user: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (history, target) pair of the train users' sequences.

    For train user u and position t >= 1 of its sequence s: history = s[max(0, t - max_len):t]
    left-padded to `max_len`, target = s[t]. With `max_per_user`, at most that many positions
    per user are drawn without replacement from `rng` (``default_rng(0)`` when None); call
    again each epoch for fresh positions. Rows come user by user (in ``ds.train_users``
    order), positions ascending; shuffle them yourself.

    Returns histories (S, max_len) int64, targets (S,) int64, users (S,) int64 user indices.
    """
    train = np.asarray(ds.train_users, dtype=np.int64)
    seqs = [ds.sequences[int(u)] for u in train]
    if not seqs:
        return np.zeros((0, max_len), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)  # (U,)
    flat = np.concatenate(seqs).astype(np.int64)  # (sum lengths,)
    starts = np.cumsum(lengths) - lengths  # (U,) offset of each sequence in flat
    n_pos = np.maximum(lengths - 1, 0)  # (U,) positions t >= 1
    owner = np.repeat(np.arange(len(train)), n_pos)  # (S,) which train user
    group_start = np.repeat(np.cumsum(n_pos) - n_pos, n_pos)  # (S,)
    t = np.arange(len(owner)) - group_start + 1  # (S,) position within the sequence
    if max_per_user is not None:
        rng = rng if rng is not None else np.random.default_rng(0)
        order = np.lexsort((rng.random(len(owner)), owner))  # shuffled within each user
        chosen = np.sort(order[(np.arange(len(owner)) - group_start) < max_per_user])
        owner, t = owner[chosen], t[chosen]
    pos = starts[owner] + t  # (S,) index of the target in flat
    window = pos[:, None] - max_len + np.arange(max_len)[None, :]  # (S, max_len)
    valid = window >= starts[owner][:, None]
    histories = np.where(valid, flat[np.maximum(window, 0)], 0)
    return histories.astype(np.int64), flat[pos], train[owner]


def holdout(ds: "SequenceDataset", users, max_len: int,
            history_frac: float = 0.8) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Evaluation cases for `users` (validation or test user indices).

    A sequence of n items splits at h = floor(n * history_frac), clamped to 1 <= h <= n - 1
    so that both parts are non-empty: history = the last `max_len` of s[:h] (left-padded),
    targets = s[h:] in time order. Users with fewer than 2 items cannot be split and are
    left out, so use the returned `users`.

    Returns histories (U, max_len) int64, targets (list of U (n_u - h_u,) int64 arrays),
    users (U,) int64.
    """
    kept, histories, targets = [], [], []
    for user in np.asarray(users, dtype=np.int64):
        seq = ds.sequences[int(user)]
        n = len(seq)
        if n < 2:
            continue
        h = min(max(1, int(n * history_frac + FLOOR_TOLERANCE)), n - 1)
        history = seq[:h][-max_len:]
        row = np.zeros(max_len, dtype=np.int64)
        row[max_len - len(history):] = history
        kept.append(user)
        histories.append(row)
        targets.append(np.asarray(seq[h:], dtype=np.int64))
    stacked = np.stack(histories) if histories else np.zeros((0, max_len), np.int64)
    return stacked, targets, np.array(kept, dtype=np.int64)
