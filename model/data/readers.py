"""The interaction-log formats `model.data.load_interactions` reads, and their side files (the
table of formats: docs/data.md, "Formats"; `detect_format` tells them apart).

A folder may hold exactly one interaction file. MovieLens side files are latin-1. RecBole
users get their ``token`` columns, items their ``token_seq`` columns, subject to
`model.data.is_dense_enough`. A generic table's side features are its own columns, taken from each
user's / item's first row; an item feature cell is a ``|``-separated token list.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from model.data.logs import (DataFormatError, Interactions, Invalid, SideTable, checked_columns, first_line,
                             from_columns, header_row, log_columns, log_kinds, pick_columns, read_rows, side_rows,
                             timestamps)

LATIN1 = "latin-1"
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western")
NO_GENRES = "(no genres listed)"
ITEM_TOKEN_SEP = "|"
TYPED_HEADER_MARKERS = (":token", ":float")
KNOWN_TYPES = ("token", "token_seq", "float", "float_seq")
PASSED_TYPES = (pa.types.is_string, pa.types.is_large_string, pa.types.is_dictionary, pa.types.is_integer,
                pa.types.is_floating)  # Parquet column types read as they are
MOVIELENS_AT = {"user": 0, "item": 1, "time": 3}  # user, item, rating, timestamp
GENRE_KIND = {"genre": "token_seq"}


def detect_format(path: Path) -> str:
    """The ``fmt`` name for `path` from its name, extension and first line."""
    name, suffix = path.name.lower(), path.suffix.lower()
    if name == "u.data":
        return "movielens-100k"
    if suffix == ".inter":
        return "recbole"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    first = first_line(path)
    if not first.strip():
        raise DataFormatError(path, 1, "empty file")
    if any(marker in first for marker in TYPED_HEADER_MARKERS):
        return "recbole"
    if "::" in first:
        return "movielens-dat"
    if suffix == ".csv":
        header = [h.strip() for h in first.split(",")]
        return "movielens-csv" if header[:2] == ["userId", "movieId"] and name == "ratings.csv" else "csv"
    if suffix in (".tsv", ".txt", ".tab"):
        return "tsv"
    raise DataFormatError(path, None, f"unknown format (name {path.name!r}, first line {first[:60]!r}); "
                                      f"pass fmt= one of {sorted(FORMATS)}")


# A reader: (path, sep, given columns, user_features, item_features) ->
#   (log, (user SideTable | None, its path), (item SideTable | None, its path))
def read_udata(path: Path, sep: str, *_):
    """ml-100k ``u.data`` (``user item rating timestamp``) with ``u.user`` / ``u.item``."""
    genres = _udata_genre_names(path.parent / "u.genre")
    return _movielens(path, sep, ("u.user", "|", {"age": 1, "gender": 2, "occupation": 3, "zip_code": 4}),
                      ("u.item", "|", 5 + len(genres)),
                      lambda f: {"genre": [g for g, flag in zip(genres, f[5:]) if flag.strip() == "1"]})


def read_dat(path: Path, sep: str, *_):
    """ml-1m / ml-10m ``ratings.dat`` with ``users.dat`` / ``movies.dat``."""
    return _movielens(path, sep, ("users.dat", sep, {"gender": 1, "age": 2, "occupation": 3, "zip_code": 4}),
                      ("movies.dat", sep, 3), lambda f: {"genre": _genre_list(f[2])})


def _movielens(path: Path, sep: str, user_file: tuple, item_file: tuple, genres_of):
    """A MovieLens log (user, item, rating, time) with its latin-1 side files, id first:
    `user_file` (name, sep, {column: position}), `item_file` (name, sep, fields a row)."""
    log, _ = log_columns(path, sep, 4, MOVIELENS_AT, encoding=LATIN1)
    (user_name, user_sep, at), (item_name, item_sep, n_fields) = user_file, item_file
    users = _movielens_side(path.parent / user_name, user_sep, 1 + len(at), dict.fromkeys(at, "token"),
                            lambda f: {n: [f[i].strip()] for n, i in at.items() if f[i].strip()})
    items = _movielens_side(path.parent / item_name, item_sep, n_fields, GENRE_KIND, genres_of)
    return log, (users, path.parent / user_name), (items, path.parent / item_name)


def read_latest_csv(path: Path, sep: str, given, user_features, item_features):
    """ml-latest ``ratings.csv`` (header ``userId,movieId,rating,timestamp``) with ``movies.csv``."""
    line, header = header_row(path, sep)
    names = pick_columns(path, line, header, {"user": "userId", "item": "movieId", "time": "timestamp"})
    log, _ = log_columns(path, sep, len(header), _positions(header, names), skip=line)
    movies, items = path.parent / "movies.csv", None
    if movies.is_file():
        movie_line, movie_header = header_row(movies, ",")
        wanted = {"item": "movieId", "genres": "genres"}
        at = _positions(movie_header, pick_columns(movies, movie_line, movie_header, wanted, roles=tuple(wanted)))
        items = _side_table(movies, ",", len(movie_header), at["item"], GENRE_KIND,
                            lambda f: {"genre": _genre_list(f[at["genres"]])}, skip=movie_line)
    return log, (None, path.parent / "users.csv"), (items, movies)


def read_atomic(path: Path, sep: str, given, user_features, item_features):
    """RecBole ``<stem>.inter`` (typed header) and its ``.user`` / ``.item`` side files."""
    line, header = header_row(path, sep)
    names, _ = _typed_header(path, line, header)
    chosen = pick_columns(path, line, names, given, default={"user": "user_id", "item": "item_id"})
    log, _ = log_columns(path, sep, len(names), _positions(names, chosen), skip=line)
    users = _atomic_side(path.with_suffix(".user"), sep, chosen["user"])
    items = _atomic_side(path.with_suffix(".item"), sep, chosen["item"])
    return log, (users, path.with_suffix(".user")), (items, path.with_suffix(".item"))


def read_delimited(path: Path, sep: str, given, user_features, item_features):
    """A CSV/TSV table with a header row; side features are columns of the same table."""
    line, header = header_row(path, sep)
    chosen = pick_columns(path, line, header, given)
    wanted = _requested(path, line, header, user_features, item_features)
    log, columns = log_columns(path, sep, len(header), _positions(header, chosen),
                               extra=[header.index(c) for c in {*wanted[0], *wanted[1]}], skip=line)
    return _same_table_features(log, {c: columns[header.index(c)] for c in {*wanted[0], *wanted[1]}}, wanted)


def read_parquet(path: Path, sep: str, given, user_features, item_features):
    """A Parquet table; errors name the 1-based row as the line."""
    reader, header, chosen = _parquet(path, given)
    wanted = _requested(path, 1, header, user_features, item_features)
    names = {n for n in (*chosen.values(), *wanted[0], *wanted[1]) if n is not None}
    table = reader.read(columns=sorted(names))
    log, columns = _parquet_log(path, table, header, chosen, names)
    return _same_table_features(log, {n: columns[header.index(n)] for n in {*wanted[0], *wanted[1]}}, wanted)


def read_parquet_ids(path: Path, *, user_col=None, item_col=None, time_col=None) -> tuple[Interactions, str | None]:
    """A Parquet log's user and item columns (times NaN) and its time column's name (None: file order)."""
    reader, header, chosen = _parquet(path, {"user": user_col, "item": item_col, "time": time_col})
    log, _ = _parquet_log(path, reader.read(columns=[chosen["user"], chosen["item"]]), header,
                          {**chosen, "time": None}, {chosen["user"], chosen["item"]})
    if chosen["time"] is None:
        return log, None
    return replace(log, timestamps=np.full(len(log), np.nan)), chosen["time"]


def read_parquet_times(path: Path, name: str | None, rows: np.ndarray) -> np.ndarray:
    """(N,) float64 times read from the row groups holding one of `rows` ((N,) bool), NaN elsewhere."""
    if name is None:
        return np.arange(len(rows), dtype=np.float64)
    reader = _parquet(path)[0]
    sizes = [reader.metadata.row_group(g).num_rows for g in range(reader.num_row_groups)]
    ends = np.cumsum(sizes)
    groups = np.unique(np.searchsorted(ends, np.flatnonzero(rows), side="right")).tolist()
    starts = ends - sizes
    taken = np.concatenate([np.arange(starts[g], ends[g]) for g in groups]) if groups else np.zeros(0, np.int64)
    part = reader.read_row_groups(groups, columns=[name]).column(0) if groups else pa.chunked_array([], pa.float64())
    try:
        values = timestamps(_as_text_or_number(part))
    except Invalid:  # name the first bad row
        cells = ((int(r) + 1, {0: _text(v)}) for r, v in zip(taken, part.to_pylist()))
        checked_columns(path, cells, None, {0: "time"})
        raise DataFormatError(path, None, f"column {name!r} holds a timestamp that cannot be read") from None
    times = np.full(len(rows), np.nan)
    times[taken] = values
    return times


def _parquet(path: Path, given: dict | None = None):
    """(`pyarrow.parquet.ParquetFile`, header, {role: column}); an unreadable file raises."""
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for unreadable files
        raise DataFormatError(path, None, f"not a readable Parquet file ({err})") from None
    header = reader.schema_arrow.names
    return reader, header, given and pick_columns(path, 1, header, given)


def _parquet_log(path: Path, table: pa.Table, header: list[str], chosen: dict, names) -> tuple[Interactions, dict]:
    """`from_columns` over a Parquet table's `names` columns; the row check names a bad row."""
    columns = {header.index(n): _as_text_or_number(table.column(n)) for n in names}
    at = _positions(header, chosen)
    try:
        return from_columns(path, columns, at)
    except Invalid:
        cells = {p: [_text(v) for v in table.column(header[p]).to_pylist()] for p in columns}
        rows = ((r + 1, {p: cells[p][r] for p in cells}) for r in range(table.num_rows))
        return from_columns(path, checked_columns(path, rows, None, log_kinds(at, columns)), at)


FORMATS = {"movielens-100k": read_udata, "movielens-dat": read_dat, "movielens-csv": read_latest_csv,
           "recbole": read_atomic, "csv": read_delimited, "tsv": read_delimited, "parquet": read_parquet}


def _positions(header: list[str], names: dict[str, str | None]) -> dict[str, int | None]:
    return {role: None if name is None else header.index(name) for role, name in names.items()}


def _requested(path: Path, line: int, header: list[str], *requested) -> tuple[list[str], ...]:
    """The requested side-feature columns of a generic table, each required in the header."""
    for names in requested:
        missing = [n for n in names or () if n not in header]
        if missing:
            raise DataFormatError(path, line, f"missing requested feature column(s) {missing}; header has {header}")
    return tuple(list(names or ()) for names in requested)


def _same_table_features(log: Interactions, columns: dict[str, pa.ChunkedArray], wanted):
    """Side tables from a generic table's own columns: each user's / item's first row."""
    tables = []
    for codes, keys, names, kind in ((log.user_codes, log.user_keys, wanted[0], "token"),
                                     (log.item_codes, log.item_keys, wanted[1], "token_seq")):
        if not names:
            tables.append((None, Path()))
            continue
        present, first = np.unique(codes, return_index=True)  # first row of every id
        cells = {n: columns[n].take(pa.array(first)).to_pylist() for n in names}
        rows = {}
        for j, code in enumerate(present.tolist()):
            values = {n: _text(cells[n][j]).strip() for n in names}
            rows[keys[code]] = ({n: [v] for n, v in values.items() if v} if kind == "token" else
                                {n: [t.strip() for t in v.split(ITEM_TOKEN_SEP) if t.strip()] for n, v in values.items()})
        tables.append((SideTable(Path(), rows, dict.fromkeys(names, kind)), Path()))
    return log, tables[0], tables[1]


def _as_text_or_number(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A Parquet column as is when text or numeric (`logs.encode` writes numeric ids), else as text."""
    if any(is_kind(column.type) for is_kind in PASSED_TYPES):
        return column
    return pa.chunked_array([pa.array([None if v is None else _text(v) for v in column.to_pylist()], pa.string())])


def _text(value) -> str:
    """A Parquet cell as text: None -> "", datetimes -> ISO-8601 (parsed back as time)."""
    return "" if value is None else value.isoformat() if isinstance(value, (datetime, date)) else str(value)


def _typed_header(path: Path, line: int, fields: list[str]) -> tuple[list[str], list[str]]:
    """Typed header ``name:type`` cells -> (names, types); an untyped cell is a ``token``."""
    parts = [cell.strip().partition(":") for cell in fields]
    for cell, (_, _, kind) in zip(fields, parts):
        if (kind or "token") not in KNOWN_TYPES:
            raise DataFormatError(path, line, f"column {cell!r} has unknown type {kind!r} (expected one of {KNOWN_TYPES})")
    return [name for name, _, _ in parts], [kind or "token" for _, _, kind in parts]


def _atomic_side(path: Path, sep: str, id_name: str) -> SideTable | None:
    """A ``.user``/``.item`` file (its id column named as the log's, else the first), or None."""
    if not path.is_file():
        return None
    line, header = header_row(path, sep)
    names, types = _typed_header(path, line, header)
    id_at = names.index(id_name) if id_name in names else 0
    kept = [(i, n, t) for i, (n, t) in enumerate(zip(names, types)) if t in ("token", "token_seq") and i != id_at]

    def parse(fields: list[str]) -> dict[str, list[str]]:
        return {n: fields[i].split() if t == "token_seq" else [fields[i].strip()] if fields[i].strip() else []
                for i, n, t in kept}

    return _side_table(path, sep, len(names), id_at, {n: t for _, n, t in kept}, parse, skip=line)


def _side_table(path: Path, sep: str, n_fields: int, id_at: int, kinds: dict[str, str], parse,
                **read) -> SideTable:
    """{id: parse(fields)} over the rows of a side file (`logs.side_rows`; `read`: its skip and
    encoding); a repeated id keeps its first row."""
    table: dict[str, dict[str, list[str]]] = {}
    for fields in side_rows(path, sep, n_fields, id_at, **read):
        if fields[id_at].strip() not in table:
            table[fields[id_at].strip()] = parse(fields)
    return SideTable(path, table, kinds)


def _movielens_side(path: Path, sep: str, n_fields: int, kinds: dict[str, str], parse) -> SideTable | None:
    """A latin-1 MovieLens side file (id first) as a `SideTable`, or None when absent."""
    return _side_table(path, sep, n_fields, 0, kinds, parse, encoding=LATIN1) if path.is_file() else None


def _genre_list(text: str) -> list[str]:
    """``Action|Comedy`` -> [Action, Comedy]; ml-latest's "(no genres listed)" -> []."""
    return [g.strip() for g in text.split("|") if g.strip() and g.strip() != NO_GENRES]


def _udata_genre_names(path: Path) -> tuple[str, ...]:
    """Genre names in flag order from ``u.genre`` (``name|index``), else the ml-100k list."""
    if not path.is_file():
        return ML100K_GENRES
    rows = [f for _, f in read_rows(path, "|", encoding=LATIN1) if len(f) == 2]
    named = sorted((int(f[1]), f[0].strip()) for f in rows if f[1].strip().isdigit())
    return tuple(name for _, name in named) or ML100K_GENRES
