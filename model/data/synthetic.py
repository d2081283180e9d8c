"""A deterministic planted multi-interest dataset: the product's embedded default data, and
the ground truth for tests that multi-interest retrieval beats a single vector.

Items are split into `n_clusters` disjoint clusters. Each user draws from 2-3 clusters with
random weights; events from different clusters are interleaved in time. Inside a cluster,
items follow a Zipf-like popularity. Each item has a ``genre`` side feature: clusters map
two-to-one onto genres (so genre is coarser than the cluster), some items get a wrong genre
and some a second one. Users get an ``age`` bucket tied to their main cluster half the time.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.data.interactions import Interactions, make_interactions

# Bump when the generator changes, so cached copies of the default dataset are regenerated.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of `generate`; the defaults are the embedded default dataset."""

    n_users: int = 2000
    n_items: int = 1000
    n_clusters: int = 10
    min_events: int = 30  # per user, uniform in [min_events, max_events]
    max_events: int = 90
    interests: tuple[int, ...] = (2, 3)  # clusters per user, drawn uniformly from these
    popularity_exponent: float = 1.2  # item weight ∝ 1 / rank**exponent inside a cluster
    genre_noise: float = 0.15  # share of items whose genre is not their cluster's
    second_genre: float = 0.3  # share of items with an extra random genre
    n_age_buckets: int = 5
    age_signal: float = 0.5  # share of users whose age bucket follows their main cluster
    seed: int = 0


@dataclass(frozen=True)
class PlantedTruth:
    item_cluster: dict[str, int]  # item id -> cluster
    user_clusters: dict[str, tuple[int, ...]]  # user id -> its clusters, main one first


def generate(spec: SyntheticSpec = SyntheticSpec()) -> Interactions:
    """The planted dataset of `spec` (same spec -> same data)."""
    return generate_with_truth(spec)[0]


def generate_with_truth(spec: SyntheticSpec = SyntheticSpec()) -> tuple[Interactions, PlantedTruth]:
    """The planted dataset and the clusters behind it."""
    rng = np.random.default_rng(spec.seed)
    cluster_of = rng.permutation(np.arange(spec.n_items) % spec.n_clusters)  # (n_items,)
    members = [np.flatnonzero(cluster_of == c) for c in range(spec.n_clusters)]
    item_ids = [f"i{i + 1}" for i in range(spec.n_items)]
    users, items, times = [], [], []
    profiles, user_clusters = {}, {}
    for u in range(spec.n_users):
        uid = f"u{u + 1}"
        clusters, events = _user_events(rng, spec, members)
        user_clusters[uid] = tuple(int(c) for c in clusters)
        users += [uid] * len(events)
        items += [item_ids[i] for i in events]
        times += list(u * 1e6 + np.sort(rng.uniform(0, 1e6, len(events))))
        age = clusters[0] % spec.n_age_buckets if rng.random() < spec.age_signal else rng.integers(spec.n_age_buckets)
        profiles[uid] = {"age": f"a{int(age)}"}
    features = {item_ids[i]: {"genre": _genres(rng, spec, int(cluster_of[i]))} for i in range(spec.n_items)}
    data = make_interactions(users, items, times, profiles, features)
    truth = PlantedTruth({item_ids[i]: int(cluster_of[i]) for i in range(spec.n_items)}, user_clusters)
    return data, truth


def _user_events(rng: np.random.Generator, spec: SyntheticSpec, members: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(clusters, item rows in time order) for one user: no item repeats; events of the
    clusters are interleaved at random."""
    n_interests = int(rng.choice(spec.interests))
    clusters = rng.choice(len(members), size=n_interests, replace=False)
    weights = np.sort(rng.dirichlet(np.ones(n_interests)))[::-1]  # main cluster first
    n_events = int(rng.integers(spec.min_events, spec.max_events + 1))
    counts = np.minimum(rng.multinomial(n_events, weights), [len(members[c]) for c in clusters])
    picked = []
    for cluster, count in zip(clusters, counts):
        pool = members[cluster]
        popularity = 1.0 / np.arange(1, len(pool) + 1) ** spec.popularity_exponent
        picked.append(rng.choice(pool, size=int(count), replace=False, p=popularity / popularity.sum()))
    events = np.concatenate(picked)
    return clusters, events[rng.permutation(len(events))]


def _genres(rng: np.random.Generator, spec: SyntheticSpec, cluster: int) -> list[str]:
    """An item's genre tokens: its cluster's genre (cluster // 2) unless noised, maybe plus one."""
    n_genres = max(1, spec.n_clusters // 2)
    genre = cluster // 2 if rng.random() >= spec.genre_noise else int(rng.integers(n_genres))
    genres = [f"g{genre}"]
    extra = int(rng.integers(n_genres))
    if rng.random() < spec.second_genre and extra != genre:
        genres.append(f"g{extra}")
    return genres


def write_recbole(interactions: Interactions, out_dir, name: str) -> Path:
    """Write `interactions` as RecBole atomic files ``name.inter`` (+ ``.user``, ``.item``
    when there are side features) into `out_dir`; returns the ``.inter`` path. Ids and
    tokens must not hold whitespace (the format's separators)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inter = out / f"{name}.inter"
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"{_token(u)}\t{_token(i)}\t{t!r}" for u, i, t in zip(interactions.user_ids, interactions.item_ids, interactions.timestamps.tolist())]
    inter.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if interactions.user_profiles:
        _write_side(out / f"{name}.user", "user_id", interactions.user_profiles, "token")
    if interactions.item_features:
        _write_side(out / f"{name}.item", "item_id", interactions.item_features, "token_seq")
    return inter


def _write_side(path: Path, id_name: str, table: dict, kind: str) -> None:
    """One side file; a row's missing feature is an empty cell."""
    columns = list(dict.fromkeys(c for row in table.values() for c in row))
    lines = ["\t".join([f"{id_name}:token"] + [f"{c}:{kind}" for c in columns])]
    for row_id, row in table.items():
        cells = [row.get(c, "") for c in columns]
        cells = [" ".join(_token(t) for t in c) if kind == "token_seq" else _token(c) for c in cells]
        lines.append("\t".join([_token(row_id)] + cells))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _token(value) -> str:
    text = str(value)
    if any(ch.isspace() for ch in text):
        raise ValueError(f"token {text!r} holds whitespace, which RecBole atomic files use as separators")
    return text
