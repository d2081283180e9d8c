"""The run directory: what `mind train` writes and what evaluation and export read back.

Layout (docs/architecture.md): config.json, checkpoint.pt, vocab.json, split.json,
popularity.json, metrics.json; the K=1 baseline run in baselines/k1/.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from model.artifacts import read_json
from model.config import ModelConfig, TrainConfig, model_config_from_dict, to_dict
from model.tower import MIND

CONFIG, CHECKPOINT, VOCAB, SPLIT, POPULARITY, METRICS = (
    "config.json", "checkpoint.pt", "vocab.json", "split.json", "popularity.json", "metrics.json")
K1_BASELINE = Path("baselines") / "k1"
SIDE_PREFIX = "items.tokens_"


class RunError(ValueError):
    """A run directory that is missing, incomplete or unreadable (by `mind evaluate`, `mind
    export`, ...); the message names the file."""


@dataclass(frozen=True)
class RunInfo:
    path: Path
    model_config: ModelConfig
    config: dict           # the whole config.json
    vocab: dict
    metrics: dict


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_run_files(run_dir: Path, model: MIND, train_config: TrainConfig, data_config: dict,
                    vocab: dict, split: dict, popularity: list[int], metrics: dict,
                    state_dict: dict) -> None:
    """Write every file of a run into an existing (temporary) directory."""
    write_json(run_dir / CONFIG, {"model": to_dict(model.config), "train": to_dict(train_config),
                                  "data": data_config})
    torch.save(state_dict, run_dir / CHECKPOINT)
    write_json(run_dir / VOCAB, vocab)
    write_json(run_dir / SPLIT, split)
    write_json(run_dir / POPULARITY, popularity)
    write_json(run_dir / METRICS, metrics)


def config_max_len(config: dict, where: Path | str = CONFIG, error: type[Exception] = RunError) -> int:
    """The history length a run was trained with, from its ``config.json`` (model section, else
    train section); `error` naming `where` when neither records it."""
    for section in ("model", "train"):
        value = config.get(section, {}).get("max_len")
        if value is not None:
            return int(value)
    raise error(f"{where}: no max_len in its model or train section")


def _read_json(path: Path) -> dict:
    return read_json(path, dict, RunError, missing=f"file not found (is {path.parent} a finished run?)")


def load_run(run_dir: str | Path) -> tuple[MIND, RunInfo]:
    """Rebuild the trained MIND of a run directory (eval mode, CPU) and its metadata."""
    run_dir = Path(run_dir)
    config = _read_json(run_dir / CONFIG)
    vocab = _read_json(run_dir / VOCAB)
    metrics = _read_json(run_dir / METRICS) if (run_dir / METRICS).is_file() else {}
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.is_file():
        raise RunError(f"{checkpoint}: file not found (is {run_dir} a finished run?)")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model_config = model_config_from_dict(config["model"])
    except (RuntimeError, KeyError, TypeError, ValueError, EOFError) as err:
        raise RunError(f"{checkpoint}: cannot read the checkpoint ({err})") from err
    side = {k[len(SIDE_PREFIX):]: v for k, v in state.items() if k.startswith(SIDE_PREFIX)}
    model = MIND(model_config, side)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise RunError(f"{checkpoint}: does not match {run_dir / CONFIG} ({err})") from err
    return model.eval(), RunInfo(run_dir, model_config, config, vocab, metrics)
