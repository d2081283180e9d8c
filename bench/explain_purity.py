"""Does `explain` mean something? On the planted synthetic set (model.data.sources), train
MIND with `mind train` (the default config), then, for every user (history: the protocol's
first 80% of the sequence) and active interest, take the history items the service's `explain` names (most routing weight for that
interest: service.pipeline.top_routing_positions, `explain_items` = 3 of them) and measure
their purity: the share of the majority planted cluster among them, averaged over
(user, interest). Beside it: the purity of the same number of history items picked at random
per (user, interest) (what an `explain` that means nothing scores), and the capsule cosine.

    nice -n 10 python bench/explain_purity.py [--users 600] [-- extra `mind train` flags]

Prints the command, the machine, and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model.data.sources import PlantedTruth, SyntheticSpec, generate_with_truth, write_recbole
from model.metrics import capsule_cosine, majority_purity
from service.pipeline import top_routing_positions

EXPLAIN_ITEMS = 3          # the service's default `explain_items`
RANDOM_SEED = 0            # of the random-pick reference


def planted_spec(n_users: int, seed: int = 0) -> SyntheticSpec:
    """A small planted set: 8 clusters of 40 items, 2-3 clusters per user, 20-40 events each."""
    return SyntheticSpec(n_users=n_users, n_items=320, n_clusters=8, min_events=20, max_events=40, seed=seed)


def train_planted(workdir: Path, spec: SyntheticSpec, train_flags: list[str]) -> tuple[Path, PlantedTruth]:
    """Write the planted set as RecBole files and train it with `mind train` (no K=1 baseline)."""
    from mind_recall.cli import main

    interactions, truth = generate_with_truth(spec)
    inter = write_recbole(interactions, workdir / "data", "planted")
    run_dir = workdir / "run"
    code = main(["train", "--data", str(inter), "--out", str(run_dir), "--no-baselines", "--quiet",
                 "--threads", "1", *train_flags])
    if code != 0:
        raise SystemExit(f"mind train exited {code}")
    return run_dir, truth


def named_clusters(weights: np.ndarray, active: np.ndarray, clusters: np.ndarray, real: np.ndarray,
                   n: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """(M, n) planted clusters of the items each active interest names (-1 = none), M = the
    number of (user, active interest) pairs.

    weights (U, K, L) routing weights, active (U, K) bool, clusters (U, L) cluster of each
    history position, real (U, L) bool (not padding). Without ``rng`` the items are the ones
    `explain` names (top routing weight); with it, ``n`` real positions drawn at random.
    """
    rows = []
    for u in range(len(weights)):
        if rng is None:
            positions = top_routing_positions(weights[u], real[u], n)                 # (K, <= n)
        else:
            choices = np.flatnonzero(real[u])
            positions = np.stack([rng.choice(choices, min(n, len(choices)), replace=False)
                                  for _ in range(weights.shape[1])])
        for k in np.flatnonzero(active[u]):
            row = np.full(n, -1, dtype=np.int64)
            row[:positions.shape[1]] = clusters[u, positions[k]]
            rows.append(row)
    return np.array(rows, dtype=np.int64).reshape(-1, n)


def explain_purity(run_dir: Path, truth: PlantedTruth, n: int = EXPLAIN_ITEMS) -> dict:
    """Purity of what `explain` names vs random picks, over every user of the run's dataset
    (history = the protocol's first 80% of the sequence, its last max_len items; no target is
    involved, so train users count too and make the estimate tighter)."""
    from model.data import holdout
    from model.data import HISTORY_FRACTION
    from model.eval_sources import dataset_from_config, read_json_file
    from model.run import config_max_len, load_run

    config = read_json_file(run_dir / "config.json")
    ds = dataset_from_config(config["data"], None, str(run_dir / "config.json"))
    users = np.concatenate([ds.train_users, ds.val_users, ds.test_users])
    histories, _, kept = holdout(ds, users, config_max_len(config), HISTORY_FRACTION)  # (U, L)
    model = load_run(run_dir)[0]
    with torch.no_grad():
        capsules, active, weights = model.user_tower()(torch.as_tensor(histories),
                                                       torch.as_tensor(ds.profile_matrix(kept)))
    tokens = np.array(ds.items.tokens, dtype=object)
    clusters = np.array([[truth.item_cluster.get(t, -1) for t in row] for row in tokens[histories]])
    real = histories > 0                                                               # (U, L)
    weights, active = weights.numpy(), active.numpy()
    named = named_clusters(weights, active, clusters, real, n)
    picked = named_clusters(weights, active, clusters, real, n, np.random.default_rng(RANDOM_SEED))
    return {"purity": majority_purity(named), "random_purity": majority_purity(picked),
            "capsule_cosine": capsule_cosine(capsules.numpy(), active), "explain_items": n,
            "users": len(histories), "interests": len(named)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=600, help="planted users (default 600)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the planted set")
    parser.add_argument("train_flags", nargs="*", help="extra `mind train` flags (after --)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("command:", shlex.join(["python", "bench/explain_purity.py", *argv]))
    print(f"machine: nproc={os.cpu_count()}, {platform.system()} {platform.machine()}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        run_dir, truth = train_planted(Path(tmp), planted_spec(args.users, args.seed), args.train_flags)
        trained = time.perf_counter() - started
        result = explain_purity(run_dir, truth)
        config = json.loads((run_dir / "config.json").read_text())["model"]
    result["train_s"] = round(trained, 1)
    result["model"] = {k: config[k] for k in ("n_interests", "routing_init_std", "pow_p", "routing_softmax")
                       if k in config}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
