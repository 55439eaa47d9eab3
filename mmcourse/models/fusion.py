"""Fusion: joining the features of two or more modalities into one prediction.

The taxonomy is that of Baltrusaitis, Ahuja & Morency (2018), "Multimodal Machine Learning: A
Survey and Taxonomy"; each module here takes one pooled feature per modality, a list of (B, d_m)
tensors, and fuses them.

- `EarlyFusion`: concatenate the features, then an MLP. The MLP sees every modality at once, so
  it can learn interactions between them (given enough data).
- `LateFusion`: one head per modality, then a weighted average of their logits (uniform weights:
  plain averaging, as in Snoek, Worring & Smeulders 2005, "Early versus late fusion in semantic
  video analysis"; or learned weights). Whatever the weights, the fused logit is a *sum* of
  per-modality terms: late fusion cannot represent an interaction such as "positive words in a
  sarcastic voice are negative".
- `GatedFusion`: intermediate fusion with a Gated Multimodal Unit (Arevalo et al. 2017), extended
  from two to M modalities: each modality is projected to a hidden state, a gate computed from
  *all* modalities decides, per example and per dimension, how much of each state to keep, and an
  MLP reads the gated sum.
- `TensorFusion`: the Tensor Fusion layer of Zadeh et al. (2017), "Tensor Fusion Network for
  Multimodal Sentiment Analysis": append a 1 to each modality vector and take their outer
  product. The 1s make the product hold every unimodal, bimodal and trimodal term, so a linear
  layer on top represents any multilinear function of the modalities. Its size is prod_m (d_m + 1).
- `LowRankFusion`: Low-rank Multimodal Fusion of Liu et al. (2018), "Efficient Low-rank
  Multimodal Fusion with Modality-Specific Factors": the weight tensor of that linear layer is
  written as a sum of `rank` outer products of modality-specific factors, so the product tensor is
  never built: h = sum_r prod_m (z_m W_m^(r)) + b. Parameters grow with sum_m d_m, not prod_m d_m.
- `FusionClassifier`: modality encoders in front of any fusion (and an optional head behind it).

Every fusion checks its inputs: a list or tuple of 2-D float tensors, one per modality, with the
feature sizes given at construction and one batch size.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .encoders import check_tensor

WEIGHTINGS = ("mean", "learned")


# --------------------------------------------------------------------------------------------
# Input checks and small helpers
# --------------------------------------------------------------------------------------------


def check_dims(dims, minimum: int = 2) -> tuple[int, ...]:
    """Feature sizes of the modalities: a sequence of at least `minimum` positive ints."""
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence):
        raise TypeError(f"dims must be a sequence of ints (one feature size per modality), got {type(dims).__name__}")
    if len(dims) < minimum:
        raise ValueError(f"dims must name at least {minimum} modalities, got {len(dims)}: {tuple(dims)!r}")
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise ValueError(f"dims must hold positive ints, got {tuple(dims)!r}")
    return tuple(dims)


def check_positive(name: str, value) -> int:
    """A positive int (bools refused), returned as is."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_features(features, dims: Sequence[int], name: str = "features") -> list[torch.Tensor]:
    """A list of (B, dims[m]) float tensors, one per modality, all with the same B."""
    if isinstance(features, torch.Tensor) or not isinstance(features, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple of tensors, one (B, d_m) tensor per modality; "
                        f"got {type(features).__name__}")
    if len(features) != len(dims):
        raise ValueError(f"{name} holds {len(features)} modalities; expected {len(dims)} (dims={tuple(dims)})")
    for m, (x, d) in enumerate(zip(features, dims)):
        check_tensor(f"{name}[{m}]", x, 2, floating=True)
        if x.shape[1] != d:
            raise ValueError(f"{name}[{m}] has shape {tuple(x.shape)}; expected (B, {d})")
    batch = features[0].shape[0]
    for m, x in enumerate(features[1:], start=1):
        if x.shape[0] != batch:
            raise ValueError(f"{name}[{m}] has batch size {x.shape[0]} but {name}[0] has {batch}; "
                             "every modality needs the same batch size")
    return list(features)


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """in_dim -> hidden -> out_dim with one GELU: the small head every fusion ends with."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


def append_one(x: torch.Tensor) -> torch.Tensor:
    """(B, d) -> (B, d + 1): the vector with a constant 1 appended, as in Zadeh et al. 2017."""
    return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)


def average_logits(logits: Sequence[torch.Tensor], weights: torch.Tensor | None = None) -> torch.Tensor:
    """Late fusion's combination: the (weighted) mean of M per-modality logits, each (B, C).

    `weights` is (M,) and sums to one (up to rounding in its dtype); None means uniform (the plain average).
    """
    if isinstance(logits, torch.Tensor) or not isinstance(logits, (list, tuple)) or not logits:
        raise TypeError(f"logits must be a non-empty list or tuple of (B, C) tensors, got {type(logits).__name__}")
    for m, x in enumerate(logits):
        check_tensor(f"logits[{m}]", x, 2, floating=True)
        if x.shape != logits[0].shape:
            raise ValueError(f"logits[{m}] has shape {tuple(x.shape)} but logits[0] has {tuple(logits[0].shape)}")
    stacked = torch.stack(list(logits))  # (M, B, C)
    if weights is None:
        return stacked.mean(0)
    check_tensor("weights", weights, 1, floating=True)
    if len(weights) != len(logits):
        raise ValueError(f"weights has {len(weights)} entries; expected one per modality ({len(logits)})")
    total = float(weights.detach().cpu().double().sum())  # float64 on the CPU: Apple GPUs (MPS) have none
    if not abs(total - 1.0) <= len(weights) * torch.finfo(weights.dtype).eps:
        raise ValueError(f"weights must sum to one, got sum {total:.6g} from {weights.tolist()}; "
                         "divide them by their sum, or use softmax for learned weights")
    return torch.einsum("m,mbc->bc", weights, stacked)  # (B, C)


def tensor_fusion_size(dims: Sequence[int]) -> int:
    """prod_m (d_m + 1): the length of the Tensor Fusion vector."""
    size = 1
    for d in check_dims(dims, minimum=1):
        size *= d + 1
    return size


def low_rank_fusion_parameter_count(dims: Sequence[int], rank: int, out_dim: int) -> int:
    """rank * out_dim * sum_m (d_m + 1) factor entries, plus out_dim biases."""
    dims = check_dims(dims, minimum=1)
    check_positive("rank", rank)
    check_positive("out_dim", out_dim)
    return rank * out_dim * sum(d + 1 for d in dims) + out_dim


# --------------------------------------------------------------------------------------------
# The fusions
# --------------------------------------------------------------------------------------------


class EarlyFusion(nn.Module):
    """Concatenate the M features, (B, sum_m d_m), then an MLP -> (B, out_dim)."""

    def __init__(self, dims: Sequence[int], hidden: int, out_dim: int):
        super().__init__()
        self.dims = check_dims(dims)
        self.mlp = mlp(sum(self.dims), hidden, out_dim)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        features = check_features(features, self.dims)
        return self.mlp(torch.cat(features, dim=1))  # (B, out_dim)


class LateFusion(nn.Module):
    """One MLP head per modality, (B, d_m) -> (B, C), and a weighted average of their logits.

    `weighting="mean"`: uniform weights, a fixed buffer (plain averaging). `weighting="learned"`:
    the weights are softmax(`weight_logits`), a parameter initialised to uniform. The heads are
    usually trained each on its own modality (`modality_logits`), the way separate unimodal
    classifiers are, and only their outputs meet.
    """

    def __init__(self, dims: Sequence[int], hidden: int, num_classes: int, weighting: str = "mean"):
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting={weighting!r} is unknown; expected one of {WEIGHTINGS}")
        self.dims, self.weighting = check_dims(dims), weighting
        self.heads = nn.ModuleList(mlp(d, hidden, num_classes) for d in self.dims)
        uniform = torch.zeros(len(self.dims))  # softmax(0, ..., 0) = 1 / M each
        if weighting == "learned":
            self.weight_logits = nn.Parameter(uniform)
        else:
            self.register_buffer("weight_logits", uniform)

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.weight_logits, dim=0)  # (M,)

    def modality_logits(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        features = check_features(features, self.dims)
        return torch.stack([head(x) for head, x in zip(self.heads, features)])  # (M, B, C)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return average_logits(list(self.modality_logits(features)), self.weights())  # (B, C)


class GatedFusion(nn.Module):
    """A Gated Multimodal Unit (Arevalo et al. 2017) for M modalities, then an MLP.

    h_m = tanh(W_m x_m) is modality m's hidden state (B, width); the gate g = softmax over m of
    W_g [x_1; ...; x_M], per example and per hidden dimension, weighs them: fused = sum_m g_m * h_m.
    """

    def __init__(self, dims: Sequence[int], width: int, hidden: int, out_dim: int):
        super().__init__()
        self.dims, self.width = check_dims(dims), width
        self.projections = nn.ModuleList(nn.Linear(d, width) for d in self.dims)
        self.gate = nn.Linear(sum(self.dims), len(self.dims) * width)
        self.mlp = mlp(width, hidden, out_dim)

    def gates(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, M, width): how much of each modality's hidden state each example keeps."""
        features = check_features(features, self.dims)
        scores = self.gate(torch.cat(features, dim=1))  # (B, M * width)
        return torch.softmax(scores.view(-1, len(self.dims), self.width), dim=1)  # (B, M, width)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        gates = self.gates(features)  # (B, M, width)
        states = torch.stack([torch.tanh(p(x)) for p, x in zip(self.projections, features)], dim=1)  # (B, M, width)
        return self.mlp((gates * states).sum(1))  # (B, out_dim)


class TensorFusion(nn.Module):
    """The Tensor Fusion layer (Zadeh et al. 2017): (B, d_m) per modality -> (B, prod_m (d_m + 1)).

    z = [x_1; 1] (x) [x_2; 1] (x) ... flattened, the first modality varying slowest (the order of
    `torch.einsum("bi,bj,bk->bijk", ...)`). The layer has no parameters; a head reads z.
    """

    def __init__(self, dims: Sequence[int]):
        super().__init__()
        self.dims = check_dims(dims)
        self.out_dim = tensor_fusion_size(self.dims)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        features = check_features(features, self.dims)
        fused = append_one(features[0])  # (B, d_1 + 1)
        for x in features[1:]:
            # (B, P, 1) * (B, 1, d_m + 1) -> (B, P * (d_m + 1)): one more factor of the outer product
            fused = (fused.unsqueeze(2) * append_one(x).unsqueeze(1)).flatten(1)
        return fused  # (B, prod_m (d_m + 1))


class LowRankFusion(nn.Module):
    """Low-rank Multimodal Fusion (Liu et al. 2018): (B, d_m) per modality -> (B, out_dim).

    A Tensor Fusion layer followed by a linear map has a weight W of shape
    (d_1 + 1, ..., d_M + 1, out_dim). LMF restricts W to rank `rank`: for every output unit,
    W[..., k] = sum_r w_1^(r)[:, k] (x) ... (x) w_M^(r)[:, k], with modality-specific factors
    `factors[m]` of shape (rank, d_m + 1, out_dim). Then W . z = sum_r prod_m ([x_m; 1] w_m^(r)),
    computed without building z.
    """

    def __init__(self, dims: Sequence[int], out_dim: int, rank: int):
        super().__init__()
        self.dims = check_dims(dims)
        self.rank, self.out_dim = check_positive("rank", rank), check_positive("out_dim", out_dim)
        # Each factor starts so that the product of M terms has a variance of about one.
        self.factors = nn.ParameterList(
            nn.Parameter(torch.randn(rank, d + 1, out_dim) / (d + 1) ** 0.5) for d in self.dims)
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        features = check_features(features, self.dims)
        product = None
        for x, factor in zip(features, self.factors):
            projected = torch.einsum("bi,rio->bro", append_one(x), factor)  # (B, rank, out_dim)
            product = projected if product is None else product * projected
        return product.sum(1) + self.bias  # (B, out_dim)


def low_rank_weight(factors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The weight LMF's factors stand for: (prod_m (d_m + 1), out_dim), read by a linear layer on
    Tensor Fusion's vector, so that `TensorFusion(dims)(x) @ low_rank_weight(lmf.factors) + lmf.bias`
    equals `lmf(x)`.

    W[..., k] = sum_r w_1^(r)[:, k] (x) ... (x) w_M^(r)[:, k] (Liu et al. 2018), flattened
    with the first modality varying slowest, as `TensorFusion` flattens z. `factors[m]` is
    (rank, d_m + 1, out_dim).
    """
    factors = _check_factors(factors)
    weight = factors[0]  # (rank, d_1 + 1, out_dim)
    for factor in factors[1:]:
        # (rank, P, 1, out) * (rank, 1, d_m + 1, out) -> (rank, P * (d_m + 1), out): one more outer factor
        weight = (weight.unsqueeze(2) * factor.unsqueeze(1)).flatten(1, 2)
    return weight.sum(0)  # (prod_m (d_m + 1), out_dim): the sum of the rank-one terms


def _check_factors(factors) -> list[torch.Tensor]:
    """A list of at least two (rank, d_m + 1, out_dim) tensors sharing rank and out_dim."""
    if isinstance(factors, torch.Tensor) or not isinstance(factors, (list, tuple, nn.ParameterList)) \
            or len(factors) < 2:
        raise TypeError(f"factors must be a list of at least two (rank, d_m + 1, out_dim) tensors, "
                        f"got {type(factors).__name__}")
    for m, factor in enumerate(factors):
        check_tensor(f"factors[{m}]", factor, 3, floating=True)
        if (factor.shape[0], factor.shape[2]) != (factors[0].shape[0], factors[0].shape[2]):
            raise ValueError(f"factors[{m}] has shape {tuple(factor.shape)}; every factor must share rank and "
                             f"out_dim with factors[0] {tuple(factors[0].shape)}")
    return list(factors)


# --------------------------------------------------------------------------------------------
# Encoders in front, a head behind
# --------------------------------------------------------------------------------------------


class FusionClassifier(nn.Module):
    """Encoders (one per modality) -> fusion -> optional head: a dict of inputs -> (B, C) logits.

    `encoders` maps a modality name to its encoder; `forward(inputs)` reads `inputs[name]` for
    each of them, in that order, and ignores other keys (labels and the like travel in the same
    batch). The fusion gets the list of encoded features.
    """

    def __init__(self, encoders: Mapping[str, nn.Module], fusion: nn.Module, head: nn.Module | None = None):
        super().__init__()
        if not isinstance(encoders, Mapping) or not encoders:
            raise TypeError(f"encoders must be a non-empty mapping of modality name -> nn.Module, "
                            f"got {type(encoders).__name__}")
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.head = head if head is not None else nn.Identity()

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.encoders)

    def features(self, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """One encoded (B, d_m) tensor per modality, in the order of `modalities`."""
        if not isinstance(inputs, Mapping):
            raise TypeError(f"inputs must be a mapping of modality name -> tensor, got {type(inputs).__name__}")
        missing = [name for name in self.modalities if name not in inputs]
        if missing:
            raise ValueError(f"inputs lacks the modalities {missing}; it has keys {sorted(inputs)}, "
                             f"expected {list(self.modalities)}")
        return [encoder(inputs[name]) for name, encoder in self.encoders.items()]

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.fusion(self.features(inputs)))  # (B, C)
