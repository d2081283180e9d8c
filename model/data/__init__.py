"""Interaction-log data: readers, id vocabularies, k-core, splits and samples (the modules:
docs/data.md). Here, the entry points that join them: `load_interactions` (any format, with
the side-feature rules), `load_dataset` (``--data`` to a dataset, per data-parallel rank) and
the data part of a run directory (``config.json["data"]``, ``vocab.json``, ``split.json``).
The public API (docs/architecture.md, "Data") is importable from here.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pyarrow as pa

from model.data.dataset import (HISTORY_FRACTION, SequenceDataset, Vocab, assemble, build_dataset, holdout,
                                index_log, split_users, training_samples)
from model.data.logs import DataFormatError, Interactions, SideTable, make_interactions, separator
from model.data.readers import FORMATS, detect_format, read_parquet_ids, read_parquet_times
from model.data.sources import (DownloadError, SyntheticSpec, fetch_movielens, generate, generate_with_truth,
                                interaction_file, resolve_data_source, write_recbole)

__all__ = ["DataFormatError", "DownloadError", "FORMATS", "HISTORY_FRACTION", "Interactions", "RunDataMismatch",
           "SequenceDataset", "SyntheticSpec", "Vocab", "build_dataset", "data_config", "detect_format",
           "fetch_movielens", "generate", "generate_with_truth", "holdout", "load_dataset", "load_interactions",
           "make_interactions", "rebuild_dataset", "resolve_data_source", "split_users", "training_samples",
           "write_recbole"]

LOADER_KEYS = ("fmt", "user_col", "item_col", "time_col", "sep", "user_features", "item_features")
BUILD_KEYS = ("k_core", "seed", "split")
# A categorical side column is used by default only when it has at most
# max(MIN_DISTINCT_CAP, MAX_DISTINCT_FRACTION * rows) distinct values: ids-like columns
# (zip codes, titles split into words) are too sparse to learn an embedding per value.
MIN_DISTINCT_CAP = 100
MAX_DISTINCT_FRACTION = 0.1


def load_interactions(path, *, fmt=None, user_col=None, item_col=None, time_col=None, sep=None,
                      user_features=None, item_features=None) -> Interactions:
    """An interaction log and its side files. `user_features` / `item_features`: columns to
    use (``[]``: none, ``None``: the format's defaults). Bad input raises `DataFormatError`."""
    path = interaction_file(Path(path))
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise DataFormatError(path, None, f"unknown format {fmt!r}; known formats: {sorted(FORMATS)}")
    given = {"user": user_col, "item": item_col, "time": time_col}
    fixed = {k: v for k, v in (("user_col", user_col), ("item_col", item_col), ("time_col", time_col), ("sep", sep)) if v is not None}
    if fmt.startswith("movielens") and fixed:
        raise DataFormatError(path, None, f"{fmt} has fixed columns, so {sorted(fixed)} cannot apply; "
                                          f"use fmt='csv' or 'tsv' to name columns")
    log, users, items = FORMATS[fmt](path, separator(path, fmt, sep), given, user_features, item_features)
    profiles = {uid: {c: toks[0] for c, toks in row.items()}   # a user's features: single values
                for uid, row in choose_features(users[0], user_features, "token", users[1]).items()}
    features = choose_features(items[0], item_features, "token_seq", items[1])
    pa.default_memory_pool().release_unused()  # the read's buffers: ~100 MiB at 2M rows, else kept by the pool
    return Interactions(log.user_codes, log.user_keys, log.item_codes, log.item_keys, log.timestamps, profiles, features)


def is_dense_enough(n_distinct: int, n_rows: int) -> bool:
    """The default rule for using a categorical side column (see MIN_DISTINCT_CAP)."""
    return n_distinct <= max(MIN_DISTINCT_CAP, MAX_DISTINCT_FRACTION * n_rows)


def choose_features(side: SideTable | None, requested: list[str] | None, default_kind: str,
                    expected: Path) -> dict[str, dict[str, list[str]]]:
    """The side table restricted to the requested columns, or by default to the columns of
    `default_kind` that pass `is_dense_enough`; empty token lists are dropped. Requesting a
    column of an absent file or one the file lacks raises."""
    if side is None:
        if requested:
            raise DataFormatError(expected, None, f"features {requested} requested but this side file does not exist")
        return {}
    if requested is None:
        columns = [c for c, kind in side.kinds.items() if kind == default_kind and _dense(side.rows, c)]
    else:
        missing = [c for c in requested if c not in side.kinds]
        if missing:
            raise DataFormatError(side.path, 1, f"missing requested feature column(s) {missing}; categorical columns are {list(side.kinds)}")
        columns = list(requested)
    return {rid: {c: row[c] for c in columns if row.get(c)} for rid, row in side.rows.items()}


def _dense(rows: dict[str, dict[str, list[str]]], column: str) -> bool:
    values = {tok for row in rows.values() for tok in row.get(column, ())}
    return bool(values) and is_dense_enough(len(values), len(rows))


def load_dataset(source, *, k_core: int = 5, seed: int = 2020, split=(0.8, 0.1, 0.1), rank: int = 0,
                 world: int = 1, **loader) -> SequenceDataset:
    """The dataset of `source` (a path or dataset name; `loader`: `load_interactions` options)
    as data-parallel rank `rank` of `world` sees it.

    Vocabularies, split and ``train_item_counts`` are those of the whole log on every rank
    (identical to ``world=1``). A rank keeps the sequences of its train users
    (``train_users[rank::world]``, so `training_samples` gives this rank's samples only) and
    of every validation and test user. A Parquet log without requested side features is read
    in part: every rank reads the user and item columns of every row group (the k-core filter
    and the split depend on the whole log), then the time column only of the row groups that
    hold its rows. Other formats are read whole, then trimmed.
    """
    path = resolve_data_source(source)
    features = loader.get("user_features") or loader.get("item_features")
    if world > 1 and not features and (loader.get("fmt") or detect_format(interaction_file(path))) == "parquet":
        columns = {k: loader.get(k) for k in ("user_col", "item_col", "time_col")}
        ids, time_name = read_parquet_ids(interaction_file(path), **columns)
        index = index_log(ids, k_core, seed, split)
        times = read_parquet_times(interaction_file(path), time_name, index.rows_of(ids, rank, world))
        return assemble(replace(ids, timestamps=times), index, rank, world)
    return build_dataset(load_interactions(path, **loader), k_core=k_core, seed=seed, split=tuple(split),
                         rank=rank, world=world)


# ---- the data part of a run directory: config.json["data"], vocab.json, split.json ----

class RunDataMismatch(ValueError):
    """The rebuilt dataset differs from the one a run saved (the log changed on disk)."""


def data_config(source, *, k_core: int = 5, seed: int = 2020, split=(0.8, 0.1, 0.1), **loader) -> dict:
    """The JSON-able ``config.json["data"]`` that `rebuild_dataset` reads back.
    `loader` holds `load_interactions` keyword arguments (``fmt``, ``user_col``, ...)."""
    unknown = set(loader) - set(LOADER_KEYS)
    if unknown:
        raise TypeError(f"unknown loader options {sorted(unknown)}; known: {LOADER_KEYS}")
    return {"source": str(source), **{k: v for k, v in loader.items() if v is not None},
            "k_core": int(k_core), "seed": int(seed), "split": [float(f) for f in split]}


def rebuild_dataset(config: dict, *, vocab: dict | None = None, split: dict | None = None,
                    source=None) -> SequenceDataset:
    """The dataset `config` describes (`source` overrides its path). With the saved
    `vocab` / `split` JSON, checks that the rebuild is identical; raises RunDataMismatch
    naming the first part of vocab.json / split.json that differs."""
    ds = load_dataset(source if source is not None else config["source"],
                      **{k: config[k] for k in BUILD_KEYS if k in config},
                      **{k: config[k] for k in LOADER_KEYS if config.get(k) is not None})
    parts = []
    if vocab is not None:
        parts += [(f"vocab.json[{k!r}]", ds.vocab_json()[k], vocab.get(k)) for k in ("items", "users", "item_side", "user_profile")]
    if split is not None:
        parts += [(f"split.json[{k!r}]", ds.split_json()[k], split.get(k)) for k in ("train", "validation", "test")]
    for name, rebuilt, saved in parts:
        if rebuilt != saved:
            raise RunDataMismatch(f"{name} differs from the rebuilt dataset: the interaction log or "
                                  f"loader options changed since the run was trained")
    return ds
