"""`mind evaluate`: the protocol core on synthetic users, the report, and the CLI end to end."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from model.evaluate import write_report
from model.protocol import HeldOut, MindRetriever, rank_all, score_all, tower_capsule_fn
from model.tower_format import script_tower
from tests.service_support import write_untrained_run

N_ITEMS, DIM, K = 60, 6, 3


class MeanTower(torch.nn.Module):
    """A deterministic capsule source: capsule j = embedding of the (j+1)-th most recent item."""

    def __init__(self, embeddings: torch.Tensor):
        super().__init__()
        self.embeddings = torch.nn.Embedding.from_pretrained(embeddings, padding_idx=0)

    def forward(self, history, profile):
        e = self.embeddings(history)                                   # (B, L, d)
        caps = torch.stack([e[:, -1 - j] for j in range(K)], 1)       # (B, K, d)
        active = torch.ones(caps.shape[:2], dtype=torch.bool)
        active[:, 2] = (history > 0).sum(1) >= 4
        return caps * active[..., None], active, torch.zeros(history.shape[0], K, history.shape[1])


def synthetic_users(seed=0, n_users=25, max_len=10):
    rng = np.random.default_rng(seed)
    histories = np.zeros((n_users, max_len), dtype=np.int64)
    targets = []
    for u in range(n_users):
        length = rng.integers(2, max_len + 1)
        histories[u, -length:] = rng.choice(np.arange(1, N_ITEMS + 1), length, replace=False)
        targets.append(rng.choice(N_ITEMS, 4, replace=False))
    train = [rng.choice(np.arange(1, N_ITEMS + 1), 12, replace=False) for _ in range(40)]
    gender = np.array(["M", "F", ""], dtype=object)[rng.integers(0, 3, n_users)]
    return HeldOut(histories, {"gender": gender}, targets, train, N_ITEMS)


def embeddings(seed=1):
    weights = torch.randn(N_ITEMS + 1, DIM, generator=torch.Generator().manual_seed(seed))
    weights[0] = 0
    return weights


def test_every_setting_and_method_is_scored():
    held = synthetic_users()
    emb = embeddings()
    retriever = MindRetriever(tower_capsule_fn(MeanTower(emb), 10), emb[1:].numpy())
    rankings = rank_all(held, {"MIND": retriever})
    assert set(rankings) == {"history_included", "history_excluded"}
    for per_method in rankings.values():
        assert set(per_method) == {"MIND", "item-CF", "popularity"}
        assert all(r.shape == (25, 100) for r in per_method.values())
    for name, ranked in rankings["history_excluded"].items():
        for u, rows in enumerate(held.history_rows()):
            assert not np.isin(ranked[u], rows).any(), f"{name} returned a history item"
    metrics, curves = score_all(rankings, held.target_rows)
    assert set(metrics["history_included"]["MIND"]) == {f"{m}@{n}" for m in ("recall", "ndcg", "hitrate")
                                                        for n in (20, 50)}
    assert len(curves["history_excluded"]["popularity"]) == 100


def test_renumbered_source_scores_like_the_original():
    """A bundle numbers items its own way: the row maps must make that invisible."""
    held = synthetic_users(seed=3)
    emb = embeddings()
    perm = np.random.default_rng(5).permutation(N_ITEMS)        # source row s holds dataset row perm[s]
    source_emb = torch.cat([emb[:1], emb[1:][perm]])
    index_of_dataset_row = np.argsort(perm)
    plain = MindRetriever(tower_capsule_fn(MeanTower(emb), 10), emb[1:].numpy())
    renumbered = MindRetriever(tower_capsule_fn(MeanTower(source_emb), 10), source_emb[1:].numpy(),
                               index_of_dataset_row, perm)
    a = rank_all(held, {"MIND": plain})
    b = rank_all(held, {"MIND": renumbered})
    for setting in a:
        np.testing.assert_array_equal(a[setting]["MIND"], b[setting]["MIND"])


def test_profiles_are_encoded_with_the_source_vocabulary():
    held = synthetic_users()
    retriever = MindRetriever(lambda h, p: None, np.zeros((1, 1), np.float32),
                              profile_features=("gender", "age"), profile_vocab={"gender": {"F": 1, "M": 2}})
    encoded = retriever.encode_profiles(held.profile_values, len(held.histories))
    expected_gender = [{"F": 1, "M": 2}.get(v, 0) for v in held.profile_values["gender"]]
    np.testing.assert_array_equal(encoded[:, 0], expected_gender)
    assert (encoded[:, 1] == 0).all(), "a feature the data lacks is unknown"


def test_report_and_plot_are_written(tmp_path):
    held = synthetic_users()
    emb = embeddings()
    rankings = rank_all(held, {"MIND": MindRetriever(tower_capsule_fn(MeanTower(emb), 10), emb[1:].numpy())})
    metrics, curves = score_all(rankings, held.target_rows)
    result = {"source": {"kind": "run", "path": "r", "data": "d", "split": "test", "n_users": 25,
                         "n_items": N_ITEMS}, "metrics": metrics, "missing": {"MIND K=1": "absent"}}
    written = write_report(result, curves, tmp_path / "eval", "mind evaluate --run r")
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "`mind evaluate --run r`" in report and "MIND K=1: not evaluated" in report
    assert report.count("| MIND |") == 2 and "| item-CF |" in report
    pytest.importorskip("matplotlib")
    assert (tmp_path / "eval" / "recall_curve.png").stat().st_size > 1000
    assert len(written) == 2


@pytest.mark.parametrize("flag, setup, message", [
    ("--run", None, "no such run directory"),
    ("--run", "dir", "config.json: file not found"),
    ("--run", "bad_json", "config.json: not valid JSON"),
    ("--run", "list_json", "config.json: expected a JSON object"),
    ("--bundle", None, "no such bundle"),
    ("--bundle", "dir", "holds no bundle"),
])
def test_bad_input_exits_2_with_a_message(tmp_path, capsys, flag, setup, message):
    from mind_recall.cli import main

    target = tmp_path / "thing"
    if setup in ("dir", "bad_json", "list_json"):
        target.mkdir()
    if setup in ("bad_json", "list_json"):
        (target / "config.json").write_text("{not json" if setup == "bad_json" else "[1, 2]")
    assert main(["evaluate", flag, str(target)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


class LastItemsTower(torch.nn.Module):
    """A TorchScript-able capsule source: capsule j = embedding of the (j+1)-th latest item,
    active when the user has at least j+1 items; the profile shifts every capsule."""

    def __init__(self, item_emb: torch.Tensor, profile_emb: torch.Tensor):
        super().__init__()
        self.item_emb = torch.nn.Parameter(item_emb)
        self.profile_emb = torch.nn.Parameter(profile_emb)

    def forward(self, history: torch.Tensor, profile: torch.Tensor):
        e = self.item_emb[history]                                        # (B, L, d)
        caps = torch.stack([e[:, -1], e[:, -2], e[:, -3]], 1)            # (B, K, d)
        caps = caps + 0.1 * self.profile_emb[profile[:, 0]].unsqueeze(1)
        n_real = (history > 0).sum(1, keepdim=True)                      # (B, 1)
        active = torch.arange(3).unsqueeze(0) < n_real                   # (B, K)
        return caps * active.unsqueeze(-1).float(), active, torch.zeros(history.shape[0], 3, history.shape[1])


def test_bundle_evaluation_matches_the_direct_protocol(tmp_path, capsys):
    """`mind evaluate --bundle`: TorchScript tower + the bundle's index on the manifest's split."""
    from mind_recall.cli import main
    from model.bundle import write_bundle
    from model.data import data_config, rebuild_dataset
    from model.data import SyntheticSpec, generate, write_recbole
    from model.eval_sources import held_out_users

    spec = SyntheticSpec(n_users=150, n_items=80, n_clusters=6, min_events=8, max_events=20)
    inter = write_recbole(generate(spec), tmp_path / "data", "tiny")
    cfg = data_config(inter, k_core=2, seed=7)
    ds = rebuild_dataset(cfg)
    n_items, ages = len(ds.items.tokens) - 1, ds.user_profile_vocabs["age"].tokens
    gen = torch.Generator().manual_seed(0)
    item_emb = torch.randn(n_items + 1, DIM, generator=gen)
    item_emb[0] = 0
    tower = script_tower(LastItemsTower(item_emb, torch.randn(len(ages), DIM, generator=gen)))
    bundle = write_bundle(tmp_path / "bundle", tower=tower, item_vectors=item_emb[1:].numpy(),
                          item_ids=ds.items.tokens[1:], profile_vocab={"age": list(ages)},
                          popular_rows=np.arange(n_items), hyperparameters={}, metrics={}, max_len=8, data=cfg)

    assert main(["evaluate", "--bundle", str(bundle), "--out", str(tmp_path / "eval")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["metrics"]["history_included"]) == {"MIND", "item-CF", "popularity"}
    assert set(result["diversity"]["history_excluded"]) == {"MIND"}
    assert result["diversity"]["history_excluded"]["MIND"]["capsule_cosine"] is not None

    held = held_out_users(ds, "test", 8)
    age_vocab = {a: i for i, a in enumerate(ages) if i}
    direct = MindRetriever(tower_capsule_fn(tower, 8), item_emb[1:].numpy(),
                           profile_features=("age",), profile_vocab={"age": age_vocab})
    expected, _ = score_all(rank_all(held, {"MIND": direct}), held.target_rows)
    for setting, per_method in expected.items():
        for method, metrics in per_method.items():
            assert result["metrics"][setting][method] == pytest.approx(metrics), (setting, method)
    assert (tmp_path / "eval" / "report.md").is_file()


# --- end to end with the real MIND network and run directory (model.tower / model.run) -----

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(run dir, dataset, MIND) on a small planted dataset, with a K=1 baseline run inside."""
    from model.data import data_config, rebuild_dataset
    from model.data import SyntheticSpec, generate, write_recbole

    tmp = tmp_path_factory.mktemp("evalrun")
    spec = SyntheticSpec(n_users=200, n_items=120, n_clusters=6, min_events=8, max_events=25)
    cfg = data_config(write_recbole(generate(spec), tmp / "data", "tiny"), k_core=3, seed=11)
    ds = rebuild_dataset(cfg)
    model = write_untrained_run(tmp / "run", ds, cfg, n_interests=3)
    write_untrained_run(tmp / "run" / "baselines" / "k1", ds, cfg, n_interests=1, seed=1)
    return tmp / "run", ds, model


def test_run_evaluation_end_to_end(tiny_run, capsys):
    from mind_recall.cli import main
    from model.train import held_out_set, retrieval_metrics

    run_dir, ds, model = tiny_run
    assert main(["evaluate", "--run", str(run_dir)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["missing"] == {}
    for setting in ("history_included", "history_excluded"):
        assert set(result["metrics"][setting]) == {"MIND", "MIND K=1", "item-CF", "popularity"}
    assert result["source"]["n_users"] == len(ds.test_users)
    assert (run_dir / "eval" / "report.md").is_file()
    if importlib.util.find_spec("matplotlib"):
        assert (run_dir / "eval" / "recall_curve.png").is_file()
    # The trainer's own evaluation of the same model on the same users gives the same numbers.
    cases = held_out_set(ds, ds.test_users, 10)
    for setting, exclude in (("history_included", False), ("history_excluded", True)):
        trainer_view = retrieval_metrics(model, cases, torch.device("cpu"), exclude_history=exclude)
        assert result["metrics"][setting]["MIND"] == pytest.approx(trainer_view, abs=1e-6)
    # Diversity beside the metrics: MIND's cosine is that of the trainer's capsules; K=1 has no pair.
    from model.train import user_interests
    from model.metrics import capsule_cosine

    capsules, active = user_interests(model, cases.histories, cases.profiles, torch.device("cpu"))
    for setting in ("history_included", "history_excluded"):
        diversity = result["diversity"][setting]
        assert set(diversity) == {"MIND", "MIND K=1"}
        assert diversity["MIND"]["capsule_cosine"] == pytest.approx(capsule_cosine(capsules, active), abs=1e-5)
        assert 0.0 <= diversity["MIND"]["one_interest_overlap@50"] <= 1.0
        assert diversity["MIND K=1"] == {"capsule_cosine": None, "one_interest_overlap@50": 1.0}
    report = (run_dir / "eval" / "report.md").read_text()
    assert report.count("| MIND K=1 |") == 2 and "| n/a | 1.0000 |" in report


def test_run_without_k1_baseline_says_it_is_missing(tiny_run, tmp_path, capsys):
    import shutil

    from mind_recall.cli import main

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run[0], run_dir, ignore=shutil.ignore_patterns("baselines", "eval"))
    assert main(["evaluate", "--run", str(run_dir), "--split", "validation", "--out", str(tmp_path / "out")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "MIND K=1" in result["missing"] and "MIND K=1" not in result["metrics"]["history_included"]
    assert result["source"]["split"] == "validation"
    assert "MIND K=1: not evaluated" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("device", ["bogus", "cuda"])
def test_unusable_device_exits_2(tiny_run, capsys, device):
    from mind_recall.cli import main

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["evaluate", "--run", str(tiny_run[0]), "--device", device]) == 2
    err = capsys.readouterr().err
    assert f"--device {device}" in err and "Traceback" not in err


def test_run_whose_log_changed_is_refused(tiny_run, tmp_path, capsys):
    import shutil

    from mind_recall.cli import main

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run[0], run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    config["data"]["seed"] = 12                                   # another split than the run's
    (run_dir / "config.json").write_text(json.dumps(config))
    assert main(["evaluate", "--run", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "split.json" in err and "Traceback" not in err


def test_interest_diversity_of_distinct_and_collapsed_capsules():
    """Orthogonal capsules over disjoint item groups: cosine 0, the first interest alone finds
    half the merged list; one capsule repeated: cosine 1 and overlap 1."""
    from model.protocol import interest_diversity

    items = np.zeros((8, 2), np.float32)
    items[:4, 0] = np.arange(4, 0, -1)                  # rows 0-3 along x
    items[4:, 1] = np.arange(4, 0, -1)                  # rows 4-7 along y
    distinct = np.array([[[1.0, 0.0], [0.0, 1.0]]], np.float32)
    got = interest_diversity(distinct, np.ones((1, 2), bool), items, n=4)
    assert got["capsule_cosine"] == pytest.approx(0.0)
    # merged top-4 by score: rows 0, 4 (4.0), 1, 5 (3.0); first alone: rows 0-3 -> 2 / 6
    assert got["one_interest_overlap@4"] == pytest.approx(2 / 6)
    collapsed = np.array([[[1.0, 0.0], [2.0, 0.0]]], np.float32)
    got = interest_diversity(collapsed, np.ones((1, 2), bool), items, n=4)
    assert got == {"capsule_cosine": pytest.approx(1.0), "one_interest_overlap@4": pytest.approx(1.0)}
    got = interest_diversity(distinct[:, :1], np.ones((1, 1), bool), items, n=4)
    assert got["capsule_cosine"] is None and got["one_interest_overlap@4"] == 1.0


def test_one_device_rule():
    from model.device import DeviceError, resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="not a torch device"):
        resolve_device("bogus")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda", local_rank=1)
    else:
        assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
