"""Metric functions on hand-computed examples."""
from __future__ import annotations

import math

import numpy as np
import pytest

from model.metrics import (capsule_cosine, evaluate_rankings, first_active, majority_purity, mean_jaccard,
                           recall_curve)


def test_recall_hitrate_ndcg_hand_computed():
    ranked = np.array([[5, 1, 9, 2],      # targets {1, 2, 3}: hits at ranks 2 and 4
                       [7, 8, 6, 4]])     # targets {0}: no hit
    targets = [np.array([1, 2, 3]), np.array([0])]
    m = evaluate_rankings(ranked, targets, ns=(2, 4))
    assert m["recall@2"] == pytest.approx((1 / 3 + 0) / 2)
    assert m["recall@4"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["hitrate@2"] == pytest.approx(0.5)
    # user 0 @2: DCG = 1/log2(3); IDCG over min(3, 2) = 2 positions
    ndcg2 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert m["ndcg@2"] == pytest.approx(ndcg2 / 2)
    # user 0 @4: DCG = 1/log2(3) + 1/log2(5); IDCG over min(3, 4) = 3 positions
    ndcg4 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))
    assert m["ndcg@4"] == pytest.approx(ndcg4 / 2)


def test_idcg_uses_min_of_targets_and_n():
    # 5 targets, N = 2, both top slots hit: a perfect list at N = 2 has NDCG 1 (not < 1).
    m = evaluate_rankings(np.array([[0, 1, 9]]), [np.arange(5)], ns=(2,))
    assert m["ndcg@2"] == pytest.approx(1.0)
    assert m["recall@2"] == pytest.approx(2 / 5)


def test_users_with_fewer_candidates_count_misses():
    ranked = np.array([[3, -1, -1]])      # one candidate only, N wider than the list
    m = evaluate_rankings(ranked, [np.array([3, 4])], ns=(2, 50))
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["recall@50"] == pytest.approx(0.5)
    assert m["hitrate@50"] == 1.0
    assert m["ndcg@50"] == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_minus_one_never_hits_and_keys_complete():
    m = evaluate_rankings(np.array([[-1, -1]]), [np.array([0])], ns=(20, 50))
    assert set(m) == {f"{k}@{n}" for k in ("recall", "ndcg", "hitrate") for n in (20, 50)}
    assert all(v == 0.0 for v in m.values())


def test_targets_of_one_user_do_not_leak_to_another():
    ranked = np.array([[1, 2], [3, 4]])
    m = evaluate_rankings(ranked, [np.array([3]), np.array([1])], ns=(2,))
    assert m["recall@2"] == 0.0


def test_empty_targets_and_length_mismatch_are_errors():
    with pytest.raises(ValueError, match="no targets"):
        evaluate_rankings(np.array([[1]]), [np.array([], dtype=np.int64)])
    with pytest.raises(ValueError, match="target lists"):
        evaluate_rankings(np.array([[1], [2]]), [np.array([1])])


def test_recall_curve_is_cumulative_and_matches_recall_at_n():
    rng = np.random.default_rng(0)
    ranked = np.stack([rng.permutation(200)[:120] for _ in range(30)])
    targets = [rng.choice(200, 10, replace=False) for _ in range(30)]
    curve = recall_curve(ranked, targets, max_n=100)
    assert curve.shape == (100,) and (np.diff(curve) >= 0).all()
    m = evaluate_rankings(ranked, targets, ns=(20, 50))
    assert curve[19] == pytest.approx(m["recall@20"]) and curve[49] == pytest.approx(m["recall@50"])


# --- do the interests differ? -------------------------------------------------------------

def test_identical_capsules_have_cosine_one_and_orthogonal_zero():
    v = np.array([0.3, -1.2, 2.0])
    same = np.stack([v, 2 * v, 0.5 * v])[None]                   # (1, 3, 3): one direction
    assert capsule_cosine(same, np.ones((1, 3), bool)) == pytest.approx(1.0)
    assert capsule_cosine(np.eye(3)[None], np.ones((1, 3), bool)) == pytest.approx(0.0)


def test_cosine_ignores_inactive_capsules_and_users_with_one():
    caps = np.array([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]],       # active: first two (cos 1)
                     [[1.0, 0.0], [1.0, 1.0], [9.0, 9.0]],       # active: first two (cos 1/sqrt2)
                     [[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]]])     # one active: not counted
    active = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 0]], dtype=bool)
    assert capsule_cosine(caps, active) == pytest.approx((1.0 + 1 / math.sqrt(2)) / 2)


def test_cosine_is_the_mean_over_distinct_pairs():
    caps = np.array([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])      # pairs: 1, 0, 0
    assert capsule_cosine(caps, np.ones((1, 3), bool)) == pytest.approx(1 / 3)


def test_cosine_of_a_single_interest_model_is_undefined():
    caps = np.ones((4, 1, 3))
    assert capsule_cosine(caps, np.ones((4, 1), bool)) is None
    with pytest.raises(ValueError, match="capsules must be"):
        capsule_cosine(np.ones((4, 3)), np.ones((4, 3), bool))


def test_first_active_keeps_the_lowest_active_capsule():
    active = np.array([[0, 1, 1], [1, 1, 1], [0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(first_active(active), [[0, 1, 0], [1, 0, 0], [0, 0, 0]])


def test_mean_jaccard_hand_computed():
    a = np.array([[1, 2, 3, 4], [5, 6, -1, -1], [-1, -1, -1, -1]])
    b = np.array([[4, 3, 2, 1], [6, 7, 8, -1], [-1, -1, -1, -1]])
    # user 0: same set in another order -> 1; user 1: {6} / {5,6,7,8} -> 1/4; user 2: skipped
    assert mean_jaccard(a, b) == pytest.approx((1.0 + 0.25) / 2)
    assert mean_jaccard(a[2:], b[2:]) is None
    assert mean_jaccard(np.array([[1, 2]]), np.array([[3, 4]])) == 0.0


def test_majority_purity_hand_computed():
    labels = np.array([[2, 2, 2], [1, 3, 1], [4, 5, 6], [7, -1, -1], [-1, -1, -1]])
    # rows: 1, 2/3, 1/3, 1 (one item); the empty row is skipped
    assert majority_purity(labels) == pytest.approx((1 + 2 / 3 + 1 / 3 + 1) / 4)
    assert majority_purity(labels[4:]) is None
