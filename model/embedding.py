"""Item embedding: the mean of an item's id embedding and its side-feature embeddings.

The same table serves the behaviour side (user tower input) and the label / candidate side
(the vectors the FAISS index holds), as the paper prescribes.
"""
from __future__ import annotations

import torch
from torch import nn


class ItemEmbedding(nn.Module):
    """Pooled item vectors.

    side_tokens: feature -> (n_items + 1, T_f) int64 token indices, 0 = padding. A multi-valued
    feature (genres) is mean-pooled over its tokens first; the item vector is then the mean
    over the id embedding and every side feature the item has at least one token of.
    """

    def __init__(self, n_items: int, dim: int, side_tokens: dict[str, torch.Tensor] | None = None,
                 side_vocab_sizes: dict[str, int] | None = None):
        super().__init__()
        side_tokens = side_tokens or {}
        side_vocab_sizes = side_vocab_sizes or {}
        self.ids = nn.Embedding(n_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.ids.weight, std=dim ** -0.5)
        with torch.no_grad():
            self.ids.weight[0].zero_()
        self.side_names = sorted(side_tokens)
        self.side = nn.ModuleDict()
        for name in self.side_names:
            tokens = side_tokens[name].long()
            vocab = int(side_vocab_sizes.get(name, int(tokens.max()) + 1))
            self.side[name] = nn.Embedding(vocab, dim, padding_idx=0)
            nn.init.normal_(self.side[name].weight, std=dim ** -0.5)
            self.register_buffer(f"tokens_{name}", tokens, persistent=True)

    def table(self) -> torch.Tensor:
        """(n_items + 1, d) pooled vectors; row 0 (padding) is all-zero."""
        total = self.ids.weight                                       # (N+1, d)
        count = torch.ones(total.size(0), 1, device=total.device)
        for name in self.side_names:
            tokens = getattr(self, f"tokens_{name}")                  # (N+1, T)
            present = (tokens > 0).float()                            # (N+1, T)
            n_tokens = present.sum(1, keepdim=True)                   # (N+1, 1)
            pooled = (self.side[name](tokens) * present.unsqueeze(-1)).sum(1) / n_tokens.clamp(min=1)
            total = total + pooled
            count = count + (n_tokens > 0).float()
        table = total / count
        return table * (torch.arange(table.size(0), device=table.device) > 0).float().unsqueeze(1)
