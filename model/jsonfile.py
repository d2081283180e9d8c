"""Reading the JSON files of runs and bundles: one reader, each caller's own error type."""
from __future__ import annotations

import json
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
