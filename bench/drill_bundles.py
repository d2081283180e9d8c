"""Bundles and requests for the fault drills (bench/faults.py): seeded bundle versions with the
real MIND tower (or a minimal contract stand-in when it cannot be exported), request bodies,
and in-place corruption of a file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.load import request_bytes
from model.bundle import write_bundle


def _tower(seed: int, n_items: int, dim: int, n_interests: int, max_len: int, real: bool):
    """A random MIND user tower and its item vectors, or the minimal contract stand-in."""
    torch.manual_seed(seed)
    if real:
        from model.config import ModelConfig
        from model.tower import MIND
        mind = MIND(ModelConfig(n_items=n_items, embed_dim=dim, n_interests=n_interests, max_len=max_len,
                                init_seed=seed)).eval()
        with torch.no_grad():
            return mind.user_tower(), mind.item_vectors().numpy()[1:]
    tower = StandInTower(n_items, dim, n_interests)
    return tower, tower.items.weight.detach().numpy()[1:]


class StandInTower(torch.nn.Module):
    """The tower contract with the least compute: K projections of the mean history embedding."""

    def __init__(self, n_items: int, dim: int, n_interests: int):
        super().__init__()
        self.items = torch.nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.projections = torch.nn.Parameter(torch.randn(n_interests, dim, dim) / dim ** 0.5)

    def forward(self, history: torch.Tensor, profile: torch.Tensor):
        mask = (history > 0).float()                                            # (B, L)
        pooled = (self.items(history) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        capsules = torch.einsum("bd,kde->bke", pooled, self.projections)        # (B, K, d)
        active = torch.ones(capsules.shape[:2], dtype=torch.bool)               # (B, K)
        weights = mask[:, None, :].expand(-1, capsules.shape[1], -1) / mask.sum(1).clamp(min=1)[:, None, None]
        return capsules, active, weights


def export_version(root: Path, seed: int, n_items: int, dim: int = 32, n_interests: int = 4, max_len: int = 20) -> Path:
    """A new bundle version (random tower, seeded) in ``root`` (or at ``root`` if absent); the
    real MIND tower when it can be exported, else the contract stand-in (said once)."""
    rng = np.random.default_rng(seed)
    for real in (True, False):
        try:
            tower, vectors = _tower(seed, n_items, dim, n_interests, max_len, real)
            return write_bundle(root, tower=tower, item_vectors=vectors, item_ids=[f"i{r}" for r in range(n_items)],
                                profile_vocab={}, popular_rows=rng.permutation(n_items).tolist(),
                                hyperparameters={"max_len": max_len, "dim": dim, "n_interests": n_interests},
                                metrics={}, index_type="flat")
        except (ImportError, TypeError, RuntimeError) as err:
            if not real:
                raise
            if seed == 0:
                print(f"(real MIND tower not exportable here: {str(err).strip().splitlines()[0][:100]}; "
                      f"using the contract stand-in tower)")
    raise AssertionError("unreachable")


def requests_for(n_items: int, n: int = 512, length: int = 20, top_n: int = 50) -> list[bytes]:
    rows = np.random.default_rng(3).integers(0, n_items, size=(n, length))
    return [request_bytes([f"i{r}" for r in row], top_n) for row in rows.tolist()]


def corrupt_in_place(file: Path) -> None:
    size = file.stat().st_size
    with open(file, "r+b") as f:
        f.seek(128)
        f.write(bytes(range(7, 256, 3)) * ((size - 128) // 83 + 1))
        f.truncate(size)
