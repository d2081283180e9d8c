"""The GroupLens MovieLens layouts, with their side files read from the same folder:

- ml-100k ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``; ``u.user``
  (``id|age|gender|occupation|zip``), ``u.item`` (``id|title|date|video date|url|19 genre
  flags``, names from ``u.genre`` when present), latin-1.
- ml-1m/10m ``ratings.dat``: ``user::item::rating::timestamp``; ``users.dat``
  (``id::gender::age::occupation::zip``), ``movies.dat`` (``id::title::genre|genre``), latin-1.
- ml-latest ``ratings.csv``: header ``userId,movieId,rating,timestamp``; ``movies.csv``
  (``movieId,title,genres`` with ``|``-separated genres), utf-8.

User features default to the columns that pass the cardinality rule (zip codes do not);
the item feature is ``genre``.
"""
from __future__ import annotations

from pathlib import Path

from model.data.interactions import Interactions, profile_values
from model.data.rows import collect, first_row, header_positions, interactions_or_error, read_rows
from model.data.sidefiles import SideTable, choose, side_table

LATIN1 = "latin-1"
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western")
NO_GENRES = "(no genres listed)"


def load_udata(path: Path, *, user_features=None, item_features=None, **_) -> Interactions:
    """ml-100k ``u.data`` with ``u.user`` / ``u.item`` (see the module docstring)."""
    columns = collect(read_rows(path, "\t", encoding=LATIN1), path, 4, 0, 1, 3)
    folder = path.parent
    users = _users(folder / "u.user", "|", {"age": 1, "gender": 2, "occupation": 3, "zip_code": 4})
    genres = _udata_genre_names(folder / "u.genre")
    items = _items(folder / "u.item", "|", 5 + len(genres), lambda f: [g for g, flag in zip(genres, f[5:]) if flag.strip() == "1"])
    return _assemble(path, columns, (users, folder / "u.user"), (items, folder / "u.item"), user_features, item_features)


def load_dat(path: Path, *, user_features=None, item_features=None, **_) -> Interactions:
    """ml-1m / ml-10m ``ratings.dat`` with ``users.dat`` / ``movies.dat``."""
    columns = collect(read_rows(path, "::", encoding=LATIN1), path, 4, 0, 1, 3)
    folder = path.parent
    users = _users(folder / "users.dat", "::", {"gender": 1, "age": 2, "occupation": 3, "zip_code": 4})
    items = _items(folder / "movies.dat", "::", 3, lambda f: _genre_list(f[2]))
    return _assemble(path, columns, (users, folder / "users.dat"), (items, folder / "movies.dat"), user_features, item_features)


def load_latest_csv(path: Path, *, user_features=None, item_features=None, **_) -> Interactions:
    """ml-latest ``ratings.csv`` (header ``userId,movieId,rating,timestamp``) with ``movies.csv``."""
    rows = read_rows(path, ",", quoted=True)
    line, header = first_row(rows, path)
    at = header_positions(path, line, [h.strip() for h in header], {"user": "userId", "item": "movieId", "time": "timestamp"})
    columns = collect(rows, path, len(header), at["user"], at["item"], at["time"])
    items = None
    movies = path.parent / "movies.csv"
    if movies.is_file():
        movie_rows = read_rows(movies, ",", quoted=True)
        line, header = first_row(movie_rows, movies)
        pos = header_positions(movies, line, [h.strip() for h in header], {"item": "movieId", "genres": "genres"})
        table = side_table(movie_rows, movies, len(header), pos["item"], lambda f: {"genre": _genre_list(f[pos["genres"]])})
        items = SideTable(movies, table, {"genre": "token_seq"})
    return _assemble(path, columns, (None, path.parent / "users.csv"), (items, movies), user_features, item_features)


def _assemble(path: Path, columns, users: tuple[SideTable | None, Path], items: tuple[SideTable | None, Path],
              user_features, item_features) -> Interactions:
    """Interactions with the chosen user profile and item feature columns."""
    profiles = choose(users[0], user_features, "token", users[1])
    features = choose(items[0], item_features, "token_seq", items[1])
    return interactions_or_error(path, columns, profile_values(profiles), features)


def _users(path: Path, sep: str, column_at: dict[str, int]) -> SideTable | None:
    """A MovieLens user file as a `SideTable` of single-token columns, or None if absent."""
    if not path.is_file():
        return None
    n_fields = 1 + len(column_at)

    def parse(fields: list[str]) -> dict[str, list[str]]:
        return {name: [fields[i].strip()] for name, i in column_at.items() if fields[i].strip()}

    table = side_table(read_rows(path, sep, encoding=LATIN1), path, n_fields, 0, parse)
    return SideTable(path, table, dict.fromkeys(column_at, "token"))


def _items(path: Path, sep: str, n_fields: int, genres_of) -> SideTable | None:
    """A MovieLens item file as a `SideTable` with one ``genre`` token list, or None if absent."""
    if not path.is_file():
        return None
    table = side_table(read_rows(path, sep, encoding=LATIN1), path, n_fields, 0, lambda f: {"genre": genres_of(f)})
    return SideTable(path, table, {"genre": "token_seq"})


def _genre_list(text: str) -> list[str]:
    """``Action|Comedy`` -> [Action, Comedy]; ml-latest's "(no genres listed)" -> []."""
    return [g.strip() for g in text.split("|") if g.strip() and g.strip() != NO_GENRES]


def _udata_genre_names(path: Path) -> tuple[str, ...]:
    """Genre names in flag order from ``u.genre`` (``name|index``), else the ml-100k list."""
    if not path.is_file():
        return ML100K_GENRES
    named = sorted((int(f[1]), f[0].strip()) for _, f in read_rows(path, "|", encoding=LATIN1) if len(f) == 2 and f[1].strip().isdigit())
    return tuple(name for _, name in named) or ML100K_GENRES
