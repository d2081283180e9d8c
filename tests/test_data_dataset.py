"""k-core, vocabularies, sequences, split, samples and hold-out on hand examples and ml-100k."""
from __future__ import annotations

import json

import numpy as np
import pytest

from model.data import Vocab, build_dataset, holdout, load_interactions, split_users, training_samples
from model.data import make_interactions
from model.data.dataset import k_core_mask, stable_argsort
from model.data import RunDataMismatch, data_config, rebuild_dataset
from model.data import write_recbole


def log(rows, profiles=None, features=None):
    """Interactions from (user, item, time) triples."""
    users, items, times = zip(*rows)
    return make_interactions(list(users), list(items), list(times), profiles, features)


def test_k_core_is_iterative_on_users_and_items():
    # k=2: d has 1 event -> dropped; then u3 has 1 -> dropped; u4 has 1 -> dropped,
    # so c has 1 -> dropped; u1 keeps a, b.
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u2", "a", 1), ("u2", "b", 2),
            ("u3", "a", 1), ("u3", "d", 2), ("u4", "c", 1)]
    users, items, _ = zip(*rows)
    mask = k_core_mask(np.array(users, dtype=object), np.array(items, dtype=object), 2)
    assert mask.tolist() == [True, True, False, True, True, False, False, False]
    assert k_core_mask(np.array(users, dtype=object), np.array(items, dtype=object), 1).all()
    ds = build_dataset(log(rows), k_core=2)
    assert ds.users.tokens == ("<pad>", "u1", "u2") and ds.items.tokens == ("<pad>", "a", "b")
    with pytest.raises(ValueError, match="3-core filter removed every one of the 8"):
        build_dataset(log(rows), k_core=3)


@pytest.mark.parametrize("keys", [
    np.array([3, 1, 2, 1, 3, 1], dtype=np.int32),                         # ties keep their order
    np.array([1.6e9, 1.5e9, 1.6e9, -0.0, 0.0, -0.0]),                     # whole floats; -0.0 ties 0.0
    np.array([2.5, 1.0, 2.5, 0.5, 1.0]),                                  # fractions: numpy's own sort
    np.array([1.0, np.nan, 0.0, np.nan, 1.0, np.inf]),                    # NaN and inf
    np.array([2**62, -(2**62), 0, 2**62], dtype=np.int64),                # a range past the packing
    np.array([7.0, 2.0**60, 7.0, 1.0]),                                   # whole, but past 2**53
    np.array([], dtype=np.float64),
    np.random.default_rng(0).integers(0, 50, 10_000).astype(np.float64),  # many ties
])
def test_stable_argsort_is_numpys_stable_argsort(keys):
    """The timestamp and user sorts of the sequences: the same permutation as numpy's stable
    argsort (ties in file order), whichever way it is computed."""
    assert stable_argsort(keys).tolist() == np.argsort(keys, kind="stable").tolist()


def test_vocab_index_and_json_round_trip():
    vocab = Vocab.from_tokens(["b", "a", "b"])
    assert vocab.tokens == ("<pad>", "b", "a") and len(vocab) == 3
    assert vocab.indices(["a", "zzz", "<pad>"]).tolist() == [2, 0, 0]
    assert vocab.indices(["a", "?", "b"]).tolist() == [2, 0, 1]
    assert Vocab(tuple(json.loads(json.dumps(vocab.to_json())))) == vocab
    with pytest.raises(ValueError, match="<pad>"):
        Vocab(("a",))


def test_sequences_are_chronological_with_file_order_ties_and_natural_id_order():
    rows = [("10", "x", 5.0), ("9", "y", 1.0), ("10", "y", 3.0), ("10", "z", 5.0), ("10", "w", 5.0), ("9", "x", 2.0)]
    ds = build_dataset(log(rows), k_core=1)
    assert ds.users.tokens == ("<pad>", "9", "10")  # numeric ids in numeric order
    items = ds.items.tokens
    assert [items[i] for i in ds.sequences[2]] == ["y", "x", "z", "w"]  # ties at 5.0 keep file order
    assert [items[i] for i in ds.sequences[1]] == ["y", "x"]
    assert all(s.dtype == np.int64 for s in ds.sequences.values())


def test_side_features_become_padded_index_matrices():
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 3)]
    ds = build_dataset(log(rows, profiles={"u2": {"age": "30"}, "u1": {"age": "20", "sex": "F"}},
                           features={"a": {"genre": ["G1", "G2"]}, "b": {"genre": ["G2"]}}), k_core=1)
    assert ds.item_side_vocabs["genre"].tokens == ("<pad>", "G1", "G2")
    assert ds.item_side["genre"].tolist() == [[0, 0], [1, 2], [2, 0]]
    assert ds.user_profile_vocabs["age"].tokens == ("<pad>", "20", "30")
    assert ds.user_profile["age"].tolist() == [0, 1, 2] and ds.user_profile["sex"].tolist() == [0, 1, 0]
    assert ds.profile_features == ("age", "sex")
    assert ds.profile_matrix(np.array([2, 1])).tolist() == [[2, 0], [1, 1]]
    assert ds.item_counts(np.array([1, 2])).tolist() == [0, 2, 1]


def test_split_is_seeded_disjoint_and_covers_every_user():
    train, val, test = split_users(943, 2020)
    assert (len(train), len(val), len(test)) == (754, 94, 95)
    everyone = np.concatenate([train, val, test])
    assert sorted(everyone.tolist()) == list(range(1, 944))
    again = split_users(943, 2020)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    assert not np.array_equal(split_users(943, 2021)[2], test)
    assert [len(p) for p in split_users(10, 0, (0.7, 0.2, 0.1))] == [7, 2, 1]  # no float-floor loss


def hand_dataset():
    """u1: items 1 2 3 4 5 (indices), u2: 2 3, u3: 1 — all in train."""
    rows = [("u1", "i1", 1), ("u1", "i2", 2), ("u1", "i3", 3), ("u1", "i4", 4), ("u1", "i5", 5),
            ("u2", "i2", 1), ("u2", "i3", 2), ("u3", "i1", 1)]
    ds = build_dataset(log(rows), k_core=1)
    ds.train_users = np.array([1, 2, 3], dtype=np.int64)
    return ds


def test_training_samples_exact_arrays():
    histories, targets, users = training_samples(hand_dataset(), max_len=3)
    assert histories.tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [0, 0, 2]]
    assert targets.tolist() == [2, 3, 4, 5, 3]
    assert users.tolist() == [1, 1, 1, 1, 2]  # u3 has a single item: no sample
    assert histories.dtype == targets.dtype == users.dtype == np.int64


def test_training_samples_per_user_cap_draws_real_positions():
    ds = hand_dataset()
    full = {tuple(h) + (t,) for h, t in zip(*training_samples(ds, max_len=3)[:2])}
    histories, targets, users = training_samples(ds, 3, rng=np.random.default_rng(1), max_per_user=2)
    assert users.tolist() == [1, 1, 2]
    assert {tuple(h) + (t,) for h, t in zip(histories, targets)} <= full
    draws = {tuple(training_samples(ds, 3, rng=np.random.default_rng(s), max_per_user=1)[1]) for s in range(20)}
    assert len(draws) > 1  # fresh positions per call
    same = [training_samples(ds, 3, rng=np.random.default_rng(7), max_per_user=1)[1] for _ in range(2)]
    np.testing.assert_array_equal(*same)


def test_holdout_exact_arrays_and_rounding():
    ds = hand_dataset()
    histories, targets, users = holdout(ds, np.array([1, 2, 3]), max_len=3)
    # u1: n=5 -> h=floor(4.0)=4: history [1,2,3,4] -> last 3; u2: n=2 -> h=floor(1.6)=1; u3: n=1 dropped
    assert histories.tolist() == [[2, 3, 4], [0, 0, 2]]
    assert [t.tolist() for t in targets] == [[5], [3]]
    assert users.tolist() == [1, 2]
    # h is clamped to n - 1 so that there is always a target
    assert [t.tolist() for t in holdout(ds, np.array([1]), 3, history_frac=1.0)[1]] == [[5]]
    assert holdout(ds, np.array([1]), 3, history_frac=0.0)[0].tolist() == [[0, 0, 1]]


def test_run_files_round_trip_and_detect_a_changed_log(tmp_path):
    rows = [(f"u{u}", f"i{(u * 3 + k) % 7}", float(k)) for u in range(12) for k in range(5)]
    source = write_recbole(log(rows), tmp_path, "tiny")
    config = json.loads(json.dumps(data_config(source, k_core=2, seed=3)))
    ds = rebuild_dataset(config)
    vocab, split = json.loads(json.dumps(ds.vocab_json())), json.loads(json.dumps(ds.split_json()))
    again = rebuild_dataset(config, vocab=vocab, split=split)
    assert all(np.array_equal(ds.sequences[u], again.sequences[u]) for u in ds.sequences)
    assert Vocab(tuple(vocab["items"])) == ds.items
    assert sorted(sum(split.values(), [])) == sorted(ds.users.tokens[1:])
    write_recbole(log(rows[:-5]), tmp_path, "tiny")  # a user disappears from the log
    with pytest.raises(RunDataMismatch, match="vocab.json\\['users'\\]"):
        rebuild_dataset(config, vocab=vocab, split=split)


def test_ml100k_counts_split_and_samples(ml100k_inter):
    ds = build_dataset(load_interactions(ml100k_inter), k_core=5, seed=2020)
    assert (ds.n_users, ds.n_items) == (943, 1349)
    assert sum(len(s) for s in ds.sequences.values()) == 99_287
    assert (len(ds.train_users), len(ds.val_users), len(ds.test_users)) == (754, 94, 95)
    assert ds.stats() == {"users": 943, "items": 1349, "interactions": 99_287, "train_users": 754,
                          "val_users": 94, "test_users": 95, "profile_features": ["age", "gender", "occupation"],
                          "item_side_features": ["class"]}
    assert ds.profile_features == ("age", "gender", "occupation")  # zip_code is too sparse
    assert list(ds.item_side) == ["class"]
    histories, targets, users = training_samples(ds, max_len=20)
    assert len(targets) == sum(len(ds.sequences[int(u)]) - 1 for u in ds.train_users)
    assert histories.shape == (len(targets), 20) and (histories[:, -1] > 0).all()
    held_histories, held_targets, held_users = holdout(ds, ds.test_users, 20)
    assert len(held_users) == 95 and all(len(t) >= 1 for t in held_targets)
