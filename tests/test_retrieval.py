"""The retrieval engine (model/retrieval.py) against brute-force references and hand-computed
cases: search, exclusion, every merge policy, the fetch size bound, the batch path."""
from __future__ import annotations

import numpy as np
import pytest

from model import retrieval
from model.index import flat_index
from model.retrieval import merge_by_score, multi_interest_topn


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
    np.testing.assert_array_equal(multi_interest_topn(capsules, active, items, 25, index=flat_index(items)),
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
    no_drop, one_interest = np.zeros(rows.shape, bool), np.zeros(rows.shape, np.int64)
    np.testing.assert_array_equal(merge_by_score(scores, rows, one_interest, 4, no_drop)[0], [[3, 7, 1, -1]])


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="capsules must be"):
        multi_interest_topn(np.zeros((2, 3), np.float32), np.ones((2, 3), bool), np.zeros((4, 3), np.float32), 2)


# --- the bound of fetch_size: exact merge with top_n + |excluded| candidates per interest ----

def pairwise_brute_force(capsules, active, items, n, exclude):
    """(U, n) rows and scores by brute force, scoring every pair with the engine's own
    pair-by-pair function (so scores are bit-comparable), sorted by (-best score, row)."""
    all_rows = np.arange(len(items))
    out_rows = np.full((len(capsules), n), -1, dtype=np.int64)
    out_scores = np.full((len(capsules), n), -np.inf, dtype=np.float32)
    for u in range(len(capsules)):
        queries = capsules[u][active[u]]
        best = retrieval.exact_scores(queries, items, np.broadcast_to(all_rows, (len(queries), len(items)))).max(0)
        best[exclude[u]] = -np.inf
        order = np.lexsort((all_rows, -best))
        order = order[np.isfinite(best[order])][:n]
        out_rows[u, :len(order)], out_scores[u, :len(order)] = order, best[order]
    return out_rows, out_scores


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_top_n_plus_excluded_per_interest_is_an_exact_merge(seed):
    rng, capsules, active, items = random_problem(seed, n_users=30)
    capsules[:10, 1] = capsules[:10, 0] * 1.01           # shared candidates: de-duplication at work
    active[:10, :2] = True
    active[10:15, 1:] = False                              # one-interest users: the bound is reached
    n = 25
    reference, _ = pairwise_brute_force(capsules, active, items, n, [np.empty(0, np.int64)] * len(capsules))
    exclude = [np.unique(np.concatenate([reference[u, :rng.integers(0, 20)],
                                         rng.choice(len(items), rng.integers(0, 10), replace=False)]))
               for u in range(len(capsules))]
    expected_rows, expected_scores = pairwise_brute_force(capsules, active, items, n, exclude)
    k = retrieval.fetch_size(n, max(len(e) for e in exclude), 0, len(items))      # no margin
    scores, rows = retrieval.search(flat_index(items), items, capsules, active, k)
    got_rows, got_scores, _ = retrieval.merge(scores, rows, exclude, n)
    np.testing.assert_array_equal(got_rows, expected_rows)
    np.testing.assert_allclose(got_scores, expected_scores, rtol=1e-6)


def test_fetch_bound_is_tight():
    """One interest whose best |E| rows are all excluded: one candidate fewer leaves a hole."""
    _, capsules, active, items = random_problem(13, n_users=1)
    active[:] = [[True, False, False, False]]
    n, reference = 10, brute_force_topn(capsules, active, items, 16)
    exclude = [reference[0, :6]]
    for k, short in ((n + 6, False), (n + 5, True)):
        scores, rows = retrieval.search(flat_index(items), items, capsules, active, k)
        got, _, _ = retrieval.merge(scores, rows, exclude, n)
        assert (got[0, -1] == -1) == short
        assert got[0, :9].tolist() == reference[0, 6:15].tolist()


def test_unknown_merge_policy_is_refused():
    scores, rows = np.zeros((1, 1, 2), np.float32), np.array([[[0, 1]]])
    with pytest.raises(ValueError, match="unknown merge policy"):
        retrieval.merge(scores, rows, None, 2, "popular")


# --- merge policies on hand-made candidate slots (the service's batch shapes) ----------------

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
    assert retrieval.fetch_size(top_n=100, n_excluded=20, margin=8, n_items=100_000) == 128
    assert retrieval.fetch_size(top_n=100, n_excluded=20, margin=8, n_items=50) == 50


def test_exact_scores_are_row_by_row_inner_products():
    rng = np.random.default_rng(0)
    queries, items = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(9, 4)).astype(np.float32)
    rows = np.array([[0, 8], [5, -1], [2, 2]])
    got = retrieval.exact_scores(queries, items, rows)
    assert got[1, 1] == -np.inf
    np.testing.assert_allclose(got[0], [queries[0] @ items[0], queries[0] @ items[8]], rtol=1e-5)
    # the same pair gives the same bits whatever else is in the call
    np.testing.assert_array_equal(retrieval.exact_scores(queries[:1], items, rows[:1]), got[:1])


def test_search_scores_do_not_depend_on_batch_mates():
    """Why search rescores even a flat index: FAISS's own scores move in the last bits with
    the number of queries in a call (BLAS kernels); the pair-by-pair scores do not."""
    import faiss

    _, capsules, active, items = random_problem(14, n_users=33, n_items=3000, dim=64)
    index = flat_index(items)
    previous = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 1                 # the service's setting: BLAS always
    try:
        alone = retrieval.search(index, items, capsules[:1], active[:1], 40)
        for batch in (2, 5, 33):
            crowded = retrieval.search(index, items, capsules[:batch], active[:batch], 40)
            np.testing.assert_array_equal(crowded[0][:1], alone[0])
            np.testing.assert_array_equal(crowded[1][:1], alone[1])
    finally:
        faiss.cvar.distance_compute_blas_threshold = previous


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_gives_exact_scores_for_what_it_finds(kind):
    from model.index import build_index, perturbed_queries, tune_index

    rng = np.random.default_rng(15)
    items = rng.normal(size=(4000, 16)).astype(np.float32)
    index, _ = build_index(items, kind)
    tune_index(index, items, perturbed_queries(items, 100, seed=1))
    capsules = rng.normal(size=(20, 2, 16)).astype(np.float32)
    active = np.ones((20, 2), bool)
    scores, rows = retrieval.search(index, items, capsules, active, 50)
    exact = np.einsum("bkd,bknd->bkn", capsules.astype(np.float64), items[rows].astype(np.float64))
    np.testing.assert_allclose(scores, exact, rtol=1e-5, atol=1e-5)
    got = multi_interest_topn(capsules, active, items, 30, index=index)
    reference = brute_force_topn(capsules, active, items, 30)
    overlap = np.mean([len(set(g) & set(r)) / 30 for g, r in zip(got.tolist(), reference.tolist())])
    assert overlap >= 0.9


# --- search_enough: deeper lists only where the exclusions crowd the top --------------------

def crowded_and_sparse_exclusions(seed, n_users=24, n_items=3000, n=10):
    rng, capsules, active, items = random_problem(seed, n_users=n_users, n_items=n_items, dim=16)
    reference, _ = pairwise_brute_force(capsules, active, items, 60, [np.empty(0, np.int64)] * n_users)
    exclude = [rng.choice(n_items, 300, replace=False) for _ in range(n_users)]      # mostly far down
    for u in range(0, n_users, 3):                                                      # a third: their best 50
        exclude[u] = np.unique(np.concatenate([exclude[u], reference[u, :50]]))
    return capsules, active, items, exclude


@pytest.mark.parametrize("seed", [20, 21])
def test_search_enough_is_exact_and_fetches_less(seed):
    capsules, active, items, exclude = crowded_and_sparse_exclusions(seed)
    n, index = 10, flat_index(items)
    top_n = np.full(len(capsules), n)
    expected, _ = pairwise_brute_force(capsules, active, items, n, exclude)
    scores, rows = retrieval.search_enough(index, items, capsules, active, exclude, top_n, margin=0)
    np.testing.assert_array_equal(retrieval.merge(scores, rows, exclude, n)[0], expected)
    # the sparse users alone need no second, deep search
    sparse = np.array([u % 3 != 0 for u in range(len(capsules))])
    _, sparse_rows = retrieval.search_enough(index, items, capsules[sparse], active[sparse],
                                             [e for e, s in zip(exclude, sparse) if s], top_n[sparse], margin=0)
    assert sparse_rows.shape[2] == n + retrieval.FIRST_FETCH_EXCLUDED < n + 300


def test_diverse_pool_does_not_depend_on_fetch_depth():
    """A request's diverse answer is the same whatever its batch-mates make the batch fetch."""
    capsules, active, items, exclude = crowded_and_sparse_exclusions(22, n_users=9)
    capsules[:, 1] *= 3            # interest 1 outscores interest 0 on rows deep in its own list
    active[:, :2] = True
    n, index, lam = 10, flat_index(items), np.full(9, 0.7)
    categories = np.arange(len(items)) % 5
    scores, rows = retrieval.search_enough(index, items, capsules, active, exclude, np.full(9, n), 8, lam)
    deep_scores, deep_rows = retrieval.search(index, items, capsules, active, 600)
    for got, deep in zip(retrieval.merge(scores, rows, exclude, n, diversity=lam, category_of_row=categories),
                         retrieval.merge(deep_scores, deep_rows, exclude, n, diversity=lam, category_of_row=categories)):
        np.testing.assert_array_equal(got, deep)


def test_round_robin_does_not_depend_on_fetch_depth():
    capsules, active, items, exclude = crowded_and_sparse_exclusions(23, n_users=9)
    capsules[:, 1] *= 3
    active[:, :2] = True
    index, n = flat_index(items), 10
    scores, rows = retrieval.search_enough(index, items, capsules, active, exclude, np.full(9, n))
    deep_scores, deep_rows = retrieval.search(index, items, capsules, active, 600)
    for got, deep in zip(retrieval.merge(scores, rows, exclude, n, "round_robin"),
                         retrieval.merge(deep_scores, deep_rows, exclude, n, "round_robin")):
        np.testing.assert_array_equal(got, deep)
