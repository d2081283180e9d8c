"""Interaction-log data: loaders, id vocabularies, k-core, splits and samples."""
