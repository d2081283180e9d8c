"""Hyper-parameters, as frozen dataclasses saved into every run's ``config.json``."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

ROUTING_AXES = ("interests", "behaviors")
LOSSES = ("full", "sampled")
# How training reads a user's K capsules out against the target (spec 1.4):
#   "attention": label-aware attention with power ``pow_p`` (p = 0 is mean pooling);
#   "hard": the active capsule closest to the target alone (p -> infinity, ComiRec's training);
#   "max": every catalogue item scored by its best active capsule, exactly what retrieval's
#          merge-by-score ranks by.
READOUTS = ("attention", "hard", "max")
# Bilinear maps of the routing: one S shared by every interest (the paper), or one W_j per
# interest (ComiRec-DR), whose learned differences break the symmetry between capsules.
ROUTING_MAPS = ("shared", "per_interest")
# How the user-profile embedding enters the capsules (spec 1.3): "concat" = the same profile
# vector concatenated to every capsule before the H layers (the paper); "per_interest" = each
# capsule concatenated with its own learned projection of it; "none" = profile not used.
PROFILE_FUSIONS = ("concat", "per_interest", "none")
# Learning-rate schedule over epochs: "constant"; "plateau" = multiply lr by TrainConfig.lr_decay
# after every validation pass that does not improve on the best.
LR_SCHEDULES = ("constant", "plateau")
# Values a config.json written before a field existed had implicitly (old runs load unchanged).
LEGACY_DEFAULTS = {"position_embedding": False, "output_relu": True, "readout": "attention", "routing_maps": "shared",
                   "normalize": False, "temperature": 1.0, "profile_fusion": "concat"}


@dataclass(frozen=True)
class ModelConfig:
    """The MIND network. Defaults: chosen on validation of ml-100k AND Amazon Toys (bench/ablation.md)."""
    n_items: int                      # catalogue size, without the padding index 0
    embed_dim: int = 64               # d: item, capsule and output dimension
    n_interests: int = 4              # K: maximum number of interest capsules
    max_len: int = 20                 # behaviours kept per user (most recent); 20 beat 50 on ml-100k
    routing_iters: int = 3            # r: dynamic-routing iterations
    # Which axis the routing softmax normalises over: "interests" = the paper's Algorithm 1
    # (each behaviour distributes its weight over the interests); "behaviors" = ComiRec /
    # DeepMatch (each interest distributes over the behaviours). Default "interests": it won
    # on ml-100k validation Recall@50, 0.337 vs 0.321 under the same budget (bench/ablation.md).
    routing_softmax: str = "interests"
    dynamic_k: bool = True            # K'_u = max(1, min(K, floor(log2 |I_u|)))
    pow_p: float = 0.0                # label-aware attention sharpness (readout "attention" only; 0 = mean pooling)
    hidden_dim: int = 256             # width of the first of the two H (fusion) layers
    output_relu: bool = False         # ReLU after the second H layer too; off: user vectors need signs (ml-100k val R@50 .300 vs .246)
    profile_dim: int = 16             # embedding width of each user-profile feature
    profile_vocab_sizes: tuple[int, ...] = ()           # per profile feature, incl. 0 = unknown
    item_side_vocab_sizes: dict[str, int] = field(default_factory=dict)  # per item side feature
    init_seed: int = 2020             # seeds the routing logits' one-time Gaussian draw
    routing_init_std: float = 0.0     # std of that draw; 0 = equal logits: the per-interest maps, i.e. content, route (bench/ablation.md)
    readout: str = "max"              # training readout of the capsules, one of READOUTS
    readout_smoothing: float = 0.0    # "max" readout: 0 = exact max; tau > 0 = tau * logsumexp(scores / tau)
    routing_maps: str = "per_interest"  # one of ROUTING_MAPS
    normalize: bool = True            # L2-normalise item vectors and capsules (index holds the normalised table)
    temperature: float = 0.2          # logits = cosine / temperature in the training softmax (0.2 beat 0.1 on ml-100k)
    # One of PROFILE_FUSIONS. "none": on ml-100k (age/gender/occupation) the shared profile vector
    # pulled the capsules together (cos 0.800) and lost on validation: R@50 0.3407 without it vs
    # 0.3300 "concat" vs 0.3235 "per_interest", cos 0.78 (seed 2020; bench/ablation.md). Toys has no profile.
    profile_fusion: str = "none"
    # Training-only dropout on the behaviour vectors entering the routing (identity in eval mode,
    # so the exported tower and serving are unchanged by it). 0.2 wins Toys validation (0.1626 vs
    # 0.1499, 2 seeds) but loses ml-100k's (0.3291 vs 0.3352): an option, not the default (bench/ablation.md).
    behaviour_dropout: float = 0.0
    # A learned vector per history position (newest last), added to each behaviour before the
    # routing, so capsules can weigh recent behaviour (SASRec / ComiRec-SA use positions too).
    # Validation R@50, mean of seeds 2020/2021: ml-100k 0.3607 vs 0.3352 without; Amazon Toys
    # 0.1493 vs 0.1499 (a tie); test: ml-100k 0.3284 vs 0.3048, Toys 0.1468 vs 0.1373 (bench/ablation.md).
    position_embedding: bool = True
    loss: str = "sampled"             # "full" softmax or "sampled" softmax with logQ correction
    n_negatives: int = 1000           # shared negatives per batch for the sampled softmax (at least)
    negatives_fraction: float = 0.0   # ... or this share of the catalogue when that is more (see shared_negatives)

    @property
    def shared_negatives(self) -> int:
        """Negatives per batch of the sampled softmax: max(n_negatives, fraction x catalogue)."""
        return max(self.n_negatives, math.ceil(self.negatives_fraction * self.n_items))

    def __post_init__(self):
        for name, choices in (("routing_softmax", ROUTING_AXES), ("readout", READOUTS), ("routing_maps", ROUTING_MAPS),
                              ("profile_fusion", PROFILE_FUSIONS), ("loss", LOSSES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.readout_smoothing < 0:
            raise ValueError(f"readout_smoothing must be >= 0, got {self.readout_smoothing}")
        if not 0 <= self.negatives_fraction <= 1:
            raise ValueError(f"negatives_fraction must be in [0, 1], got {self.negatives_fraction}")
        if not 0 <= self.behaviour_dropout < 1:
            raise ValueError(f"behaviour_dropout must be in [0, 1), got {self.behaviour_dropout}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for name in ("n_items", "embed_dim", "n_interests", "max_len", "routing_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        object.__setattr__(self, "profile_vocab_sizes", tuple(int(v) for v in self.profile_vocab_sizes))


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop."""
    epochs: int = 30
    batch_size: int = 256
    lr: float = 5e-3                  # ComiRec-DR's; 1e-3 left Toys under-trained (bench/ablation.md)
    weight_decay: float = 0.0
    patience: int = 3                 # evaluations without validation Recall@50 gain before stopping; at lr
                                      # 5e-3 validation peaks within 2-8 epochs and then falls (bench/ablation.md)
    lr_schedule: str = "constant"     # one of LR_SCHEDULES
    lr_decay: float = 0.5             # factor of the "plateau" schedule
    samples_per_user: int = 0         # positions sampled per train user per epoch (0 = all)
    # Training-only augmentation: each history item but the most recent is dropped (set to padding)
    # with this probability, afresh every epoch. Never applied at validation, test or serving.
    history_dropout: float = 0.0
    seed: int = 2020
    device: str = "auto"
    eval_every: int = 1               # epochs between validation passes

    def __post_init__(self):
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if not 0 <= self.history_dropout < 1:
            raise ValueError(f"history_dropout must be in [0, 1), got {self.history_dropout}")


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def model_config_from_dict(values: dict) -> ModelConfig:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    values = {**LEGACY_DEFAULTS, **values}   # runs written before a field existed load as they were
    return ModelConfig(**{k: v for k, v in values.items() if k in known})

