"""The MIND network around the routing layer: item embedding, profile fusion, label-aware
attention, the scripted serving tower (docs/architecture.md contract) and the losses."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch.nn import functional as F

from model.config import ModelConfig, TrainConfig, model_config_from_dict, to_dict
from model.loss import full_softmax_loss, sampled_softmax_loss, sampling_distribution
from model.tower import MIND
from model.tower_format import script_tower

N_ITEMS, D, K, MAX_LEN = 40, 16, 4, 10


def make_model(**overrides) -> MIND:
    values = dict(n_items=N_ITEMS, embed_dim=D, n_interests=K, max_len=MAX_LEN, hidden_dim=32,
                  profile_dim=4, profile_vocab_sizes=(3, 5), item_side_vocab_sizes={"genre": 6},
                  profile_fusion="concat")   # the profile path is exercised; "none" (the default) below
    config = ModelConfig(**{**values, **overrides})
    g = torch.Generator().manual_seed(3)
    genre = torch.randint(0, 6, (N_ITEMS + 1, 2), generator=g)
    genre[0] = 0
    torch.manual_seed(0)
    return MIND(config, {"genre": genre})


def histories(lengths: list[int], length: int = MAX_LEN, seed: int = 1) -> torch.Tensor:
    """(B, length) int64 left-padded item indices."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(len(lengths), length, dtype=torch.long)
    for b, n in enumerate(lengths):
        out[b, length - n:] = torch.randint(1, N_ITEMS + 1, (n,), generator=g)
    return out


def profiles(batch: int) -> torch.Tensor:
    return torch.stack([torch.arange(batch) % 3, torch.arange(batch) % 5], dim=1)


def test_config_json_round_trip():
    config = make_model().config
    again = model_config_from_dict(json.loads(json.dumps(to_dict(config))))
    assert again == config
    train = TrainConfig(epochs=3, lr=0.01)
    assert TrainConfig(**json.loads(json.dumps(to_dict(train)))) == train
    with pytest.raises(ValueError, match="routing_softmax"):
        dataclasses.replace(config, routing_softmax="capsules")


def test_item_vectors_pool_side_features_and_keep_padding_zero():
    model = make_model(normalize=False)                                # the pooling itself
    table = model.item_vectors()
    assert table.shape == (N_ITEMS + 1, D) and table.dtype == torch.float32
    assert torch.all(table[0] == 0)
    tokens = model.items.tokens_genre
    item = int(torch.nonzero((tokens > 0).all(1))[0])                  # an item with two genres
    genre = model.items.side["genre"](tokens[item]).mean(0)
    torch.testing.assert_close(table[item], (model.items.ids.weight[item] + genre) / 2)
    bare = int(torch.nonzero((tokens == 0).all(1))[1])                 # no genre: id embedding alone
    torch.testing.assert_close(table[bare], model.items.ids.weight[bare])
    normalised = make_model()                                          # the default: unit rows
    torch.testing.assert_close(normalised.item_vectors(), F.normalize(normalised.items.table(), dim=1))


@pytest.mark.parametrize("axis", ["interests", "behaviors"])
def test_scripted_tower_matches_eager(axis):
    model = make_model(routing_softmax=axis)
    tower = model.user_tower()
    scripted = script_tower(tower)
    for length in (MAX_LEN, 4, MAX_LEN + 5):                           # shorter and longer than max_len
        h = histories([min(n, length) for n in (length, 5, 1, 2, 9)], length=length)
        p = profiles(len(h))
        for eager, script in zip(tower(h, p), scripted(h, p)):
            assert eager.dtype == script.dtype
            torch.testing.assert_close(script, eager, rtol=0, atol=1e-5)


def test_tower_contract_shapes_masks_and_no_profile():
    model = make_model(profile_vocab_sizes=())
    tower = script_tower(model.user_tower())
    h = histories([MAX_LEN, 3, 1])
    capsules, active, weights = tower(h, torch.zeros(3, 0, dtype=torch.long))
    assert capsules.shape == (3, K, D) and capsules.dtype == torch.float32
    assert active.dtype == torch.bool and active.sum(1).tolist() == [3, 1, 1]
    assert weights.shape == (3, K, MAX_LEN)
    assert torch.all(capsules[~active] == 0)
    assert torch.all(weights[:, :, :MAX_LEN - 3][1] == 0)              # padding has no weight


def test_tower_is_deterministic_across_calls_and_batch_mates():
    tower = make_model().user_tower()
    h, p = histories([8, 3, 10, 6]), profiles(4)
    first = tower(h, p)[0]
    assert torch.equal(first, tower(h, p)[0])
    alone = tower(h[2:3], p[2:3])[0]
    torch.testing.assert_close(alone[0], first[2], rtol=0, atol=1e-6)
    bigger = tower(torch.cat([h, histories([9] * 6, seed=4)]), torch.cat([p, profiles(6)]))[0]
    torch.testing.assert_close(bigger[:4], first, rtol=0, atol=1e-6)


def test_tower_uses_the_trained_table_and_profile():
    model = make_model()
    h, p = histories([6, 6]), profiles(2)
    eager, _, _ = model.interests(h, p)
    served, _, _ = model.user_tower()(h, p)
    torch.testing.assert_close(served, eager)
    other = served - model.user_tower()(h, (p + 1) % 3)[0]
    assert other.abs().max() > 0, "the profile must reach the capsules"


def test_label_attention_of_a_single_interest_user_is_that_interest():
    model = make_model().eval()
    h, p = histories([3]), profiles(1)                                 # floor(log2 3) = 1 interest
    interests, active, _ = model.interests(h, p)
    assert active.sum() == 1
    user, table = model(h, p, torch.tensor([7]))
    torch.testing.assert_close(user[0], interests[0, 0])
    assert table.shape == (N_ITEMS + 1, D)


def test_gradients_reach_every_trained_part():
    model = make_model()
    h, p, t = histories([10, 7, 4]), profiles(3), torch.tensor([1, 2, 3])
    user, table = model(h, p, t)
    full_softmax_loss(user, table, t).backward()
    names = {n for n, q in model.named_parameters() if q.grad is None or q.grad.abs().sum() == 0}
    for name in ("extractor.routing.S", "items.ids.weight", "items.side.genre.weight",
                 "extractor.fusion.0.weight", "extractor.profile.0.weight"):
        assert name not in names, f"{name} got no gradient"


def test_full_softmax_is_cross_entropy_over_real_items():
    user, table = torch.randn(5, D), torch.randn(N_ITEMS + 1, D)
    target = torch.tensor([1, 5, 9, N_ITEMS, 2])
    expected = F.cross_entropy(user @ table[1:].t(), target - 1)
    torch.testing.assert_close(full_softmax_loss(user, table, target), expected)


def test_sampled_softmax_with_logq_tracks_the_full_softmax_gradient():
    """With a popularity-skewed sampler, logQ correction makes the sampled gradient follow the
    full-softmax one; without it the popular items are over-penalised."""
    torch.manual_seed(0)
    table = torch.randn(N_ITEMS + 1, D)
    counts = torch.cat([torch.zeros(1), torch.logspace(3, 0, N_ITEMS)])  # steep popularity
    q = sampling_distribution(counts)
    target = torch.tensor([N_ITEMS - 1, 3, 20])

    def grad(loss_fn) -> torch.Tensor:
        user = torch.randn(3, D, generator=torch.Generator().manual_seed(1)).requires_grad_()
        loss_fn(user).backward()
        return user.grad.flatten()

    full = grad(lambda u: full_softmax_loss(u, table, target))
    corrected = grad(lambda u: sampled_softmax_loss(u, table, target, q, 20000, torch.Generator().manual_seed(2)))
    assert F.cosine_similarity(full, corrected, dim=0) > 0.99   # 0.93 without the -log q terms
    assert torch.all(q[1:] > 0) and q[0] == 0


def test_normalised_model_indexes_exactly_the_unit_vectors_it_is_trained_against():
    model = make_model(normalize=True, temperature=0.1, routing_maps="per_interest")
    table = model.item_vectors()
    assert torch.all(table[0] == 0)
    torch.testing.assert_close(table[1:].norm(dim=1), torch.ones(N_ITEMS))
    h, p = histories([MAX_LEN, 5, 1]), profiles(3)
    tower = script_tower(model.user_tower())
    capsules, active, _ = tower(h, p)
    torch.testing.assert_close(capsules[active].norm(dim=1), torch.ones(int(active.sum())))
    assert torch.all(capsules[~active] == 0)
    torch.testing.assert_close(tower.item_table, table.detach())
    torch.testing.assert_close(capsules, model.user_tower()(h, p)[0], rtol=0, atol=1e-5)


def test_max_readout_loss_scores_each_item_by_its_best_active_capsule():
    from model.loss import max_readout_loss

    interests, table = torch.randn(3, K, D), torch.randn(N_ITEMS + 1, D)
    active = torch.tensor([[True, True, False, False], [True] * 4, [True, False, False, False]])
    target = torch.tensor([4, 9, 1])
    scores = torch.einsum("bkd,nd->bkn", interests, table[1:])
    best = torch.stack([scores[b, active[b]].max(0).values for b in range(3)])
    torch.testing.assert_close(max_readout_loss(interests, active, table, target, 0.5),
                               F.cross_entropy(best / 0.5, target - 1))
    one = torch.tensor([[True, False, False, False]] * 3)
    torch.testing.assert_close(max_readout_loss(interests, one, table, target),
                               full_softmax_loss(interests[:, 0], table, target))


def test_configs_written_before_the_interest_fields_load_with_the_old_behaviour():
    old = {k: v for k, v in to_dict(make_model().config).items()
           if k not in ("readout", "routing_maps", "normalize", "temperature", "output_relu")}
    config = model_config_from_dict(old)
    assert (config.readout, config.routing_maps, config.normalize, config.temperature, config.output_relu) == \
        ("attention", "shared", False, 1.0, True)
    with pytest.raises(ValueError, match="readout"):
        dataclasses.replace(config, readout="soft")


def test_sampled_max_readout_is_the_sampled_loss_of_the_best_capsule_scores():
    torch.manual_seed(0)
    interests, table = torch.randn(3, K, D), torch.randn(N_ITEMS + 1, D)
    active = torch.tensor([[True, True, False, False], [True] * 4, [True, False, False, False]])
    target, q = torch.tensor([4, 9, 1]), sampling_distribution(torch.arange(N_ITEMS + 1.0))
    one = torch.tensor([[True, False, False, False]] * 3)
    torch.testing.assert_close(
        sampled_softmax_loss(interests, table, target, q, 50, torch.Generator().manual_seed(4), 0.5, one),
        sampled_softmax_loss(interests[:, 0] / 0.5, table, target, q, 50, torch.Generator().manual_seed(4)))
    best_of_two = sampled_softmax_loss(interests, table, target, q, 50, torch.Generator().manual_seed(4), 1.0, active)
    first_only = sampled_softmax_loss(interests, table, target, q, 50, torch.Generator().manual_seed(4), 1.0, one)
    assert best_of_two.item() != first_only.item()


@pytest.mark.parametrize("fusion", ["none", "per_interest"])
def test_profile_fusion_modes_keep_the_tower_contract(fusion):
    """"none" ignores the profile input; "per_interest" starts as "concat" (identity projections)
    and then lets each capsule take its own view of the profile. Both script and export."""
    from model.tower_format import export_tower

    model, concat = make_model(profile_fusion=fusion), make_model()
    h, p = histories([MAX_LEN, 5, 9]), profiles(3)
    tower = model.user_tower()
    capsules, active, _ = tower(h, p)
    other = tower(h, (p + 1) % 3)[0]
    if fusion == "none":
        assert torch.equal(capsules, other) and len(list(model.extractor.profile.parameters())) == 0
    else:
        torch.testing.assert_close(capsules, concat.user_tower()(h, p)[0])
        assert (other - capsules).abs().max() > 0, "the profile must reach the capsules"
        with torch.no_grad():
            model.extractor.profile_maps[1].mul_(-1.0)
        moved = model.user_tower()(h, p)[0]
        assert (moved - capsules)[:, 1].abs().max() > 0
        torch.testing.assert_close(moved[:, [0, 2, 3]], capsules[:, [0, 2, 3]])
    for served in (script_tower(tower), export_tower(tower, MAX_LEN, 2).module()):
        for eager, out in zip(tower(h, p), served(h, p)):
            torch.testing.assert_close(out, eager, rtol=0, atol=1e-5)


def test_configs_written_before_profile_fusion_load_with_the_shared_profile():
    old = {k: v for k, v in to_dict(make_model().config).items() if k != "profile_fusion"}
    assert model_config_from_dict(old).profile_fusion == "concat"
    with pytest.raises(ValueError, match="profile_fusion"):
        make_model(profile_fusion="sum")


def test_smooth_max_readout_tends_to_the_max_and_spreads_the_gradient():
    from model.loss import best_capsule_scores

    torch.manual_seed(2)
    scores = torch.randn(3, K, 7, requires_grad=True)                  # (B, K, S)
    active = torch.tensor([[True, True, False, False], [True] * 4, [True, False, False, False]])
    exact = best_capsule_scores(scores, active)
    torch.testing.assert_close(best_capsule_scores(scores, active, 1e-4), exact, rtol=0, atol=1e-3)
    smooth = best_capsule_scores(scores, active, 0.5)
    assert torch.all(smooth >= exact - 1e-6)                           # logsumexp >= max
    smooth.sum().backward()
    grad = scores.grad.abs().sum(2)                                    # (B, K)
    assert torch.all(grad[active] > 0) and torch.all(grad[~active] == 0)
    with pytest.raises(ValueError, match="readout_smoothing"):
        make_model(readout_smoothing=-1.0)


def test_plateau_schedule_decays_the_learning_rate_only_when_asked():
    from model.train import decay_lr

    for schedule, expected in (("constant", 0.01), ("plateau", 0.0025)):
        optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
        decay_lr(optimizer, TrainConfig(lr_schedule=schedule, lr_decay=0.25))
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="cosine")


def test_shared_negatives_are_at_least_n_negatives_or_the_catalogue_share():
    assert ModelConfig(n_items=1349, n_negatives=1000, negatives_fraction=0.25).shared_negatives == 1000
    assert ModelConfig(n_items=11924, n_negatives=1000, negatives_fraction=0.25).shared_negatives == 2981
    assert ModelConfig(n_items=11924, n_negatives=1000).shared_negatives == 1000
    with pytest.raises(ValueError, match="negatives_fraction"):
        ModelConfig(n_items=10, negatives_fraction=1.5)


def _with_positions(model: MIND) -> MIND:
    """``model`` with random (trained-looking) position vectors instead of their zero start."""
    with torch.no_grad():
        model.extractor.positions.copy_(torch.randn(model.extractor.positions.shape, generator=torch.Generator().manual_seed(5)))
    return model


def test_position_embedding_makes_the_capsules_depend_on_the_order_of_the_history():
    h, p = histories([MAX_LEN, MAX_LEN]), profiles(2)
    shuffled = h[:, torch.randperm(MAX_LEN, generator=torch.Generator().manual_seed(2))]
    plain = make_model(position_embedding=False).user_tower()
    torch.testing.assert_close(plain(shuffled, p)[0], plain(h, p)[0], rtol=0, atol=1e-5)   # a bag of behaviours
    ordered = _with_positions(make_model(position_embedding=True)).user_tower()
    assert (ordered(shuffled, p)[0] - ordered(h, p)[0]).abs().max() > 1e-3


def test_position_embedding_starts_as_none_is_trained_and_scripts():
    model = make_model(position_embedding=True)
    h, p, t = histories([10, 7, 4]), profiles(3), torch.tensor([1, 2, 3])
    torch.testing.assert_close(model.interests(h, p)[0], make_model(position_embedding=False).interests(h, p)[0])  # zero start
    user, table = model(h, p, t)
    full_softmax_loss(user, table, t).backward()
    assert model.extractor.positions.grad.abs().sum() > 0
    tower = _with_positions(model).user_tower()
    scripted = script_tower(tower)
    for length in (MAX_LEN, 4, MAX_LEN + 5):                           # newest item always on the last position
        hist = histories([min(n, length) for n in (length, 3, 1)], length=length)
        for eager, script in zip(tower(hist, profiles(3)), scripted(hist, profiles(3))):
            torch.testing.assert_close(script, eager, rtol=0, atol=1e-5)
    short, full = histories([4], length=4), histories([4], length=MAX_LEN)
    torch.testing.assert_close(tower(short, profiles(1))[0], tower(full, profiles(1))[0], rtol=0, atol=1e-5)


def test_runs_written_before_position_embedding_load_without_it():
    old = {k: v for k, v in to_dict(make_model(position_embedding=False).config).items() if k != "position_embedding"}
    assert model_config_from_dict(old).position_embedding is False
    state = make_model(position_embedding=False).state_dict()
    assert not any("positions" in name for name in state)              # old checkpoints have no such key
    MIND(model_config_from_dict(old), {"genre": torch.zeros(N_ITEMS + 1, 2, dtype=torch.long)}).load_state_dict(state)
