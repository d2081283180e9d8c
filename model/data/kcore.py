"""Iterative k-core filter over a bipartite user-item interaction log."""
from __future__ import annotations

import numpy as np


def k_core_mask(user_ids: np.ndarray, item_ids: np.ndarray, k: int) -> np.ndarray:
    """(N,) bool: the interactions that survive repeatedly dropping users and items with
    fewer than `k` interactions until every remaining user and item has at least `k`.
    Repeated (user, item) pairs count once per row. ``k <= 1`` keeps everything."""
    n = len(user_ids)
    keep = np.ones(n, dtype=bool)
    if k <= 1 or n == 0:
        return keep
    _, user_code = np.unique(user_ids, return_inverse=True)  # (N,) int
    _, item_code = np.unique(item_ids, return_inverse=True)
    user_code, item_code = user_code.ravel(), item_code.ravel()
    while True:
        user_count = np.bincount(user_code[keep], minlength=user_code.max() + 1)
        item_count = np.bincount(item_code[keep], minlength=item_code.max() + 1)
        still = keep & (user_count[user_code] >= k) & (item_count[item_code] >= k)
        if np.array_equal(still, keep):
            return keep
        keep = still
