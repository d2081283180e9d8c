"""merge_diverse (model/retrieval.py) and the `diversity` field of POST /recall."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from model import retrieval
from model.retrieval import MAX_DIVERSE_TOP_N, merge_by_score, merge_diverse
from tests.service_support import served


def candidates(rng, n_requests=8, n_interests=4, k=15, n_rows=60):
    """(B, K*k) slots with duplicate rows across interests, ties, empty slots and drops."""
    rows = rng.integers(-1, n_rows, size=(n_requests, n_interests * k))
    scores = np.round(rng.normal(size=rows.shape), 1).astype(np.float32)
    interest = np.repeat(np.arange(n_interests), k)[None, :].repeat(n_requests, 0)
    drop = rng.random(rows.shape) < 0.1
    return scores, rows, interest, drop


def coverage(interest_row) -> int:
    return len(set(interest_row[interest_row >= 0].tolist()))


@pytest.mark.parametrize("seed", range(4))
def test_zero_diversity_is_merge_by_score_exactly(seed):
    scores, rows, interest, drop = candidates(np.random.default_rng(seed))
    categories = np.random.default_rng(seed).integers(0, 3, 60)
    for n in (1, 7, 20, 80):
        expected = merge_by_score(scores, rows, interest, n, drop)
        got = merge_diverse(scores, rows, interest, n, drop, np.zeros(len(rows)), categories)
        for e, g in zip(expected, got):
            np.testing.assert_array_equal(g, e)


def dominated_case():
    """Interest 0 outscores everything; interests 1-3 hold lower, distinct rows."""
    rows = np.array([[*range(0, 10), *range(10, 20), *range(20, 30), *range(30, 40)]])
    scores = np.concatenate([np.linspace(1.0, 0.8, 10), np.linspace(0.7, 0.5, 10),
                             np.linspace(0.45, 0.3, 10), np.linspace(0.2, 0.1, 10)])[None, :].astype(np.float32)
    interest = np.repeat(np.arange(4), 10)[None, :]
    return scores, rows, interest, np.zeros(rows.shape, bool)


def test_larger_diversity_never_lowers_and_does_raise_interest_coverage():
    scores, rows, interest, drop = dominated_case()
    covered = [coverage(merge_diverse(scores, rows, interest, 8, drop, np.array([lam]))[2][0])
               for lam in (0.0, 0.05, 0.2, 0.5, 1.0, 3.0, 10.0)]
    assert covered == sorted(covered) and covered[0] == 1 and covered[-1] == 4
    # the first pick is always the best item; a diverse list keeps each interest's best first
    chosen, _, chosen_interest = merge_diverse(scores, rows, interest, 8, drop, np.array([10.0]))
    assert chosen[0, 0] == 0 and chosen_interest[0, :4].tolist() == [0, 1, 2, 3]
    assert chosen[0, :4].tolist() == [0, 10, 20, 30]


def test_deterministic_and_independent_of_candidate_order():
    scores, rows, interest, drop = candidates(np.random.default_rng(7))
    lam = np.linspace(0.1, 3, len(rows))
    first = merge_diverse(scores, rows, interest, 12, drop, lam)
    perm = np.random.default_rng(8).permutation(rows.shape[1])
    again = merge_diverse(scores[:, perm], rows[:, perm], interest[:, perm], 12, drop[:, perm], lam)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    for r in first[0]:
        real = r[r >= 0]
        assert len(real) == len(set(real.tolist())), "a row chosen twice"


def test_dropped_rows_never_chosen_and_short_pools_pad():
    scores, rows, interest, drop = candidates(np.random.default_rng(9), n_rows=12)
    got_rows, got_scores, got_interest = merge_diverse(scores, rows, interest, 40, drop, np.full(len(rows), 2.0))
    for b in range(len(rows)):
        dropped = set(rows[b][drop[b]].tolist()) - set(rows[b][~drop[b]].tolist())
        real = got_rows[b][got_rows[b] >= 0]
        assert not dropped & set(real.tolist())
        assert (got_rows[b][len(real):] == -1).all() and np.isinf(got_scores[b][len(real):]).all()
        assert (got_interest[b][len(real):] == -1).all()


def test_categories_spread_within_one_interest():
    """One interest; its 6 best rows are category 0, then category 1 and 2 rows."""
    rows = np.arange(12)[None, :]
    scores = np.linspace(1.0, 0.0, 12)[None, :].astype(np.float32)
    interest, drop = np.zeros_like(rows), np.zeros(rows.shape, bool)
    category_of_row = np.array([0] * 6 + [1] * 3 + [2] * 3)
    plain = merge_diverse(scores, rows, interest, 6, drop, np.array([1.0]))[0]
    spread = merge_diverse(scores, rows, interest, 6, drop, np.array([1.0]), category_of_row)[0]
    assert plain[0].tolist() == list(range(6))                     # interests only: nothing to spread
    assert len(set(category_of_row[spread[0]].tolist())) == 3 and spread[0, 0] == 0


def test_merge_applies_diversity_per_request():
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(3, 4, 10)).astype(np.float32)
    rows = np.stack([rng.permutation(50)[:10] for _ in range(12)]).reshape(3, 4, 10)
    by_score = retrieval.merge(scores, rows, None, 6)
    mixed = retrieval.merge(scores, rows, None, 6, diversity=np.array([0.0, 5.0, 0.0]))
    for a, b in zip(by_score, mixed):
        np.testing.assert_array_equal(a[[0, 2]], b[[0, 2]])
    assert coverage(mixed[2][1]) >= coverage(by_score[2][1])


def test_multi_interest_topn_diversity_zero_is_the_default():
    rng = np.random.default_rng(5)
    capsules, items = rng.normal(size=(6, 3, 8)).astype(np.float32), rng.normal(size=(200, 8)).astype(np.float32)
    active = np.ones((6, 3), bool)
    plain = retrieval.multi_interest_topn(capsules, active, items, 20)
    np.testing.assert_array_equal(retrieval.multi_interest_topn(capsules, active, items, 20, diversity=0.0), plain)
    spread = retrieval.multi_interest_topn(capsules, active, items, 20, diversity=2.0)
    assert (spread >= 0).all() and not np.array_equal(spread, plain)


# --- POST /recall ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from tests.service_support import build_bundle
    root = tmp_path_factory.mktemp("bundles")
    build_bundle(root, seed=0)
    return root


def ask(root, *bodies):
    from service.app import create_app
    from service.settings import Settings

    async def run():
        app = create_app(Settings(bundle=root, device="cpu", warmup_batches=1))
        async with served(app) as c:
            schema = (await c.get("/openapi.json")).json()
            return schema, await asyncio.gather(*(c.post("/recall", json=b) for b in bodies))
    return asyncio.run(run())


def test_recall_diversity_field(root):
    from tests.service_support import item_id
    history = [item_id(r) for r in range(100, 116)]
    bodies = [{"history": history, "top_n": 20}, {"history": history, "top_n": 20, "diversity": 0},
              {"history": history, "top_n": 20, "diversity": 3.0}, {"history": history, "top_n": 20, "diversity": 3}]
    schema, (plain, zero, diverse, diverse_int) = ask(root, *bodies)
    assert all(r.status_code == 200 for r in (plain, zero, diverse, diverse_int))
    assert zero.json()["items"] == plain.json()["items"]
    assert diverse.json()["items"] == diverse_int.json()["items"]
    interests = lambda r: [i["interest"] for i in r.json()["items"]]      # noqa: E731
    assert plain.json()["interests"] >= 2
    assert len(set(interests(diverse)[:4])) > len(set(interests(plain)[:4]))
    assert sorted(i["item_id"] for i in diverse.json()["items"]) != sorted(i["item_id"] for i in plain.json()["items"]) \
        or interests(diverse) != interests(plain)
    assert not {i["item_id"] for i in diverse.json()["items"]} & set(history)
    field = schema["components"]["schemas"]["RecallRequest"]["properties"]["diversity"]
    assert "gain = s' - lambda" in field["description"] and field["maximum"] == retrieval.MAX_DIVERSITY


@pytest.mark.parametrize("body, message", [
    ({"diversity": -0.5}, "greater than or equal to 0"),
    ({"diversity": 1e6}, "less than or equal to"),
    ({"diversity": "high"}, "diversity"),
    ({"diversity": 1.0, "top_n": MAX_DIVERSE_TOP_N + 1}, f"exceeds {MAX_DIVERSE_TOP_N}"),
])
def test_absurd_diversity_is_a_422(root, body, message):
    from tests.service_support import item_id
    _, (response,) = ask(root, {"history": [item_id(1), item_id(2)], **body})
    assert response.status_code == 422 and message in response.text, response.text
