"""One batch of recall requests through the bundle: request -> tower -> search -> merge -> response.

Each step is a named function; :func:`recall_batch` chains them and times the stages. It runs
in the batcher's single worker thread (never on the event loop) and is also what
``bench/pipeline.py`` measures without HTTP. Ids are resolved here, against the very bundle
that answers, so a reload between arrival and execution can never mix two catalogues.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import faiss
import numpy as np
import torch

from model import retrieval
from model.bundle import Bundle
from model.index import in_batch
from service.settings import Settings

PADDING = 0  # tower item index of an empty history slot


def configure_compute(settings: Settings) -> None:
    """Thread counts of torch (process-wide) and FAISS (OpenMP: for the CALLING thread, so
    call it in the thread that searches), when FAISS switches to BLAS (process-wide), and how
    long a thread may hold the GIL while another waits for it (process-wide)."""
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    torch.set_num_threads(settings.torch_threads)
    faiss.omp_set_num_threads(settings.faiss_threads)
    faiss.cvar.distance_compute_blas_threshold = settings.faiss_blas_threshold


@dataclass(frozen=True)
class RecallQuery:
    """One validated request, still in external ids (bundle independent)."""
    history: tuple[str, ...]
    profile: dict[str, str] = field(default_factory=dict)
    top_n: int = 50
    exclude_history: bool = True
    exclude: tuple[str, ...] = ()
    max_interests: int | None = None
    explain: bool = False
    diversity: float = 0.0             # lambda of model.retrieval.merge_diverse (over interests and
                                       # the bundle's item categories, when it has them); 0 = by score


@dataclass(frozen=True)
class RetrievalOptions:
    merge_policy: str = "score"        # "score" | "round_robin"
    overfetch: int = 8                 # extra candidates per capsule
    explain_items: int = 3             # history items per interest in explanations
    tower_shapes: tuple[int, ...] = (1, 2, 4, 8)   # allowed rows per tower call, ascending

    @classmethod
    def from_settings(cls, settings: Settings) -> "RetrievalOptions":
        return cls(settings.merge_policy, settings.overfetch, settings.explain_items,
                   bucket_shapes(settings.tower_chunk))


def bucket_shapes(max_rows: int) -> tuple[int, ...]:
    """Tower call sizes: the powers of two below ``max_rows``, and ``max_rows``."""
    return tuple(1 << i for i in range(max_rows.bit_length()) if 1 << i < max_rows) + (max_rows,)


def call_sizes(n_rows: int, shapes: tuple[int, ...]) -> list[int]:
    """Split ``n_rows`` into tower calls of allowed ``shapes``: full calls of the largest,
    then the smallest shape that holds the rest (padded)."""
    largest = shapes[-1]
    sizes = [largest] * (n_rows // largest)
    if n_rows % largest:
        sizes.append(next(s for s in shapes if s >= n_rows % largest))
    return sizes


@dataclass
class StageTimes:
    """Seconds spent per stage for one batch."""
    tower_s: float = 0.0
    search_s: float = 0.0
    merge_s: float = 0.0


@dataclass(frozen=True)
class EncodedBatch:
    history: np.ndarray            # (B, max_len) int64 tower indices, left-padded, newest last
    profile: np.ndarray            # (B, P) int64 profile value indices (0 = unknown)
    unknown: np.ndarray            # (B,) int64 history ids not in the catalogue
    unknown_profile: np.ndarray    # (B,) int64 profile features the bundle does not use
    excluded: list[np.ndarray]     # per request, rows it must not get (unique int64)


def encode_queries(bundle: Bundle, queries: list[RecallQuery]) -> EncodedBatch:
    """External ids -> tower inputs. Unknown items and profile features are dropped and
    counted; the newest ``max_len`` known items are kept."""
    row_of, max_len = bundle.row_of, bundle.max_len
    history = np.zeros((len(queries), max_len), dtype=np.int64)                 # (B, L)
    profile = np.zeros((len(queries), len(bundle.profile_features)), dtype=np.int64)  # (B, P)
    unknown = np.zeros(len(queries), dtype=np.int64)
    unknown_profile = np.zeros(len(queries), dtype=np.int64)
    excluded = []
    for b, query in enumerate(queries):
        known = [row_of[i] for i in query.history if i in row_of]
        unknown[b] = len(query.history) - len(known)
        recent = known[-max_len:]
        if recent:
            history[b, max_len - len(recent):] = np.asarray(recent, dtype=np.int64) + 1
        dropped = [row_of[i] for i in query.exclude if i in row_of]
        if query.exclude_history:
            dropped += known
        excluded.append(np.unique(np.asarray(dropped, dtype=np.int64)))
        for p, feature in enumerate(bundle.profile_features):
            value = query.profile.get(feature)
            profile[b, p] = bundle.profile_vocab[feature].get(value, 0) if value is not None else 0
        unknown_profile[b] = sum(1 for feature in query.profile if feature not in bundle.profile_vocab)
    return EncodedBatch(history, profile, unknown, unknown_profile, excluded)


def run_tower(bundle: Bundle, history: np.ndarray, profile: np.ndarray, shapes: tuple[int, ...]):
    """history (B, L) int64, profile (B, P) int64 -> capsules (B, K, d) float32,
    active (B, K) bool, weights (B, K, L) float32, as numpy on the CPU.

    The tower runs in calls of the allowed ``shapes`` only (see :func:`call_sizes`; the last
    call padded with copies of row 0), so a lone request costs a 1-row call and a batch of 64
    one 64-row call. GEMM kernels may choose their blocking by shape; the shapes a bundle
    serves with are the ones its tower gives bit-identical rows on (state.tower_shapes), so a
    user's capsules never depend on its batch-mates.
    """
    n_rows = len(history)
    sizes = call_sizes(n_rows, shapes)
    pad = sum(sizes) - n_rows
    if pad:
        history = np.concatenate([history, np.repeat(history[:1], pad, axis=0)])
        profile = np.concatenate([profile, np.repeat(profile[:1], pad, axis=0)])
    parts, start = [], 0
    with torch.inference_mode():
        for size in sizes:
            outputs = bundle.tower(torch.from_numpy(history[start:start + size]).to(bundle.device),
                                   torch.from_numpy(profile[start:start + size]).to(bundle.device))
            parts.append([o.cpu() for o in outputs])
            start += size
    capsules, active, weights = (torch.cat(column)[:n_rows] for column in zip(*parts))
    return capsules.float().numpy(), active.numpy().astype(bool), weights.float().numpy()


def cap_interests(active: np.ndarray, max_interests: np.ndarray) -> np.ndarray:
    """Keep at most max_interests[b] active capsules per request, lowest capsule index first.
    active (B, K) bool, max_interests (B,) int64 -> (B, K) bool."""
    return active & (np.cumsum(active, axis=1) <= max_interests[:, None])


def top_routing_positions(weights: np.ndarray, real: np.ndarray, n: int) -> np.ndarray:
    """History positions carrying most routing weight per interest.

    weights (K, L) float32, real (L,) bool (not padding) -> (K, <= n) int64 positions, heaviest
    first, ties by the more recent position."""
    masked = np.where(real[None, :], weights, -np.inf)
    recency = np.broadcast_to(-np.arange(weights.shape[1]), weights.shape)
    return np.lexsort((recency, -masked), axis=-1)[:, : min(n, int(real.sum()))]


def explain_interests(bundle: Bundle, history: np.ndarray, weights: np.ndarray,
                      active: np.ndarray, n: int) -> list[dict]:
    """For one request: per used interest, the history items with most routing weight.
    history (L,) int64, weights (K, L), active (K,) bool."""
    real = history != PADDING
    positions = top_routing_positions(weights, real, n)                         # (K, <= n)
    return [{"interest": int(k),
             "items": [{"item_id": bundle.item_ids[history[p] - 1], "weight": float(weights[k, p])}
                       for p in positions[k]]}
            for k in np.flatnonzero(active)]


def cold_start_rows(popularity: np.ndarray, n: int, excluded: np.ndarray) -> np.ndarray:
    """The answer without history: the ``n`` most popular rows (popularity (n_items,) int64,
    most popular first) that are not in ``excluded`` -> (<= n,) int64."""
    head = popularity[: n + excluded.size]
    return head[~np.isin(head, excluded)][:n]


def _cold_start_answer(bundle: Bundle, query: RecallQuery, excluded: np.ndarray) -> dict:
    rows = cold_start_rows(bundle.popular_rows, query.top_n, excluded)
    items = [{"item_id": bundle.item_ids[r], "score": None, "interest": None} for r in rows.tolist()]
    return {"items": items, "interests": 0, "cold_start": True}


def _ranked_answer(bundle: Bundle, rows: np.ndarray, scores: np.ndarray, interest: np.ndarray,
                   n_used: int, top_n: int) -> dict:
    """rows/scores/interest (C',) of one request, best first, -1 padded."""
    keep = int(np.count_nonzero(rows[:top_n] >= 0))
    item_ids = bundle.item_ids
    items = [{"item_id": item_ids[r], "score": s, "interest": k}
             for r, s, k in zip(rows[:keep].tolist(), scores[:keep].tolist(), interest[:keep].tolist())]
    return {"items": items, "interests": n_used, "cold_start": False}


def recall_batch(bundle: Bundle, queries: list[RecallQuery],
                 options: RetrievalOptions) -> tuple[list[dict], StageTimes]:
    """Answer a batch; returns one response body (without took_ms) per query, and timings.
    The batch counts as in progress on the index throughout (a split flat index scans on
    helper threads only while no other batch is in progress)."""
    with in_batch(bundle.index):
        return _answer_batch(bundle, queries, options)


def _answer_batch(bundle: Bundle, queries: list[RecallQuery],
                  options: RetrievalOptions) -> tuple[list[dict], StageTimes]:
    times = StageTimes()
    start = time.perf_counter()
    batch = encode_queries(bundle, queries)
    warm = np.flatnonzero((batch.history != PADDING).any(axis=1))               # requests with history
    answers: list[dict | None] = [None] * len(queries)
    if len(warm):
        capsules, active, weights = run_tower(bundle, batch.history[warm], batch.profile[warm], options.tower_shapes)
        limits = np.array([min(queries[b].max_interests or bundle.n_interests, bundle.n_interests) for b in warm],
                          dtype=np.int64)   # any larger limit means all K (it may not fit int64)
        active = cap_interests(active, limits)
        tower_done = time.perf_counter()
        times.tower_s = tower_done - start
        excluded = [batch.excluded[b] for b in warm]
        top_n = np.array([queries[b].top_n for b in warm])
        diversity = np.array([queries[b].diversity for b in warm])
        scores, rows = retrieval.search_enough(bundle.index, bundle.item_vectors, capsules, active, excluded,
                                               top_n, options.overfetch, diversity)           # (B, K, k)
        search_done = time.perf_counter()
        times.search_s = search_done - tower_done
        categories = bundle.categories.of_row if bundle.categories is not None else None    # (n_items,)
        rows, scores, interest = retrieval.merge(scores, rows, excluded, int(top_n.max()), options.merge_policy,
                                                 diversity, categories)
        for i, b in enumerate(warm):
            answers[b] = _ranked_answer(bundle, rows[i], scores[i], interest[i],
                                        int(active[i].sum()), queries[b].top_n)
            if queries[b].explain:
                answers[b]["explain"] = explain_interests(bundle, batch.history[b], weights[i],
                                                          active[i], options.explain_items)
        times.merge_s = time.perf_counter() - search_done
    for b, query in enumerate(queries):
        if answers[b] is None:
            answers[b] = _cold_start_answer(bundle, query, batch.excluded[b])
        answers[b]["unknown_items"] = int(batch.unknown[b])
        answers[b]["unknown_profile_features"] = int(batch.unknown_profile[b])
        answers[b]["model_version"] = bundle.model_version
    return answers, times
