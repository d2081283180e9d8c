"""The files of a bundle: names, checksums and safe readers that raise BundleError.

Every reader names the file it failed on. No reader here unpickles: arrays are read with
``allow_pickle=False``, everything else is JSON or FAISS' own format. The tower files
(TorchScript, and the optional torch.export program) are loaded by ``model.bundle`` only after
``verify_files`` has checked their sha256.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import faiss
import numpy as np

from model.jsonfile import read_json as read_json_file

MANIFEST = "manifest.json"
TOWER = "user_tower.pt"
ITEM_VECTORS = "item_vectors.npy"
ITEM_IDS = "item_ids.json"
INDEX = "index.faiss"
PROFILE_VOCAB = "profile_vocab.json"
POPULARITY = "popularity.json"
TOWER_PROGRAM = "user_tower.pt2"   # torch.export program of the tower (model.tower_format)
FILES = (TOWER, ITEM_VECTORS, ITEM_IDS, INDEX, PROFILE_VOCAB, POPULARITY)  # all but the manifest
# Files a bundle may carry (bundles written before them still load); verified when recorded.
OPTIONAL_FILES = (TOWER_PROGRAM,)
CHUNK_BYTES = 1 << 20
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)


class BundleError(Exception):
    """A bundle cannot be used; the message names the offending file."""


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(path: Path, manifest: dict) -> None:
    """Check that every bundle file (and every optional one the manifest records) exists with
    the size and sha256 the manifest records."""
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


def read_json(file: Path, expected_type: type):
    """Parse a bundle JSON file whose top level must be ``expected_type`` (dict or list)."""
    return read_json_file(file, expected_type, BundleError)


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
