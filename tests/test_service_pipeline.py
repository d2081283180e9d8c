"""Pipeline steps with the real MIND tower: batch-composition invariance of the tower step."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from service.pipeline import run_tower


def mind_tower(max_len: int = 20, dim: int = 64):
    from model.config import ModelConfig
    from model.tower import MIND
    torch.manual_seed(0)
    return MIND(ModelConfig(n_items=5000, embed_dim=dim, n_interests=4, max_len=max_len)).eval().user_tower()


def test_a_users_capsules_do_not_depend_on_its_batch_mates():
    """Free batch sizes change GEMM blockings and the capsules' last bits (measured: 15 of 18
    compositions differed); fixed-shape chunks must make them bit-identical."""
    torch.set_num_threads(1)
    bundle = SimpleNamespace(tower=mind_tower(), device=torch.device("cpu"))
    rng = np.random.default_rng(0)
    histories = rng.integers(1, 5001, size=(70, 20))
    histories[:, :rng.integers(0, 15)] = 0
    profiles = np.zeros((70, 0), dtype=np.int64)
    alone = run_tower(bundle, histories[:1], profiles[:1], chunk=8)
    for size in (2, 5, 8, 9, 33, 70):
        for position in {0, size // 2, size - 1}:
            rows = [r for r in range(1, size)]
            rows.insert(position, 0)
            batched = run_tower(bundle, histories[rows], profiles[rows], chunk=8)
            for got, want in zip(batched, alone):
                np.testing.assert_array_equal(got[position], want[0])
