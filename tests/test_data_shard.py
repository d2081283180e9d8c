"""Data-parallel loading: every rank gets the single-process vocabularies and split, holds the
sequences of its share of the train users, and reads a Parquet log's time column only from
the row groups that hold its rows."""
from __future__ import annotations

import numpy as np
import pytest

from model.data import DataFormatError, build_dataset, load_dataset, load_interactions, training_samples
from model.data.readers import read_parquet_ids, read_parquet_times

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

WORLD = 3


def write_log(path, *, by_user: bool, row_group_size: int = 50):
    """60 users x 5-15 events over 40 items; rows grouped by user or shuffled in time."""
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{int(rng.integers(0, 40))}", float(rng.integers(0, 1000)))
            for u in range(60) for _ in range(int(rng.integers(5, 16)))]
    if not by_user:
        rows = [rows[i] for i in rng.permutation(len(rows))]
    users, items, times = zip(*rows)
    pq.write_table(pa.table({"user_id": users, "item_id": items, "timestamp": times}), path,
                   row_group_size=row_group_size)
    return path


@pytest.mark.parametrize("by_user", [True, False])
def test_ranks_share_vocab_and_split_and_hold_their_train_users(tmp_path, by_user):
    path = write_log(tmp_path / "log.parquet", by_user=by_user)
    whole = load_dataset(path, k_core=2, seed=1)
    assert whole.vocab_json() == build_dataset(load_interactions(path), k_core=2, seed=1).vocab_json()
    held = []
    for rank in range(WORLD):
        ds = load_dataset(path, k_core=2, seed=1, rank=rank, world=WORLD)
        assert ds.vocab_json() == whole.vocab_json() and ds.split_json() == whole.split_json()
        np.testing.assert_array_equal(ds.train_item_counts, whole.item_counts(whole.train_users))
        mine = ds.local_train_users.tolist()
        assert set(ds.sequences) == {*mine, *ds.val_users.tolist(), *ds.test_users.tolist()}
        for user, sequence in ds.sequences.items():
            np.testing.assert_array_equal(sequence, whole.sequences[user])
        assert set(training_samples(ds, 5)[2].tolist()) <= set(mine)
        held += mine
    assert sorted(held) == sorted(whole.train_users.tolist())  # every train user on exactly one rank


def test_a_rank_reads_times_only_from_row_groups_with_its_rows(tmp_path):
    path = write_log(tmp_path / "log.parquet", by_user=True, row_group_size=40)
    ids, name = read_parquet_ids(path)
    assert name == "timestamp" and np.isnan(ids.timestamps).all()  # the id pass reads no times
    wanted = ids.user_ids == "u0"
    times = read_parquet_times(path, name, wanted)
    full = pq.read_table(path).column("timestamp").to_numpy()
    np.testing.assert_array_equal(times[wanted], full[wanted])
    assert np.isnan(times).sum() >= len(times) - 2 * 40  # u0's rows span at most two groups of 40


def test_a_bad_time_in_a_rank_s_row_group_names_the_row(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user": ["a", "a", "a", "a"], "item": ["x", "y", "x", "y"],
                             "ts": ["1", "2", "3", "later"]}), path, row_group_size=2)
    with pytest.raises(DataFormatError, match=r"log\.parquet:4: timestamp 'later'"):
        load_dataset(path, k_core=1, rank=1, world=2)


def test_mind_train_under_torchrun_loads_only_its_rank_s_shard(tmp_path, monkeypatch):
    """The DDP path of `mind train` (torchrun sets RANK / WORLD_SIZE) loads `load_dataset(rank,
    world)`: each rank holds its train users' sequences only, the union is the single-process
    dataset, and every rank writes the same config.json["data"]."""
    import argparse

    from model.train import configure_parser, training_data

    path = write_log(tmp_path / "log.parquet", by_user=True)
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(["--data", str(path), "--out", str(tmp_path / "run"), "--k-core", "2"])
    whole, whole_config = training_data(args)
    assert whole.shard == (0, 1)
    union = {}
    for rank in range(WORLD):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(WORLD))
        ds, config = training_data(args)
        assert ds.shard == (rank, WORLD) and config == whole_config
        assert ds.split_json() == whole.split_json()
        np.testing.assert_array_equal(ds.train_item_counts, whole.train_item_counts)
        others = set(whole.train_users.tolist()) - set(ds.local_train_users.tolist())
        assert others and not others & set(ds.sequences)  # other ranks' train users are not held
        union.update(ds.sequences)
    assert union.keys() == whole.sequences.keys()
    for user, sequence in whole.sequences.items():
        np.testing.assert_array_equal(union[user], sequence)
