"""`mind export --run RUN_DIR --out BUNDLE_DIR`: a trained run -> a verified serving bundle.

The user tower is scripted (TorchScript, the contract) and exported with torch.export (served
with MIND_TOWER_FORMAT=export); the bundle is written atomically and loaded back, from both
tower files, before the command reports success. Item categories (for ``POST /recall``'s
``diversity``) are the first token of one item side feature (``--category-feature``).
Exit codes: 0 ok, 2 bad input (incomplete run, existing bundle without --force), 1 the tower
does not compile, or the written bundle does not verify.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from model.artifacts import read_json
from model.bundle import BundleError, ItemCategories, load_bundle, prepare_histories, write_bundle
from model.index import INDEX_KINDS, IndexTuningError, choose_kind
from model.run import CHECKPOINT, CONFIG, METRICS, POPULARITY, SIDE_PREFIX, VOCAB, RunError, config_max_len, load_run
from model.tower_format import EXPORT, export_tower, script_tower

RUN_FILES = (CONFIG, CHECKPOINT, VOCAB, POPULARITY, METRICS)
N_TUNE_HISTORIES = 256
POPULARITY_SMOOTHING = 10.0   # rank offset of the 1/(rank + c) history sampler
CATEGORY_FEATURE_NAMES = ("category", "categories", "class", "genre", "genres")  # auto choice, in order
AUTO_CATEGORY, NO_CATEGORIES = "auto", "none"


class TowerScriptError(RuntimeError):
    """The run's user tower does not compile with TorchScript or torch.export."""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="run directory written by `mind train`")
    parser.add_argument("--out", required=True, type=Path,
                        help="bundle directory to create; an existing non-bundle directory is a "
                             "bundle root and gets a new version <created>-<model_version> inside")
    parser.add_argument("--index", choices=INDEX_KINDS, default=None,
                        help="FAISS index type (default: flat up to 200k items, ivf above)")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    parser.add_argument("--category-feature", default=AUTO_CATEGORY, metavar="NAME",
                        help="item side feature whose first token is each item's category (for the "
                             "`diversity` of POST /recall); 'auto' (default): the first feature named "
                             f"{'/'.join(CATEGORY_FEATURE_NAMES)}, if any; 'none': no categories")


def tower_queries(tower: torch.jit.ScriptModule, popular_rows: np.ndarray, max_len: int,
                  n_profile: int, n_histories: int = N_TUNE_HISTORIES, seed: int = 0) -> np.ndarray:
    """Active capsules (Q, d) float32 of the tower on sampled histories, to tune an index on:
    lengths 1..max_len, items drawn ~ 1/(popularity rank + c), as real histories lean popular."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / (np.arange(len(popular_rows)) + POPULARITY_SMOOTHING)
    weights /= weights.sum()
    lengths = rng.integers(1, max_len + 1, n_histories)
    histories = [popular_rows[rng.choice(len(popular_rows), n, p=weights)] + 1 for n in lengths]
    history = torch.from_numpy(prepare_histories(histories, max_len))          # (B, L)
    profile = torch.zeros(n_histories, n_profile, dtype=torch.int64)           # (B, P) unknown
    with torch.no_grad():
        capsules, active = tower(history, profile)[:2]                         # (B, K, d), (B, K)
    return np.ascontiguousarray(capsules[active].numpy(), dtype=np.float32)    # (Q, d)


def read_run(run_dir: Path) -> dict:
    """Every run file the bundle needs except the model; RunError names what is missing."""
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory")
    for name in RUN_FILES:
        if not (run_dir / name).is_file():
            raise RunError(f"{run_dir / name}: missing (is {run_dir} a finished `mind train` run?)")
    config = read_json(run_dir / CONFIG, dict, RunError)   # RUN_FILES exist: checked above
    vocab = read_json(run_dir / VOCAB, dict, RunError)
    if not isinstance(vocab.get("items"), list) or len(vocab["items"]) < 2:
        raise RunError(f"{run_dir / 'vocab.json'}: no item vocabulary")
    popularity = np.asarray(read_json(run_dir / POPULARITY, list, RunError), dtype=np.int64)
    metrics = read_json(run_dir / METRICS, dict, RunError)
    return {"config": config, "vocab": vocab, "popular_rows": popularity[popularity > 0] - 1,
            "metrics": {k: v for k, v in metrics.items() if k != "history"},
            "max_len": config_max_len(config, run_dir / CONFIG)}


def category_feature(run_dir: Path, vocab: dict, requested: str = AUTO_CATEGORY) -> str | None:
    """The item side feature to take categories from, or None: ``auto`` takes the first
    feature named one of CATEGORY_FEATURE_NAMES (case-insensitive, in that order)."""
    features = list(vocab.get("item_side") or {})
    if requested == NO_CATEGORIES:
        return None
    if requested == AUTO_CATEGORY:
        by_name = {f.lower(): f for f in reversed(features)}     # the first of equal lower-case names
        return next((by_name[n] for n in CATEGORY_FEATURE_NAMES if n in by_name), None)
    if requested not in features:
        raise RunError(f"{run_dir / 'vocab.json'}: no item side feature {requested!r} for "
                       f"--category-feature; the run has {features or 'none'}")
    return requested


def item_categories(run_dir: Path, vocab: dict, model, feature: str) -> ItemCategories:
    """Each item's category: the first token of ``feature`` in the checkpoint's token table
    (token index t -> category t - 1; no token -> -1), named by vocab.json."""
    names = vocab["item_side"][feature]
    tokens = model.state_dict().get(SIDE_PREFIX + feature)                  # (n_items + 1, T)
    if tokens is None or tokens.ndim != 2:
        raise RunError(f"{run_dir / 'checkpoint.pt'}: no token table for item side feature {feature!r}")
    first = tokens[1:, 0].cpu().numpy().astype(np.int64)                    # (n_items,), 0 = none
    if len(first) and (first.min() < 0 or first.max() >= len(names)):
        raise RunError(f"{run_dir / 'checkpoint.pt'}: {feature!r} tokens beyond the {len(names)} "
                       f"values of {run_dir / 'vocab.json'}")
    return ItemCategories(feature, tuple(str(n) for n in names[1:]), first - 1)


def export_run(run_dir: Path, out_dir: Path, index_type: str | None = None, force: bool = False,
               category: str = AUTO_CATEGORY) -> Path:
    """Export ``run_dir`` into a bundle at (or, for a bundle root, inside) ``out_dir``."""
    run = read_run(run_dir)
    feature = category_feature(run_dir, run["vocab"], category)
    try:
        model, _ = load_run(run_dir)
    except (RunError, OSError, ValueError, KeyError, RuntimeError) as err:
        raise RunError(f"cannot rebuild the model of {run_dir}: {err}") from err
    eager = model.cpu().eval().user_tower()
    try:
        tower = script_tower(eager).eval()
    except RuntimeError as err:   # a model bug, not bad input: exit 1 with the compiler's message
        raise TowerScriptError(f"the user tower of {run_dir} cannot be scripted: {err}") from err
    try:
        program = export_tower(eager, run["max_len"], len(run["vocab"].get("user_profile", {})))
    except Exception as err:   # torch.export raises many types (UserError, Unsupported, ...)
        raise TowerScriptError(f"the user tower of {run_dir} cannot be exported: {err}") from err
    with torch.no_grad():
        item_vectors = model.item_vectors().detach().cpu().numpy()[1:]       # (n_items, d)
    item_ids = run["vocab"]["items"][1:]
    if len(item_ids) != len(item_vectors):
        raise RunError(f"{run_dir / 'vocab.json'}: {len(item_ids)} items but the model has {len(item_vectors)}")
    if len(run["popular_rows"]) and run["popular_rows"].max() >= len(item_ids):
        raise RunError(f"{run_dir / 'popularity.json'}: item index {run['popular_rows'].max() + 1} "
                       f"beyond the {len(item_ids)} items of vocab.json")
    profile_vocab = run["vocab"].get("user_profile", {})
    sizes = tuple(len(values) for values in profile_vocab.values())
    expected = model.config.profile_vocab_sizes   # the model's profile inputs, column by column
    if sizes != expected:
        raise RunError(f"{run_dir / 'vocab.json'}: user_profile vocabulary sizes {sizes} "
                       f"!= the model's {expected} ({run_dir / 'config.json'})")
    index_type = index_type or choose_kind(len(item_ids))
    ranked = run["popular_rows"] if len(run["popular_rows"]) else np.arange(len(item_ids))
    queries = None if index_type == "flat" else tower_queries(tower, ranked, run["max_len"], len(profile_vocab))
    config = run["config"]
    categories = None if feature is None else item_categories(run_dir, run["vocab"], model, feature)
    return write_bundle(
        out_dir, tower=tower, item_vectors=item_vectors, item_ids=item_ids,
        profile_vocab=profile_vocab, popular_rows=run["popular_rows"],
        hyperparameters={"model": config.get("model", {}), "train": config.get("train", {})},
        metrics=run["metrics"], index_type=index_type, max_len=run["max_len"],
        data=config.get("data", {}), tune_queries=queries, force=force, tower_program=program,
        item_categories=categories)


def main(args: argparse.Namespace) -> int:
    try:
        path = export_run(args.run, args.out, args.index, args.force, args.category_feature)
    except (RunError, OSError, ValueError, IndexTuningError, TowerScriptError) as err:   # OSError: e.g. --out not writable
        print(f"mind export: {err}", file=sys.stderr)
        return 1 if isinstance(err, (IndexTuningError, TowerScriptError)) else 2   # 1: not the input's fault
    try:
        bundle = load_bundle(path)
        load_bundle(path, tower_format=EXPORT)   # the export program loads and runs too
    except BundleError as err:
        print(f"mind export: the written bundle does not verify: {err}", file=sys.stderr)
        return 1
    index, cats = bundle.manifest["index"], bundle.categories
    categories = ("no item categories" if cats is None else f"categories from {cats.feature!r}: "
                  f"{len(cats.names)} values, {int((cats.of_row >= 0).sum())} items with one")
    print(f"mind export: bundle {path} (model_version {bundle.model_version[:12]}, "
          f"{len(bundle.item_ids)} items, d={bundle.dim}, K={bundle.n_interests}, "
          f"index {index['type']} {index['params']} recall@{index['tuned_k']}={index['tuned_recall_at_k']:.3f}, "
          f"{categories})")
    return 0
