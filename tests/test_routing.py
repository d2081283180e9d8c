"""Routing invariants (mind-spec section 2). Each test fails when the matching bug is planted:
batch-summed or carried routing logits, S as a plain tensor, squash over the wrong axis,
random logits at inference, padding that takes weight, inactive capsules that still count."""
from __future__ import annotations

import math

import pytest
import torch

from model.routing import B2IRouting, interest_count, routing_weights, squash
from model.tower import label_aware_attention

D, K, L = 16, 4, 12


def make_layer(axis: str = "interests", dynamic: bool = True, seed: int = 7) -> B2IRouting:
    torch.manual_seed(0)
    return B2IRouting(D, K, L, iterations=3, softmax_over_interests=axis == "interests", dynamic_k=dynamic, seed=seed)


def left_padded(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """behaviours (B, L, D) with garbage in the padded positions, mask (B, L)."""
    g = torch.Generator().manual_seed(seed)
    behaviours = torch.randn(len(lengths), L, D, generator=g) * 3
    mask = torch.zeros(len(lengths), L, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, L - n:] = True
    return behaviours, mask


AXES = ["interests", "behaviors"]


@pytest.mark.parametrize("axis", AXES)
def test_padding_never_changes_capsules(axis):
    layer = make_layer(axis).eval()
    behaviours, mask = left_padded([5])
    caps, active, weights = layer(behaviours, mask)
    other = behaviours.clone()
    other[:, : L - 5] = torch.randn(1, L - 5, D) * 100          # different garbage in padding
    caps2, _, _ = layer(other, mask)
    short_caps, _, _ = layer(behaviours[:, L - 5:], mask[:, L - 5:])  # no padding at all
    torch.testing.assert_close(caps, caps2, rtol=0, atol=1e-6)
    torch.testing.assert_close(caps, short_caps, rtol=0, atol=1e-6)
    assert torch.all(weights[:, :, : L - 5] == 0), "padding positions took routing weight"


@pytest.mark.parametrize("axis", AXES)
def test_user_capsules_do_not_depend_on_the_rest_of_the_batch(axis):
    layer = make_layer(axis).eval()
    behaviours, mask = left_padded([12, 3, 7, 1, 9])
    together, _, _ = layer(behaviours, mask)
    for b in range(5):
        alone, _, _ = layer(behaviours[b:b + 1], mask[b:b + 1])
        torch.testing.assert_close(together[b:b + 1], alone, rtol=0, atol=1e-6)


def test_eval_is_deterministic_and_carries_no_state_between_calls():
    layer = make_layer().eval()
    behaviours, mask = left_padded([10, 4])
    first, _, _ = layer(behaviours, mask)
    layer(*left_padded([12, 12, 12], seed=5))                     # other users in between
    layer.train()(*left_padded([6], seed=6))                      # and a training call
    again, _, _ = layer.eval()(behaviours, mask)
    assert torch.equal(first, again)
    assert torch.equal(make_layer(seed=7).initial_logits, layer.initial_logits)


def test_initial_logits_are_a_seeded_buffer_not_a_parameter():
    layer = make_layer()
    names = dict(layer.named_buffers())
    assert "initial_logits" in names and names["initial_logits"].shape == (L, K)
    assert all(p is not names["initial_logits"] for p in layer.parameters())
    assert not torch.equal(make_layer(seed=7).initial_logits, make_layer(seed=8).initial_logits)


def test_gradients_reach_the_trained_bilinear_matrix():
    layer = make_layer()
    assert any(p is layer.S for p in layer.parameters()), "S must be an nn.Parameter"
    behaviours, mask = left_padded([12, 6])
    caps, _, _ = layer(behaviours, mask)
    caps.sum().backward()
    assert layer.S.grad is not None and layer.S.grad.abs().sum() > 0


def test_squash_is_over_the_embedding_axis():
    z = torch.randn(3, K, D) * 5
    out = squash(z)
    norm_in, norm_out = z.norm(dim=-1), out.norm(dim=-1)
    torch.testing.assert_close(norm_out, norm_in ** 2 / (1 + norm_in ** 2), rtol=1e-5, atol=1e-6)
    # direction kept per capsule
    torch.testing.assert_close(out / norm_out.unsqueeze(-1), z / norm_in.unsqueeze(-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axis", AXES)
def test_capsule_norms_are_below_one(axis):
    layer = make_layer(axis)
    behaviours, mask = left_padded([12, 8, 2])
    caps, _, _ = layer(behaviours * 50, mask)
    assert caps.norm(dim=-1).max() < 1.0


def test_dynamic_interest_number_matches_the_formula_and_masks_inactive_capsules():
    layer = make_layer().eval()
    lengths = list(range(1, L + 1))
    behaviours, mask = left_padded(lengths)
    caps, active, weights = layer(behaviours, mask)
    expected = [max(1, min(K, math.floor(math.log2(n)))) for n in lengths]
    assert active.sum(1).tolist() == expected
    assert torch.all(caps[~active] == 0), "inactive capsules must be exactly zero"
    assert torch.all(weights[~active] == 0), "inactive capsules must take no routing weight"
    assert interest_count(torch.tensor([0, 1, 2, 3, 4, 8, 1000]), K, True).tolist() == [1, 1, 1, 1, 2, 3, 4]
    assert interest_count(torch.tensor([1, 5]), K, False).tolist() == [K, K]


def test_softmax_axis_normalises_what_it_says():
    logits = torch.randn(2, L, K)
    mask = torch.ones(2, L, dtype=torch.bool)
    active = torch.ones(2, K, dtype=torch.bool)
    over_interests = routing_weights(logits, mask, active, True)
    over_behaviours = routing_weights(logits, mask, active, False)
    torch.testing.assert_close(over_interests.sum(2), torch.ones(2, L))
    torch.testing.assert_close(over_behaviours.sum(1), torch.ones(2, K))


def test_label_aware_attention_ignores_inactive_interests():
    interests = torch.randn(2, K, D)
    active = torch.tensor([[True, True, False, False], [True, False, False, False]])
    label = interests[:, 3] * 10                                  # aligned with an inactive one
    out = label_aware_attention(interests, active, label, pow_p=2.0)
    masked = interests.clone()
    masked[~active] = 0
    again = label_aware_attention(masked, active, label, pow_p=2.0)
    torch.testing.assert_close(out, again)
    torch.testing.assert_close(out[1], interests[1, 0])           # one active interest = itself
    mean = label_aware_attention(interests, active, label, pow_p=0.0)
    torch.testing.assert_close(mean[0], interests[0, :2].mean(0))


def test_initial_logit_scale_is_configurable_but_the_draw_is_the_same():
    wide = B2IRouting(D, K, L, seed=7, init_std=1.0)
    narrow = B2IRouting(D, K, L, seed=7, init_std=0.01)
    torch.testing.assert_close(narrow.initial_logits, wide.initial_logits * 0.01)
    assert wide.initial_logits.std() > 0.5


def test_per_interest_maps_separate_capsules_that_a_shared_map_cannot():
    """With all-equal initial logits a shared S gives K identical capsules (nothing breaks the
    symmetry); one W_j per interest (ComiRec-DR) makes them differ by content, deterministically."""
    behaviours, mask = left_padded([12, 9])
    torch.manual_seed(0)
    shared = B2IRouting(D, K, L, seed=7, init_std=0.0, dynamic_k=False).eval()
    torch.manual_seed(0)
    per = B2IRouting(D, K, L, seed=7, init_std=0.0, dynamic_k=False, per_interest_maps=True).eval()
    assert per.S.shape == (K, D, D) and shared.S.shape == (D, D)
    same, _, _ = shared(behaviours, mask)
    torch.testing.assert_close(same, same[:, :1].expand_as(same))
    caps, _, _ = per(behaviours, mask)
    unit = caps / caps.norm(dim=-1, keepdim=True)
    cosine = unit @ unit.transpose(1, 2)                                   # (B, K, K)
    assert cosine[:, ~torch.eye(K, dtype=torch.bool)].max() < 0.99
    assert torch.equal(caps, per(behaviours, mask)[0])
    alone, _, _ = per(behaviours[1:], mask[1:])
    torch.testing.assert_close(alone, caps[1:], rtol=0, atol=1e-6)


def test_hard_readout_picks_the_closest_active_interest():
    from model.tower import hard_readout

    interests = torch.randn(2, K, D)
    active = torch.tensor([[True, True, False, False], [True, True, True, True]])
    label = interests[:, 1] * 3 + interests[:, 3] * 10                     # row 0: 3 is inactive
    out = hard_readout(interests, active, label)
    scores = torch.einsum("bkd,bd->bk", interests, label)
    expected0 = interests[0, int(scores[0, :2].argmax())]
    torch.testing.assert_close(out[0], expected0)
    torch.testing.assert_close(out[1], interests[1, int(scores[1].argmax())])
