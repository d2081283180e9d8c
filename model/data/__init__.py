"""Interaction-log data: readers, id vocabularies, k-core, splits and samples.

- `logs`: the columnar `Interactions`, errors, separator / column / side-feature rules and
  the pyarrow reader with its line-numbering pass;
- `readers`: `load_interactions` and the MovieLens, RecBole, CSV/TSV and Parquet formats;
- `dataset`: vocabularies, k-core, sequences, split, samples, hold-out and run files;
- `sources`: dataset names, GroupLens downloads and the synthetic dataset.

The public API (docs/architecture.md, "Data") is importable from here.
"""
from model.data.dataset import (HISTORY_FRACTION, RunDataMismatch, SequenceDataset, Vocab, build_dataset,
                                data_config, holdout, load_dataset, rebuild_dataset, split_users, training_samples)
from model.data.logs import DataFormatError, Interactions, make_interactions
from model.data.readers import FORMATS, detect_format, load_interactions
from model.data.sources import (DownloadError, SyntheticSpec, fetch_movielens, generate, generate_with_truth,
                                resolve_data_source, write_recbole)

__all__ = ["DataFormatError", "DownloadError", "FORMATS", "HISTORY_FRACTION", "Interactions", "RunDataMismatch",
           "SequenceDataset", "SyntheticSpec", "Vocab", "build_dataset", "data_config", "detect_format",
           "fetch_movielens", "generate", "generate_with_truth", "holdout", "load_dataset", "load_interactions",
           "make_interactions", "rebuild_dataset", "resolve_data_source", "split_users", "training_samples",
           "write_recbole"]
