"""Shared fixtures. Real-data cases read ../shared/data (or $MIND_SHARED_DATA) and skip,
with a reason, where it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import model  # noqa: F401  (before any test loads faiss: names OpenBLAS's kernel, model/__init__.py)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MIND_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def ml100k_inter() -> Path:
    """Path of MovieLens-100k in RecBole atomic format; skips the test when it is absent."""
    path = SHARED_DATA / "ml-100k" / "ml-100k.inter"
    if not path.is_file():
        pytest.skip(f"real-data test: {path} not found (set MIND_SHARED_DATA to a folder holding ml-100k/)")
    return path
