"""The data part of a run directory: ``config.json["data"]``, ``vocab.json`` and
``split.json`` (docs/architecture.md), and rebuilding the exact dataset from them."""
from __future__ import annotations

from dataclasses import dataclass

from model.data.dataset import SequenceDataset, Vocab, build_dataset
from model.data.formats import load_interactions
from model.data.sources import resolve_data_source

LOADER_KEYS = ("fmt", "user_col", "item_col", "time_col", "sep", "user_features", "item_features")
BUILD_KEYS = ("k_core", "seed", "split")


class RunDataMismatch(ValueError):
    """The rebuilt dataset differs from the one a run saved (the log changed on disk)."""


@dataclass(frozen=True)
class SavedVocabs:
    """``vocab.json`` as vocabularies."""

    items: Vocab
    users: Vocab
    item_side: dict[str, Vocab]
    user_profile: dict[str, Vocab]


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
    `vocab` / `split` JSON, checks that the rebuild is identical; raises RunDataMismatch."""
    path = resolve_data_source(source if source is not None else config["source"])
    interactions = load_interactions(path, **{k: config[k] for k in LOADER_KEYS if config.get(k) is not None})
    build = {k: config[k] for k in BUILD_KEYS if k in config}
    if "split" in build:
        build["split"] = tuple(build["split"])
    ds = build_dataset(interactions, **build)
    check_saved(ds, vocab, split)
    return ds


def check_saved(ds: SequenceDataset, vocab: dict | None, split: dict | None) -> None:
    """Raise RunDataMismatch naming the first part of vocab.json / split.json that differs."""
    parts = []
    if vocab is not None:
        parts += [(f"vocab.json[{k!r}]", ds.vocab_json()[k], vocab.get(k)) for k in ("items", "users", "item_side", "user_profile")]
    if split is not None:
        parts += [(f"split.json[{k!r}]", ds.split_json()[k], split.get(k)) for k in ("train", "validation", "test")]
    for name, rebuilt, saved in parts:
        if rebuilt != saved:
            raise RunDataMismatch(f"{name} differs from the rebuilt dataset: the interaction log or "
                                  f"loader options changed since the run was trained")


def vocabs_from_json(vocab: dict) -> SavedVocabs:
    """``vocab.json`` content -> `SavedVocabs`."""
    return SavedVocabs(Vocab.from_json(vocab["items"]), Vocab.from_json(vocab["users"]),
                       {f: Vocab.from_json(v) for f, v in vocab.get("item_side", {}).items()},
                       {f: Vocab.from_json(v) for f, v in vocab.get("user_profile", {}).items()})
