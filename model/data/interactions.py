"""The loaded interaction log (`Interactions`), the loader error, and the side-feature rules
every reader shares.

External ids (users, items, feature values) are opaque strings. Timestamps are float64
seconds (or any monotone number); a log without a timestamp column gets its file order
(0, 1, 2, ...) as timestamps, so sequences then follow the file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

# A categorical side column is used by default only when it has at most
# max(MIN_DISTINCT_CAP, MAX_DISTINCT_FRACTION * rows) distinct values: ids-like columns
# (zip codes, titles split into words) are too sparse to learn an embedding per value.
MIN_DISTINCT_CAP = 100
MAX_DISTINCT_FRACTION = 0.1


class DataFormatError(ValueError):
    """A malformed interaction or side file. The message reads ``FILE:LINE: problem``
    (``FILE: problem`` when no single line is at fault); LINE is 1-based, header included."""

    def __init__(self, path: str | Path, line: int | None, problem: str):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True, eq=False)
class Interactions:
    """An interaction log, one row per event, in file order."""

    user_ids: np.ndarray  # (N,) object: str external user ids
    item_ids: np.ndarray  # (N,) object: str external item ids
    timestamps: np.ndarray  # (N,) float64
    user_profiles: dict[str, dict[str, str]] = field(default_factory=dict)  # user -> {feature: value}
    item_features: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # item -> {feature: [tokens]}

    def __len__(self) -> int:
        return len(self.user_ids)


def make_interactions(users: list[str], items: list[str], times: list[float],
                      user_profiles: dict | None = None, item_features: dict | None = None) -> Interactions:
    """Pack parallel column lists into an `Interactions` with the contract's dtypes."""
    return Interactions(
        user_ids=np.array(users, dtype=object),
        item_ids=np.array(items, dtype=object),
        timestamps=np.array(times, dtype=np.float64),
        user_profiles=user_profiles or {},
        item_features=item_features or {},
    )


def parse_timestamp(text: str, path: str | Path, line: int) -> float:
    """A number (unix seconds or any monotone value) or an ISO-8601 date/time -> float."""
    try:
        value = float(text)
    except ValueError:
        try:
            value = datetime.fromisoformat(text.strip()).timestamp()
        except ValueError:
            raise DataFormatError(path, line, f"timestamp {text!r} is neither a number nor an ISO-8601 date") from None
    if not math.isfinite(value):
        raise DataFormatError(path, line, f"timestamp {text!r} is not finite")
    return value


def require_id(text: str, what: str, path: str | Path, line: int) -> str:
    """A stripped, non-empty external id; raises naming the file and line otherwise."""
    value = text.strip()
    if not value:
        raise DataFormatError(path, line, f"empty {what}")
    return value


def is_dense_enough(n_distinct: int, n_rows: int) -> bool:
    """The default rule for using a categorical side column (see MIN_DISTINCT_CAP)."""
    return n_distinct <= max(MIN_DISTINCT_CAP, MAX_DISTINCT_FRACTION * n_rows)


def default_columns(table: dict[str, dict[str, list[str]]], candidates: list[str]) -> list[str]:
    """The candidate columns of a side table {row id: {column: [tokens]}} that pass
    `is_dense_enough`, in the given order."""
    chosen = []
    for column in candidates:
        values = {tok for row in table.values() for tok in row.get(column, ())}
        if values and is_dense_enough(len(values), len(table)):
            chosen.append(column)
    return chosen


def keep_columns(table: dict[str, dict[str, list[str]]], columns: list[str]) -> dict[str, dict[str, list[str]]]:
    """The side table restricted to `columns`, dropping empty token lists."""
    return {rid: {c: row[c] for c in columns if row.get(c)} for rid, row in table.items()}


def profile_values(table: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, str]]:
    """A user side table with single-token values as the contract's {user: {feature: value}}."""
    return {uid: {c: toks[0] for c, toks in row.items() if toks} for uid, row in table.items()}
