"""multi_interest_topn against a brute-force numpy reference."""
from __future__ import annotations

import numpy as np
import pytest

from model.retrieval import exact_index, merge_by_score, multi_interest_topn


def brute_force_topn(capsules, active, item_vectors, n, exclude=None):
    """Reference: an item's score is its best inner product over the user's active capsules."""
    out = np.full((len(capsules), n), -1, dtype=np.int64)
    for u in range(len(capsules)):
        best = (item_vectors @ capsules[u][active[u]].T).max(axis=1)   # (n_items,)
        if exclude is not None:
            best[exclude[u]] = -np.inf
        order = np.argsort(-best, kind="stable")
        order = order[np.isfinite(best[order])][:n]
        out[u, : len(order)] = order
    return out


def assert_same_ranking(got, expected, capsules, active, item_vectors):
    """Equal lists up to float near-ties: the best-capsule score at every rank must agree."""
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got < 0, expected < 0)
    for u in range(len(got)):
        best = (item_vectors @ capsules[u][active[u]].T).max(axis=1)
        real = got[u] >= 0
        np.testing.assert_allclose(best[got[u][real]], best[expected[u][real]], rtol=1e-5, atol=1e-5)
        assert len(set(got[u][real].tolist())) == real.sum(), "a row returned twice"


def random_problem(seed, n_users=40, n_interests=4, dim=8, n_items=300):
    rng = np.random.default_rng(seed)
    capsules = rng.normal(size=(n_users, n_interests, dim)).astype(np.float32)
    active = rng.random((n_users, n_interests)) < 0.6
    active[:, 0] = True                                   # every user has at least one interest
    items = rng.normal(size=(n_items, dim)).astype(np.float32)
    return rng, capsules, active, items


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_with_inactive_capsules(seed):
    _, capsules, active, items = random_problem(seed)
    # Inactive capsules get huge vectors: if they queried, they would dominate the lists.
    capsules[~active] *= 100.0
    got = multi_interest_topn(capsules, active, items, n=50)
    assert_same_ranking(got, brute_force_topn(capsules, active, items, 50), capsules, active, items)


def test_inactive_capsules_never_contribute():
    _, capsules, active, items = random_problem(3)
    active[:, 1:] = False
    altered = capsules.copy()
    altered[:, 1:] = np.random.default_rng(9).normal(size=altered[:, 1:].shape) * 50
    np.testing.assert_array_equal(multi_interest_topn(capsules, active, items, 30),
                                  multi_interest_topn(altered, active, items, 30))


def test_duplicates_across_capsules_merge_to_best_score():
    _, capsules, active, items = random_problem(4)
    capsules[:, 1] = capsules[:, 0] * 1.01                # near-identical interests share items
    active[:, :2] = True
    got = multi_interest_topn(capsules, active, items, n=40)
    for row in got:
        real = row[row >= 0]
        assert len(real) == len(set(real.tolist())) == 40
    assert_same_ranking(got, brute_force_topn(capsules, active, items, 40), capsules, active, items)


def test_exclusions_never_returned_and_list_stays_full():
    rng, capsules, active, items = random_problem(5)
    reference_top = brute_force_topn(capsules, active, items, 30)
    # Exclude each user's own best items (the worst case for over-fetch) plus random ones.
    exclude = [np.concatenate([reference_top[u, :20], rng.choice(len(items), 15, replace=False)])
               for u in range(len(capsules))]
    got = multi_interest_topn(capsules, active, items, n=50, exclude=exclude)
    for u, row in enumerate(got):
        assert (row >= 0).all(), "catalogue is large enough: the list must not be short"
        assert not np.isin(row, exclude[u]).any()
    assert_same_ranking(got, brute_force_topn(capsules, active, items, 50, exclude), capsules, active, items)


def test_faiss_index_argument_equals_array_argument():
    _, capsules, active, items = random_problem(6)
    np.testing.assert_array_equal(multi_interest_topn(capsules, active, exact_index(items), 25),
                                  multi_interest_topn(capsules, active, items, 25))


def test_small_catalogue_pads_with_minus_one():
    _, capsules, active, items = random_problem(7, n_items=10)
    got = multi_interest_topn(capsules, active, items, n=15, exclude=[np.array([0, 1])] * len(capsules))
    assert got.shape == (len(capsules), 15)
    assert ((got[:, :8] >= 0).all() and (got[:, 8:] == -1).all())


def test_user_without_active_capsule_gets_empty_list():
    _, capsules, active, items = random_problem(8, n_users=3)
    active[1] = False
    got = multi_interest_topn(capsules, active, items, n=5)
    assert (got[1] == -1).all() and (got[[0, 2]] >= 0).all()


def test_merge_by_score_hand_example():
    scores = np.array([[0.9, 0.1, 0.5, 0.8, 0.95]], dtype=np.float32)
    rows = np.array([[3, 7, 1, 7, -1]])
    # row -1 is "no candidate"; row 7 keeps its best score 0.8
    np.testing.assert_array_equal(merge_by_score(scores, rows, n=4), [[3, 7, 1, -1]])


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="capsules must be"):
        multi_interest_topn(np.zeros((2, 3), np.float32), np.ones((2, 3), bool), np.zeros((4, 3), np.float32), 2)
