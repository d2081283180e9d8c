"""Multi-interest retrieval: the one engine behind training validation, `mind evaluate` and
``POST /recall``.

Pure functions over numpy arrays (faiss contrib style). Everything speaks item *rows* (FAISS
ids, ``row = item index - 1``); ``row == -1`` is an empty slot with score ``-inf``. The steps,
each a function (signatures: docs/architecture.md, "Evaluation"): `search` (or `search_enough`,
its lists as deep as the exclusions need), then `merge`. A row found by several interests
keeps its best score (and the lowest such interest); ties are always broken by the smaller
row, so an answer never depends on the order in which candidates arrived (batch composition,
FAISS internals).
"""
from __future__ import annotations

import faiss
import numpy as np

from model.index import flat_index

EMPTY_ROW = -1
USERS_PER_SEARCH = 8192   # users per FAISS call: bounds the (users, K, fetch) candidate arrays
BOUNDARY_MARGIN = 8       # extra candidates per interest, see fetch_size
FIRST_FETCH_EXCLUDED = 32 # excluded rows the first search makes room for, see search_enough
MERGE_POLICIES = ("score", "round_robin")
MAX_DIVERSITY = 10.0      # lambda beyond which the penalty already dwarfs the whole score range
MAX_DIVERSE_TOP_N = 100   # merge_diverse costs O(K * top_n^2) per request; larger lists are refused
DIVERSE_POOL_DEPTH = 2    # merge_diverse chooses from each interest's best DEPTH * top_n rows
NO_CATEGORY = -1


def fetch_size(top_n: int, n_excluded: int, margin: int, n_items: int, diversity: float = 0.0) -> int:
    """Candidates each interest fetches so that the merged top ``top_n`` is exact (with
    ``diversity`` > 0: so that :func:`merge_diverse` sees its whole pool, DIVERSE_POOL_DEPTH
    times ``top_n`` per interest).

    Claim: if every interest j fetches its top ``f = top_n + |E|`` rows by s_j (E = the
    request's excluded rows), merging them by best score yields exactly the top ``top_n``
    non-excluded rows by best score s(r) = max_j s_j(r). Proof: let r be in the true answer
    and j its best interest (s(r) = s_j(r)). Were r not among interest j's top f, those f
    rows would all have s_j >= s_j(r); at most |E| of them are excluded, so at least top_n
    distinct non-excluded rows would have s >= s_j >= s(r), and r would not be in the top
    top_n (ties broken by row, as everywhere here). So r is fetched, by its best interest:
    its merged score is s(r). Rows of one interest's list are distinct, so de-duplication
    across interests needs no extra candidates.

    ``margin`` extra rows keep the claim when the index's own scores wobble: FAISS's flat
    search scores move by ~1e-5 with the number of queries in a call (BLAS kernel choice;
    FAISS 1.15, measured), so the last rows of a list may swap with the next ones outside
    it; a few spare rows keep the exact top f inside the list whatever the batch.
    """
    return int(max(1, min(n_items, pool_depth(top_n, diversity) + n_excluded + margin)))


def pool_depth(top_n: int, diversity: float) -> int:
    """Non-excluded rows each interest must contribute: top_n, or the diverse pool's depth."""
    return DIVERSE_POOL_DEPTH * top_n if diversity > 0 else top_n


def exact_scores(queries: np.ndarray, item_vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Inner products of each query with its own candidate rows.

    queries (Q, d) float32, rows (Q, k) int64 (-1 = empty) -> (Q, k) float32.
    Computed pair by pair, so a score does not depend on which other queries shared the
    FAISS call (BLAS blocking changes the last bits otherwise). ~0.04 ms for 4 x 128 rows
    at d=64, against ~5 ms for the flat search over 100k items that found them.
    """
    vectors = item_vectors[np.maximum(rows, 0)]                       # (Q, k, d)
    scores = np.einsum("qd,qkd->qk", queries, vectors)                # (Q, k)
    return np.where(rows >= 0, scores, -np.inf).astype(np.float32)


def search(index: faiss.Index, item_vectors: np.ndarray, capsules: np.ndarray, active: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """ONE FAISS call for every active capsule, then scores that depend on the pair only.

    index: inner-product FAISS index over ``item_vectors`` (n_items, d) float32, ids = rows;
    capsules (B, K, d) float32, active (B, K) bool (inactive capsules never query).
    Returns per-interest candidates: scores (B, K, k) float32 (-inf = empty) and rows
    (B, K, k) int64 (-1 = empty), best first per interest.

    Our three index kinds (flat, IVFFlat, HNSWFlat) all store full float vectors, so FAISS's
    scores are already exact inner products; they are recomputed with :func:`exact_scores`
    only because FAISS's vary in the last bits with the number of queries in the call,
    which would make an answer depend on its batch-mates.
    """
    n_requests, n_interests, _ = capsules.shape
    queries = np.ascontiguousarray(capsules[active], dtype=np.float32)  # (Q, d)
    rows = np.full((n_requests, n_interests, k), EMPTY_ROW, dtype=np.int64)
    scores = np.full((n_requests, n_interests, k), -np.inf, dtype=np.float32)
    if len(queries):
        _, found = index.search(queries, k)                             # (Q, k)
        rows[active] = found
        scores[active] = exact_scores(queries, item_vectors, found)
    return scores, rows


def search_enough(index: faiss.Index, item_vectors: np.ndarray, capsules: np.ndarray, active: np.ndarray,
                  excluded: list[np.ndarray], top_n: np.ndarray, margin: int = BOUNDARY_MARGIN,
                  diversity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`search` with lists only as deep as the exclusions make them need to be.

    All fetch_size's claim uses is that each active interest of request b holds its best
    ``depth_b`` non-excluded rows (depth_b = top_n[b], or the diverse pool's depth). So every
    query first fetches room for FIRST_FETCH_EXCLUDED excluded rows; only the interests whose
    first ``k - margin`` rows turn out to hold fewer than depth_b non-excluded ones (their
    excluded rows crowd the top) are searched again, with the full bound of fetch_size.
    excluded[b], top_n (B,) int, diversity (B,) float or None. Returns scores, rows (B, K, k).
    """
    n_items, lam = index.ntotal, np.zeros(len(top_n)) if diversity is None else diversity
    full = np.array([fetch_size(n, len(e), margin, n_items, d) for n, e, d in zip(top_n, excluded, lam)])
    k = max(fetch_size(n, min(len(e), FIRST_FETCH_EXCLUDED), margin, n_items, d)
            for n, e, d in zip(top_n, excluded, lam))
    scores, rows = search(index, item_vectors, capsules, active, k)                  # (B, K, k)
    head = rows[:, :, : max(k - margin, 1)]
    dropped = exclusion_mask(head.reshape(len(head), -1), excluded).reshape(head.shape)
    depth = np.array([pool_depth(n, d) for n, d in zip(top_n, lam)])                # (B,)
    short = active & (((head >= 0) & ~dropped).sum(axis=2) < depth[:, None]) & (full > k)[:, None]
    if not short.any():
        return scores, rows
    deeper = int(full[short.any(axis=1)].max())
    more_scores, more_rows = search(index, item_vectors, capsules, short, deeper)     # (B, K, deeper)
    widen = ((0, 0), (0, 0), (0, deeper - k))
    scores = np.pad(scores, widen, constant_values=-np.inf)
    rows = np.pad(rows, widen, constant_values=EMPTY_ROW)
    scores[short], rows[short] = more_scores[short], more_rows[short]
    return scores, rows


def exclusion_mask(rows: np.ndarray, excluded: list[np.ndarray]) -> np.ndarray:
    """rows (B, C) int64, excluded[b] = rows request b must not get -> (B, C) bool, True = drop."""
    n_slots = int(max(rows.max(initial=0), max((int(e.max(initial=0)) for e in excluded), default=0))) + 2
    keys = np.arange(rows.shape[0], dtype=np.int64)[:, None] * n_slots + rows + 1
    excluded_keys = np.concatenate(
        [b * n_slots + np.asarray(e, dtype=np.int64) + 1 for b, e in enumerate(excluded)] or [np.empty(0, np.int64)])
    return np.isin(keys, excluded_keys)


def _gather(order: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each (B, C) array re-ordered along axis 1 by ``order`` (B, C') -> (B, C') each."""
    return tuple(np.take_along_axis(a, order, axis=1) for a in arrays)


def _best_copy(scores: np.ndarray, rows: np.ndarray, interest: np.ndarray, drop: np.ndarray):
    """Score -inf for dropped/empty slots and for every copy of a row but its best one.

    All arrays (B, C); returns the three re-ordered by row (copies adjacent)."""
    scores = np.where(drop | (rows < 0), -np.inf, scores)
    order = np.lexsort((interest, -scores, rows), axis=-1)            # row, best score, low interest
    scores, rows, interest = _gather(order, scores, rows, interest)
    duplicate = np.zeros(rows.shape, dtype=bool)
    duplicate[:, 1:] = rows[:, 1:] == rows[:, :-1]
    scores[duplicate] = -np.inf
    return scores, rows, interest


def _take_top(order: np.ndarray, scores, rows, interest, n: int):
    """Gather the first ``n`` slots of ``order`` (B, C); empty slots become row -1;
    padded with empty slots to (B, n) when C < n."""
    order = order[:, :n]
    top_scores, top_rows, top_interest = _gather(order, scores, rows, interest)
    empty = ~np.isfinite(top_scores)
    top_rows[empty] = EMPTY_ROW
    top_interest[empty] = EMPTY_ROW
    pad = ((0, 0), (0, n - order.shape[1]))
    return (np.pad(top_rows, pad, constant_values=EMPTY_ROW), np.pad(top_scores, pad, constant_values=-np.inf),
            np.pad(top_interest, pad, constant_values=EMPTY_ROW))


def merge_by_score(scores: np.ndarray, rows: np.ndarray, interest: np.ndarray, n: int,
                   drop: np.ndarray):
    """Best ``n`` distinct rows of each request by score.

    scores (B, C) float32, rows (B, C) int64, interest (B, C) int64 (capsule of the slot),
    drop (B, C) bool (excluded slots). A row found by several capsules keeps its best score
    and that capsule. Returns (rows, scores, interest), each (B, n), best first, ties by
    smaller row; row -1 / score -inf / interest -1 where fewer candidates exist.
    """
    scores, rows, interest = _best_copy(scores, rows, interest, drop)
    order = np.lexsort((rows, -scores), axis=-1)
    return _take_top(order, scores, rows, interest, n)


def _rank_within_interest(scores: np.ndarray, rows: np.ndarray, interest: np.ndarray):
    """Sort (B, C) slots by (interest, -score, row); also return each slot's rank inside its
    interest's list (empty slots rank C, after every real one)."""
    order = np.lexsort((rows, -scores, interest), axis=-1)            # grouped by interest
    scores, rows, interest = _gather(order, scores, rows, interest)
    position = np.broadcast_to(np.arange(rows.shape[1]), rows.shape)
    group_start = np.ones(rows.shape, dtype=bool)
    group_start[:, 1:] = interest[:, 1:] != interest[:, :-1]
    rank = position - np.maximum.accumulate(np.where(group_start, position, 0), axis=1)
    return scores, rows, interest, np.where(np.isfinite(scores), rank, rows.shape[1])


def _per_interest_pool(scores, rows, interest, drop, depth: int):
    """Each interest's best ``depth`` non-excluded rows by its own score, de-duplicated as in
    :func:`_best_copy` (all (B, C), re-ordered by row). Unlike de-duplicating everything
    fetched, this does not depend on how deep the lists were fetched (batch-mates)."""
    scores = np.where(drop | (rows < 0), -np.inf, scores)
    scores, rows, interest, rank = _rank_within_interest(scores, rows, interest)
    scores = np.where(rank < depth, scores, -np.inf)
    return _best_copy(scores, rows, interest, np.zeros(rows.shape, dtype=bool))


def merge_round_robin(scores: np.ndarray, rows: np.ndarray, interest: np.ndarray, n: int,
                      drop: np.ndarray):
    """Like :func:`merge_by_score`, but interests take turns: the best item of each interest
    (in capsule order), then the second best of each, ... over each interest's best ``n``
    non-excluded rows; a row found by several of them counts for its best score's interest."""
    scores, rows, interest = _per_interest_pool(scores, rows, interest, drop, n)
    scores, rows, interest, rank = _rank_within_interest(scores, rows, interest)
    turn = np.lexsort((interest, rank), axis=-1)
    return _take_top(turn, scores, rows, interest, n)


def _greedy_picks(rescaled: np.ndarray, interest: np.ndarray, category: np.ndarray | None,
                  lam: np.ndarray, n: int) -> np.ndarray:
    """The greedy loop of :func:`merge_diverse` over (B, P) pools sorted by (-score, row):
    rescaled scores (-inf = empty), interest, category (or None); lam (B,). Returns (B, <= n)
    picked pool slots, ``P`` where a pool ran out. Equal gains go to the earlier slot, i.e.
    the higher score, then the smaller row."""
    n_requests, pool = rescaled.shape
    repeats = np.zeros(rescaled.shape, dtype=np.float32)    # chosen rows sharing each slot's interest + category
    open_slot = np.isfinite(rescaled)
    picks = np.full((n_requests, min(n, pool)), pool, dtype=np.int64)
    every = np.arange(n_requests)
    for t in range(picks.shape[1]):
        gain = np.where(open_slot, rescaled - lam[:, None] * repeats / max(t, 1), -np.inf)   # (B, P)
        pick = np.argmax(gain, axis=1)                                                       # (B,)
        live = open_slot[every, pick]
        picks[live, t] = pick[live]
        open_slot[every, pick] = False
        same = (interest == interest[every, pick][:, None]).astype(np.float32)
        if category is not None:
            same += (category == category[every, pick][:, None]) & (category != NO_CATEGORY)
        repeats += same * live[:, None]
    return picks


def merge_diverse(scores: np.ndarray, rows: np.ndarray, interest: np.ndarray, n: int, drop: np.ndarray,
                  diversity: np.ndarray, category_of_row: np.ndarray | None = None):
    """Greedy top-``n`` that trades score against spreading the list over interests and
    (when ``category_of_row`` is given) item categories; deterministic.

    scores, rows, interest, drop (B, C) as for :func:`merge_by_score`; diversity (B,) float
    lambda >= 0 per request; category_of_row (n_items,) int64 category of each row
    (NO_CATEGORY = none) or None. The pool is each interest's best DIVERSE_POOL_DEPTH * n
    distinct non-excluded rows (P <= DEPTH * K * n). Step t (t rows chosen so far) takes the pool row c with

        gain(c) = s'(c) - lambda * (n_interest(c) + n_category(c)) / max(t, 1)

    s' = (s - s_min) / (s_max - s_min): the score rescaled to [0, 1] over the request's pool;
    n_interest(c), n_category(c): rows already chosen from c's interest / in c's category (0
    without categories). So lambda = 1 makes repeating an interest that holds the whole list
    so far cost the pool's whole score range. Ties: higher score, then smaller row; lambda = 0
    gives :func:`merge_by_score`'s list exactly. Cost: n steps over (B, P): O(n * P) =
    O(K * n^2) per request. Returns (rows, scores, interest), each (B, n), -1 / -inf / -1 padded.
    """
    depth = DIVERSE_POOL_DEPTH * n
    scores, rows, interest = _per_interest_pool(scores, rows, interest, drop, depth)
    order = np.lexsort((rows, -scores), axis=-1)[:, : depth * (int(interest.max(initial=0)) + 1)]
    scores, rows, interest = _gather(order, scores, rows, interest)   # (B, P) by (-score, row)
    valid = np.isfinite(scores)
    top = np.where(valid, scores, -np.inf).max(axis=1, initial=-np.inf)[:, None]
    low = np.where(valid, scores, np.inf).min(axis=1, initial=np.inf)[:, None]
    spread = np.where(top > low, top - low, 1.0)
    rescaled = np.where(valid, (scores - low) / spread, -np.inf).astype(np.float32)    # (B, P)
    category = (None if category_of_row is None
                else np.where(rows >= 0, np.asarray(category_of_row)[np.maximum(rows, 0)], NO_CATEGORY))
    picks = _greedy_picks(rescaled, interest, category, np.asarray(diversity, dtype=np.float32), n)
    empty = ((0, 0), (0, 1))                       # slot P: where picks point when a pool ran out
    scores = np.pad(scores, empty, constant_values=-np.inf)
    rows, interest = (np.pad(a, empty, constant_values=EMPTY_ROW) for a in (rows, interest))
    return _take_top(picks, scores, rows, interest, n)


def merge(scores: np.ndarray, rows: np.ndarray, excluded: list[np.ndarray] | None, n: int,
          policy: str = "score", diversity: np.ndarray | None = None,
          category_of_row: np.ndarray | None = None):
    """Per-interest candidates -> one list per request: drop excluded rows, de-duplicate,
    keep ``n`` rows by ``policy`` (one of MERGE_POLICIES), or by :func:`merge_diverse` for
    the requests whose ``diversity`` (B,) lambda is > 0.

    scores (B, K, k) float32, rows (B, K, k) int64 (as :func:`search` returns them);
    excluded[b]: rows request b must not get (None = nothing excluded); category_of_row:
    see :func:`merge_diverse`. Returns (rows, scores, interest), each (B, n), -1 / -inf / -1 padded.
    """
    if policy not in MERGE_POLICIES:
        raise ValueError(f"unknown merge policy {policy!r}; expected one of {MERGE_POLICIES}")
    n_requests, n_interests, k = rows.shape
    interest = np.broadcast_to(np.arange(n_interests, dtype=np.int64)[None, :, None], rows.shape)
    flat = (n_requests, n_interests * k)
    scores, rows, interest = scores.reshape(flat), rows.reshape(flat), interest.reshape(flat)
    drop = exclusion_mask(rows, excluded) if excluded is not None else np.zeros(flat, dtype=bool)
    by_policy = merge_round_robin if policy == "round_robin" else merge_by_score
    out = by_policy(scores, rows, interest, n, drop)
    diverse = np.flatnonzero(np.asarray(diversity) > 0) if diversity is not None else []
    if len(diverse):
        chosen = merge_diverse(scores[diverse], rows[diverse], interest[diverse], n, drop[diverse],
                               np.asarray(diversity)[diverse], category_of_row)
        for whole, part in zip(out, chosen):
            whole[diverse] = part
    return out


def multi_interest_topn(capsules: np.ndarray, active: np.ndarray,
                        item_vectors: np.ndarray, n: int,
                        exclude: list[np.ndarray] | None = None, *,
                        index: faiss.Index | None = None, policy: str = "score", diversity: float = 0.0,
                        category_of_row: np.ndarray | None = None) -> np.ndarray:
    """Top-``n`` item rows per user from the user's active capsules: :func:`search` then
    :func:`merge`, in blocks of USERS_PER_SEARCH users (what ``POST /recall`` runs per batch).

    capsules (U, K, d) float32; active (U, K) bool; item_vectors (n_items, d) float32 with
    row r = item index r + 1; index: a FAISS index over them (ids = rows; default: a flat
    one built here). exclude: per user an array of rows never to return (e.g. history).
    policy, diversity (one lambda for every user), category_of_row: as for :func:`merge`.
    Returns (U, n) int64 rows, ``-1`` where fewer exist.
    """
    capsules = np.asarray(capsules, dtype=np.float32)
    active = np.asarray(active, dtype=bool)
    if capsules.ndim != 3 or active.shape != capsules.shape[:2]:
        raise ValueError(f"capsules must be (U, K, d) and active (U, K); got {capsules.shape} and {active.shape}")
    if exclude is not None and len(exclude) != capsules.shape[0]:
        raise ValueError(f"exclude has {len(exclude)} entries for {capsules.shape[0]} users")
    item_vectors = np.asarray(item_vectors, dtype=np.float32)
    index = flat_index(item_vectors) if index is None else index
    out = np.full((len(capsules), n), EMPTY_ROW, dtype=np.int64)
    for start in range(0, len(capsules), USERS_PER_SEARCH):
        stop = min(start + USERS_PER_SEARCH, len(capsules))
        block_exclude = ([np.empty(0, np.int64)] * (stop - start) if exclude is None
                         else [np.asarray(e, dtype=np.int64) for e in exclude[start:stop]])
        lam = np.full(stop - start, diversity, dtype=np.float64)
        scores, rows = search_enough(index, item_vectors, capsules[start:stop], active[start:stop], block_exclude,
                                     np.full(stop - start, n), BOUNDARY_MARGIN, lam)
        out[start:stop] = merge(scores, rows, block_exclude, n, policy, lam, category_of_row)[0]
    return out
