"""The files of a bundle: names, checksums and readers that raise BundleError naming the file.

No reader here unpickles (arrays: ``allow_pickle=False``; else JSON or FAISS' format); the
tower files, the only ones that may carry pickle, are loaded by ``model.bundle`` only after
``verify_files`` has checked their sha256.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import faiss
import numpy as np

from model.artifacts import read_json as read_json_file
from model.retrieval import NO_CATEGORY

MANIFEST = "manifest.json"
TOWER = "user_tower.pt"
ITEM_VECTORS = "item_vectors.npy"
ITEM_IDS = "item_ids.json"
INDEX = "index.faiss"
PROFILE_VOCAB = "profile_vocab.json"
POPULARITY = "popularity.json"
TOWER_PROGRAM = "user_tower.pt2"   # torch.export program of the tower (model.tower_format)
ITEM_CATEGORIES = "item_categories.npy"   # (n_items,) int64 category of each row, -1 = none
CATEGORIES_KEY = "item_categories"   # manifest entry {"feature", "names", "items_with_category"}
FILES = (TOWER, ITEM_VECTORS, ITEM_IDS, INDEX, PROFILE_VOCAB, POPULARITY)  # all but the manifest
# Files a bundle may carry (bundles written before them still load); verified when recorded.
OPTIONAL_FILES = (TOWER_PROGRAM, ITEM_CATEGORIES)
CHUNK_BYTES = 1 << 20
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)


class BundleError(Exception):
    """A bundle cannot be used; the message names the offending file."""


read_json = partial(read_json_file, error=BundleError)   # (file, expected_type: dict or list)


@dataclass(frozen=True)
class ItemCategories:
    """One category per item row, for the diversity merge (model.retrieval.merge_diverse)."""
    feature: str             # the run's item side feature it was taken from (its first token)
    names: tuple[str, ...]
    of_row: np.ndarray       # (n_items,) int64 index into names, NO_CATEGORY (-1) = none


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(path: Path, manifest: dict) -> None:
    """Every bundle file (and each optional one the manifest records) has the recorded size and sha256."""
    recorded = manifest["files"]
    sizes = manifest.get("file_bytes", {})
    for name in FILES + tuple(n for n in OPTIONAL_FILES if n in recorded):
        file = path / name
        if name not in recorded:
            raise BundleError(f"{path / MANIFEST}: no checksum recorded for {name}")
        if not file.is_file():
            raise BundleError(f"{file}: missing")
        size = file.stat().st_size
        if name in sizes and size != sizes[name]:
            kind = "truncated" if size < sizes[name] else "larger than recorded"
            raise BundleError(f"{file}: {kind} ({size} bytes, manifest records {sizes[name]})")
        if sha256_of(file) != recorded[name]:
            raise BundleError(f"{file}: sha256 mismatch (file changed since export)")


def read_item_vectors(file: Path) -> np.ndarray:
    """Memory-map the (n_items, d) float32 item vectors read-only (no pickle, no copy)."""
    try:
        vectors = np.load(file, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise BundleError(f"{file}: not a readable .npy array: {err}") from err
    if vectors.dtype != np.float32 or vectors.ndim != 2:
        raise BundleError(f"{file}: expected a 2-d float32 array, got {vectors.dtype} {vectors.shape}")
    return vectors


def read_index(file: Path) -> faiss.Index:
    """Read a FAISS index file."""
    try:
        return faiss.read_index(str(file))
    except RuntimeError as err:
        raise BundleError(f"{file}: not a readable FAISS index: {err}") from err


def read_manifest(path: Path) -> dict:
    """The parsed manifest of the bundle at ``path``, of a supported format version."""
    manifest = read_json(path / MANIFEST, dict)
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise BundleError(f"{path / MANIFEST}: unsupported format_version {version!r} "
                          f"(this code reads {SUPPORTED_FORMAT_VERSIONS})")
    missing = [k for k in ("model_version", "dim", "n_interests", "max_len", "n_items",
                           "profile_features", "index", "files") if k not in manifest]
    if missing:
        raise BundleError(f"{path / MANIFEST}: missing keys {missing}")
    wrong = [k for k in ("dim", "n_interests", "max_len", "n_items")
             if not isinstance(manifest[k], int) or manifest[k] < 1]
    if wrong or not isinstance(manifest["files"], dict) or not isinstance(manifest["index"], dict):
        raise BundleError(f"{path / MANIFEST}: malformed entries {wrong or ['files/index']}")
    return manifest


def read_popularity(path: Path, n_items: int) -> np.ndarray:
    """(n_items,) int64 rows, most popular first, each in [0, n_items)."""
    try:
        rows = np.asarray(read_json(path / POPULARITY, list), dtype=np.int64)  # (n_items,)
    except (ValueError, TypeError, OverflowError):
        rows = np.zeros((0, 0), dtype=np.int64)   # reported below
    if rows.ndim != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= n_items)):
        raise BundleError(f"{path / POPULARITY}: rows must be a list of ints in [0, {n_items})")
    return rows


def read_item_categories(path: Path, manifest: dict) -> ItemCategories | None:
    """The bundle's item categories (read whole, after ``verify_files``), or None without them
    (the manifest's entry and its ``files`` record come together or not at all)."""
    entry, recorded = manifest.get(CATEGORIES_KEY), ITEM_CATEGORIES in manifest["files"]
    if entry is None and not recorded:
        return None
    if entry is None or not recorded:
        raise BundleError(f"{path / MANIFEST}: {CATEGORIES_KEY!r} and files[{ITEM_CATEGORIES!r}] "
                          f"must be recorded together")
    if (not isinstance(entry, dict) or not isinstance(entry.get("feature"), str)
            or not isinstance(entry.get("names"), list) or not all(isinstance(n, str) for n in entry["names"])):
        raise BundleError(f"{path / MANIFEST}: malformed {CATEGORIES_KEY!r} entry "
                          f"(expected {{'feature': str, 'names': [str, ...]}})")
    file, n_items, n_names = path / ITEM_CATEGORIES, manifest["n_items"], len(entry["names"])
    try:
        of_row = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise BundleError(f"{file}: not a readable .npy array: {err}") from err
    if of_row.dtype.kind not in "iu" or of_row.shape != (n_items,):
        raise BundleError(f"{file}: expected ({n_items},) integers (one per item row), "
                          f"got {of_row.dtype} {of_row.shape}")
    if len(of_row) and (of_row.min() < NO_CATEGORY or of_row.max() >= n_names):
        raise BundleError(f"{file}: categories must lie in [{NO_CATEGORY}, {n_names}) "
                          f"({n_names} names in the manifest)")
    return ItemCategories(entry["feature"], tuple(entry["names"]), of_row.astype(np.int64))


def write_item_categories(directory: Path, categories: ItemCategories, n_items: int) -> dict:
    """Write ``ITEM_CATEGORIES`` into ``directory`` (ValueError for an array
    ``read_item_categories`` would refuse); returns its manifest entry."""
    of_row = np.asarray(categories.of_row)
    if of_row.dtype.kind not in "iu" or of_row.shape != (n_items,):
        raise ValueError(f"item categories must be ({n_items},) integers, got {of_row.dtype} {of_row.shape}")
    if len(of_row) and (of_row.min() < NO_CATEGORY or of_row.max() >= len(categories.names)):
        raise ValueError(f"item categories must lie in [{NO_CATEGORY}, {len(categories.names)})")
    np.save(directory / ITEM_CATEGORIES, of_row.astype(np.int64), allow_pickle=False)
    return {"feature": categories.feature, "names": list(categories.names),
            "items_with_category": int((of_row != NO_CATEGORY).sum())}
