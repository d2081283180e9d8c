"""Where `mind evaluate` gets its users and capsules: a run directory or a serving bundle,
each rebuilding the dataset from its saved data config (``config.json["data"]`` or
``manifest["data"]``) and wrapping its tower as a ``model.protocol.MindRetriever``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.artifacts import read_json
from model.bundle import BundleError, latest_bundle, load_bundle
from model.data import DataFormatError, RunDataMismatch, holdout, rebuild_dataset
from model.protocol import HeldOut, MindRetriever, tower_capsule_fn
from model.run import RunError, config_max_len, load_run

SPLIT_USERS = {"test": "test_users", "validation": "val_users"}


class EvaluationError(Exception):
    """Bad input to `mind evaluate`; the message names the file or directory at fault."""


@dataclass(frozen=True)
class EvalSource:
    """Everything the protocol needs: held-out users, MIND sources by name, what is missing."""
    held: HeldOut
    retrievers: dict[str, MindRetriever]
    info: dict
    missing: dict[str, str] = field(default_factory=dict)


def read_json_file(path: Path) -> dict:
    """Parse a JSON object file; a missing or malformed file is an EvaluationError naming it."""
    return read_json(path, dict, EvaluationError, missing="file not found")


def dataset_from_config(data_cfg: dict, data_override: Path | None, where: str,
                        vocab: dict | None = None, split: dict | None = None):
    """The SequenceDataset a run was trained on, from its saved data config; with the run's
    ``vocab.json`` / ``split.json`` it must be identical, else an EvaluationError."""
    if data_override is None and not data_cfg.get("source"):
        raise EvaluationError(f"{where}: its data config has no 'source'; pass --data PATH")
    try:
        return rebuild_dataset(data_cfg, vocab=vocab, split=split, source=data_override)
    except (DataFormatError, RunDataMismatch) as err:
        raise EvaluationError(f"{err} (data config from {where})") from err
    except OSError as err:
        raise EvaluationError(f"interaction log not found ({err}); data config from {where}; "
                              "override with --data PATH") from err


def held_out_users(ds, split: str, max_len: int) -> HeldOut:
    """The protocol's held-out users of ``split`` (histories, targets) plus train sequences."""
    histories, targets, users = holdout(ds, getattr(ds, SPLIT_USERS[split]), max_len)
    profile_values = {}
    for feature, column in ds.user_profile.items():                     # column (n_users+1,) int64
        values = np.array(ds.user_profile_vocabs[feature].tokens, dtype=object)[column[users]]
        values[column[users] == 0] = ""                                   # index 0 = unknown
        profile_values[feature] = values
    return HeldOut(histories, profile_values, target_rows=[t - 1 for t in targets],
                   train_sequences=[ds.sequences[int(u)] for u in ds.train_users], n_items=ds.n_items)


def row_maps(dataset_ids: Sequence[str], source_ids: Sequence[str]
             ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(dataset row -> source row, source row -> dataset row), -1 where absent; None, None if equal."""
    if list(dataset_ids) == list(source_ids):
        return None, None
    source_row = {item: r for r, item in enumerate(source_ids)}
    dataset_row = {item: r for r, item in enumerate(dataset_ids)}
    to_source = np.array([source_row.get(i, -1) for i in dataset_ids], dtype=np.int64)
    to_dataset = np.array([dataset_row.get(i, -1) for i in source_ids], dtype=np.int64)
    return to_source, to_dataset


def run_retriever(run_dir: Path, dataset_item_ids: Sequence[str], device: str) -> tuple[MindRetriever, int]:
    """(MIND of a run directory as a capsule source over exact FAISS search, its max_len)."""
    if not (run_dir / "checkpoint.pt").is_file():
        raise EvaluationError(f"{run_dir / 'checkpoint.pt'}: file not found (is {run_dir} a finished run?)")
    try:
        model, info = load_run(run_dir)
    except (RunError, OSError, ValueError, KeyError, RuntimeError) as err:
        raise EvaluationError(f"{run_dir}: cannot rebuild the model: {err}") from err
    model = model.to(device).eval()
    with torch.no_grad():
        vectors = model.item_vectors().detach().float().cpu().numpy()[1:]     # (n_items, d)
    to_source, to_dataset = row_maps(dataset_item_ids, info.vocab.get("items", [])[1:])
    profile_vocab = {f: {v: i for i, v in enumerate(values) if i > 0}
                     for f, values in info.vocab.get("user_profile", {}).items()}
    max_len = config_max_len(info.config, run_dir / "config.json", EvaluationError)
    retriever = MindRetriever(tower_capsule_fn(model.user_tower(), max_len, device), vectors,
                              to_source, to_dataset, tuple(profile_vocab), profile_vocab)
    return retriever, max_len


def run_source(run_dir: Path, split: str, data_override: Path | None, k1_dir: Path, device: str) -> EvalSource:
    """MIND of ``run_dir`` and, when trained, its K=1 baseline run in ``run_dir / k1_dir``."""
    if not run_dir.is_dir():
        raise EvaluationError(f"{run_dir}: no such run directory")
    config_path = run_dir / "config.json"
    data_cfg = read_json_file(config_path).get("data", {})
    ds = dataset_from_config(data_cfg, data_override, str(config_path), read_json_file(run_dir / "vocab.json"),
                             read_json_file(run_dir / "split.json"))
    item_ids = ds.items.tokens[1:]
    mind, max_len = run_retriever(run_dir, item_ids, device)
    retrievers, missing = {"MIND": mind}, {}
    k1 = run_dir / k1_dir
    if (k1 / "config.json").is_file():
        retrievers["MIND K=1"] = run_retriever(k1, item_ids, device)[0]
    else:
        missing["MIND K=1"] = f"no K=1 baseline run at {k1} (train one with `mind train ... --out {k1}`)"
    held = held_out_users(ds, split, max_len)
    run_metrics = read_json_file(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else {}
    info = {"kind": "run", "path": str(run_dir), "data": str(data_override or data_cfg.get("source")),
            "split": split, "n_users": len(held.histories), "n_items": held.n_items, "max_len": max_len,
            "run_metrics": {k: v for k, v in run_metrics.items() if k != "history"}}
    return EvalSource(held, retrievers, info, missing)


def bundle_source(bundle_dir: Path, split: str, data_override: Path | None, device: str) -> EvalSource:
    """A bundle's TorchScript tower and own FAISS index on the split of its saved data config."""
    try:
        bundle = load_bundle(latest_bundle(bundle_dir), device=device)
    except (BundleError, OSError) as err:
        raise EvaluationError(str(err)) from err
    data_cfg = bundle.manifest.get("data") or {}
    ds = dataset_from_config(data_cfg, data_override, str(bundle.path / "manifest.json"))
    held = held_out_users(ds, split, bundle.max_len)
    to_source, to_dataset = row_maps(ds.items.tokens[1:], bundle.item_ids)
    retriever = MindRetriever(tower_capsule_fn(bundle.tower, bundle.max_len, device), bundle.item_vectors,
                              to_source, to_dataset, bundle.profile_features, bundle.profile_vocab, bundle.index)
    info = {"kind": "bundle", "path": str(bundle.path), "model_version": bundle.model_version,
            "data": str(data_override or data_cfg.get("source")), "split": split,
            "n_users": len(held.histories), "n_items": held.n_items, "max_len": bundle.max_len,
            "index": bundle.manifest.get("index", {}).get("type"),
            "run_metrics": bundle.manifest.get("metrics", {})}
    missing = {"MIND K=1": "a bundle holds only the exported model; evaluate its run (--run) for K=1"}
    return EvalSource(held, {"MIND": retriever}, info, missing)
