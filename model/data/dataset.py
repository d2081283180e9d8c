"""From an interaction log to the model's view: id vocabularies, k-core filter, chronological
sequences, side-feature matrices and the seeded user split (spec section 3).

Conventions (docs/architecture.md): item and user indices are contiguous, ``0`` = padding /
unknown. User and item vocabularies are in natural id order (all-digit ids numerically, then
the rest as strings), so the seeded split does not depend on the row order of the file;
side-feature vocabularies are in order of first appearance.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from model.data.interactions import Interactions
from model.data.kcore import k_core_mask
from model.data.samples import holdout, training_samples

__all__ = ["PAD", "Vocab", "SequenceDataset", "build_dataset", "split_users", "training_samples", "holdout"]

PAD = "<pad>"


@dataclass(frozen=True)
class Vocab:
    """External string <-> contiguous index; ``tokens[0] == "<pad>"`` and index 0 = unknown."""

    tokens: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not self.tokens or self.tokens[0] != PAD:
            raise ValueError(f"a Vocab's first token must be {PAD!r}")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens) if i})

    @classmethod
    def from_tokens(cls, tokens) -> "Vocab":
        """A vocabulary of the distinct `tokens` in first-seen order (after the pad)."""
        return cls((PAD, *dict.fromkeys(str(t) for t in tokens)))

    def index(self, token) -> int:
        """Index of `token`, 0 when unknown."""
        return self._index.get(token, 0)

    def indices(self, tokens) -> np.ndarray:
        """(n,) int64 indices of `tokens`, 0 where unknown."""
        get = self._index.get
        return np.fromiter((get(t, 0) for t in tokens), dtype=np.int64, count=len(tokens))

    def __len__(self) -> int:
        return len(self.tokens)

    def to_json(self) -> list[str]:
        return list(self.tokens)

    @classmethod
    def from_json(cls, tokens: list[str]) -> "Vocab":
        return cls(tuple(tokens))


@dataclass
class SequenceDataset:
    items: Vocab
    users: Vocab
    sequences: dict[int, np.ndarray]  # user index -> (n_u,) int64 chronological item indices
    item_side: dict[str, np.ndarray]  # feature -> (n_items + 1, T) int64, 0-padded
    item_side_vocabs: dict[str, Vocab]
    user_profile: dict[str, np.ndarray]  # feature -> (n_users + 1,) int64, 0 = unknown
    user_profile_vocabs: dict[str, Vocab]
    train_users: np.ndarray  # (U_train,) int64 user indices
    val_users: np.ndarray
    test_users: np.ndarray

    @property
    def n_items(self) -> int:
        return len(self.items) - 1

    @property
    def n_users(self) -> int:
        return len(self.users) - 1

    @property
    def profile_features(self) -> tuple[str, ...]:
        """Profile feature names in the fixed order of `profile_matrix`'s columns."""
        return tuple(self.user_profile)

    def profile_matrix(self, users: np.ndarray) -> np.ndarray:
        """(U, P) int64 profile value indices of user indices `users`."""
        users = np.asarray(users, dtype=np.int64)
        cols = [self.user_profile[f][users] for f in self.profile_features]
        return np.stack(cols, axis=1) if cols else np.zeros((len(users), 0), dtype=np.int64)

    def item_counts(self, users: np.ndarray) -> np.ndarray:
        """(n_items + 1,) int64 interaction counts of `users` per item index (slot 0 = 0)."""
        seqs = [self.sequences[int(u)] for u in users]
        flat = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
        return np.bincount(flat, minlength=self.n_items + 1).astype(np.int64)

    def stats(self) -> dict:
        """Sizes for logs and reports: users, items, interactions, split sizes, feature names."""
        return {"users": self.n_users, "items": self.n_items,
                "interactions": int(sum(len(s) for s in self.sequences.values())),
                "train_users": len(self.train_users), "val_users": len(self.val_users),
                "test_users": len(self.test_users), "profile_features": list(self.profile_features),
                "item_side_features": list(self.item_side)}

    def vocab_json(self) -> dict:
        """The run directory's ``vocab.json`` content."""
        return {"items": self.items.to_json(), "users": self.users.to_json(),
                "item_side": {f: v.to_json() for f, v in self.item_side_vocabs.items()},
                "user_profile": {f: v.to_json() for f, v in self.user_profile_vocabs.items()}}

    def split_json(self) -> dict:
        """The run directory's ``split.json`` content (external user ids)."""
        ids = self.users.tokens
        return {name: [ids[u] for u in part] for name, part in
                (("train", self.train_users), ("validation", self.val_users), ("test", self.test_users))}


def build_dataset(interactions: Interactions, *, k_core: int = 5, seed: int = 2020,
                  split=(0.8, 0.1, 0.1)) -> SequenceDataset:
    """Filter, index, order and split `interactions` (see the module docstring).

    Sequences are sorted by timestamp, ties kept in file order. Raises ValueError when the
    k-core filter leaves nothing.
    """
    users_ext, items_ext = interactions.user_ids, interactions.item_ids
    keep = k_core_mask(users_ext, items_ext, k_core)
    if not keep.any():
        raise ValueError(f"the {k_core}-core filter removed every one of the {len(keep)} interactions")
    users_ext, items_ext, times = users_ext[keep], items_ext[keep], interactions.timestamps[keep]
    users = Vocab.from_tokens(sorted(set(users_ext), key=natural_key))
    items = Vocab.from_tokens(sorted(set(items_ext), key=natural_key))
    user_idx, item_idx = users.indices(users_ext), items.indices(items_ext)
    order = np.lexsort((times, user_idx))  # stable: equal times keep file order
    bounds = np.flatnonzero(np.diff(user_idx[order])) + 1
    sequences = {int(user_idx[chunk[0]]): item_idx[chunk] for chunk in np.split(order, bounds)}
    item_side, item_side_vocabs = _item_side(items, interactions.item_features)
    user_profile, user_profile_vocabs = _user_profile(users, interactions.user_profiles)
    train, val, test = split_users(len(users) - 1, seed, split)
    return SequenceDataset(items, users, sequences, item_side, item_side_vocabs,
                           user_profile, user_profile_vocabs, train, val, test)


def natural_key(token: str) -> tuple:
    """Sort key: all-digit ids by value (ties by text), before any other id, by text."""
    return (0, int(token), token) if token.isascii() and token.isdigit() else (1, 0, token)


def split_users(n_users: int, seed: int, split=(0.8, 0.1, 0.1)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """User indices ``1..n_users`` permuted by ``default_rng(seed)``: train = the first
    floor(f_train * n), validation = the next floor(f_val * n), test = the rest."""
    total = float(sum(split))
    perm = np.random.default_rng(seed).permutation(n_users).astype(np.int64) + 1
    n_train = int(split[0] / total * n_users + 1e-9)
    n_val = int(split[1] / total * n_users + 1e-9)
    return perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]


def _item_side(items: Vocab, features: dict[str, dict[str, list[str]]]) -> tuple[dict, dict]:
    """Per feature: a (n_items + 1, T) int64 token matrix (0-padded) and its vocabulary."""
    names = list(dict.fromkeys(f for item in items.tokens[1:] for f in features.get(item, {})))
    matrices, vocabs = {}, {}
    for name in names:
        token_lists = [features.get(item, {}).get(name, []) for item in items.tokens[1:]]
        vocab = Vocab.from_tokens(t for toks in token_lists for t in toks)
        width = max(1, max(len(toks) for toks in token_lists))
        matrix = np.zeros((len(items), width), dtype=np.int64)
        for row, toks in enumerate(token_lists, start=1):
            matrix[row, :len(toks)] = vocab.indices(toks)
        matrices[name], vocabs[name] = matrix, vocab
    return matrices, vocabs


def _user_profile(users: Vocab, profiles: dict[str, dict[str, str]]) -> tuple[dict, dict]:
    """Per feature: a (n_users + 1,) int64 value index (0 = unknown) and its vocabulary."""
    names = list(dict.fromkeys(f for user in users.tokens[1:] for f in profiles.get(user, {})))
    columns, vocabs = {}, {}
    for name in names:
        values = [profiles.get(user, {}).get(name) for user in users.tokens[1:]]
        vocab = Vocab.from_tokens(v for v in values if v is not None)
        columns[name] = np.concatenate([[0], vocab.indices(values)]).astype(np.int64)
        vocabs[name] = vocab
    return columns, vocabs
