"""`load_interactions`: one entry point for every interaction-log format users have.

Formats (``fmt``), auto-detected from the file name, extension and first line:

| fmt | file | detected by |
| --- | --- | --- |
| ``movielens-100k`` | ``u.data`` (tab, no header) | name ``u.data`` |
| ``movielens-dat`` | ``ratings.dat`` (``::``) | ``.dat`` with ``::`` in the first line |
| ``movielens-csv`` | ``ratings.csv`` (ml-latest) | a ``.csv`` whose header is ``userId,movieId,...`` |
| ``recbole`` | ``<stem>.inter`` (+ ``.user``, ``.item``) | ``.inter``, or a typed header (``user_id:token``) |
| ``csv`` / ``tsv`` | any table with a header row | ``.csv`` / ``.tsv`` / ``.txt`` |
| ``parquet`` | any Parquet table | ``.parquet`` / ``.pq`` |

A folder is accepted when it holds exactly one recognisable interaction file (``u.data``,
``ratings.dat``, ``ratings.csv`` or one ``*.inter``). Side features and the column rules are
described in `recbole`, `movielens` and `tabular`.
"""
from __future__ import annotations

from pathlib import Path

from model.data import movielens, recbole, tabular
from model.data.interactions import DataFormatError, Interactions

__all__ = ["DataFormatError", "Interactions", "FORMATS", "detect_format", "load_interactions"]

FORMATS = {
    "movielens-100k": movielens.load_udata,
    "movielens-dat": movielens.load_dat,
    "movielens-csv": movielens.load_latest_csv,
    "recbole": recbole.load_atomic,
    "csv": tabular.load_delimited,
    "tsv": tabular.load_delimited,
    "parquet": tabular.load_parquet,
}
FOLDER_ENTRIES = ("u.data", "ratings.dat", "ratings.csv")
TYPED_HEADER_MARKERS = (":token", ":float")


def load_interactions(path, *, fmt=None, user_col=None, item_col=None, time_col=None, sep=None,
                      user_features=None, item_features=None) -> Interactions:
    """Read an interaction log (and its side files) into `Interactions`.

    `user_features` / `item_features`: column names to use (``[]`` for none); ``None`` picks
    the format's defaults. Raises `DataFormatError` (``FILE:LINE: problem``) on bad input and
    `FileNotFoundError` when `path` does not exist.
    """
    path = _interaction_file(Path(path))
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise DataFormatError(path, None, f"unknown format {fmt!r}; known formats: {sorted(FORMATS)}")
    fixed = {k: v for k, v in (("user_col", user_col), ("item_col", item_col), ("time_col", time_col), ("sep", sep)) if v is not None}
    if fmt.startswith("movielens") and fixed:
        raise DataFormatError(path, None, f"{fmt} has fixed columns, so {sorted(fixed)} cannot apply; "
                                          f"use fmt='csv' or 'tsv' to name columns")
    if fmt == "tsv" and sep is None:
        sep = "\t"
    if fmt == "csv" and sep is None and path.suffix.lower() == ".csv":
        sep = ","
    return FORMATS[fmt](path, user_col=user_col, item_col=item_col, time_col=time_col, sep=sep,
                        user_features=user_features, item_features=item_features)


def detect_format(path: Path) -> str:
    """The ``fmt`` name for `path` from its name, extension and first line."""
    name, suffix = path.name.lower(), path.suffix.lower()
    if name == "u.data":
        return "movielens-100k"
    if suffix == ".inter":
        return "recbole"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    first = _first_line(path)
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


def _interaction_file(path: Path) -> Path:
    """`path` itself, or the single interaction file inside a folder."""
    if not path.exists():
        raise FileNotFoundError(f"interaction log not found: {path}")
    if not path.is_dir():
        return path
    found = [path / n for n in FOLDER_ENTRIES if (path / n).is_file()] + sorted(path.glob("*.inter"))
    if len(found) != 1:
        raise DataFormatError(path, None, f"folder must hold exactly one interaction file ({', '.join(FOLDER_ENTRIES)} or *.inter); found {[p.name for p in found]}")
    return found[0]


def _first_line(path: Path) -> str:
    """The first non-blank line (decoded leniently: detection only)."""
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        for text in handle:
            if text.strip():
                return text.rstrip("\r\n")
    return ""
