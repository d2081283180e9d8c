"""Pure retrieval maths of the service against brute force and hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest

from service import retrieval
from service.pipeline import cap_interests


def brute_merge(scores, rows, interest, n, drop):
    """Per request: best score per row (lowest capsule on equal scores), then (-score, row)."""
    out = []
    for b in range(rows.shape[0]):
        best: dict[int, tuple[float, int]] = {}
        for s, r, k, d in zip(scores[b], rows[b], interest[b], drop[b]):
            if r < 0 or d or not np.isfinite(s):
                continue
            if r not in best or (s, -k) > (best[r][0], -best[r][1]):
                best[r] = (float(s), int(k))
        ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))[:n]
        out.append([(r, s, k) for r, (s, k) in ranked])
    return out


def random_candidates(rng, n_requests=6, n_interests=3, k=10, n_rows=25):
    rows = rng.integers(-1, n_rows, size=(n_requests, n_interests * k))
    scores = np.round(rng.normal(size=rows.shape), 1).astype(np.float32)   # rounding makes ties
    interest = np.repeat(np.arange(n_interests), k)[None, :].repeat(n_requests, 0)
    return scores, rows, interest


@pytest.mark.parametrize("seed", range(5))
def test_merge_by_score_matches_brute_force_with_ties_and_duplicates(seed):
    rng = np.random.default_rng(seed)
    scores, rows, interest = random_candidates(rng)
    excluded = [rng.choice(25, size=rng.integers(0, 6), replace=False) for _ in range(rows.shape[0])]
    drop = retrieval.exclusion_mask(rows, excluded)
    got_rows, got_scores, got_interest = retrieval.merge_by_score(scores, rows, interest, 8, drop)
    for b, expected in enumerate(brute_merge(scores, rows, interest, 8, drop)):
        got = [(int(r), float(s), int(k)) for r, s, k in zip(got_rows[b], got_scores[b], got_interest[b]) if r >= 0]
        assert got == [(r, pytest.approx(s), k) for r, s, k in expected]
        assert not set(got_rows[b][got_rows[b] >= 0].tolist()) & set(excluded[b].tolist())


def test_exclusion_mask_is_per_request():
    rows = np.array([[1, 2, -1], [1, 2, 3]])
    mask = retrieval.exclusion_mask(rows, [np.array([2]), np.array([1, 3])])
    assert mask.tolist() == [[False, True, False], [True, False, True]]


def test_merge_is_independent_of_candidate_order():
    rng = np.random.default_rng(3)
    scores, rows, interest = random_candidates(rng, n_requests=1)
    perm = rng.permutation(rows.shape[1])
    no_drop = np.zeros(rows.shape, bool)
    a = retrieval.merge_by_score(scores, rows, interest, 10, no_drop)
    b = retrieval.merge_by_score(scores[:, perm], rows[:, perm], interest[:, perm], 10, no_drop)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_round_robin_takes_turns_across_interests():
    # interest 0 finds rows 10 (0.9), 11 (0.8), 12 (0.7); interest 1 finds 20 (0.5), 10 (0.4), 21 (0.3)
    rows = np.array([[10, 11, 12, 20, 10, 21]])
    scores = np.array([[0.9, 0.8, 0.7, 0.5, 0.4, 0.3]], dtype=np.float32)
    interest = np.array([[0, 0, 0, 1, 1, 1]])
    got_rows, _, got_interest = retrieval.merge_round_robin(scores, rows, interest, 5, np.zeros(rows.shape, bool))
    assert got_rows[0].tolist() == [10, 20, 11, 21, 12]     # row 10 counted once, for interest 0
    assert got_interest[0].tolist() == [0, 1, 0, 1, 0]


def test_short_candidate_lists_pad_with_minus_one():
    rows = np.array([[4, 4, -1]])
    got_rows, got_scores, _ = retrieval.merge_by_score(np.array([[1.0, 2.0, 0.0]], np.float32), rows,
                                                       np.zeros((1, 3), np.int64), 3, np.zeros((1, 3), bool))
    assert got_rows[0].tolist() == [4, -1, -1] and got_scores[0, 0] == 2.0


def test_fetch_size_covers_exclusions_and_caps_at_catalogue():
    assert retrieval.fetch_size(top_n=100, n_excluded=20, overfetch=8, n_items=100_000) == 128
    assert retrieval.fetch_size(top_n=100, n_excluded=20, overfetch=8, n_items=50) == 50


def test_exact_scores_are_row_by_row_inner_products():
    rng = np.random.default_rng(0)
    queries, items = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(9, 4)).astype(np.float32)
    rows = np.array([[0, 8], [5, -1], [2, 2]])
    got = retrieval.exact_scores(queries, items, rows)
    assert got[1, 1] == -np.inf
    np.testing.assert_allclose(got[0], [queries[0] @ items[0], queries[0] @ items[8]], rtol=1e-5)
    # the same pair gives the same bits whatever else is in the call
    np.testing.assert_array_equal(retrieval.exact_scores(queries[:1], items, rows[:1]), got[:1])


def test_popular_rows_skip_excluded():
    assert retrieval.popular_rows(np.array([5, 3, 1, 0, 2]), 3, np.array([3, 0])).tolist() == [5, 1, 2]


def test_top_routing_positions_ignore_padding_and_sort_by_weight():
    weights = np.array([[0.9, 0.1, 0.6, 0.3], [0.0, 0.2, 0.2, 0.6]], dtype=np.float32)
    real = np.array([False, True, True, True])
    got = retrieval.top_routing_positions(weights, real, 2)
    assert got.tolist() == [[2, 3], [3, 2]]       # ties -> the more recent position


def test_cap_interests_keeps_lowest_active_capsules():
    active = np.array([[True, True, True, False], [True, False, True, True]])
    assert cap_interests(active, np.array([2, 1])).tolist() == [[True, True, False, False],
                                                                 [True, False, False, False]]
