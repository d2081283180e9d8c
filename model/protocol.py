"""The evaluation protocol (mind-spec section 3) over arrays: rank every method, score them.

A run (eager tower) and a bundle (TorchScript tower + its FAISS index) both become a
``MindRetriever`` around a *capsule function*; everything reaches the metric code in the
dataset's row space (``row = item index - 1``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import faiss
import numpy as np
import torch

from model.baselines import item_counts, item_cf_topn, popularity_topn
from model.metrics import capsule_cosine, evaluate_rankings, first_active, mean_jaccard, recall_curve
from model.index import flat_index
from model.retrieval import multi_interest_topn

# (histories (U, L) int64 item indices, profiles (U, P) int64) -> (capsules (U, K, d) float32,
# active (U, K) bool), in the capsule source's own index space (see MindRetriever).
CapsuleFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

CUTOFFS = (20, 50)          # the protocol's N
CURVE_MAX_N = 100           # Recall@N plotted for N = 1..CURVE_MAX_N
USERS_PER_TOWER_CALL = 1024
SETTINGS = {"history_included": False, "history_excluded": True}  # name -> exclude history?
OVERLAP_N = 50              # the one-interest overlap compares top-OVERLAP_N lists


@dataclass(frozen=True)
class HeldOut:
    """Evaluated users under the protocol, in dataset index space."""
    histories: np.ndarray                  # (U, max_len) int64 the first 80%, left-padded
    profile_values: dict[str, np.ndarray]  # feature -> (U,) str external values, "" = unknown
    target_rows: list[np.ndarray]          # per user the rows of the remaining 20%
    train_sequences: list[np.ndarray]      # TRAIN users' item-index sequences (the baselines')
    n_items: int

    def history_rows(self) -> list[np.ndarray]:
        """Per user the rows of the history window (what 'exclude history' removes)."""
        return [np.unique(h[h > 0]) - 1 for h in self.histories]


@dataclass(frozen=True)
class MindRetriever:
    """A capsule source plus the item vectors its capsules search. ``capsule_fn`` receives
    histories in the source's index space and profiles encoded with ``profile_vocab``."""
    capsule_fn: CapsuleFn
    item_vectors: np.ndarray                        # (n_index, d) float32, row r = source index r + 1
    index_of_dataset_row: np.ndarray | None = None  # (n_items,) -1 = absent; None: same numbering
    dataset_of_index_row: np.ndarray | None = None  # (n_index,) the way back
    profile_features: tuple[str, ...] = ()
    profile_vocab: dict[str, dict[str, int]] = field(default_factory=dict)  # feature -> value -> index
    index: faiss.Index | None = None                # ids = rows; None: a flat one per ranking

    def encode_profiles(self, profile_values: dict[str, np.ndarray], n_users: int) -> np.ndarray:
        """(U, P) int64 tower input; a feature absent from the data is all unknown (0)."""
        columns = [np.array([self.profile_vocab.get(f, {}).get(v, 0) for v in profile_values[f]], dtype=np.int64)
                   if f in profile_values else np.zeros(n_users, dtype=np.int64)
                   for f in self.profile_features]
        return np.stack(columns, axis=1) if columns else np.zeros((n_users, 0), dtype=np.int64)


def tower_capsule_fn(tower: torch.nn.Module, max_len: int, device: torch.device | str = "cpu") -> CapsuleFn:
    """Capsule function over a user tower (eager or TorchScript); wider histories keep their
    most recent ``max_len`` columns."""
    def capsules_of(histories: np.ndarray, profiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        histories = histories[:, -max_len:]                                  # (U, <= max_len)
        caps, actives = [], []
        with torch.no_grad():
            for start in range(0, len(histories), USERS_PER_TOWER_CALL):
                stop = start + USERS_PER_TOWER_CALL
                h = torch.as_tensor(histories[start:stop], dtype=torch.int64, device=device)  # (B, L)
                p = torch.as_tensor(profiles[start:stop], dtype=torch.int64, device=device)   # (B, P)
                capsules, active = tower(h, p)[:2]                                             # (B, K, d), (B, K)
                caps.append(capsules.float().cpu().numpy())
                actives.append(active.bool().cpu().numpy())
        return np.concatenate(caps), np.concatenate(actives)
    return capsules_of


def interest_diversity(capsules: np.ndarray, active: np.ndarray, item_vectors: np.ndarray,
                       exclude: list[np.ndarray] | None = None, n: int = OVERLAP_N,
                       index: faiss.Index | None = None) -> dict[str, float | None]:
    """Do a model's interests differ? (mind-spec section 5.) capsules (U, K, d), active (U, K),
    item_vectors (n_items, d), exclude as in `multi_interest_topn`. Returns ``capsule_cosine``
    (None for K=1) and ``one_interest_overlap@n``: mean Jaccard of the top-n of the first
    active interest alone (``max_interests: 1``) and the merged top-n (1.0: the others add nothing).
    """
    index = flat_index(item_vectors) if index is None else index
    merged = multi_interest_topn(capsules, active, item_vectors, n, exclude, index=index)                 # (U, n)
    alone = multi_interest_topn(capsules, first_active(active), item_vectors, n, exclude, index=index)    # (U, n)
    return {"capsule_cosine": capsule_cosine(capsules, active),
            f"one_interest_overlap@{n}": mean_jaccard(alone, merged)}


def _rows_to_space(rows: np.ndarray, mapping: np.ndarray | None) -> np.ndarray:
    """Rows -> rows of the other numbering; rows ``-1`` or absent there are dropped/kept -1."""
    if mapping is None:
        return rows
    return np.where(rows >= 0, mapping[np.maximum(rows, 0)], -1)


def source_capsules(retriever: MindRetriever, held: HeldOut) -> tuple[np.ndarray, np.ndarray]:
    """(U, K, d) capsules and (U, K) active mask of the held-out users from ``retriever``."""
    # (U, L) in the source's indices (index = row + 1): pad and unknown items (row -1) land on 0
    histories = _rows_to_space(held.histories - 1, retriever.index_of_dataset_row) + 1
    profiles = retriever.encode_profiles(held.profile_values, len(histories))         # (U, P)
    return retriever.capsule_fn(histories, profiles)


def _excluded_rows(retriever: MindRetriever, held: HeldOut, exclude_history: bool) -> list[np.ndarray] | None:
    """Per user the history rows in the source's numbering (absent ones dropped), or None."""
    if not exclude_history:
        return None
    mapped = (_rows_to_space(r, retriever.index_of_dataset_row) for r in held.history_rows())
    return [r[r >= 0] for r in mapped]


def mind_topn(retriever: MindRetriever, held: HeldOut, n: int, exclude_history: bool) -> np.ndarray:
    """(U, n) dataset rows retrieved by a MIND capsule source (full catalogue, merged lists)."""
    capsules, active = source_capsules(retriever, held)                                # (U, K, d), (U, K)
    ranked = multi_interest_topn(capsules, active, retriever.item_vectors, n,
                                 _excluded_rows(retriever, held, exclude_history),
                                 index=retriever.index)                              # (U, n) source rows
    return _rows_to_space(ranked, retriever.dataset_of_index_row)


def diversity_all(held: HeldOut, retrievers: dict[str, MindRetriever]) -> dict[str, dict[str, dict]]:
    """setting -> MIND source -> `interest_diversity` (capsule cosine, one-interest overlap)."""
    result: dict[str, dict[str, dict]] = {setting: {} for setting in SETTINGS}
    for name, retriever in retrievers.items():
        capsules, active = source_capsules(retriever, held)
        for setting, exclude_history in SETTINGS.items():
            result[setting][name] = interest_diversity(capsules, active, retriever.item_vectors,
                                                       _excluded_rows(retriever, held, exclude_history),
                                                       index=retriever.index)
    return result


def rank_all(held: HeldOut, retrievers: dict[str, MindRetriever], n: int = CURVE_MAX_N
             ) -> dict[str, dict[str, np.ndarray]]:
    """setting -> method -> (U, n) ranked dataset rows, for MIND sources and both baselines."""
    counts = item_counts(held.train_sequences, held.n_items)
    rankings: dict[str, dict[str, np.ndarray]] = {}
    for setting, exclude_history in SETTINGS.items():
        exclude = held.history_rows() if exclude_history else None
        per_method = {name: mind_topn(r, held, n, exclude_history) for name, r in retrievers.items()}
        per_method["item-CF"] = item_cf_topn(held.train_sequences, held.histories, held.n_items, n, exclude)
        per_method["popularity"] = popularity_topn(counts, len(held.histories), n, exclude)
        rankings[setting] = per_method
    return rankings


def score_all(rankings: dict[str, dict[str, np.ndarray]], target_rows: list[np.ndarray]
              ) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, dict[str, list[float]]]]:
    """(setting -> method -> metrics @CUTOFFS, setting -> method -> Recall@1..CURVE_MAX_N)."""
    metrics = {s: {m: evaluate_rankings(r, target_rows, CUTOFFS) for m, r in per.items()}
               for s, per in rankings.items()}
    curves = {s: {m: recall_curve(r, target_rows, CURVE_MAX_N).tolist() for m, r in per.items()}
              for s, per in rankings.items()}
    return metrics, curves
