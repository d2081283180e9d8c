"""Generic interaction tables: CSV / TSV with a header row, and Parquet (needs pyarrow).

Columns are given (`user_col`, `item_col`, `time_col`) or guessed case-insensitively from
common names (user/user_id/userId, item/item_id/movieId, timestamp/time/ts). Without a time
column the file order is the time. Side features come from the same table, only when named:
a user feature takes the user's first row's value; an item feature's cell is a
``|``-separated token list (the item's first row wins).
"""
from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

from model.data.interactions import DataFormatError, Interactions, make_interactions, parse_timestamp, require_id
from model.data.rows import first_row, read_rows

USER_GUESSES = ("user", "user_id", "userid", "uid", "visitorid", "customer_id")
ITEM_GUESSES = ("item", "item_id", "itemid", "movieid", "iid", "product_id", "productid")
TIME_GUESSES = ("timestamp", "time", "ts", "datetime", "date", "event_time")
ITEM_TOKEN_SEP = "|"


def resolve_columns(path: Path, line: int, header: list[str], user_col, item_col, time_col) -> dict[str, str | None]:
    """{role: header name} for user, item and time (time may be None); raises naming the
    missing column and the header found."""
    lowered = {h.lower(): h for h in header}

    def pick(role: str, given: str | None, guesses: tuple[str, ...], required: bool) -> str | None:
        if given is not None:
            if given not in header:
                raise DataFormatError(path, line, f"missing required column {given!r} ({role}); header has {header}")
            return given
        found = next((lowered[g] for g in guesses if g in lowered), None)
        if found is None and required:
            raise DataFormatError(path, line, f"missing required {role} column: none of {list(guesses)} in header {header}; name it explicitly")
        return found

    return {"user": pick("user", user_col, USER_GUESSES, True),
            "item": pick("item", item_col, ITEM_GUESSES, True),
            "time": pick("time", time_col, TIME_GUESSES, False)}


def check_features(path: Path, line: int, header: list[str], names: list[str] | None) -> list[str]:
    """The requested side-feature columns, each required to be in the header."""
    missing = [n for n in names or () if n not in header]
    if missing:
        raise DataFormatError(path, line, f"missing requested feature column(s) {missing}; header has {header}")
    return list(names or ())


def load_delimited(path: Path, *, sep=None, user_col=None, item_col=None, time_col=None,
                   user_features=None, item_features=None) -> Interactions:
    """A CSV/TSV file with a header row (see the module docstring)."""
    sep = sep or _guess_sep(path)
    rows = read_rows(path, sep, quoted=sep == ",")  # TSV, like RecBole files, has no quoting
    line, header = first_row(rows, path)
    header = [h.strip() for h in header]
    names = resolve_columns(path, line, header, user_col, item_col, time_col)
    table = _Table(header, check_features(path, line, header, user_features),
                   check_features(path, line, header, item_features))
    for line, fields in rows:
        if len(fields) != len(header):
            raise DataFormatError(path, line, f"expected {len(header)} columns, found {len(fields)}")
        table.add(path, line, dict(zip(header, fields)), names)
    return table.finish(path)


def load_parquet(path: Path, *, user_col=None, item_col=None, time_col=None,
                 user_features=None, item_features=None, **_) -> Interactions:
    """A Parquet table; errors name the 1-based row as the line."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataFormatError(path, None, "reading Parquet needs pyarrow: pip install 'mind-recall[parquet]'") from None
    try:
        data = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for unreadable files
        raise DataFormatError(path, None, f"not a readable Parquet file ({err})") from None
    header = list(data.column_names)
    names = resolve_columns(path, 1, header, user_col, item_col, time_col)
    table = _Table(header, check_features(path, 1, header, user_features), check_features(path, 1, header, item_features))
    columns = {c: data.column(c).to_pylist() for c in {*[n for n in names.values() if n], *table.user_cols, *table.item_cols}}
    for row in range(data.num_rows):
        table.add(path, row + 1, {c: _text(v[row]) for c, v in columns.items()}, names)
    return table.finish(path)


class _Table:
    """Accumulates interaction columns and first-seen side features, row by row."""

    def __init__(self, header: list[str], user_cols: list[str], item_cols: list[str]):
        self.user_cols, self.item_cols = user_cols, item_cols
        self.users: list[str] = []
        self.items: list[str] = []
        self.times: list[float] = []
        self.profiles: dict[str, dict[str, str]] = {}
        self.features: dict[str, dict[str, list[str]]] = {}

    def add(self, path: Path, line: int, cells: dict[str, str], names: dict[str, str | None]) -> None:
        user = require_id(cells[names["user"]], "user id", path, line)
        item = require_id(cells[names["item"]], "item id", path, line)
        time_name = names["time"]
        self.times.append(float(len(self.times)) if time_name is None else parse_timestamp(cells[time_name], path, line))
        self.users.append(user)
        self.items.append(item)
        if self.user_cols and user not in self.profiles:
            self.profiles[user] = {c: cells[c].strip() for c in self.user_cols if cells[c].strip()}
        if self.item_cols and item not in self.features:
            self.features[item] = {c: [t.strip() for t in cells[c].split(ITEM_TOKEN_SEP) if t.strip()] for c in self.item_cols}

    def finish(self, path: Path) -> Interactions:
        if not self.users:
            raise DataFormatError(path, None, "no interaction rows")
        return make_interactions(self.users, self.items, self.times, self.profiles, self.features)


def _guess_sep(path: Path) -> str:
    """``,`` for .csv, tab for .tsv/.txt/others whose first line holds a tab."""
    if path.suffix.lower() == ".csv":
        return ","
    with open(path, encoding="utf-8", errors="replace") as handle:
        first = handle.readline()
    return "\t" if "\t" in first or path.suffix.lower() in (".tsv", ".tab") else ","


def _text(value) -> str:
    """A Parquet cell as text: None -> "", datetimes -> ISO-8601 (parsed back as time)."""
    if value is None:
        return ""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)
