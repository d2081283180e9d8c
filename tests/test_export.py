"""`mind export` (model/export.py): clear refusals of bad runs, and a run -> bundle end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mind_recall import cli
from model.export import RUN_FILES, tower_queries


def export(argv, capsys):
    code = cli.main(["export", *map(str, argv)])
    return code, capsys.readouterr().err


def fake_incomplete_run(run_dir, skip: str):
    """A run directory with every required file but ``skip`` (contents are minimal)."""
    run_dir.mkdir()
    contents = {"config.json": {"model": {"max_len": 5}}, "vocab.json": {"items": ["<pad>", "a"]},
                "popularity.json": [1], "metrics.json": {}}
    for name in RUN_FILES:
        if name != skip:
            (run_dir / name).write_text(json.dumps(contents.get(name, {})))
    return run_dir


def test_missing_run_directory_exits_2_naming_it(tmp_path, capsys):
    code, err = export(["--run", tmp_path / "nope", "--out", tmp_path / "b"], capsys)
    assert code == 2 and f"{tmp_path / 'nope'}: no such run directory" in err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("skip", RUN_FILES)
def test_incomplete_run_exits_2_naming_the_missing_file(tmp_path, capsys, skip):
    run = fake_incomplete_run(tmp_path / "run", skip)
    code, err = export(["--run", run, "--out", tmp_path / "b"], capsys)
    assert code == 2 and f"{run / skip}: missing" in err
    assert not (tmp_path / "b").exists()


def test_corrupt_run_json_exits_2_naming_the_file(tmp_path, capsys):
    run = fake_incomplete_run(tmp_path / "run", skip="")
    (run / "vocab.json").write_text("{oops")
    code, err = export(["--run", run, "--out", tmp_path / "b"], capsys)
    assert code == 2 and f"{run / 'vocab.json'}: not valid JSON" in err


def test_tower_queries_are_active_capsules_of_popular_histories():
    class Echo(torch.nn.Module):
        def forward(self, history: torch.Tensor, profile: torch.Tensor):
            last = history[:, -1:].float()                               # (B, 1)
            capsules = torch.cat([last, -last], 1)[:, None, :].repeat(1, 2, 1)  # (B, 2, 2)
            active = torch.tensor([[True, False]]).repeat(history.shape[0], 1)
            return capsules, active, torch.zeros(history.shape[0], 2, history.shape[1])

    queries = tower_queries(torch.jit.script(Echo()), np.array([4, 0, 2]), max_len=6, n_profile=0,
                            n_histories=50)
    assert queries.shape == (50, 2) and queries.dtype == np.float32
    assert set(queries[:, 0]) <= {5.0, 1.0, 3.0}                           # indices = rows + 1
