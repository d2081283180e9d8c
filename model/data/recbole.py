"""RecBole atomic files: ``<stem>.inter`` with typed headers (``user_id:token item_id:token
rating:float timestamp:float``), optional ``<stem>.user`` / ``<stem>.item`` side files in the
same folder. ``token_seq`` cells are space-separated token lists.

Default side features (see `interactions.is_dense_enough` for the cardinality rule):
users: the ``token`` columns of ``.user`` except the id (ml-100k: age, gender, occupation;
zip_code is too sparse); items: the ``token_seq`` columns of ``.item`` (ml-100k: ``class``,
the genres; ``movie_title`` words are too sparse). Name columns to override.
"""
from __future__ import annotations

from pathlib import Path

from model.data.interactions import DataFormatError, Interactions, profile_values
from model.data.rows import collect, first_row, header_positions, interactions_or_error, read_rows
from model.data.sidefiles import SideTable, choose, side_table

USER_COLUMN_GUESSES = ("user_id", "user", "userId", "uid")
ITEM_COLUMN_GUESSES = ("item_id", "item", "itemId", "movieId", "iid")
TIME_COLUMN_GUESSES = ("timestamp", "time", "ts")
KNOWN_TYPES = ("token", "token_seq", "float", "float_seq")


def parse_header(path: Path, line: int, fields: list[str]) -> tuple[list[str], list[str]]:
    """Typed header ``name:type`` cells -> (names, types); an untyped cell is a ``token``."""
    names, types = [], []
    for cell in fields:
        name, _, kind = cell.strip().partition(":")
        kind = kind or "token"
        if kind not in KNOWN_TYPES:
            raise DataFormatError(path, line, f"column {cell!r} has unknown type {kind!r} (expected one of {KNOWN_TYPES})")
        names.append(name)
        types.append(kind)
    return names, types


def guess(names: list[str], given: str | None, guesses: tuple[str, ...]) -> str | None:
    """The given column name, else the first guess present in `names`, else None."""
    if given is not None:
        return given
    return next((g for g in guesses if g in names), None)


def load_atomic(path: Path, *, user_col=None, item_col=None, time_col=None, sep=None,
                user_features=None, item_features=None) -> Interactions:
    """Load ``<stem>.inter`` and its side files (see the module docstring)."""
    sep = sep or "\t"
    rows = read_rows(path, sep)
    line, header = first_row(rows, path)
    names, _ = parse_header(path, line, header)
    wanted = {"user": guess(names, user_col, USER_COLUMN_GUESSES) or USER_COLUMN_GUESSES[0],
              "item": guess(names, item_col, ITEM_COLUMN_GUESSES) or ITEM_COLUMN_GUESSES[0],
              "time": guess(names, time_col, TIME_COLUMN_GUESSES)}
    at = header_positions(path, line, names, wanted)
    columns = collect(rows, path, len(names), at["user"], at["item"], at["time"])
    user_table = read_atomic_side(path.with_suffix(".user"), sep, wanted["user"])
    item_table = read_atomic_side(path.with_suffix(".item"), sep, wanted["item"])
    profiles = choose(user_table, user_features, "token", path.with_suffix(".user"))
    features = choose(item_table, item_features, "token_seq", path.with_suffix(".item"))
    return interactions_or_error(path, columns, profile_values(profiles), features)


def read_atomic_side(path: Path, sep: str, id_name: str) -> SideTable | None:
    """A ``.user``/``.item`` file as a `SideTable`, or None when the file is absent.
    The id column is the one named like the interaction file's id column, else the first."""
    if not path.is_file():
        return None
    rows = read_rows(path, sep)
    line, header = first_row(rows, path)
    names, types = parse_header(path, line, header)
    id_at = names.index(id_name) if id_name in names else 0
    categorical = [(i, n, t) for i, (n, t) in enumerate(zip(names, types)) if t in ("token", "token_seq") and i != id_at]

    def parse(fields: list[str]) -> dict[str, list[str]]:
        cells = {}
        for i, name, kind in categorical:
            text = fields[i].strip()
            cells[name] = text.split() if kind == "token_seq" else ([text] if text else [])
        return cells

    table = side_table(rows, path, len(names), id_at, parse)
    return SideTable(path, table, {n: t for _, n, t in categorical})
