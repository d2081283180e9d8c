"""The serving bundle: write it atomically, load it with every file verified; the only
``model/`` module the service imports. Its files: model.bundle_files (docs/architecture.md).

``write_bundle(out_dir, ...)`` writes into a hidden directory beside its target and renames
it into place, so a crash never leaves a half bundle where a loader looks; where it lands (at
``out_dir``, replacing a bundle there only with ``force``, or as a new version inside a bundle
root, named so that names sort by time): docs/architecture.md, "Bundle directory".
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import faiss
import numpy as np
import torch

from model.artifacts import move_into_place, staging_dir
from model.bundle_files import (CATEGORIES_KEY, FILES, FORMAT_VERSION, INDEX, ITEM_IDS, ITEM_VECTORS,
                                MANIFEST, OPTIONAL_FILES, POPULARITY, PROFILE_VOCAB, TOWER, TOWER_PROGRAM,
                                BundleError, ItemCategories, read_index, read_item_categories,
                                read_item_vectors, read_json, read_manifest, read_popularity, sha256_of,
                                verify_files, write_item_categories)
from model.index import apply_params, build_index, perturbed_queries, tune_index
from model.tower_format import (EXPORT, TORCHSCRIPT, TOWER_FORMATS, load_tower, probe_tower,
                                save_torchscript, script_tower, tower_device)

UNKNOWN_VALUE = "<unk>"
BUNDLE_DIR_MODE = 0o755
NOT_MODEL_CONTENT = ("metrics", "data")   # manifest fields that leave model_version alone

__all__ = ["FORMAT_VERSION", "MANIFEST", "Bundle", "BundleError", "ItemCategories", "latest_bundle",
           "load_bundle", "prepare_histories", "write_bundle"]


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle. ``item_vectors`` is memory-mapped (read-only), not a copy."""
    path: Path
    manifest: dict
    model_version: str
    tower: torch.nn.Module                  # on `device`, eval mode: TorchScript or export program
    device: torch.device
    index: faiss.Index                      # ids = rows, search params from the manifest
    item_vectors: np.ndarray                # (n_items, d) float32, row r = item index r+1
    item_ids: tuple[str, ...]               # row -> external id
    row_of: dict[str, int]                  # external id -> row
    profile_features: tuple[str, ...]       # column order of the tower's profile input
    profile_vocab: dict[str, dict[str, int]]  # feature -> value -> index (0 = unknown)
    popular_rows: np.ndarray                # (n_items,) int64, most popular first
    dim: int
    n_interests: int
    max_len: int
    tower_format: str = TORCHSCRIPT         # which tower file `tower` was loaded from
    categories: ItemCategories | None = None  # item_categories.npy; None = the bundle has none


def prepare_histories(histories: Sequence[Sequence[int]], max_len: int) -> np.ndarray:
    """Item-index histories (``row + 1``, most recent last) left-padded with 0 to (B, max_len)
    int64, keeping the most recent ``max_len`` items."""
    out = np.zeros((len(histories), max_len), dtype=np.int64)  # (B, max_len)
    for b, history in enumerate(histories):
        recent = np.asarray(history, dtype=np.int64)[-max_len:] if max_len else []
        if len(recent):
            out[b, max_len - len(recent):] = recent
    return out


def _complete_popularity(popular_rows: Sequence[int], n_items: int) -> list[int]:
    """``popular_rows`` then every row it misses, in row order: a full (n_items,) ranking."""
    seen = dict.fromkeys(int(r) for r in popular_rows)
    if any(not 0 <= r < n_items for r in seen):
        raise ValueError(f"popular_rows must lie in [0, {n_items})")
    return list(seen) + [r for r in range(n_items) if r not in seen]


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1, sort_keys=False), encoding="utf-8")


def _write_payload(tmp: Path, *, tower, item_vectors: np.ndarray, item_ids: Sequence[str],
                   profile_vocab: Mapping[str, Sequence[str]], popular_rows: Sequence[int],
                   index_type: str | None, tune_queries: np.ndarray | None, tower_program=None,
                   item_categories: ItemCategories | None = None) -> tuple[dict, dict | None]:
    """Write every file but the manifest into ``tmp``; return the manifest's index entry and
    its item_categories entry (None without categories)."""
    save_torchscript(tower, tmp / TOWER)
    if tower_program is not None:
        torch.export.save(tower_program, str(tmp / TOWER_PROGRAM))
    categories = (None if item_categories is None
                  else write_item_categories(tmp, item_categories, len(item_ids)))
    np.save(tmp / ITEM_VECTORS, item_vectors, allow_pickle=False)
    _write_json(tmp / ITEM_IDS, list(item_ids))
    _write_json(tmp / PROFILE_VOCAB, {f: [UNKNOWN_VALUE] + list(v[1:]) for f, v in profile_vocab.items()})
    _write_json(tmp / POPULARITY, _complete_popularity(popular_rows, len(item_ids)))
    index, kind = build_index(item_vectors, index_type)
    queries = tune_queries if tune_queries is not None else perturbed_queries(item_vectors)
    tuned = tune_index(index, item_vectors, queries)
    faiss.write_index(index, str(tmp / INDEX))
    return {"type": kind, "params": tuned["params"], "tuned_recall_at_k": tuned["recall_at_k"],
            "tuned_k": tuned["k"], "ntotal": int(index.ntotal)}, categories


def _refuse_unforced(out_dir: Path, force: bool) -> None:  # before any work
    if not force:
        raise FileExistsError(f"{out_dir} already holds a bundle; pass force=True (--force) "
                              f"to replace it, or give a bundle root to add a version")


def _resolve_target(out_dir: Path, created: datetime, model_version: str, force: bool) -> Path:
    if not out_dir.exists():
        return out_dir
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    if (out_dir / MANIFEST).exists():
        _refuse_unforced(out_dir, force)
        return out_dir
    return out_dir / f"{created.strftime('%Y%m%dT%H%M%S.%fZ')}-{model_version[:12]}"


def model_version_of(tower: torch.jit.ScriptModule, files: Mapping[str, str], fields: Mapping) -> str:
    """Content hash of the tower's tensors, every other file's sha256 and the manifest fields.
    Not of the tower files: TorchScript embeds a random serialization id and name mangling
    that change on every save (and the export program holds the same tensors)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tower.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    other = {name: sha for name, sha in files.items() if name not in (TOWER, TOWER_PROGRAM)}
    digest.update(json.dumps([other, fields], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _manifest(tmp: Path, tower, *, created: datetime, index_entry: dict, **fields) -> dict:
    """The manifest of the files in ``tmp`` (see ``model_version_of``)."""
    names = FILES + tuple(name for name in OPTIONAL_FILES if (tmp / name).is_file())
    files = {name: sha256_of(tmp / name) for name in names}
    served = {k: v for k, v in fields.items() if k not in NOT_MODEL_CONTENT}
    model_version = model_version_of(tower, files, dict(served, index_params=index_entry["params"]))
    return {"format_version": FORMAT_VERSION, "model_version": model_version,
            "created_at": created.isoformat(), **fields, "index": index_entry, "files": files,
            "file_bytes": {name: (tmp / name).stat().st_size for name in names}}


def write_bundle(out_dir, *, tower, item_vectors, item_ids, profile_vocab, popular_rows,
                 hyperparameters, metrics, index_type=None, max_len: int | None = None,
                 data: Mapping | None = None, tune_queries: np.ndarray | None = None,
                 force: bool = False, tower_program: torch.export.ExportedProgram | None = None,
                 item_categories: ItemCategories | None = None) -> Path:
    """Write a bundle atomically; returns the directory it landed in.

    tower: a scripted (or scriptable) module honouring the tower contract. item_vectors:
    (n_items, d) float32, row 0 = item index 1. item_ids: n_items unique ids, by row.
    profile_vocab: {feature: [values in index order]} (entry 0 becomes "<unk>"), in the tower's
    column order. popular_rows: most popular first (completed to all rows). max_len: default
    ``hyperparameters["max_len"]``. data: the run's data config. tune_queries: (Q, d) capsules
    to tune an approximate index on (default: perturbed items). tower_program: the
    torch.export program, or None. item_categories: one category per row, or None.
    """
    out_dir = Path(out_dir)
    vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)   # (n_items, d)
    ids = [str(i) for i in item_ids]
    max_len = int(max_len if max_len is not None else hyperparameters["max_len"])
    if vectors.ndim != 2 or len(ids) != len(vectors) or len(set(ids)) != len(ids):
        raise ValueError(f"item_vectors {vectors.shape} must be (n_items, d) with n_items unique item_ids ({len(ids)})")
    is_bundle = (out_dir / MANIFEST).exists()
    if is_bundle:
        _refuse_unforced(out_dir, force)
    tower = script_tower(tower).eval()
    n_interests, dim = probe_tower(tower, max_len, len(profile_vocab), tower_device(tower))
    if dim != vectors.shape[1]:
        raise ValueError(f"tower output d={dim} != item_vectors d={vectors.shape[1]}")
    parent = out_dir if out_dir.is_dir() and not is_bundle else out_dir.parent
    tmp = staging_dir(parent / "bundle")   # hidden: `latest_bundle` skips it
    tmp.chmod(BUNDLE_DIR_MODE)   # mkdtemp makes it 0700; a service may run as another user
    try:
        index_entry, categories = _write_payload(
            tmp, tower=tower, item_vectors=vectors, item_ids=ids, profile_vocab=profile_vocab,
            popular_rows=popular_rows, index_type=index_type, tune_queries=tune_queries,
            tower_program=tower_program, item_categories=item_categories)
        created = datetime.now(timezone.utc)
        optional = {} if categories is None else {CATEGORIES_KEY: categories}
        manifest = _manifest(tmp, tower, created=created, index_entry=index_entry,
                             hyperparameters=dict(hyperparameters), dim=dim, n_interests=n_interests,
                             max_len=max_len, n_items=len(ids), profile_features=list(profile_vocab),
                             metrics=dict(metrics or {}), data=dict(data or {}), **optional)
        _write_json(tmp / MANIFEST, manifest)
        target = _resolve_target(out_dir, created, manifest["model_version"], force)
        move_into_place(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def latest_bundle(root) -> Path:
    """``root`` itself if it is a bundle, else its newest version subdirectory."""
    root = Path(root)
    if (root / MANIFEST).is_file():
        return root
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle or bundle root")
    versions = sorted(p for p in root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file())
    if not versions:
        raise BundleError(f"{root}: holds no bundle ({MANIFEST} not found in it or any subdirectory)")
    return versions[-1]


def _check_item_side(path: Path, manifest: dict, vectors: np.ndarray, index: faiss.Index,
                     item_ids: list) -> None:
    """Dimensions and id map agree with the manifest: d, n_items, unique string ids."""
    n_items, dim = manifest["n_items"], manifest["dim"]
    if vectors.shape != (n_items, dim):
        raise BundleError(f"{path / ITEM_VECTORS}: shape {vectors.shape} != manifest ({n_items}, {dim})")
    if index.d != dim or index.ntotal != n_items:
        raise BundleError(f"{path / INDEX}: d={index.d}, ntotal={index.ntotal} != manifest d={dim}, n_items={n_items}")
    if len(item_ids) != n_items or not all(isinstance(i, str) for i in item_ids):
        raise BundleError(f"{path / ITEM_IDS}: expected {n_items} string ids, got {len(item_ids)}")
    if len(set(item_ids)) != n_items:
        raise BundleError(f"{path / ITEM_IDS}: external ids are not unique")


def _load_tower(path: Path, manifest: dict, device: torch.device, tower_format: str) -> torch.nn.Module:
    file = path / (TOWER_PROGRAM if tower_format == EXPORT else TOWER)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BundleError(f"{file}: device {device} requested but CUDA is not available here")
    try:
        tower = load_tower(file, tower_format, device)
        shape = probe_tower(tower, manifest["max_len"], len(manifest["profile_features"]), device)
    except (RuntimeError, ValueError, KeyError) as err:
        raise BundleError(f"{file}: cannot load or run the tower: {err}") from err
    if shape != (manifest["n_interests"], manifest["dim"]):
        raise BundleError(f"{file}: outputs (K, d)={shape} != manifest "
                          f"({manifest['n_interests']}, {manifest['dim']})")
    return tower


def load_bundle(path, device="cpu", tower_format: str = TORCHSCRIPT) -> Bundle:
    """Load a bundle (or the newest version in a bundle root) onto ``device``: every file's
    size and sha256 are checked before anything is parsed, then dimensions and a probe forward
    of the tower. Raises BundleError naming the offending file."""
    path = latest_bundle(path)
    device = torch.device(device)
    manifest = read_manifest(path)
    if tower_format not in TOWER_FORMATS:
        raise ValueError(f"unknown tower format {tower_format!r}; known: {TOWER_FORMATS}")
    if TOWER_PROGRAM not in manifest["files"]:   # written before the export program existed
        tower_format = TORCHSCRIPT
    verify_files(path, manifest)
    vectors = read_item_vectors(path / ITEM_VECTORS)
    index = read_index(path / INDEX)
    item_ids = read_json(path / ITEM_IDS, list)
    _check_item_side(path, manifest, vectors, index, item_ids)
    categories = read_item_categories(path, manifest)
    apply_params(index, manifest["index"].get("params", {}))
    vocab = read_json(path / PROFILE_VOCAB, dict)
    features = tuple(manifest["profile_features"])
    if tuple(vocab) != features:
        raise BundleError(f"{path / PROFILE_VOCAB}: features {list(vocab)} != manifest {list(features)}")
    return Bundle(
        path=path, manifest=manifest, model_version=manifest["model_version"],
        tower=_load_tower(path, manifest, device, tower_format), device=device, index=index,
        item_vectors=vectors, item_ids=tuple(item_ids),
        row_of={item: row for row, item in enumerate(item_ids)}, profile_features=features,
        profile_vocab={f: {v: i for i, v in enumerate(values) if i} for f, values in vocab.items()},
        popular_rows=read_popularity(path, manifest["n_items"]), dim=manifest["dim"],
        n_interests=manifest["n_interests"], max_len=manifest["max_len"], tower_format=tower_format,
        categories=categories)
