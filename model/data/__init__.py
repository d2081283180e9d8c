"""Interaction-log data: loaders, id vocabularies, k-core, splits and samples.

The public API (docs/architecture.md, "Data") is re-exported here:
``from model.data import load_interactions, build_dataset, training_samples, holdout``.
"""
from model.data.dataset import SequenceDataset, Vocab, build_dataset, holdout, split_users, training_samples
from model.data.formats import DataFormatError, Interactions, load_interactions

__all__ = ["DataFormatError", "Interactions", "SequenceDataset", "Vocab", "build_dataset", "holdout",
           "load_interactions", "split_users", "training_samples"]
