"""`mind export` (model/export.py): clear refusals of bad runs, and a run -> bundle end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mind_recall import cli
from model.export import RUN_FILES, tower_queries
from model.index import exact_top_k, recall_at_k
from model.tower_format import script_tower


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

    queries = tower_queries(script_tower(Echo()), np.array([4, 0, 2]), max_len=6, n_profile=0,
                            n_histories=50)
    assert queries.shape == (50, 2) and queries.dtype == np.float32
    assert set(queries[:, 0]) <= {5.0, 1.0, 3.0}                           # indices = rows + 1


# --- end to end with the real MIND network (model.tower / model.run) ---------------------

N_ITEMS, DIM, K, MAX_LEN = 400, 8, 3, 6


def write_tiny_run(run_dir, seed: int = 0):
    """An (untrained, seeded) MIND run directory written by model.run's own writer."""
    from model.config import ModelConfig, TrainConfig
    from model.run import write_run_files
    from model.tower import MIND

    torch.manual_seed(seed)
    genre = torch.randint(0, 5, (N_ITEMS + 1, 2))
    genre[0] = 0
    config = ModelConfig(n_items=N_ITEMS, embed_dim=DIM, n_interests=K, max_len=MAX_LEN, hidden_dim=16,
                         profile_dim=4, profile_vocab_sizes=(3,), item_side_vocab_sizes={"genre": 5},
                         profile_fusion="concat")   # the profile reaches the capsules (not the default)
    model = MIND(config, {"genre": genre}).eval()
    vocab = {"items": ["<pad>"] + [f"movie-{i}" for i in range(N_ITEMS)], "users": ["<pad>", "u1"],
             "item_side": {"genre": ["<pad>", "a", "b", "c", "d"]},
             "user_profile": {"age": ["<pad>", "young", "old"]}}
    metrics = {"validation": {"recall@50": 0.2}, "test": {"recall@50": 0.25, "ndcg@50": 0.1},
               "history": [{"epoch": 1}]}
    run_dir.mkdir()
    write_run_files(run_dir, model, TrainConfig(epochs=1), {"source": "synthetic", "k_core": 5, "seed": 2020},
                    vocab, {"train": ["u1"], "validation": [], "test": []}, [3, 1, 2], metrics,
                    model.state_dict())
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(eager model, bundle path) of a tiny run exported by `mind export`."""
    tmp = tmp_path_factory.mktemp("export")
    model = write_tiny_run(tmp / "run")
    assert cli.main(["export", "--run", str(tmp / "run"), "--out", str(tmp / "bundle")]) == 0
    return model, tmp / "bundle"


def random_histories(rng, lengths):
    return [list(rng.integers(1, N_ITEMS + 1, n)) for n in lengths]


def test_export_manifest_carries_the_run(exported):
    from model.bundle import load_bundle

    model, path = exported
    b = load_bundle(path)
    m = b.manifest
    assert m["metrics"] == {"validation": {"recall@50": 0.2}, "test": {"recall@50": 0.25, "ndcg@50": 0.1}}
    assert m["data"] == {"source": "synthetic", "k_core": 5, "seed": 2020}
    assert m["hyperparameters"]["model"]["embed_dim"] == DIM and m["hyperparameters"]["train"]["epochs"] == 1
    assert (b.dim, b.n_interests, b.max_len, len(b.item_ids)) == (DIM, K, MAX_LEN, N_ITEMS)
    assert b.item_ids[0] == "movie-0" and b.profile_features == ("age",)
    assert b.profile_vocab == {"age": {"young": 1, "old": 2}} and list(b.popular_rows[:3]) == [2, 0, 1]
    np.testing.assert_array_equal(b.item_vectors, model.item_vectors().detach().numpy()[1:])


def test_scripted_tower_equals_eager_model(exported):
    """Histories of length 1, typical, max_len and longer (truncated to the most recent)."""
    from model.bundle import load_bundle, prepare_histories

    model, path = exported
    tower = load_bundle(path).tower
    rng = np.random.default_rng(3)
    lengths = [1, 2, 4, MAX_LEN, MAX_LEN + 1, 3 * MAX_LEN, 1, 5]
    histories = random_histories(rng, lengths)
    history = torch.from_numpy(prepare_histories(histories, MAX_LEN))           # (B, max_len)
    profile = torch.from_numpy(rng.integers(0, 3, (len(lengths), 1)))           # (B, 1)
    capsules, active, weights = tower(history, profile)
    with torch.no_grad():
        eager_capsules, eager_active, eager_weights = model.interests(history, profile)
    torch.testing.assert_close(capsules, eager_capsules, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, eager_weights, atol=1e-5, rtol=1e-5)
    assert torch.equal(active, eager_active)
    expected_k = [max(1, min(K, int(np.floor(np.log2(min(n, MAX_LEN)))))) for n in lengths]
    assert active.sum(1).tolist() == expected_k
    assert torch.all(capsules[~active] == 0)
    long = torch.tensor([histories[5]])                                        # (1, 3*max_len) raw
    torch.testing.assert_close(tower(long, profile[5:6])[0], capsules[5:6], atol=1e-6, rtol=1e-6)


def test_scripted_tower_is_deterministic_across_calls_and_batches(exported):
    from model.bundle import load_bundle, prepare_histories

    tower = load_bundle(exported[1]).tower
    rng = np.random.default_rng(4)
    history = torch.from_numpy(prepare_histories(random_histories(rng, [1, 3, 6, 9, 2, 5]), MAX_LEN))
    profile = torch.from_numpy(rng.integers(0, 3, (6, 1)))
    first = tower(history, profile)
    for again in (tower(history, profile), tower(history, profile)):
        assert all(torch.equal(a, b) for a, b in zip(first, again))
    reordered = tower(history.flip(0), profile.flip(0))
    assert all(torch.equal(a.flip(0), b) for a, b in zip(reordered, first))
    # Alone vs in a batch of another size, BLAS may pick another kernel: equal to float32
    # rounding (measured <= 6e-8), not bit for bit; the active masks are exactly equal.
    for row in range(6):
        alone = tower(history[row:row + 1], profile[row:row + 1])
        assert torch.equal(alone[1][0], first[1][row])
        torch.testing.assert_close(alone[0][0], first[0][row], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(alone[2][0], first[2][row], atol=1e-6, rtol=1e-6)


def test_export_with_ivf_index_tunes_on_tower_capsules(exported, tmp_path, capsys):
    assert cli.main(["export", "--run", str(exported[1].parent / "run"), "--out", str(tmp_path / "b"),
                     "--index", "ivf"]) == 0
    from model.bundle import load_bundle

    bundle = load_bundle(tmp_path / "b")
    index = bundle.manifest["index"]
    assert index["type"] == "ivf" and index["tuned_recall_at_k"] >= 0.96 and "nprobe" in index["params"]
    assert "index ivf" in capsys.readouterr().out
    held_out = tower_queries(bundle.tower, bundle.popular_rows, MAX_LEN, 1, seed=7)   # new capsules
    found = bundle.index.search(held_out, 100)[1]
    assert recall_at_k(found, exact_top_k(np.asarray(bundle.item_vectors), held_out, 100)) >= 0.95


def test_same_run_exported_twice_gets_the_same_model_version(exported, tmp_path):
    from model.bundle import load_bundle

    (tmp_path / "root").mkdir()
    run = exported[1].parent / "run"
    assert cli.main(["export", "--run", str(run), "--out", str(tmp_path / "root")]) == 0
    versions = {load_bundle(p).model_version for p in [exported[1], *(tmp_path / "root").iterdir()]}
    assert len(versions) == 1


def test_existing_bundle_is_refused_without_force(exported, capsys):
    run, bundle = exported[1].parent / "run", exported[1]
    before = (bundle / "manifest.json").read_text()
    code, err = export(["--run", run, "--out", bundle], capsys)
    assert code == 2 and "already holds a bundle" in err and "--force" in err
    assert (bundle / "manifest.json").read_text() == before


def test_checkpoint_that_does_not_match_the_config_exits_2(tmp_path, capsys):
    write_tiny_run(tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["model"]["embed_dim"] = DIM * 2
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    code, err = export(["--run", tmp_path / "run", "--out", tmp_path / "b"], capsys)
    assert code == 2 and "checkpoint.pt" in err and not (tmp_path / "b").exists()


def test_profile_vocabulary_that_does_not_match_the_model_exits_2(tmp_path, capsys):
    write_tiny_run(tmp_path / "run")
    vocab = json.loads((tmp_path / "run" / "vocab.json").read_text())
    vocab["user_profile"]["age"].append("ancient")
    (tmp_path / "run" / "vocab.json").write_text(json.dumps(vocab))
    code, err = export(["--run", tmp_path / "run", "--out", tmp_path / "b"], capsys)
    assert code == 2 and f"{tmp_path / 'run' / 'vocab.json'}: user_profile vocabulary sizes (4,)" in err


def test_popularity_beyond_the_catalogue_exits_2_naming_it(tmp_path, capsys):
    write_tiny_run(tmp_path / "run")
    (tmp_path / "run" / "popularity.json").write_text(json.dumps([3, N_ITEMS + 5]))
    code, err = export(["--run", tmp_path / "run", "--out", tmp_path / "b"], capsys)
    assert code == 2 and f"{tmp_path / 'run' / 'popularity.json'}: item index {N_ITEMS + 5}" in err


def test_a_config_without_max_len_is_an_error_naming_the_file_in_the_caller_s_type():
    from model.eval_sources import EvaluationError
    from model.run import RunError, config_max_len

    assert config_max_len({"model": {"max_len": 20}, "train": {"max_len": 5}}) == 20
    assert config_max_len({"train": {"max_len": 5}}) == 5
    with pytest.raises(RunError, match=r"^run/config\.json: no max_len"):
        config_max_len({"model": {}}, "run/config.json")
    with pytest.raises(EvaluationError, match=r"^run/config\.json: no max_len"):
        config_max_len({}, "run/config.json", EvaluationError)
