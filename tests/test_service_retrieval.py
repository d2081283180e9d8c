"""The service's own array steps around the retrieval engine: interest caps, the cold-start
list, explanations (the engine itself is tested in tests/test_retrieval.py)."""
from __future__ import annotations

import numpy as np

from service.pipeline import cap_interests, cold_start_rows, top_routing_positions


def test_cold_start_rows_skip_excluded():
    assert cold_start_rows(np.array([5, 3, 1, 0, 2]), 3, np.array([3, 0])).tolist() == [5, 1, 2]


def test_top_routing_positions_ignore_padding_and_sort_by_weight():
    weights = np.array([[0.9, 0.1, 0.6, 0.3], [0.0, 0.2, 0.2, 0.6]], dtype=np.float32)
    real = np.array([False, True, True, True])
    got = top_routing_positions(weights, real, 2)
    assert got.tolist() == [[2, 3], [3, 2]]       # ties -> the more recent position


def test_cap_interests_keeps_lowest_active_capsules():
    active = np.array([[True, True, True, False], [True, False, True, True]])
    assert cap_interests(active, np.array([2, 1])).tolist() == [[True, True, False, False],
                                                                 [True, False, False, False]]
