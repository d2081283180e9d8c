"""The item index of a bundle: choose, build and tune a FAISS inner-product index whose ids
are item rows (``row = item index - 1``: items are added in row order).

- ``flat``: exact ``IndexFlatIP``; the default up to ``FLAT_MAX_ITEMS`` items.
- ``ivf``: ``IndexIVFFlat`` with ``nlist ~ 4 sqrt(n)``, the default above: it builds in
  seconds on two cores, where HNSW takes minutes for a million items.
- ``hnsw``: never the default: on our 1M-item synthetic catalogue its inner-product
  recall@100 plateaus below 0.9 (bench/README.md).

``tune_index`` raises ``efSearch`` / ``nprobe`` until recall@k against exact search reaches
the target; the parameters go into the manifest and are re-applied on load (``apply_params``).
"""
from __future__ import annotations

import contextlib
import math
import threading
from concurrent.futures import Executor

import faiss
import numpy as np

FLAT_MAX_ITEMS = 200_000           # exact search up to here, approximate above
INDEX_KINDS = ("flat", "hnsw", "ivf")
HNSW_M = 48                        # graph degree; 2*M neighbours on the base layer
HNSW_EF_CONSTRUCTION = 200        # M=32/efC=80 plateaus near recall 0.95 for inner product at 200k items
IVF_TRAIN_POINTS_PER_LIST = 40     # k-means sample per inverted list (faiss wants >= 39)
IVF_SEED = 0                       # the k-means sample and initialisation: the same index every build
TUNE_K = 100
TUNE_TARGET_RECALL = 0.96         # 0.95 is required on held-out capsules; 0.01 margin for
                                  # the sampling noise of the tuning queries
EF_SEARCH_MAX = 4096


class IndexTuningError(RuntimeError):
    """The target recall could not be reached with any search parameter tried."""


def choose_kind(n_items: int) -> str:
    """Index kind for a catalogue of ``n_items`` items: exact up to FLAT_MAX_ITEMS, else IVF."""
    return "flat" if n_items <= FLAT_MAX_ITEMS else "ivf"


def default_nlist(n_items: int) -> int:
    """Number of IVF lists: ~4 sqrt(n), with at least 39 training points per list."""
    return max(1, min(int(4 * math.sqrt(n_items)), n_items // 39))


def flat_index(item_vectors: np.ndarray) -> faiss.IndexFlatIP:
    """Exact inner-product index over ``item_vectors`` (n, d) float32; ids are rows."""
    vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)  # (n, d)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


class ShardedFlatIndex:
    """An exact flat index split by rows into shards that one search scans at once, one thread
    each: a batch's scan takes a fraction of the time on idle cores, with the same answer (the
    best k of the shards' best k, ties by the smaller row), and in threads whose OpenMP
    settings the caller controls (FAISS's own ``IndexShards`` starts fresh threads per call).

    ``beside`` runs shards 1.. (an executor whose threads search single-threaded); shard 0 runs
    in the calling thread. A search made while another batch is in progress (``in_batch``: its
    tower, search or merge) scans every shard in the calling thread: the cores are busy then,
    and a helper thread would only compete with that batch (in process, two batch workers on
    two cores then served ~1.4x what one worker with split searches does; bench/README.md,
    "Serving, fifth pass"). Either way the answer is the same. It has what model/retrieval.py uses of a FAISS
    index: ``search``, ``ntotal`` and ``d``.
    """

    def __init__(self, item_vectors: np.ndarray, n_shards: int, beside: Executor) -> None:
        bounds = np.linspace(0, len(item_vectors), max(1, min(n_shards, len(item_vectors))) + 1).astype(int)
        self.shards = [(int(lo), flat_index(item_vectors[lo:hi])) for lo, hi in zip(bounds[:-1], bounds[1:])]
        self.ntotal, self.d = len(item_vectors), item_vectors.shape[1]
        self._beside = beside
        self._lock = threading.Lock()
        self._batches = 0                  # batches in progress (in_batch), in any thread

    @contextlib.contextmanager
    def in_batch(self):
        with self._lock:
            self._batches += 1
        try:
            yield
        finally:
            with self._lock:
                self._batches -= 1

    def _search_shard(self, shard: int, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        offset, index = self.shards[shard]
        scores, rows = index.search(queries, min(k, index.ntotal))          # (Q, <= k)
        return scores, np.where(rows >= 0, rows + offset, -1)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries (Q, d) float32 -> scores (Q, k) float32, rows (Q, k) int64, best first (-1 = none)."""
        if self._batches > 1:              # another batch keeps the cores busy: every shard here
            parts = [self._search_shard(s, queries, k) for s in range(len(self.shards))]
        else:
            others = [self._beside.submit(self._search_shard, s, queries, k) for s in range(1, len(self.shards))]
            parts = [self._search_shard(0, queries, k)] + [future.result() for future in others]
        return top_k_of_lists(np.concatenate([p[0] for p in parts], axis=1),
                              np.concatenate([p[1] for p in parts], axis=1), k)


def in_batch(index):
    """A context marking one serving batch in progress on ``index`` for its duration (a
    ShardedFlatIndex splits its searches only while a single batch is; any other index:
    nothing to mark)."""
    return index.in_batch() if isinstance(index, ShardedFlatIndex) else contextlib.nullcontext()


def top_k_of_lists(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of candidate lists scores/rows (Q, C), by score, ties by the smaller row,
    empty slots (row -1) last; padded with (-inf, -1) when C < k."""
    scores = np.where(rows >= 0, scores, -np.inf)
    order = np.lexsort((np.where(rows >= 0, rows, np.iinfo(np.int64).max), -scores), axis=-1)[:, :k]
    scores, rows = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
    if rows.shape[1] < k:
        pad = ((0, 0), (0, k - rows.shape[1]))
        scores, rows = np.pad(scores, pad, constant_values=-np.inf), np.pad(rows, pad, constant_values=-1)
    return scores.astype(np.float32), rows


def build_index(item_vectors: np.ndarray, kind: str | None = None, *, hnsw_m: int = HNSW_M,
                ef_construction: int = HNSW_EF_CONSTRUCTION) -> tuple[faiss.Index, str]:
    """(index over ``item_vectors`` (n, d) float32, the kind built: ``choose_kind`` if None)."""
    vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)  # (n, d)
    n_items, dim = vectors.shape
    kind = kind or choose_kind(n_items)
    if kind == "flat":
        return flat_index(vectors), kind
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
    elif kind == "ivf":   # the coarse quantizer is trained on a seeded sample
        nlist = default_nlist(n_items)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        n_train = min(n_items, IVF_TRAIN_POINTS_PER_LIST * nlist)
        rng = np.random.default_rng(IVF_SEED)
        index.cp.seed = IVF_SEED
        index.train(vectors[np.sort(rng.choice(n_items, n_train, replace=False))])
    else:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")
    index.add(vectors)
    return index, kind


def index_kind(index: faiss.Index) -> str:
    """The kind (``flat``/``hnsw``/``ivf``) of a FAISS index built by ``build_index``."""
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    if isinstance(index, faiss.IndexFlat):
        return "flat"
    raise ValueError(f"unsupported FAISS index type {type(index).__name__}")


def _candidate_params(index: faiss.Index, k: int) -> tuple[str, list[int]]:
    """The search parameter of ``index`` and the increasing values ``tune_index`` tries."""
    kind = index_kind(index)
    if kind == "hnsw":
        values = [v for v in (2 ** p for p in range(4, 13)) if k <= v <= EF_SEARCH_MAX]
        return "efSearch", values or [max(k, 16)]
    if kind == "ivf":
        nlist = faiss.extract_index_ivf(index).nlist
        values = sorted({min(2 ** p, nlist) for p in range(0, int(math.log2(nlist)) + 2)})
        return "nprobe", values
    return "", []


def apply_params(index: faiss.Index, params: dict[str, int]) -> None:
    """Set search parameters (``efSearch``/``nprobe``) on ``index`` in place."""
    space = faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, int(value))


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k; both (Q, k) int64."""
    k = exact_ids.shape[1]
    hits = [len(np.intersect1d(a[a >= 0], e)) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits) / k)


def exact_top_k(item_vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top-k rows (Q, k) int64 of ``queries`` (Q, d) over (n, d) items."""
    return flat_index(item_vectors).search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


def tune_index(index: faiss.Index, item_vectors: np.ndarray, queries: np.ndarray,
               target_recall: float = TUNE_TARGET_RECALL, k: int = TUNE_K) -> dict:
    """Raise efSearch / nprobe until recall@k vs exact search on ``queries`` (Q, d) >= target;
    returns ``{"params", "recall_at_k", "k"}`` and leaves the parameters set on ``index``
    (a flat index: no params, recall 1.0). IndexTuningError when the largest value misses."""
    name, values = _candidate_params(index, k)
    if not name:
        return {"params": {}, "recall_at_k": 1.0, "k": k}
    k = min(k, index.ntotal)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    exact = exact_top_k(item_vectors, queries, k)
    recall = 0.0
    for value in values:
        apply_params(index, {name: value})
        recall = recall_at_k(index.search(queries, k)[1], exact)
        if recall >= target_recall:
            return {"params": {name: value}, "recall_at_k": recall, "k": k}
    raise IndexTuningError(f"{name}={values[-1]} reaches recall@{k}={recall:.3f} < {target_recall}; "
                           f"use --index ivf (or flat); HNSW over inner product plateaus on large catalogues")


def perturbed_queries(item_vectors: np.ndarray, n_queries: int = 256, seed: int = 0) -> np.ndarray:
    """Capsule-like queries (Q, d) float32 when no tower is at hand: the mean of 1-4 random
    items plus noise of 10% of the items' spread, near but not on the catalogue."""
    rng = np.random.default_rng(seed)
    n_items, dim = item_vectors.shape
    picks = rng.integers(0, n_items, size=(n_queries, 4))           # (Q, 4)
    weights = (np.arange(4)[None, :] < rng.integers(1, 5, size=(n_queries, 1)))  # (Q, 4)
    chosen = np.asarray(item_vectors)[picks.ravel()].reshape(n_queries, 4, dim)
    means = (chosen * weights[..., None]).sum(1) / weights.sum(1, keepdims=True)  # (Q, d)
    spread = np.asarray(item_vectors[: min(n_items, 10_000)]).std(0)             # (d,)
    noise = rng.standard_normal((n_queries, dim)) * 0.1 * spread
    return np.ascontiguousarray(means + noise, dtype=np.float32)
