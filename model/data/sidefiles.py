"""Side tables: per-user or per-item categorical columns read from a side file."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from model.data.interactions import DataFormatError, default_columns, keep_columns, require_id
from model.data.rows import Rows

# {row id: {column: [tokens]}}; a single-valued column holds a one-token list.
Table = dict[str, dict[str, list[str]]]


@dataclass(frozen=True)
class SideTable:
    path: Path
    rows: Table
    kinds: dict[str, str]  # column -> "token" (one value) or "token_seq" (a token list)


def side_table(rows: Rows, path: Path, n_fields: int, id_at: int,
               parse: Callable[[list[str]], dict[str, list[str]]]) -> Table:
    """{id: parse(fields)} over `rows`, each checked for its column count and a non-empty id.
    A repeated id keeps its first row."""
    table: Table = {}
    for line, fields in rows:
        if len(fields) != n_fields:
            raise DataFormatError(path, line, f"expected {n_fields} columns, found {len(fields)}")
        row_id = require_id(fields[id_at], "id", path, line)
        if row_id not in table:
            table[row_id] = parse(fields)
    return table


def choose(side: SideTable | None, requested: list[str] | None, default_kind: str,
           expected: Path) -> dict[str, dict[str, list[str]]]:
    """The side table restricted to the requested columns, or by default to the columns of
    `default_kind` that pass the cardinality rule. Requesting a column that is absent raises."""
    if side is None:
        if requested:
            raise DataFormatError(expected, None, f"features {requested} requested but this side file does not exist")
        return {}
    if requested is None:
        columns = default_columns(side.rows, [c for c, k in side.kinds.items() if k == default_kind])
    else:
        missing = [c for c in requested if c not in side.kinds]
        if missing:
            raise DataFormatError(side.path, 1, f"missing requested feature column(s) {missing}; categorical columns are {list(side.kinds)}")
        columns = list(requested)
    return keep_columns(side.rows, columns)
