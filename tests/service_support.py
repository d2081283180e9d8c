"""Helpers of the service tests: small real bundles, a brute-force reference, a uvicorn
subprocess on a free port."""
from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from model.bundle import write_bundle

REPO_ROOT = Path(__file__).resolve().parents[1]
N_ITEMS, DIM, K, MAX_LEN = 400, 16, 4, 12
PROFILE_VOCAB = {"gender": ["<pad>", "F", "M"], "age": ["<pad>", "18-24", "25-34", "35+"]}


def item_id(row: int) -> str:
    """External id of a row in the test catalogues: decimal strings, so ints are accepted too."""
    return str(1000 + row)


def small_tower(seed: int, n_items: int = N_ITEMS, dim: int = DIM):
    """A randomly initialised real MIND user tower (scripted by write_bundle) and its item
    vectors (n_items, d)."""
    from model.config import ModelConfig  # tests may import model/; the service may not
    from model.tower import MIND
    torch.manual_seed(seed)
    config = ModelConfig(n_items=n_items, embed_dim=dim, n_interests=K, max_len=MAX_LEN, init_seed=seed,
                         profile_vocab_sizes=tuple(len(v) for v in PROFILE_VOCAB.values()),
                         profile_fusion="concat")   # the profile reaches the capsules (not the default)
    mind = MIND(config).eval()
    with torch.no_grad():
        vectors = mind.item_vectors().numpy()[1:]
    return mind.user_tower(), vectors


def build_bundle(out_dir: Path, seed: int = 0, n_items: int = N_ITEMS) -> Path:
    """Write a bundle (or a new version, when ``out_dir`` is a root) and return its path."""
    tower, vectors = small_tower(seed, n_items)
    rng = np.random.default_rng(seed)
    return write_bundle(out_dir, tower=tower, item_vectors=vectors,
                        item_ids=[item_id(r) for r in range(n_items)], profile_vocab=PROFILE_VOCAB,
                        popular_rows=rng.permutation(n_items).tolist(),
                        hyperparameters={"max_len": MAX_LEN, "dim": DIM, "n_interests": K},
                        metrics={}, index_type="flat")


def reference_recall(bundle, history: list[str], top_n: int, exclude: set[str], profile=None,
                     max_interests: int | None = None) -> list[tuple[str, float, int]]:
    """Brute force from the bundle's own vectors: every active capsule scores every item;
    an item keeps its best score; excluded dropped; sorted by (-score, row)."""
    rows = [bundle.row_of[i] for i in history if i in bundle.row_of][-bundle.max_len:]
    padded = np.zeros((1, bundle.max_len), dtype=np.int64)
    padded[0, bundle.max_len - len(rows):] = np.asarray(rows, dtype=np.int64) + 1
    prof = np.zeros((1, len(bundle.profile_features)), dtype=np.int64)
    for p, f in enumerate(bundle.profile_features):
        prof[0, p] = bundle.profile_vocab[f].get((profile or {}).get(f), 0)
    with torch.no_grad():
        capsules, active, _ = bundle.tower(torch.from_numpy(padded), torch.from_numpy(prof))
    caps = capsules[0].numpy().astype(np.float64)[active[0].numpy()]
    if max_interests:
        caps = caps[:max_interests]
    scores = caps @ np.asarray(bundle.item_vectors, dtype=np.float64).T      # (K', n_items)
    best, interest = scores.max(0), scores.argmax(0)
    order = sorted((r for r in range(len(best)) if bundle.item_ids[r] not in exclude),
                   key=lambda r: (-best[r], r))[:top_n]
    active_ids = np.flatnonzero(active[0].numpy())
    return [(bundle.item_ids[r], float(best[r]), int(active_ids[interest[r]])) for r in order]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, port: int, log_path: Path, env: dict | None = None, *extra: str) -> subprocess.Popen:
    """``mind serve`` in a subprocess logging to ``log_path`` (a file: a pipe nobody reads
    would fill up and block the server); returns once /readyz is 200 (or raises with its log)."""
    full_env = dict(os.environ, MIND_TORCH_THREADS="1", MIND_FAISS_THREADS="1", **(env or {}))
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mind_recall.cli", "serve", "--bundle", str(bundle),
                                 "--port", str(port), *extra], cwd=REPO_ROOT, env=full_env,
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server not ready in 60 s:\n{log_path.read_text()}")


def slow_worker(seen: list, seconds: float):
    """A batch function for a bare Batcher: records its payloads in ``seen``, then holds the
    worker for ``seconds`` (a stand-in for a slow tower + search), and echoes them back."""
    def work(payloads):
        seen.extend(payloads)
        time.sleep(seconds)
        return payloads
    return work


def write_untrained_run(run_dir, ds, data_cfg, n_interests: int, seed: int = 0, **config_overrides):
    """A seeded, untrained MIND written with model.run's own writer, on the real dataset;
    ``config_overrides`` are further ModelConfig fields. Returns the model (eval mode)."""
    from model.config import ModelConfig, TrainConfig
    from model.run import write_run_files
    from model.tower import MIND

    torch.manual_seed(seed)
    config = ModelConfig(n_items=ds.n_items, embed_dim=8, n_interests=n_interests, max_len=10, hidden_dim=16,
                         profile_dim=4,
                         profile_vocab_sizes=tuple(len(ds.user_profile_vocabs[f]) for f in ds.profile_features),
                         item_side_vocab_sizes={f: len(v) for f, v in ds.item_side_vocabs.items()},
                         **{"profile_fusion": "concat", **config_overrides})   # profiles take part
    model = MIND(config, {f: torch.as_tensor(t) for f, t in ds.item_side.items()}).eval()
    run_dir.mkdir(parents=True)
    write_run_files(run_dir, model, TrainConfig(epochs=1), data_cfg, ds.vocab_json(), ds.split_json(),
                    list(range(1, ds.n_items + 1)), {"test": {}}, model.state_dict())
    return model


@contextlib.asynccontextmanager
async def served(app):
    """``app`` served as `mind serve` serves it (its uvicorn config and HTTP protocol, lifespan
    included) on a free loopback port, inside the running loop; an httpx client to it."""
    import uvicorn

    from service.main import server_config

    config = server_config(app, app.state.service.settings.model_copy(update={"host": "127.0.0.1", "port": 0}))
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()                    # raises why it did not start
            raise RuntimeError("server stopped before it started")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client
    finally:
        server.should_exit = True
        await task
