"""The planted multi-interest generator and the data-source resolution around it."""
from __future__ import annotations

import io
import zipfile
from collections import Counter

import numpy as np
import pytest

from model.data import build_dataset, load_interactions
from model.data import DownloadError, fetch_movielens
from model.data import resolve_data_source
from model.data import SyntheticSpec, generate, generate_with_truth, write_recbole

SMALL = SyntheticSpec(n_users=120, n_items=400, n_clusters=6, min_events=20, max_events=40, seed=5)


def test_generation_is_deterministic_per_seed():
    a, b = generate(SMALL), generate(SMALL)
    assert list(a.user_ids) == list(b.user_ids) and list(a.item_ids) == list(b.item_ids)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    assert a.item_features == b.item_features and a.user_profiles == b.user_profiles
    other = generate(SyntheticSpec(**{**SMALL.__dict__, "seed": 6}))
    assert list(other.item_ids) != list(a.item_ids)


def test_users_draw_interleaved_from_two_or_three_disjoint_clusters():
    data, truth = generate_with_truth(SMALL)
    assert set(truth.item_cluster.values()) == set(range(SMALL.n_clusters))
    assert len(truth.item_cluster) == SMALL.n_items  # every item in exactly one cluster
    switches = 0
    for user, clusters in truth.user_clusters.items():
        rows = data.user_ids == user
        items, times = data.item_ids[rows], data.timestamps[rows]
        assert len(clusters) in (2, 3) and len(set(clusters)) == len(clusters)
        assert {truth.item_cluster[i] for i in items} <= set(clusters)
        assert len(set(items)) == len(items) and (np.diff(times) > 0).all()
        sequence = [truth.item_cluster[i] for i in items]
        switches += sum(x != y for x, y in zip(sequence, sequence[1:]))
    assert switches > 5 * len(truth.user_clusters)  # interests are interleaved, not in blocks


def test_genre_tracks_the_cluster_without_equalling_it_and_popularity_is_skewed():
    data, truth = generate_with_truth(SMALL)
    primary = Counter(data.item_features[i]["genre"][0] == f"g{c // 2}" for i, c in truth.item_cluster.items())
    assert 0.7 * SMALL.n_items < primary[True] < SMALL.n_items
    counts = sorted(Counter(data.item_ids).values(), reverse=True)
    assert counts[0] > 4 * np.median(counts)
    assert {p["age"] for p in data.user_profiles.values()} <= {f"a{k}" for k in range(SMALL.n_age_buckets)}


def test_recbole_files_round_trip_through_the_loader(tmp_path):
    data = generate(SMALL)
    path = write_recbole(data, tmp_path, "planted")
    loaded = load_interactions(path)
    assert list(loaded.user_ids) == list(data.user_ids) and list(loaded.item_ids) == list(data.item_ids)
    np.testing.assert_array_equal(loaded.timestamps, data.timestamps)
    assert loaded.item_features == data.item_features and loaded.user_profiles == data.user_profiles
    ds = build_dataset(loaded, k_core=1)
    assert ds.n_items == len(set(data.item_ids)) and list(ds.item_side) == ["genre"] and ds.profile_features == ("age",)


def test_default_size_fits_the_product_default():
    spec = SyntheticSpec()
    assert (spec.n_users, spec.n_items) == (2000, 1000)
    assert (spec.min_events + spec.max_events) / 2 == 60


def test_resolve_paths_names_and_synthetic_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIND_DATA_DIR", str(tmp_path))
    assert resolve_data_source(tmp_path) == tmp_path
    with pytest.raises(FileNotFoundError, match="not a dataset name"):
        resolve_data_source(tmp_path / "missing.csv")
    first = resolve_data_source("synthetic")
    assert first.parent.parent == tmp_path and first.name == "synthetic.inter"
    stamp = first.stat().st_mtime_ns
    assert resolve_data_source("synthetic") == first and first.stat().st_mtime_ns == stamp  # generated once
    local = tmp_path / "ml-100k" / "u.data"
    local.parent.mkdir()
    local.write_text("1\t2\t3\t4\n")
    assert resolve_data_source("ml-100k") == local  # a local copy wins over the shared one and the network


def test_fetch_extracts_an_archive_and_names_the_url_when_it_fails(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t10\t5\t100\n2\t10\t3\t200\n")
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "ml-100k.zip").write_bytes(buffer.getvalue())
    got = fetch_movielens("ml-100k", tmp_path / "data", base_url=(tmp_path / "mirror").as_uri() + "/")
    assert got == tmp_path / "data" / "ml-100k" / "u.data" and len(load_interactions(got)) == 2
    with pytest.raises(DownloadError, match=r"could not download http://127\.0\.0\.1:9/ml-1m\.zip"):
        fetch_movielens("ml-1m", tmp_path / "data", base_url="http://127.0.0.1:9/")
    (tmp_path / "mirror" / "ml-1m.zip").write_text("not a zip")
    with pytest.raises(DownloadError, match="ml-1m.zip: not a zip archive"):
        fetch_movielens("ml-1m", tmp_path / "data", base_url=(tmp_path / "mirror").as_uri() + "/")
