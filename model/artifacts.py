"""The files of runs and bundles: one JSON reader (each caller's own error type) and one
atomic directory swap."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

JSON_NAMES = {dict: "object", list: "array"}


def read_json(path: Path, expected_type: type, error: type[Exception], missing: str = "missing") -> Any:
    """Parse ``path``, whose top level must be ``expected_type`` (dict or list).

    A missing file, bad JSON or another top-level type raises ``error`` with a message that
    starts with the path; ``missing`` words the missing-file case.
    """
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise error(f"{path}: {missing}") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{path}: not valid JSON: {err}") from err
    if not isinstance(value, expected_type):
        expected = JSON_NAMES.get(expected_type, expected_type.__name__)
        raise error(f"{path}: expected a JSON {expected}, got {type(value).__name__}")
    return value


def staging_dir(target: Path) -> Path:
    """A fresh hidden directory beside ``target`` to write into before `move_into_place`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))


def move_into_place(staged: Path, target: Path) -> None:
    """Rename the complete directory ``staged`` to ``target`` (beside it: the same filesystem,
    so the rename is atomic). An existing ``target`` is moved aside first and deleted only
    once the new one is in place: a reader finds the old or the new one, never a half."""
    if not target.exists():
        os.replace(staged, target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, retired / target.name)
    os.replace(staged, target)
    shutil.rmtree(retired, ignore_errors=True)
