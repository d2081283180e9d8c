"""Streaming delimited text files as ``(line number, fields)`` and collecting the id and time
columns of an interaction file, with errors that name the file and the 1-based line."""
from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from model.data.interactions import DataFormatError, Interactions, make_interactions, parse_timestamp, require_id

Rows = Iterator[tuple[int, list[str]]]
UTF8_BOM = b"\xef\xbb\xbf"


def read_rows(path: Path, sep: str, *, encoding: str = "utf-8", quoted: bool = False) -> Rows:
    """Yield ``(line, fields)`` for every non-blank line of `path`.

    ``quoted=True`` parses CSV quoting (fields holding the separator, as in ml-latest's
    ``movies.csv``); otherwise each line is split on `sep` (which may be several characters,
    e.g. ``::``). Undecodable bytes raise `DataFormatError` naming the line.
    """
    with open(path, "rb") as handle:
        lines = _decoded_lines(handle, path, encoding)
        if quoted:
            reader = csv.reader(lines, delimiter=sep, strict=True)
            try:
                for fields in reader:
                    if any(f.strip() for f in fields):
                        yield reader.line_num, fields
            except csv.Error as err:
                raise DataFormatError(path, reader.line_num, f"bad CSV quoting ({err})") from None
        else:
            for line, text in enumerate(lines, 1):
                text = text.rstrip("\r\n")
                if text.strip():
                    yield line, text.split(sep)


def _decoded_lines(handle, path: Path, encoding: str) -> Iterator[str]:
    """The lines of a binary file as text, an undecodable line raising with its number."""
    for line, raw in enumerate(handle, 1):
        if line == 1 and raw.startswith(UTF8_BOM):  # spreadsheet exports start with one
            raw = raw[len(UTF8_BOM):]
        try:
            yield raw.decode(encoding)
        except UnicodeDecodeError as err:
            raise DataFormatError(path, line, f"not valid {encoding} text ({err.reason})") from None


def header_positions(path: Path, line: int, header: list[str], wanted: dict[str, str | None]) -> dict[str, int | None]:
    """Positions of the `wanted` header columns ({role: column name or None});
    a named column that is missing raises naming the file, the line and the columns found."""
    positions: dict[str, int | None] = {}
    for role, name in wanted.items():
        if name is None:
            positions[role] = None
        elif name in header:
            positions[role] = header.index(name)
        else:
            raise DataFormatError(path, line, f"missing required column {name!r} ({role}); header has {header}")
    return positions


def collect(rows: Rows, path: Path, n_fields: int, user_at: int, item_at: int,
            time_at: int | None) -> tuple[list[str], list[str], list[float]]:
    """The user, item and time columns of `rows`, each row checked for its column count,
    non-empty ids and a numeric timestamp. Without a time column the file order is the time."""
    users: list[str] = []
    items: list[str] = []
    times: list[float] = []
    for line, fields in rows:
        if len(fields) != n_fields:
            raise DataFormatError(path, line, f"expected {n_fields} columns, found {len(fields)}")
        users.append(require_id(fields[user_at], "user id", path, line))
        items.append(require_id(fields[item_at], "item id", path, line))
        if time_at is None:
            times.append(float(len(times)))
        else:
            times.append(parse_timestamp(fields[time_at], path, line))
    return users, items, times


def first_row(rows: Rows, path: Path) -> tuple[int, list[str]]:
    """The first non-blank row; an empty file raises."""
    for line, fields in rows:
        return line, fields
    raise DataFormatError(path, 1, "empty file")


def interactions_or_error(path: Path, columns: tuple[list[str], list[str], list[float]],
                          user_profiles: dict | None = None, item_features: dict | None = None) -> Interactions:
    """`Interactions` from collected columns; a file without data rows raises."""
    users, items, times = columns
    if not users:
        raise DataFormatError(path, None, "no interaction rows")
    return make_interactions(users, items, times, user_profiles, item_features)
