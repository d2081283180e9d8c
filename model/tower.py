"""The MIND network: item embedding -> B2I routing -> profile fusion -> label-aware attention.

`MIND` is what training optimises; `MIND.user_tower()` is the serving half (history ->
capsules) with the item table frozen in, scriptable with `torch.jit.script`.
"""
from __future__ import annotations

import copy
from typing import Tuple

import torch
from torch import nn

from model.config import ModelConfig
from model.embedding import ItemEmbedding
from model.routing import MASKED_LOGIT, B2IRouting

MAX_ATTENTION_LOGIT = 50.0  # pow(score, p) is clamped here so large p stays finite


class InterestExtractor(nn.Module):
    """Behaviour embeddings (+ profile) -> K interest vectors of dimension d.

    Routing, then each capsule concatenated with the user-profile embedding and passed through
    the two fully-connected ReLU layers of the paper (the "H" layers).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.embed_dim
        self.routing = B2IRouting(d, config.n_interests, config.max_len, config.routing_iters,
                                  config.routing_softmax == "interests", config.dynamic_k, config.init_seed,
                                  config.routing_init_std, config.routing_maps == "per_interest")
        self.normalize = config.normalize
        self.behaviour_dropout = config.behaviour_dropout
        self.use_positions = config.position_embedding
        if config.position_embedding:
            self.positions = nn.Parameter(torch.zeros(config.max_len, d))    # (L, d), row L-1 = newest; starts as none
        else:
            self.register_buffer("positions", torch.zeros(0, d), persistent=False)
        sizes = [] if config.profile_fusion == "none" else list(config.profile_vocab_sizes)
        self.profile = nn.ModuleList([nn.Embedding(max(int(v), 1), config.profile_dim, padding_idx=0)
                                      for v in sizes])
        self.profile_sizes = sizes
        width = config.profile_dim * len(sizes)
        # "per_interest": capsule j gets its own projection P_j of the profile vector, so the
        # profile does not push every capsule the same way (a shared vector makes them parallel).
        self.per_interest_profile = config.profile_fusion == "per_interest" and width > 0
        if self.per_interest_profile:
            eye = torch.eye(width).unsqueeze(0).repeat(config.n_interests, 1, 1)
            self.profile_maps = nn.Parameter(eye)                     # (K, F, F), starts as "concat"
        else:
            self.register_buffer("profile_maps", torch.zeros(0), persistent=False)
        layers = [nn.Linear(d + width, config.hidden_dim), nn.ReLU(), nn.Linear(config.hidden_dim, d)]
        self.fusion = nn.Sequential(*(layers + [nn.ReLU()] if config.output_relu else layers))

    def profile_vector(self, profile: torch.Tensor) -> torch.Tensor:
        """profile (B, P) int64 -> (B, F) the concatenated profile embeddings (F = 0 without)."""
        parts = []
        for i, table in enumerate(self.profile):                      # one embedding per feature
            values = profile[:, i]
            values = torch.where((values >= 0) & (values < self.profile_sizes[i]), values,
                                 torch.zeros_like(values))            # out of range = unknown
            parts.append(table(values))                               # (B, profile_dim)
        if len(parts) == 0:
            return torch.zeros(profile.size(0), 0, device=profile.device)
        return torch.cat(parts, dim=1)

    def forward(self, behaviours: torch.Tensor, mask: torch.Tensor, profile: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """behaviours (B, L, d), mask (B, L) bool, profile (B, P) int64 -> (B, K, d), (B, K), (B, K, L)."""
        behaviours = nn.functional.dropout(behaviours, self.behaviour_dropout, self.training)   # eval: identity
        if self.use_positions:
            length = behaviours.size(1)
            behaviours = behaviours + self.positions[self.positions.size(0) - length:].unsqueeze(0)   # (B, L, d)
        capsules, active, weights = self.routing(behaviours, mask)
        k = capsules.size(1)
        user = self.profile_vector(profile).to(capsules.dtype)         # (B, F)
        if self.per_interest_profile:
            per_capsule = torch.einsum("bf,kgf->bkg", user, self.profile_maps)   # (B, K, F)
        else:
            per_capsule = user.unsqueeze(1).expand(-1, k, -1)         # (B, K, F)
        interests = self.fusion(torch.cat([capsules, per_capsule], dim=2))   # (B, K, d)
        if self.normalize:
            interests = nn.functional.normalize(interests, dim=2)     # a zero (inactive) capsule stays zero
        return interests * active.unsqueeze(2).to(interests.dtype), active, weights


def label_aware_attention(interests: torch.Tensor, active: torch.Tensor, label: torch.Tensor,
                          pow_p: float) -> torch.Tensor:
    """v_u = V_u softmax(pow(V_u^T e_label, p)) over ACTIVE interests only.

    interests (B, K, d), active (B, K) bool, label (B, d) -> (B, d). p = 0 is mean pooling of
    the active interests; large p approaches picking the closest one. pow is applied
    sign-preservingly (sign(s)|s|^p) so that it is defined for negative scores.
    """
    scores = torch.einsum("bkd,bd->bk", interests, label)             # (B, K)
    if pow_p == 0:
        logits = torch.zeros_like(scores)
    else:
        logits = (torch.sign(scores) * scores.abs().pow(pow_p)).clamp(-MAX_ATTENTION_LOGIT, MAX_ATTENTION_LOGIT)
    weights = torch.softmax(logits.masked_fill(~active, MASKED_LOGIT), dim=1)
    return torch.einsum("bk,bkd->bd", weights, interests)


def hard_readout(interests: torch.Tensor, active: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """The active interest closest to the label (label-aware attention with p -> infinity).

    interests (B, K, d), active (B, K) bool, label (B, d) -> (B, d).
    """
    scores = torch.einsum("bkd,bd->bk", interests, label).masked_fill(~active, MASKED_LOGIT)
    best = scores.argmax(dim=1)                                       # (B,)
    return interests[torch.arange(interests.size(0), device=interests.device), best]


class UserTower(nn.Module):
    """Serving tower: history (B, L) int64 item indices + profile (B, P) int64 ->
    capsules (B, K, d) float32 (inactive = 0), active (B, K) bool, routing weights (B, K, L)."""

    def __init__(self, item_table: torch.Tensor, extractor: InterestExtractor, max_len: int):
        super().__init__()
        self.register_buffer("item_table", item_table.detach().clone())  # (N + 1, d), row 0 = 0
        self.extractor = extractor
        self.max_len = max_len

    def forward(self, history: torch.Tensor, profile: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if history.size(1) > self.max_len:                            # keep the most recent
            history = history[:, history.size(1) - self.max_len:]
        n_rows = self.item_table.size(0)
        history = torch.where((history > 0) & (history < n_rows), history, torch.zeros_like(history))
        behaviours = nn.functional.embedding(history, self.item_table)  # (B, L, d)
        return self.extractor(behaviours, history > 0, profile)


class MIND(nn.Module):
    """The trainable model. forward -> (user vectors (B, d) after label-aware attention,
    item table (N + 1, d)); the loss (model.loss) scores them against the table."""

    def __init__(self, config: ModelConfig, item_side_tokens: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.config = config
        self.items = ItemEmbedding(config.n_items, config.embed_dim, item_side_tokens,
                                   config.item_side_vocab_sizes)
        self.extractor = InterestExtractor(config)

    def item_vectors(self) -> torch.Tensor:
        """(n_items + 1, d) float32: exactly the vectors the tower is trained against (and the
        index holds): L2-normalised when ``config.normalize``; row 0 (padding) is zero."""
        table = self.items.table()
        return nn.functional.normalize(table, dim=1) if self.config.normalize else table

    def interests(self, history: torch.Tensor, profile: torch.Tensor, table: torch.Tensor | None = None
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """history (B, L), profile (B, P) -> interests (B, K, d), active (B, K), weights (B, K, L)."""
        table = self.item_vectors() if table is None else table
        behaviours = table[history]                                   # (B, L, d)
        return self.extractor(behaviours, history > 0, profile)

    def forward(self, history: torch.Tensor, profile: torch.Tensor, target: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Training readout: (user vectors (B, d), item table (N + 1, d)); "max" readout scores
        every item by its best capsule and goes through `model.loss.max_readout_loss` instead."""
        table = self.item_vectors()                                   # (N + 1, d)
        interests, active, _ = self.interests(history, profile, table)
        if self.config.readout == "hard":
            return hard_readout(interests, active, table[target]), table
        user = label_aware_attention(interests, active, table[target], self.config.pow_p)
        return user, table

    def user_tower(self) -> UserTower:
        """The serving tower: a copy of the trained extractor with the item table frozen in."""
        with torch.no_grad():
            table = self.item_vectors().detach().clone()
        tower = UserTower(table, copy.deepcopy(self.extractor), self.config.max_len).eval()
        for parameter in tower.parameters():
            parameter.requires_grad_(False)
        return tower
