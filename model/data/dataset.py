"""From an interaction log to the model's view (spec section 3): vocabularies, the k-core
filter, sequences, side-feature matrices, the seeded user split, samples and held-out cases.

Indices are contiguous, ``0`` = padding / unknown. User and item vocabularies are in natural
id order (all-digit ids numerically, then text), so the split does not depend on the file's
row order. Histories are (rows, max_len) int64, left-padded with 0, most recent item last.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model.data.logs import Interactions

PAD = "<pad>"
# The protocol's held-out split: history = the first 80% of a sequence, targets = the rest.
HISTORY_FRACTION = 0.8
# Guards floor(n * fraction) against float error (0.29 * 100 = 28.999...).
FLOOR_TOLERANCE = 1e-9
INT64_DIGITS = 18  # every 18-digit decimal fits in int64


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
    def from_tokens(cls, tokens) -> "Vocab":  # distinct tokens in first-seen order
        return cls((PAD, *dict.fromkeys(str(t) for t in tokens)))

    def indices(self, tokens) -> np.ndarray:  # (n,) int64, 0 = unknown
        get = self._index.get
        return np.fromiter((get(t, 0) for t in tokens), dtype=np.int64, count=len(tokens))

    def __len__(self) -> int:
        return len(self.tokens)

    def to_json(self) -> list[str]:
        return list(self.tokens)


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
    train_item_counts: np.ndarray | None = None  # (n_items + 1,) int64 rows of train users per item
    shard: tuple[int, int] = (0, 1)  # (rank, world): sequences held are this rank's (see `load_dataset`)

    @property
    def n_items(self) -> int:
        return len(self.items) - 1

    @property
    def n_users(self) -> int:
        return len(self.users) - 1

    @property
    def local_train_users(self) -> np.ndarray:  # the train users whose sequences this rank holds
        return self.train_users[self.shard[0]::self.shard[1]]

    @property
    def profile_features(self) -> tuple[str, ...]:  # the column order of `profile_matrix`
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
        return {"users": self.n_users, "items": self.n_items,
                "interactions": int(sum(len(s) for s in self.sequences.values())),
                "train_users": len(self.train_users), "val_users": len(self.val_users),
                "test_users": len(self.test_users), "profile_features": list(self.profile_features),
                "item_side_features": list(self.item_side)}

    def vocab_json(self) -> dict:  # the run's vocab.json
        return {"items": self.items.to_json(), "users": self.users.to_json(),
                "item_side": {f: v.to_json() for f, v in self.item_side_vocabs.items()},
                "user_profile": {f: v.to_json() for f, v in self.user_profile_vocabs.items()}}

    def split_json(self) -> dict:  # the run's split.json, external user ids
        ids = self.users.tokens
        return {name: [ids[u] for u in part] for name, part in
                (("train", self.train_users), ("validation", self.val_users), ("test", self.test_users))}


def build_dataset(interactions: Interactions, *, k_core: int = 5, seed: int = 2020,
                  split=(0.8, 0.1, 0.1), rank: int = 0, world: int = 1) -> SequenceDataset:
    """Filter, index, order (by time, ties in file order) and split `interactions`; with
    ``world > 1`` only this rank's sequences are kept (see `load_dataset`)."""
    return assemble(interactions, index_log(interactions, k_core, seed, split), rank, world)


@dataclass(frozen=True)
class LogIndex:
    """What the whole log's id columns decide: k-core survivors, vocabularies and split."""

    keep: np.ndarray  # (N,) bool rows that survive the k-core filter
    users: Vocab
    user_index: np.ndarray  # (user keys,) int32 user code -> index, 0 = filtered out
    items: Vocab
    item_index: np.ndarray
    split: tuple[np.ndarray, np.ndarray, np.ndarray]  # train, validation, test user indices

    def rows_of(self, log: Interactions, rank: int, world: int, train_only: bool = False) -> np.ndarray:
        """(N,) bool: kept rows of ``train[rank::world]`` and, unless `train_only`, of val / test users."""
        if world <= 1 and not train_only:
            return self.keep
        mine = np.zeros(len(self.users), dtype=bool)
        mine[np.concatenate([self.split[0][rank::world], *(() if train_only else self.split[1:])])] = True
        return self.keep & mine[self.user_index[log.user_codes]]


def index_log(log: Interactions, k_core: int, seed: int, split) -> LogIndex:
    """k-core, natural-order vocabularies and the seeded split; reads no timestamps."""
    keep = k_core_mask(log.user_codes, log.item_codes, k_core)  # (N,) bool
    if not keep.any():
        raise ValueError(f"the {k_core}-core filter removed every one of the {len(log)} interactions")
    users, user_index = natural_vocab(log.user_keys, log.user_codes[keep])
    items, item_index = natural_vocab(log.item_keys, log.item_codes[keep])
    return LogIndex(keep, users, user_index, items, item_index, split_users(len(users) - 1, seed, split))


def assemble(log: Interactions, index: LogIndex, rank: int = 0, world: int = 1) -> SequenceDataset:
    """The dataset of `index` with the sequences of `index.rows_of(log, rank, world)`; only
    those rows' timestamps are read."""
    rows = index.rows_of(log, rank, world)
    user_idx = index.user_index[log.user_codes[rows]]  # (M,) int32
    order = stable_argsort(log.timestamps[rows])  # (M,) equal times keep file order
    order = order[stable_argsort(user_idx[order])]  # by user, then time, then file order
    user_idx, item_idx = user_idx[order], index.item_index[log.item_codes[rows][order]].astype(np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(user_idx)) + 1]  # (U,) first position of each user
    ends = np.r_[starts[1:], len(order)].tolist()
    sequences = {u: item_idx[a:b] for u, a, b in zip(user_idx[starts].tolist(), starts.tolist(), ends)}
    train_rows = index.rows_of(log, 0, 1, train_only=True)
    counts = np.bincount(index.item_index[log.item_codes[train_rows]], minlength=len(index.items)).astype(np.int64)
    item_side, item_side_vocabs = _item_side(index.items, log.item_features)
    user_profile, user_profile_vocabs = _user_profile(index.users, log.user_profiles)
    return SequenceDataset(index.items, index.users, sequences, item_side, item_side_vocabs, user_profile,
                           user_profile_vocabs, *index.split, train_item_counts=counts, shard=(rank, world))


def stable_argsort(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` of (M,) numbers. Whole numbers whose range leaves
    room for a row number are sorted as (key - min, row) packed in one int64 each: numpy's
    value sort is vectorised, its argsort is not (2M rows: 27 vs 240 ms)."""
    n, bits = len(keys), max(1, (len(keys) - 1).bit_length())
    if n == 0 or keys.dtype.kind not in "iuf":
        return np.argsort(keys, kind="stable")
    low, high = keys.min(), keys.max()
    whole = keys.dtype.kind != "f" or (np.isfinite(low) and np.isfinite(high) and bool(np.all(keys == np.floor(keys))))
    if not whole or float(high) - float(low) >= 2.0 ** min(53, 62 - bits):
        return np.argsort(keys, kind="stable")
    packed = ((keys - low).astype(np.int64) << bits) | np.arange(n, dtype=np.int64)
    packed.sort()
    return packed & ((1 << bits) - 1)


def k_core_mask(user_codes: np.ndarray, item_codes: np.ndarray, k: int) -> np.ndarray:
    """(N,) bool: the rows left once users and items with fewer than `k` rows are dropped
    until none is left (a repeated pair counts once per row)."""
    n = len(user_codes)
    if k <= 1 or n == 0:
        return np.ones(n, dtype=bool)
    users, items = (np.unique(c, return_inverse=True)[1].ravel() if c.dtype == object else c
                    for c in (user_codes, item_codes))
    alive = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)  # (M,) rows still in, shrinking
    while True:
        ok = (np.bincount(users)[users] >= k) & (np.bincount(items)[items] >= k)
        if ok.all():
            break
        alive, users, items = alive[ok], users[ok], items[ok]
    keep = np.zeros(n, dtype=bool)
    keep[alive] = True
    return keep


def natural_order(tokens: np.ndarray) -> np.ndarray:
    """Indices that sort `tokens` ((V,) object str) in natural id order: ASCII digit ids by
    (value, text), then the rest by text (UTF-8 byte order is code point order)."""
    text = pa.array(tokens, pa.string())
    if pc.any(pc.match_substring_regex(text, f"^[0-9]{{{INT64_DIGITS + 1},}}$")).as_py():  # past int64
        keys = [(0, int(t), t) if t.isascii() and t.isdigit() else (1, 0, t) for t in tokens]
        return np.array(sorted(range(len(tokens)), key=keys.__getitem__), dtype=np.int64)
    digits = pc.match_substring_regex(text, "^[0-9]+$")
    values = pc.cast(pc.if_else(digits, text, "0"), pa.int64()).to_numpy()
    text_rank = np.empty(len(tokens), dtype=np.int64)
    text_rank[pc.sort_indices(text).to_numpy()] = np.arange(len(tokens))
    return np.lexsort((text_rank, values, ~digits.to_numpy(zero_copy_only=False)))


def natural_vocab(keys: np.ndarray, codes: np.ndarray) -> tuple["Vocab", np.ndarray]:
    """The `Vocab` of the keys `codes` use, in natural order, and (K,) int32 code -> index (0: unused)."""
    present = np.flatnonzero(np.bincount(codes, minlength=len(keys)))  # (V,) used codes
    tokens = keys[present]
    order = natural_order(tokens)
    index = np.zeros(len(keys), dtype=np.int32)
    index[present[order]] = np.arange(1, len(order) + 1)
    return Vocab((PAD, *tokens[order].tolist())), index


def split_users(n_users: int, seed: int, split=(0.8, 0.1, 0.1)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """User indices ``1..n_users`` permuted by ``default_rng(seed)``: train = the first
    floor(f_train * n), validation = the next floor(f_val * n), test = the rest."""
    total = float(sum(split))
    perm = np.random.default_rng(seed).permutation(n_users).astype(np.int64) + 1
    n_train = int(split[0] / total * n_users + FLOOR_TOLERANCE)
    n_val = int(split[1] / total * n_users + FLOOR_TOLERANCE)
    return perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]


def _item_side(items: Vocab, features: dict[str, dict[str, list[str]]]) -> tuple[dict, dict]:
    """Per feature: a (n_items + 1, T) int64 token matrix (0-padded) and its vocabulary."""
    matrices, vocabs = {}, {}
    for name in _feature_names(items, features):
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
    columns, vocabs = {}, {}
    for name in _feature_names(users, profiles):
        values = [profiles.get(user, {}).get(name) for user in users.tokens[1:]]
        vocab = Vocab.from_tokens(v for v in values if v is not None)
        columns[name] = np.concatenate([[0], vocab.indices(values)]).astype(np.int64)
        vocabs[name] = vocab
    return columns, vocabs


def _feature_names(vocab: Vocab, table: dict[str, dict]) -> list[str]:
    """Feature names in order of first appearance over the vocabulary's ids."""
    return list(dict.fromkeys(f for key in vocab.tokens[1:] for f in table.get(key, {}))) if table else []


def training_samples(ds: SequenceDataset, max_len: int, rng: np.random.Generator | None = None,
                     max_per_user: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(histories (S, max_len), targets (S,), users (S,)) int64 of this rank's train users
    (`local_train_users`): for position t >= 1 of sequence s, history = s[t - max_len:t]
    left-padded, target = s[t]. `max_per_user` draws at most that many positions per user from
    `rng` (``default_rng(0)`` when None). Rows come user by user, positions ascending."""
    train = np.asarray(ds.local_train_users, dtype=np.int64)
    seqs = [ds.sequences[int(u)] for u in train]
    if not seqs:
        return np.zeros((0, max_len), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)  # (U,)
    flat = np.concatenate(seqs).astype(np.int64)  # (sum lengths,)
    starts = np.cumsum(lengths) - lengths  # (U,) offset of each sequence in flat
    n_pos = np.maximum(lengths - 1, 0)  # (U,) positions t >= 1
    owner = np.repeat(np.arange(len(train)), n_pos)  # (S,) which train user
    group_start = np.repeat(np.cumsum(n_pos) - n_pos, n_pos)  # (S,)
    t = np.arange(len(owner)) - group_start + 1  # (S,) position within the sequence
    if max_per_user is not None:
        rng = rng if rng is not None else np.random.default_rng(0)
        order = np.lexsort((rng.random(len(owner)), owner))  # shuffled within each user
        chosen = np.sort(order[(np.arange(len(owner)) - group_start) < max_per_user])
        owner, t = owner[chosen], t[chosen]
    pos = starts[owner] + t  # (S,) index of the target in flat
    window = pos[:, None] - max_len + np.arange(max_len)[None, :]  # (S, max_len)
    valid = window >= starts[owner][:, None]
    histories = np.where(valid, flat[np.maximum(window, 0)], 0)
    return histories.astype(np.int64), flat[pos], train[owner]


def holdout(ds: SequenceDataset, users, max_len: int,
            history_frac: float = HISTORY_FRACTION) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """(histories (U, max_len), targets [U x (n_u - h_u,)], users (U,)) int64 of `users`: a
    sequence splits at h = floor(n * history_frac) clamped to [1, n - 1]; history = the last
    `max_len` of s[:h] left-padded, targets = s[h:]. Users with < 2 items are left out."""
    kept, histories, targets = [], [], []
    for user in np.asarray(users, dtype=np.int64):
        seq = np.asarray(ds.sequences[int(user)], dtype=np.int64)
        if len(seq) < 2:
            continue
        h = min(max(1, int(len(seq) * history_frac + FLOOR_TOLERANCE)), len(seq) - 1)
        history = seq[:h][-max_len:]
        kept.append(user)
        histories.append(np.pad(history, (max_len - len(history), 0)))  # (max_len,) left-padded with 0
        targets.append(seq[h:])
    stacked = np.stack(histories) if histories else np.zeros((0, max_len), np.int64)
    return stacked, targets, np.array(kept, dtype=np.int64)
