"""A bundle for a 1M-item synthetic catalogue: build time, size on disk, resident memory.

    nice -n 10 .venv/bin/python -m bench.bundle_scale [--items 1000000] [--dim 64] [--kinds flat,ivf]

The tower holds its own (n_items + 1, d) item-embedding table, as the MIND tower does, so
the bundle stores the item vectors in the tower, in item_vectors.npy and in the index.
Resident memory is measured in a fresh process, service-like: RSS after importing
model.bundle, then after `load_bundle` and one recall (tower forward + index search).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.index_recall import clustered_catalogue, machine
from model.bundle import write_bundle
from model.index import IndexTuningError

N_INTERESTS = 4
MAX_LEN = 50
MIB = 1 << 20

PROBE = r"""
import json, sys, time
import numpy as np, torch
def rss_bytes():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS"))
from model.bundle import load_bundle, prepare_histories
base = rss_bytes()
start = time.perf_counter()
b = load_bundle(sys.argv[1])
load_s = time.perf_counter() - start
loaded = rss_bytes()
history = torch.from_numpy(prepare_histories([list(range(1, 40))], b.max_len))
capsules, active = b.tower(history, torch.zeros(1, 0, dtype=torch.int64))[:2]
b.index.search(np.ascontiguousarray(capsules[active].numpy()), 100)
print(json.dumps({"base": base, "loaded": loaded, "served": rss_bytes(), "load_s": load_s}))
"""
INDEX_PROBE = r"""
import faiss, sys
def rss_bytes():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS"))
base = rss_bytes()
index = faiss.read_index(sys.argv[1] + "/index.faiss")
print(rss_bytes() - base)
"""


def run_probe(script: str, path: Path) -> str:
    """stdout of ``script`` run in a fresh interpreter with the bundle path as argument."""
    return subprocess.run([sys.executable, "-c", script, str(path)], check=True,
                          capture_output=True, text=True).stdout


class PooledTower(torch.nn.Module):
    """A contract-honouring tower with a full item-embedding table: mean of the history,
    rotated per interest, K'_u = max(1, min(K, floor(log2(n_real)))) capsules active."""

    def __init__(self, item_table: torch.Tensor, n_interests: int):
        super().__init__()
        self.items = torch.nn.Embedding.from_pretrained(item_table, freeze=True, padding_idx=0)
        self.mix = torch.nn.Parameter(torch.eye(item_table.shape[1]).repeat(n_interests, 1, 1))
        self.n_interests = n_interests

    def forward(self, history: torch.Tensor, profile: torch.Tensor):
        mask = (history > 0).float()                                        # (B, L)
        n_real = mask.sum(1)                                                # (B,)
        pooled = (self.items(history) * mask[..., None]).sum(1) / n_real.clamp(min=1)[:, None]
        capsules = torch.einsum("bd,kde->bke", pooled, self.mix)            # (B, K, d)
        k_u = torch.floor(torch.log2(n_real.clamp(min=1))).clamp(1, self.n_interests)
        active = torch.arange(self.n_interests)[None, :] < k_u[:, None]     # (B, K)
        weights = mask[:, None, :].expand(-1, self.n_interests, -1)         # (B, K, L)
        return capsules * active[..., None].float(), active, weights


def build(out: Path, items: np.ndarray, kind: str) -> tuple[Path, float]:
    """Write the bundle; return its path and the build time in seconds."""
    table = torch.from_numpy(np.vstack([np.zeros((1, items.shape[1]), np.float32), items]))
    start = time.perf_counter()
    path = write_bundle(out, tower=PooledTower(table, N_INTERESTS), item_vectors=items,
                        item_ids=[f"item-{r}" for r in range(len(items))], profile_vocab={},
                        popular_rows=np.arange(len(items)), hyperparameters={"max_len": MAX_LEN},
                        metrics={}, index_type=kind)
    return path, time.perf_counter() - start


def report(kind: str, path: Path, build_s: float, n_items: int, dim: int) -> None:
    sizes = {p.name: p.stat().st_size for p in path.iterdir()}
    probe = json.loads(run_probe(PROBE, path))
    index_alone = int(run_probe(INDEX_PROBE, path))
    total = sum(sizes.values())
    delta = probe["served"] - probe["base"]
    index = json.loads((path / "manifest.json").read_text())["index"]
    print(f"\n[{kind}] params {index['params']} tuned recall@{index['tuned_k']}={index['tuned_recall_at_k']:.3f}")
    print(f"  build (write_bundle incl. scripting, index build+tune, sha256): {build_s:.1f} s")
    print(f"  disk: {total / MIB:.1f} MiB = {total / n_items:.0f} B/item  "
          + ", ".join(f"{n} {s / MIB:.1f}" for n, s in sorted(sizes.items())))
    print(f"  load_bundle: {probe['load_s']:.1f} s; RSS after imports {probe['base'] / MIB:.0f} MiB, "
          f"+{(probe['loaded'] - probe['base']) / MIB:.0f} MiB after load, "
          f"+{delta / MIB:.0f} MiB after one recall = {delta / n_items:.0f} B/item "
          f"(raw vectors: {4 * dim} B/item)")
    print(f"  the index alone (faiss.read_index in a fresh process): "
          f"+{index_alone / MIB:.0f} MiB = {index_alone / (n_items * dim * 4):.2f} x items*d*4")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--kinds", default="flat,ivf", help="comma-separated: flat,ivf,hnsw")
    args = parser.parse_args(argv)
    print(f"command: {' '.join([sys.executable, '-m', 'bench.bundle_scale', *sys.argv[1:]])}")
    print(f"machine: {machine()}; torch {torch.__version__}")
    items = clustered_catalogue(args.items, args.dim)
    print(f"catalogue: {args.items} items, d={args.dim}, K={N_INTERESTS}, max_len={MAX_LEN}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            start = time.perf_counter()
            try:
                path, build_s = build(Path(tmp) / kind, items, kind)
            except IndexTuningError as err:   # a finding to report, not a crash
                print(f"\n[{kind}] no bundle after {time.perf_counter() - start:.0f} s: {err}")
                continue
            report(kind, path, build_s, args.items, args.dim)
    return 0


if __name__ == "__main__":
    sys.exit(main())
