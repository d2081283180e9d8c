"""`resolve_data_source`: what ``--data`` means. A path is used as is; a dataset name is
looked up locally first and fetched or generated only when no copy exists.

Lookup for a name (``ml-100k``, ``synthetic``, or another `download.MOVIELENS_FILES` name):
1. ``$MIND_DATA_DIR/<name>/`` (``<name>.inter``, else the MovieLens file name),
2. for ``ml-100k``: ``$MIND_SHARED_DATA/ml-100k/ml-100k.inter``, by default
   ``../shared/data/`` next to the repository (the development machines' copy),
3. the cache folder (``$MIND_DATA_DIR`` if set, else ``$XDG_CACHE_HOME/mind-recall`` or
   ``~/.cache/mind-recall``): ``synthetic`` is generated there (RecBole atomic files, read by
   the same loader as user data); MovieLens names are downloaded there from GroupLens.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from model.data.download import MOVIELENS_FILES, fetch_movielens
from model.data.synthetic import GENERATOR_VERSION, SyntheticSpec, generate, write_recbole

REPO_ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC = "synthetic"


def cache_dir() -> Path:
    """Where fetched and generated datasets are kept."""
    if os.environ.get("MIND_DATA_DIR"):
        return Path(os.environ["MIND_DATA_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mind-recall"


def resolve_data_source(spec) -> Path:
    """A local interaction file (or folder) for `spec`: an existing path, or a dataset name
    (see the module docstring). Raises FileNotFoundError for anything else."""
    path = Path(spec)
    if path.exists():
        return path
    name = str(spec)
    if name != SYNTHETIC and name not in MOVIELENS_FILES:
        raise FileNotFoundError(f"{spec}: no such file or folder, and not a dataset name "
                                f"({', '.join([SYNTHETIC, *MOVIELENS_FILES])})")
    for candidate in _local_candidates(name):
        if candidate.is_file():
            return candidate
    if name == SYNTHETIC:
        return generate_synthetic(cache_dir())
    return fetch_movielens(name, cache_dir())


def generate_synthetic(root: Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """The default synthetic dataset as ``root/synthetic-<hash>/synthetic.inter``, generated
    once (the hash covers the spec and the generator version)."""
    digest = hashlib.sha256(repr((GENERATOR_VERSION, asdict(spec))).encode()).hexdigest()[:10]
    folder = root / f"{SYNTHETIC}-{digest}"
    inter = folder / f"{SYNTHETIC}.inter"
    if inter.is_file():
        return inter
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".synthetic-"))
    try:
        write_recbole(generate(spec), tmp, SYNTHETIC)
        if not folder.exists():
            tmp.rename(folder)  # atomic: concurrent runs never see a half-written folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return inter


def _local_candidates(name: str) -> list[Path]:
    """Existing copies of dataset `name` to try, in order."""
    found = []
    if os.environ.get("MIND_DATA_DIR"):
        folder = Path(os.environ["MIND_DATA_DIR"]) / name
        found += [folder / f"{name}.inter"]
        if name in MOVIELENS_FILES:
            found += [folder / Path(MOVIELENS_FILES[name]).name, Path(os.environ["MIND_DATA_DIR"]) / MOVIELENS_FILES[name]]
    if name == "ml-100k":
        shared = os.environ.get("MIND_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data"
        found.append(Path(shared) / "ml-100k" / "ml-100k.inter")
    if name in MOVIELENS_FILES:
        found.append(cache_dir() / MOVIELENS_FILES[name])
    return found
