"""Training-time history augmentation (TrainConfig.history_dropout): it drops items of the
training histories only, never the most recent one, is reproducible under a seed, and leaves
validation, the exported tower and the rate-0 training exactly as they were."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.config import ModelConfig, TrainConfig
from model.data import SyntheticSpec, build_dataset, generate_with_truth
from model.train import Progress, drop_history_items, fit, held_out_set, retrieval_metrics
from model.tower import MIND
from model.tower_format import script_tower

SPEC = SyntheticSpec(n_users=80, n_items=50, n_clusters=4, min_events=8, max_events=16, seed=7)
SMALL = dict(embed_dim=8, hidden_dim=16, max_len=10, n_negatives=20)
RATE = 0.3


@pytest.fixture(scope="module")
def dataset():
    return build_dataset(generate_with_truth(SPEC)[0], k_core=5, seed=1)


def histories(rows: int = 400, length: int = 10) -> np.ndarray:
    values = np.random.default_rng(0).integers(1, 50, size=(rows, length))
    values[:, :3] = 0                                                 # left padding
    return values


def test_rate_zero_returns_the_histories_and_draws_nothing():
    h, rng = histories(), np.random.default_rng(5)
    assert drop_history_items(h, 0.0, rng) is h
    assert rng.random() == np.random.default_rng(5).random()


def test_dropout_keeps_the_most_recent_item_and_drops_about_the_rate():
    h = histories()
    out = drop_history_items(h, RATE, np.random.default_rng(1))
    assert (out[:, -1] == h[:, -1]).all()
    assert ((out == h) | (out == 0)).all()                            # items only ever become padding
    dropped = ((out == 0) & (h > 0))[:, :-1].sum() / (h[:, :-1] > 0).sum()
    assert abs(dropped - RATE) < 0.03
    assert (h[:, 3:] > 0).all()                                       # the input is not modified


def test_dropout_is_reproducible_under_a_seed_and_differs_across_seeds():
    h = histories()
    a = drop_history_items(h, RATE, np.random.default_rng(2))
    assert (a == drop_history_items(h, RATE, np.random.default_rng(2))).all()
    assert (a != drop_history_items(h, RATE, np.random.default_rng(3))).any()


def train(ds, rate: float) -> tuple[MIND, dict]:
    torch.manual_seed(0)
    model = MIND(ModelConfig(n_items=ds.n_items, **SMALL))
    result = fit(model, ds, TrainConfig(epochs=2, batch_size=64, patience=2, seed=0, history_dropout=rate),
                 torch.device("cpu"), Progress(enabled=False))
    return model, result.best_validation


def weights(model: MIND) -> list[torch.Tensor]:
    return [v.clone() for v in model.state_dict().values()]


def test_training_with_dropout_is_deterministic_and_changes_the_weights(dataset):
    first, validation = train(dataset, RATE)
    again, _ = train(dataset, RATE)
    plain, _ = train(dataset, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(weights(first), weights(again)))
    assert not all(torch.equal(a, b) for a, b in zip(weights(first), weights(plain)))
    cases = held_out_set(dataset, dataset.val_users, SMALL["max_len"])
    assert retrieval_metrics(first, cases, torch.device("cpu")) == validation   # validation sees whole histories


def test_the_exported_tower_is_deterministic_after_training_with_dropout(dataset):
    model, _ = train(dataset, RATE)
    tower = script_tower(model.user_tower())                         # what `mind export` writes
    cases = held_out_set(dataset, dataset.test_users, SMALL["max_len"])
    capsules, active, _ = tower(cases.histories, cases.profiles)
    again, _, _ = tower(cases.histories, cases.profiles)
    reference, ref_active, _ = model.eval().interests(cases.histories, cases.profiles)
    assert torch.equal(capsules, again)
    assert torch.allclose(capsules, reference, atol=1e-6) and torch.equal(active, ref_active)


def test_behaviour_dropout_acts_in_training_only_and_the_tower_ignores_it(dataset):
    torch.manual_seed(0)
    config = ModelConfig(n_items=dataset.n_items, behaviour_dropout=0.5, **SMALL)
    model = MIND(config)
    plain = MIND(ModelConfig(n_items=dataset.n_items, **SMALL))
    plain.load_state_dict(model.state_dict())                         # the same weights, no dropout
    cases = held_out_set(dataset, dataset.test_users, SMALL["max_len"])
    with torch.no_grad():
        trained_mode = model.train().interests(cases.histories, cases.profiles)[0]
        reference = plain.eval().interests(cases.histories, cases.profiles)[0]
        assert not torch.allclose(trained_mode, reference)            # dropout acts while training
        assert torch.equal(model.eval().interests(cases.histories, cases.profiles)[0], reference)
        served = script_tower(model.user_tower())(cases.histories, cases.profiles)[0]
    assert torch.allclose(served, reference, atol=1e-6)


def test_dropout_rates_out_of_range_are_refused():
    with pytest.raises(ValueError, match="behaviour_dropout"):
        ModelConfig(n_items=5, behaviour_dropout=1.0)
    with pytest.raises(ValueError, match="history_dropout"):
        TrainConfig(history_dropout=-0.1)
