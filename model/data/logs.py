"""The columnar `Interactions`, the loader error, the separator, column and side-feature
rules, and the reader every format goes through: pyarrow, with a line-numbering pass that runs
only when the fast read finds a problem, so errors still name the file and line.

Ids are opaque, stripped strings; timestamps float64 (a log without a time column gets its
file order 0, 1, 2, ...)."""
from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

# Column names tried, case-insensitively and in this order, when a role is not named.
GUESSES = {"user": ("user_id", "user", "userid", "uid", "visitorid", "customer_id"),
           "item": ("item_id", "item", "itemid", "movieid", "iid", "product_id", "productid"),
           "time": ("timestamp", "time", "ts", "datetime", "date", "event_time")}
FIXED_SEPARATORS = {"tsv": "\t", "recbole": "\t", "movielens-100k": "\t", "movielens-dat": "::", "movielens-csv": ","}
UTF8_BOM = b"\xef\xbb\xbf"
ID_TYPE = pa.dictionary(pa.int32(), pa.string())  # ids are read as codes into a small table
READ_BLOCK_BYTES = 1 << 22  # pyarrow's default 1 MiB blocks cost ~10% more time on big logs
# Column kinds, in the order a row's cells are checked (the first failing check is reported).
CHECK_ORDER = ("user id", "item id", "id", "time", "text")


class DataFormatError(ValueError):
    """A malformed interaction or side file. The message reads ``FILE:LINE: problem``
    (``FILE: problem`` when no single line is at fault); LINE is 1-based, header included."""
    def __init__(self, path: str | Path, line: int | None, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        super().__init__(f"{self.path if line is None else f'{self.path}:{line}'}: {problem}")


class Invalid(Exception):
    """A vectorised check failed; the line-numbering pass finds and names the row."""


@dataclass(frozen=True, eq=False)
class Interactions:
    """An interaction log in file order, one row per event; ids are codes into id tables."""
    user_codes: np.ndarray  # (N,) int32 index into user_keys
    user_keys: np.ndarray  # (U,) object: distinct external user ids
    item_codes: np.ndarray  # (N,) int32 index into item_keys
    item_keys: np.ndarray  # (I,) object
    timestamps: np.ndarray  # (N,) float64
    user_profiles: dict[str, dict[str, str]] = field(default_factory=dict)  # user -> {feature: value}
    item_features: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # item -> {feature: [tokens]}

    @property
    def user_ids(self) -> np.ndarray:  # (N,) object external ids
        return self.user_keys[self.user_codes]

    @property
    def item_ids(self) -> np.ndarray:
        return self.item_keys[self.item_codes]

    def __len__(self) -> int:
        return len(self.user_codes)


def make_interactions(users, items, times, user_profiles: dict | None = None,
                      item_features: dict | None = None) -> Interactions:  # from parallel columns
    user_codes, user_keys = encode(pa.array(list(users), pa.string()))
    item_codes, item_keys = encode(pa.array(list(items), pa.string()))
    return Interactions(user_codes, user_keys, item_codes, item_keys, np.asarray(times, dtype=np.float64),
                        user_profiles or {}, item_features or {})


def encode(ids: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(codes (N,) int32, keys (K,) object) of an id column, ids stripped; `Invalid` if one is empty."""
    ids = ids if isinstance(ids, pa.ChunkedArray) else pa.chunked_array([ids])
    if ids.null_count:
        raise Invalid("missing id")
    if not pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_encode()
    ids = ids.unify_dictionaries() if ids.num_chunks > 1 else ids
    chunks = ids.chunks or [pa.DictionaryArray.from_arrays(pa.array([], pa.int32()), pa.array([], pa.string()))]
    codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in chunks]).astype(np.int32, copy=False)
    raw = chunks[0].dictionary.to_pylist()
    if not pa.types.is_string(chunks[0].dictionary.type):  # numeric Parquet ids: as Python writes them
        raw = [str(v) for v in raw]
    keys = [k.strip() for k in raw]
    if "" in keys:
        raise Invalid("empty id")
    if keys != raw:  # padded ids: " 7" and "7" are the same id
        first = {}
        remap = np.array([first.setdefault(k, len(first)) for k in keys], dtype=np.int32)
        codes, keys = remap[codes], list(first)
    return codes, np.array(keys, dtype=object)


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


def timestamps(column: pa.ChunkedArray) -> np.ndarray:
    """(N,) float64 finite times of a numeric or text column; raises `Invalid` otherwise."""
    if column.null_count:
        raise Invalid("missing timestamp")
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
        try:
            column = pc.cast(column, pa.float64())
        except pa.ArrowInvalid:  # ISO dates, Python-only number spellings: parse each distinct text
            coded = column.dictionary_encode().combine_chunks()
            try:
                parsed = np.array([parse_timestamp(t, "", 0) for t in coded.dictionary.to_pylist()], dtype=np.float64)
            except DataFormatError:
                raise Invalid("timestamp") from None
            return parsed[coded.indices.to_numpy(zero_copy_only=False)]
    values = column.to_numpy().astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        raise Invalid("timestamp not finite")
    return values


# ---- separators and columns -----------------------------------------------------------------
def separator(path: Path, fmt: str, sep: str | None = None) -> str:
    """The one separator rule; a generic file is tab-separated when its first line holds one."""
    if sep or fmt in FIXED_SEPARATORS:
        return sep or FIXED_SEPARATORS[fmt]
    suffix = path.suffix.lower()
    return "," if suffix == ".csv" else "\t" if suffix in (".tsv", ".tab") or "\t" in first_line(path) else ","


def pick_columns(path: Path, line: int, header: list[str], given: dict[str, str | None],
                 default: dict[str, str] | None = None, roles=("user", "item", "time")) -> dict[str, str | None]:
    """The one column-guessing rule: {role: header name}: the given name (which must be in the
    header), else `GUESSES`, else the format's `default`; only the time may be missing."""
    lowered = {h.lower(): h for h in reversed(header)}
    chosen: dict[str, str | None] = {}
    for role in roles:
        guesses = GUESSES.get(role, ())
        name = given.get(role) or next((lowered[g] for g in guesses if g in lowered), None)
        if name is None and role != "time" and default:
            name = default[role]
        if name is not None and name not in header:
            raise DataFormatError(path, line, f"missing required column {name!r} ({role}); header has {header}")
        if name is None and role != "time":
            raise DataFormatError(path, line, f"missing required {role} column: none of {list(guesses)} "
                                              f"in header {header}; name it explicitly")
        chosen[role] = name
    return chosen


@dataclass(frozen=True)
class SideTable:
    """Per-user or per-item categorical columns of a side file: {row id: {column: [tokens]}}."""
    path: Path
    rows: dict[str, dict[str, list[str]]]
    kinds: dict[str, str]  # column -> "token" (one value) or "token_seq" (a token list)


# ---- reading text -------------------------------------------------------------------------------
def read_rows(path: Path, sep: str, *, encoding: str = "utf-8") -> Iterator[tuple[int, list[str]]]:
    """``(line, fields)`` of every non-blank line: the line-numbering pass. ``,`` parses CSV
    quoting; other separators (``::`` too) split each line as is."""
    with open(path, "rb") as handle:
        lines = _decoded_lines(handle, path, encoding)
        if sep == ",":
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
    for line, raw in enumerate(handle, 1):
        if line == 1 and raw.startswith(UTF8_BOM):  # spreadsheet exports start with one
            raw = raw[len(UTF8_BOM):]
        try:
            yield raw.decode(encoding)
        except UnicodeDecodeError as err:
            raise DataFormatError(path, line, f"not valid {encoding} text ({err.reason})") from None


def first_line(path: Path) -> str:
    with open(path, encoding="utf-8-sig", errors="replace") as handle:  # lenient: for detection only
        return next((text.rstrip("\r\n") for text in handle if text.strip()), "")


def header_row(path: Path, sep: str, encoding: str = "utf-8") -> tuple[int, list[str]]:
    """(line, stripped cells) of the first non-blank row; an empty file raises."""
    for line, fields in read_rows(path, sep, encoding=encoding):
        return line, [f.strip() for f in fields]
    raise DataFormatError(path, 1, "empty file")


def read_columns(path: Path, sep: str, n_fields: int, kinds: dict[int, str], build, *, skip: int = 0,
                 encoding: str = "utf-8"):
    """`build` ({position: column} -> result) over the columns `kinds` ({position: kind}) after
    `skip` lines; when pyarrow or `build` finds a problem (`Invalid`), the line pass names it."""
    try:
        return build(_arrow_columns(path, sep, n_fields, kinds, skip, encoding))
    except (Invalid, pa.ArrowException):
        rows = ((line, fields) for line, fields in read_rows(path, sep, encoding=encoding) if line > skip)
        return build(checked_columns(path, rows, n_fields, kinds))


def checked_columns(path: Path, rows, n_fields: int | None, kinds: dict) -> dict[int, pa.ChunkedArray]:
    """The line pass over `rows` ((line, cells)): `DataFormatError` at the first bad line, else the columns."""
    checks = sorted(kinds.items(), key=lambda kv: CHECK_ORDER.index(kv[1]))
    cells: dict = {key: [] for key in kinds}
    for line, fields in rows:
        if n_fields is not None and len(fields) != n_fields:
            raise DataFormatError(path, line, f"expected {n_fields} columns, found {len(fields)}")
        for key, kind in checks:
            text = fields[key] if kind in ("time", "text") else fields[key].strip()  # an id
            if not text and kind.endswith("id"):
                raise DataFormatError(path, line, f"empty {kind}")
            cells[key].append(parse_timestamp(text, path, line) if kind == "time" else text)
    return {key: pa.chunked_array([pa.array(values, pa.float64() if kinds[key] == "time" else pa.string())])
            for key, values in cells.items()}


def _arrow_columns(path: Path, sep: str, n_fields: int, kinds: dict[int, str], skip: int,
                   encoding: str) -> dict[int, pa.ChunkedArray]:
    """pyarrow's read of the `kinds` columns: ids as dictionary codes, times as float64 (text
    when not plain numbers). ``::`` is read as ``:``, every other field required empty."""
    doubled = len(sep) == 2 and sep[0] == sep[1]
    if len(sep) > 1 and not doubled:
        raise Invalid("a separator pyarrow cannot read")
    step = 2 if doubled else 1
    names = [f"c{i}" for i in range(n_fields * step - step + 1)]
    wanted = {names[p * step]: pa.float64() if k == "time" else pa.string() if k == "text" else ID_TYPE
              for p, k in kinds.items()}
    gaps = dict.fromkeys(names[1::2] if doubled else [], pa.string())
    options = dict(read_options=pa_csv.ReadOptions(column_names=names, skip_rows=skip, encoding=encoding,
                                                   block_size=READ_BLOCK_BYTES),
                   parse_options=pa_csv.ParseOptions(delimiter=sep[0], quote_char='"' if sep == "," else False))

    def read(types: dict) -> pa.Table:
        return pa_csv.read_csv(path, **options, convert_options=pa_csv.ConvertOptions(
            column_types={**types, **gaps}, include_columns=[*types, *gaps], null_values=[],
            strings_can_be_null=False, quoted_strings_can_be_null=False))

    try:
        table = read(wanted)
    except pa.ArrowInvalid:  # a time column that is not plain numbers: read it as text
        table = read({n: pa.string() if t == pa.float64() else t for n, t in wanted.items()})
    if any(pc.any(pc.not_equal(table.column(g), "")).as_py() for g in gaps):
        raise Invalid("a single ':' inside a '::' field")
    return {p: table.column(names[p * step]) for p in kinds}


def log_columns(path: Path, sep: str, n_fields: int, at: dict[str, int | None], *, extra=(),
                skip: int = 0, encoding: str = "utf-8") -> tuple[Interactions, dict[int, pa.ChunkedArray]]:
    """The log at positions `at` ({role: position or None}) and the `extra` text columns."""
    return read_columns(path, sep, n_fields, log_kinds(at, extra), lambda c: from_columns(path, c, at),
                        skip=skip, encoding=encoding)


def log_kinds(at: dict[str, int | None], extra=()) -> dict[int, str]:
    roles = (("user", "user id"), ("item", "item id"), ("time", "time"))
    return {**dict.fromkeys(extra, "text"), **{at[r]: kind for r, kind in roles if at[r] is not None}}


def from_columns(path: Path, columns: dict, at: dict) -> tuple[Interactions, dict]:
    user_codes, user_keys = encode(columns[at["user"]])
    item_codes, item_keys = encode(columns[at["item"]])
    if not len(user_codes):
        raise DataFormatError(path, None, "no interaction rows")
    times = np.arange(len(user_codes), dtype=np.float64) if at["time"] is None else timestamps(columns[at["time"]])
    return Interactions(user_codes, user_keys, item_codes, item_keys, times), columns


def side_rows(path: Path, sep: str, n_fields: int, id_at: int, *, skip: int = 0,
              encoding: str = "utf-8") -> list[list[str]]:
    """The rows of a side file: `n_fields` text cells each, a non-empty id at `id_at`."""
    def rows(columns: dict[int, pa.ChunkedArray]) -> list[list[str]]:
        if any(not v.strip() for v in pc.unique(columns[id_at]).to_pylist()):
            raise Invalid("empty id")
        return [list(row) for row in zip(*(columns[p].to_pylist() for p in range(n_fields)))]

    kinds = {**dict.fromkeys(range(n_fields), "text"), id_at: "id"}
    return read_columns(path, sep, n_fields, kinds, rows, skip=skip, encoding=encoding)
