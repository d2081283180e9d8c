"""The columnar data path gives the same users, items, sequences and split as the row-by-row
Python path it replaced.

Two kinds of evidence:
- digests (sha256 of the loaded log, and of vocab + split + sequences + side matrices) that the
  old Python path computed on the shared datasets, the synthetic default and the committed
  fixtures, before it was removed (commit "freeze the data path's output"); the new path must
  reproduce them bit for bit;
- a plain-Python oracle of the documented rules (iterative k-core, natural id order, stable
  time order, seeded 8:1:1 split), compared with the new path on random small logs that have
  ties, leading zeros, mixed numeric / text ids and padded cells.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from model.data import build_dataset, load_interactions
from model.data import SyntheticSpec, generate, write_recbole
from tests.conftest import SHARED_DATA

FIXTURES = Path(__file__).parent / "fixtures" / "data"

# (dataset, k_core) -> (log digest, dataset digest), computed by the old path at seed 2020.
SHARED = {
    ("ml-100k/ml-100k.inter", 5): ("c98e5cf782c8a58e5936cd1b487a6c0bde0e9f4a17c97c9062c4b4eb646927e2",
                                   "b8461be11972019d5bf5e6cd64374905dbd8b2e733bc8a3dae78bdcee17d5d70"),
    ("ml-100k/ml-100k.inter", 10): ("c98e5cf782c8a58e5936cd1b487a6c0bde0e9f4a17c97c9062c4b4eb646927e2",
                                    "cb23229618d98c93ec2794b2c35cc40d545bb299eccdc9d0df9289fa97dfd786"),
    ("ml-100k/ml-100k.inter", 20): ("c98e5cf782c8a58e5936cd1b487a6c0bde0e9f4a17c97c9062c4b4eb646927e2",
                                    "84b5ec928fcc9458330180d32c6a5facc0e0041460ed6a001466e09d4e90e956"),
    ("amazon-toys/toys.csv", 5): ("d3654aa62b73e11fabc56513b57f6caac09633550d465cdfbea2e934c87df560",
                                  "8efdc3b5248dec27b74910497bec968f06f507ef945863fd3bf3a84d48570c81"),
    ("amazon-toys/toys.csv", 10): ("d3654aa62b73e11fabc56513b57f6caac09633550d465cdfbea2e934c87df560",
                                   "654cb4bdc2ee5fdc54c9858aa49d515de6e766b1c7581b6894cb04ff2a004732"),
}
SYNTHETIC = ("4cb2f9e516d573b3e0703243dbf86855830b352e6030c6983b3fba9ec2b14479",
             "f132f2bf2e5b1d2aadac6c94e8f7bdfacea50cea801d8c5a3a8e7b43a57d965f")
# committed fixtures, k_core=1, seed 7
FIXTURE_DIGESTS = {
    "ml-100k/u.data": ("d5337c336cb66ba1ddaf2a3720f6f397bb617ac963c38336e8f11277d3ff1eb6",
                       "26fd43818f1cc7c4d2b724d91ffaac2f74be62976adf4611dd808b443b9ca19b"),
    "ml-1m/ratings.dat": ("95138eb6ba5f7f0f8da8424b232772c30338e7f4bf1cf799e247fd635bd84cc8",
                          "e141b994566058d55b2815e663b2402de84b4aee0549b65dccc639f5160fcc03"),
    "ml-latest/ratings.csv": ("f486341ad0cb4b5e314321b96ca48904d18dc9394af6e81324c03a4ae8bf6e04",
                              "f5f8eb1ad70c94265d397f02c6e0ed59181f772fa323278d494b8bae3b96c577"),
    "recbole/tiny.inter": ("9627a796af25f242afe20b2d9cb59e2c38bb7a6d897bdaec4815957afc67f77d",
                           "9cab99b54372024503b3379489f1161292e6945aad8a5bcdc94e692fe8ff4d59"),
    "generic/events.tsv": ("6cdd28e78442b7d4d51dbd752a20e5515cda50b51d9a16192ac5b46afedf1969",
                           "383588d4bffa3244b573dca88f907940d3fc28191ad2a0c30d6f117439b098e6"),
}


def log_digest(x) -> str:
    """sha256 of the loaded log: id and time columns in file order, side tables."""
    blob = [list(x.user_ids), list(x.item_ids), x.timestamps.tolist(), x.user_profiles, x.item_features]
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def dataset_digest(ds) -> str:
    """sha256 of vocab.json, split.json, every sequence and the side-feature matrices."""
    blob = [ds.vocab_json(), ds.split_json(), {str(u): s.tolist() for u, s in sorted(ds.sequences.items())},
            {f: m.tolist() for f, m in ds.item_side.items()}, {f: a.tolist() for f, a in ds.user_profile.items()}]
    return hashlib.sha256(json.dumps(blob).encode()).hexdigest()


@pytest.mark.parametrize("name,k_core", list(SHARED), ids=[f"{n}-k{k}" for n, k in SHARED])
def test_shared_datasets_match_the_old_path(name, k_core):
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"real-data test: {path} not found (set MIND_SHARED_DATA to the shared data folder)")
    x = load_interactions(path)
    assert (log_digest(x), dataset_digest(build_dataset(x, k_core=k_core, seed=2020))) == SHARED[(name, k_core)]


def test_synthetic_default_matches_the_old_path(tmp_path):
    data = generate(SyntheticSpec())
    x = load_interactions(write_recbole(data, tmp_path, "synthetic"))
    assert (log_digest(x), dataset_digest(build_dataset(x, k_core=5, seed=2020))) == SYNTHETIC
    assert dataset_digest(build_dataset(data, k_core=5, seed=2020)) == SYNTHETIC[1]  # in memory, no file


@pytest.mark.parametrize("name", list(FIXTURE_DIGESTS))
def test_fixtures_match_the_old_path(name):
    x = load_interactions(FIXTURES / name)
    assert (log_digest(x), dataset_digest(build_dataset(x, k_core=1, seed=7))) == FIXTURE_DIGESTS[name]


# ---- a plain-Python oracle of the documented rules (docs/data.md, "From log to samples") ----

def natural(token: str) -> tuple:
    return (0, int(token), token) if token.isascii() and token.isdigit() else (1, 0, token)


def oracle(rows: list[tuple[str, str, float]], k: int, seed: int):
    """(users, items, {user: [items in time order]}, (train, val, test) user ids)."""
    keep = list(rows)
    while True:
        users = {u: sum(r[0] == u for r in keep) for u, _, _ in keep}
        items = {i: sum(r[1] == i for r in keep) for _, i, _ in keep}
        still = [r for r in keep if users[r[0]] >= k and items[r[1]] >= k]
        if len(still) == len(keep):
            break
        keep = still
    user_vocab = sorted({r[0] for r in keep}, key=natural)
    item_vocab = sorted({r[1] for r in keep}, key=natural)
    sequences = {u: [i for _, i, _ in sorted((r for r in keep if r[0] == u), key=lambda r: r[2])] for u in user_vocab}
    n = len(user_vocab)
    perm = np.random.default_rng(seed).permutation(n)
    n_train, n_val = int(0.8 * n + 1e-9), int(0.1 * n + 1e-9)
    parts = [perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]]
    return user_vocab, item_vocab, sequences, [[user_vocab[p] for p in part] for part in parts]


def random_rows(rng: np.random.Generator, n: int) -> list[tuple[str, str, float]]:
    """Ids mixing numbers, leading zeros and text; few distinct times, so many ties."""
    user_pool = ["7", "007", "12", "3", "a", "B", "u10", "10", "0", "x y"]
    item_pool = ["1", "01", "2", "20", "i", "j", "k9", "99", "é", "100000000000000000000"]
    return [(str(rng.choice(user_pool)), str(rng.choice(item_pool)), float(rng.integers(0, 4))) for _ in range(n)]


@pytest.mark.parametrize("seed", range(6))
def test_new_path_equals_the_oracle_on_random_logs(tmp_path, seed):
    rng = np.random.default_rng(seed)
    rows = random_rows(rng, int(rng.integers(30, 200)))
    k = int(rng.integers(1, 5))
    path = tmp_path / "log.csv"
    padded = [(f" {u}" if j % 3 == 0 else u, f"{i} " if j % 5 == 0 else i, t) for j, (u, i, t) in enumerate(rows)]
    path.write_text("user,item,time\n" + "".join(f"{u},{i},{t:g}\n" for u, i, t in padded), encoding="utf-8")
    x = load_interactions(path)
    assert list(zip(x.user_ids, x.item_ids, x.timestamps.tolist())) == rows  # ids are stripped
    users, items, sequences, split = oracle(rows, k, seed)
    ds = build_dataset(x, k_core=k, seed=seed)
    assert list(ds.users.tokens[1:]) == users and list(ds.items.tokens[1:]) == items
    assert {ds.users.tokens[u]: [ds.items.tokens[i] for i in s] for u, s in ds.sequences.items()} == sequences
    assert [ds.split_json()[p] for p in ("train", "validation", "test")] == split
