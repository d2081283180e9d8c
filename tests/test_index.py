"""FAISS index choice, build and tuning (model/index.py) on synthetic catalogues."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from concurrent.futures import ThreadPoolExecutor

from model.index import (FLAT_MAX_ITEMS, IndexTuningError, ShardedFlatIndex, apply_params, build_index, in_batch,
                         choose_kind, exact_top_k, flat_index, perturbed_queries, recall_at_k, top_k_of_lists,
                         tune_index)


def clustered_catalogue(n_items: int, dim: int, n_clusters: int = 200, seed: int = 0) -> np.ndarray:
    """(n_items, dim) float32 item vectors around random cluster centres, as trained items are."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    items = centres[rng.integers(0, n_clusters, n_items)] + 0.5 * rng.standard_normal((n_items, dim))
    return items.astype(np.float32)


@pytest.fixture(scope="module")
def catalogue() -> np.ndarray:
    return clustered_catalogue(20_000, 32)


def test_flat_top_n_equals_brute_force_numpy():
    rng = np.random.default_rng(1)
    items = rng.standard_normal((3000, 24)).astype(np.float32)
    queries = rng.standard_normal((50, 24)).astype(np.float32)
    index, kind = build_index(items, "flat")
    scores, rows = index.search(queries, 50)
    brute = queries @ items.T                                   # (Q, n)
    expected = np.argsort(-brute, axis=1, kind="stable")[:, :50]
    assert kind == "flat" and index.ntotal == len(items)
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, 1), rtol=1e-5, atol=1e-5)


def test_kind_chosen_from_catalogue_size():
    assert choose_kind(FLAT_MAX_ITEMS) == "flat"
    assert choose_kind(FLAT_MAX_ITEMS + 1) in ("hnsw", "ivf")
    items = np.zeros((10, 4), dtype=np.float32)
    assert build_index(items)[1] == "flat"
    with pytest.raises(ValueError, match="unknown index kind"):
        build_index(items, "lsh")


@pytest.mark.parametrize("kind, param", [("hnsw", "efSearch"), ("ivf", "nprobe")])
def test_tuned_approximate_index_reaches_recall_on_held_out_queries(catalogue, kind, param):
    index, built = build_index(catalogue, kind)
    tuned = tune_index(index, catalogue, perturbed_queries(catalogue, 200, seed=1))
    assert built == kind and set(tuned["params"]) == {param}
    held_out = perturbed_queries(catalogue, 200, seed=2)       # never seen by the tuner
    recall = recall_at_k(index.search(held_out, 100)[1], exact_top_k(catalogue, held_out, 100))
    assert recall >= 0.95


def test_params_survive_serialisation_when_reapplied(catalogue, tmp_path):
    index, _ = build_index(catalogue[:5000], "hnsw")
    apply_params(index, {"efSearch": 300})
    faiss.write_index(index, str(tmp_path / "i.faiss"))
    loaded = faiss.read_index(str(tmp_path / "i.faiss"))
    apply_params(loaded, {"efSearch": 300})
    assert loaded.hnsw.efSearch == 300
    ivf, _ = build_index(catalogue[:5000], "ivf")
    apply_params(ivf, {"nprobe": 7})
    assert faiss.extract_index_ivf(ivf).nprobe == 7


def test_flat_needs_no_tuning_and_unreachable_target_is_an_error(catalogue):
    flat, _ = build_index(catalogue[:2000], "flat")
    assert tune_index(flat, catalogue[:2000], catalogue[:10]) == {"params": {}, "recall_at_k": 1.0, "k": 100}
    hnsw, _ = build_index(catalogue[:2000], "hnsw", hnsw_m=4, ef_construction=8)
    with pytest.raises(IndexTuningError, match="recall@100"):
        tune_index(hnsw, catalogue[:2000], perturbed_queries(catalogue[:2000], 50), target_recall=1.01)


def test_recall_at_k_counts_overlap():
    exact = np.array([[1, 2, 3, 4]])
    assert recall_at_k(np.array([[4, 3, 9, -1]]), exact) == 0.5


@pytest.mark.parametrize("n_shards", [2, 3, 7])
def test_a_flat_index_split_into_shards_finds_what_the_whole_one_finds(n_shards):
    """The service splits its flat index into row shards searched at once: same rows, same
    order (scores to float precision), for an uneven split too."""
    rng = np.random.default_rng(n_shards)
    items = rng.standard_normal((1001, 16)).astype(np.float32)
    queries = rng.standard_normal((20, 16)).astype(np.float32)
    whole_scores, whole_rows = flat_index(items).search(queries, 60)
    with ThreadPoolExecutor(n_shards - 1) as pool:
        sharded = ShardedFlatIndex(items, n_shards, pool)
        scores, rows = sharded.search(queries, 60)
    assert len(sharded.shards) == n_shards and (sharded.ntotal, sharded.d) == (1001, 16)
    np.testing.assert_array_equal(rows, whole_rows)
    np.testing.assert_allclose(scores, whole_scores, rtol=1e-5, atol=1e-5)


def test_a_search_beside_another_batch_scans_every_shard_itself_with_the_same_answer():
    """Two batch workers on two cores: while another batch is in progress a search does not
    hand shards to the helper thread (both cores are busy), it scans them itself, and finds
    the same rows; alone, it splits."""
    rng = np.random.default_rng(5)
    items = rng.standard_normal((3000, 16)).astype(np.float32)
    queries = rng.standard_normal((8, 16)).astype(np.float32)
    whole_scores, whole_rows = flat_index(items).search(queries, 50)
    helped = []

    class Helper(ThreadPoolExecutor):
        def submit(self, fn, *args):
            helped.append(args[0])
            return super().submit(fn, *args)

    with Helper(1) as pool:
        sharded = ShardedFlatIndex(items, 3, pool)
        with in_batch(sharded):
            alone = sharded.search(queries, 50)
            assert helped == [1, 2]
            with in_batch(sharded):                        # another worker's batch
                beside = sharded.search(queries, 50)
            assert helped == [1, 2]
    for scores, rows in (alone, beside):
        np.testing.assert_array_equal(rows, whole_rows)
        np.testing.assert_allclose(scores, whole_scores, rtol=1e-5, atol=1e-5)
    assert sharded._batches == 0


def test_shards_smaller_than_k_pad_with_empty_rows():
    items = np.eye(5, 4, dtype=np.float32)
    with ThreadPoolExecutor(1) as pool:
        scores, rows = ShardedFlatIndex(items, 2, pool).search(np.ones((1, 4), np.float32), 8)
    assert rows[0].tolist() == [0, 1, 2, 3, 4, -1, -1, -1]           # ties by row; the zero vector last
    assert scores[0, :5].tolist() == [1, 1, 1, 1, 0] and np.isneginf(scores[0, 5:]).all()


def test_top_k_of_lists_breaks_ties_by_the_smaller_row_and_puts_empty_slots_last():
    scores = np.array([[0.5, 0.9, 0.5, 7.0, 0.9]], np.float32)
    rows = np.array([[8, 4, 2, -1, 3]])
    top_scores, top_rows = top_k_of_lists(scores, rows, 6)
    assert top_rows.tolist() == [[3, 4, 2, 8, -1, -1]]
    assert top_scores[0, :4].tolist() == pytest.approx([0.9, 0.9, 0.5, 0.5]) and np.isneginf(top_scores[0, 4:]).all()


def test_openblas_kernel_follows_the_cpu_flags():
    """FAISS's OpenBLAS falls back to generic SSE3 kernels (~4x slower products) on CPUs it
    cannot name, as virtual machines' often are; the flags name the kernel family instead."""
    from model import openblas_core_type
    avx512 = {"avx2", "fma", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
    assert openblas_core_type(avx512) == "SkylakeX"
    assert openblas_core_type({"avx2", "fma", "avx512f"}) == "Haswell"
    assert openblas_core_type({"sse4_2", "avx"}) is None


def test_the_package_names_the_kernel_unless_the_operator_did():
    import os
    import subprocess
    import sys

    from model import _cpu_flags, openblas_core_type
    probe = [sys.executable, "-c", "import os, model; print(os.environ.get('OPENBLAS_CORETYPE'))"]
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    named = subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert named == str(openblas_core_type(_cpu_flags()))
    kept = subprocess.run(probe, env={**env, "OPENBLAS_CORETYPE": "Prescott"}, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert kept == "Prescott"
