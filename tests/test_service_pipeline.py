"""Pipeline steps with the real MIND tower: batch-composition invariance of the tower step,
and the same answer for the same request whatever its batch-mates, through the real batcher."""
from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from service.metrics import ServiceMetrics
from service.pipeline import RecallQuery, bucket_shapes, call_sizes, run_tower
from service.settings import Settings
from service.state import ServiceState, batch_invariant_shapes
from tests.service_support import N_ITEMS, build_bundle, item_id

N_TOWER_ITEMS = 5000


def mind_tower(max_len: int = 20, dim: int = 64):
    from model.config import ModelConfig
    from model.tower import MIND
    torch.manual_seed(0)
    return MIND(ModelConfig(n_items=N_TOWER_ITEMS, embed_dim=dim, n_interests=4, max_len=max_len)).eval().user_tower()


def tower_bundle(tower, max_len: int = 20):
    return SimpleNamespace(tower=tower, device=torch.device("cpu"), item_ids=[str(i) for i in range(N_TOWER_ITEMS)],
                           max_len=max_len, profile_features=(), profile_vocab={}, path="test")


def test_tower_calls_are_power_of_two_buckets():
    assert bucket_shapes(64) == (1, 2, 4, 8, 16, 32, 64) and bucket_shapes(48) == (1, 2, 4, 8, 16, 32, 48)
    assert bucket_shapes(1) == (1,)
    shapes = bucket_shapes(64)
    assert call_sizes(1, shapes) == [1] and call_sizes(3, shapes) == [4] and call_sizes(64, shapes) == [64]
    assert call_sizes(70, shapes) == [64, 8] and call_sizes(129, shapes) == [64, 64, 1]
    assert call_sizes(5, (8,)) == [8] and call_sizes(9, (8,)) == [8, 8]


def test_a_users_capsules_do_not_depend_on_its_batch_mates():
    """Free batch sizes may change GEMM blockings and the capsules' last bits (measured with an
    earlier tower: 15 of 18 compositions differed); the tower runs only in call shapes checked
    at load to give bit-identical rows, so they must be bit-identical."""
    torch.set_num_threads(1)
    bundle = tower_bundle(mind_tower())
    shapes = batch_invariant_shapes(bundle, bucket_shapes(64))
    rng = np.random.default_rng(0)
    histories = rng.integers(1, N_TOWER_ITEMS + 1, size=(140, 20))
    histories[:, :rng.integers(0, 15)] = 0
    profiles = np.zeros((140, 0), dtype=np.int64)
    alone = run_tower(bundle, histories[:1], profiles[:1], shapes)
    for size in (2, 5, 8, 9, 33, 64, 70, 140):
        for position in {0, size // 2, size - 1}:
            rows = [r for r in range(1, size)]
            rows.insert(position, 0)
            batched = run_tower(bundle, histories[rows], profiles[rows], shapes)
            for got, want in zip(batched, alone):
                np.testing.assert_array_equal(got[position], want[0])


class ShapeSensitiveTower(torch.nn.Module):
    """Rows whose last bits depend on the call's batch size below ``from_rows`` rows, as some
    GEMM kernels' do (MKL's one- and two-row ones)."""

    def __init__(self, from_rows: int = 1 << 30) -> None:
        super().__init__()
        self.from_rows = from_rows

    def forward(self, history, profile):
        n = history.shape[0]
        capsules = history[:, None, -4:].float() * (1 + 1e-3 * (n if n < self.from_rows else 0))
        return capsules, torch.ones(n, 1, dtype=torch.bool), capsules


def test_a_tower_that_changes_with_the_call_shape_runs_in_the_shapes_that_agree():
    assert batch_invariant_shapes(tower_bundle(ShapeSensitiveTower()), bucket_shapes(16)) == (16,)
    bundle = tower_bundle(ShapeSensitiveTower(from_rows=4))
    shapes = batch_invariant_shapes(bundle, bucket_shapes(16))
    assert shapes == (4, 8, 16)
    histories, profiles = np.arange(1, 61).reshape(3, 20), np.zeros((3, 0), dtype=np.int64)
    alone = run_tower(bundle, histories[:1], profiles[:1], shapes)[0]
    np.testing.assert_array_equal(run_tower(bundle, histories, profiles, shapes)[0][:1], alone)
    assert batch_invariant_shapes(tower_bundle(mind_tower()), (1, 2, 4)) in {(1, 2, 4), (2, 4), (4,)}


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return build_bundle(tmp_path_factory.mktemp("bundle"), seed=0)


@pytest.mark.parametrize("workers,search_threads", [(1, 1), (2, 1), (1, 3)])
def test_same_request_same_ids_alone_and_among_mixed_batch_mates(bundle_dir, workers, search_threads):
    """Through ServiceState and the real batcher: the probe alone at an idle worker, then in
    crowds of different sizes and kinds (top_n, exclusions, explain, lengths) that queue while
    the workers are busy, so it runs in real batches of several sizes, on one worker thread or
    on two running batches at once (each with its own torch / OpenMP thread settings), with
    the flat index whole or split into three shards searched at once."""
    rng = np.random.default_rng(3)
    probe = RecallQuery(history=tuple(item_id(r) for r in rng.integers(0, N_ITEMS, 9)), top_n=40)

    def mate(i: int) -> RecallQuery:
        return RecallQuery(history=tuple(item_id(r) for r in rng.integers(0, N_ITEMS, 1 + i % 15)),
                           top_n=int(rng.integers(1, 200)), exclude=tuple(item_id(r) for r in range(i % 5)),
                           explain=i % 3 == 0, max_interests=None if i % 4 else 2, exclude_history=i % 2 == 0)

    async def run():
        state = ServiceState(Settings(bundle=bundle_dir, device="cpu", warmup_batches=1, latency_objective_ms=0,
                                      batch_workers=workers, search_threads=search_threads), ServiceMetrics())
        run_batch = state.run_batch

        def recorded(jobs):
            threads.add(threading.current_thread().name)
            return run_batch(jobs)
        state.run_batch = recorded
        state.start()
        await state.load(bundle_dir)
        alone = [await state.recall(probe, time.perf_counter()) for _ in range(2)]
        # a mate and the probe at once: with two workers they run side by side, the probe on
        # the second worker; crowds beyond that run as batches on one worker at a time
        pair = await asyncio.gather(state.recall(mate(99), time.perf_counter()), state.recall(probe, time.perf_counter()))
        crowds = [pair[1]]
        for size in (2, 6, 13, 30, 63):
            mates = [mate(i) for i in range(size)]
            queries = mates[: size // 2] + [probe] + mates[size // 2:]
            answers = await asyncio.gather(*(state.recall(q, time.perf_counter()) for q in queries))
            crowds.append(answers[size // 2])
        sizes = state.metrics.batch_size.collect()[0].samples
        await state.stop()
        return alone, crowds, sizes

    threads: set[str] = set()
    alone, crowds, samples = asyncio.run(run())
    assert len(threads) == workers
    count = next(s.value for s in samples if s.name.endswith("_count"))
    total = next(s.value for s in samples if s.name.endswith("_sum"))
    single = next(s.value for s in samples if s.name.endswith("_bucket") and s.labels["le"] == "1.0")
    assert total > count and count - single >= 5          # real batches of several requests ran
    reference = [(i["item_id"], i["score"]) for i in alone[0]["items"]]
    assert len(reference) == 40 and [(i["item_id"], i["score"]) for i in alone[1]["items"]] == reference
    for answer in crowds:
        assert [(i["item_id"], i["score"]) for i in answer["items"]] == reference
