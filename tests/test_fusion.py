"""Tests of mmcourse.models.fusion: each fusion against its definition, LMF's parameters and
expressiveness, the classifier wrapper, and clear errors on bad input."""
import copy

import pytest
import torch
from torch import nn

from mmcourse.models.encoders import ConvSequenceEncoder
from mmcourse.models.fusion import (EarlyFusion, FusionClassifier, GatedFusion, LateFusion, LowRankFusion,
                                    TensorFusion, average_logits, low_rank_fusion_parameter_count,
                                    low_rank_weight, mlp, tensor_fusion_size)


def features(dims, batch=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, d, generator=gen) for d in dims]


def with_one(x):
    return torch.cat([x, torch.ones(len(x), 1)], dim=1)


def tfn_linear_output(weight, bias, xs):
    """Output of a linear layer on the Tensor Fusion vector, written with one einsum over the
    unflattened weight (d_1 + 1, ..., d_M + 1, out)."""
    letters = "ijk"[: len(xs)]
    equation = ",".join(f"b{c}" for c in letters) + f",{letters}o->bo"
    return torch.einsum(equation, *[with_one(x) for x in xs], weight) + bias


# ---------------------------------------------------------------------------------------------- TensorFusion


def test_tensor_fusion_two_modalities_is_the_outer_product_of_the_definition():
    a, b = features((3, 5))
    expected = torch.einsum("bi,bj->bij", with_one(a), with_one(b)).flatten(1)
    out = TensorFusion((3, 5))([a, b])
    assert out.shape == (4, 4 * 6)
    torch.testing.assert_close(out, expected)


def test_tensor_fusion_three_modalities_is_the_outer_product_of_the_definition():
    a, b, c = features((2, 3, 4), batch=5)
    expected = torch.einsum("bi,bj,bk->bijk", with_one(a), with_one(b), with_one(c)).flatten(1)
    out = TensorFusion((2, 3, 4))([a, b, c])
    assert out.shape == (5, 3 * 4 * 5) == (5, tensor_fusion_size((2, 3, 4)))
    torch.testing.assert_close(out, expected)


def test_tensor_fusion_keeps_the_unimodal_vectors_and_the_constant():
    a, b, c = features((2, 3, 4))
    z = TensorFusion((2, 3, 4))([a, b, c]).view(4, 3, 4, 5)
    torch.testing.assert_close(z[:, :2, -1, -1], a)  # x_a (x) 1 (x) 1
    torch.testing.assert_close(z[:, -1, -1, :4], c)
    assert torch.all(z[:, -1, -1, -1] == 1)


def test_tensor_fusion_size_is_the_product_of_dims_plus_one():
    assert tensor_fusion_size((32, 32, 64)) == 33 * 33 * 65
    assert TensorFusion((1, 1)).out_dim == 4


# ---------------------------------------------------------------------------------------------- LowRankFusion


def test_low_rank_fusion_factors_are_registered_parameters():
    lmf = LowRankFusion((3, 4, 5), out_dim=6, rank=2)
    state = lmf.state_dict()
    assert [tuple(state[f"factors.{m}"].shape) for m in range(3)] == [(2, 4, 6), (2, 5, 6), (2, 6, 6)]
    assert "bias" in state
    names = {name for name, _ in lmf.named_parameters()}
    assert names == {"factors.0", "factors.1", "factors.2", "bias"}
    moved = copy.deepcopy(lmf).to(torch.float64)  # .to() reaches every factor
    assert all(p.dtype == torch.float64 for p in moved.parameters())
    assert all(p.device == torch.device("meta") for p in copy.deepcopy(lmf).to("meta").parameters())


def test_low_rank_fusion_parameter_count_matches_the_closed_form():
    for dims, rank, out_dim in (((3, 4, 5), 2, 6), ((32, 32, 64), 4, 1), ((7, 9), 3, 11)):
        lmf = LowRankFusion(dims, out_dim, rank)
        counted = sum(p.numel() for p in lmf.parameters())
        assert counted == low_rank_fusion_parameter_count(dims, rank, out_dim)
        assert counted == rank * out_dim * sum(d + 1 for d in dims) + out_dim


def test_low_rank_fusion_is_a_tfn_linear_layer_with_a_low_rank_weight():
    torch.manual_seed(0)
    dims = (2, 3, 2)
    lmf = LowRankFusion(dims, out_dim=4, rank=3)
    xs = features(dims)
    # W[..., o] = sum_r w_1^(r)[:, o] (x) w_2^(r)[:, o] (x) w_3^(r)[:, o]
    weight = torch.einsum("rio,rjo,rko->ijko", *lmf.factors)
    torch.testing.assert_close(lmf(xs), tfn_linear_output(weight, lmf.bias, xs))
    flat = nn.Linear(tensor_fusion_size(dims), 4)
    with torch.no_grad():
        flat.weight.copy_(weight.reshape(-1, 4).T)
        flat.bias.copy_(lmf.bias)
    torch.testing.assert_close(lmf(xs), flat(TensorFusion(dims)(xs)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dims", [(2, 3), (2, 3, 2), (1, 2, 1, 3)])
def test_low_rank_weight_is_the_weight_lmf_computes_with(dims):
    torch.manual_seed(1)
    lmf = LowRankFusion(dims, out_dim=3, rank=2)
    xs = features(dims)
    weight = low_rank_weight(lmf.factors)  # (prod_m (d_m + 1), 3)
    assert weight.shape == (tensor_fusion_size(dims), 3)
    torch.testing.assert_close(TensorFusion(dims)(xs) @ weight + lmf.bias, lmf(xs), atol=1e-5, rtol=1e-5)
    if len(dims) == 3:  # the definition written out for three modalities
        by_definition = torch.einsum("rio,rjo,rko->ijko", *lmf.factors).reshape(-1, 3)
        torch.testing.assert_close(weight, by_definition)


@pytest.mark.parametrize("factors, error, words", [
    (torch.zeros(2, 3, 4), TypeError, "factors must be a list"),
    ([torch.zeros(2, 3, 4)], TypeError, "at least two"),
    ([torch.zeros(2, 3, 4), torch.zeros(3, 3, 4)], ValueError, r"factors\[1\] has shape"),
    ([torch.zeros(2, 3, 4), torch.zeros(2, 3, 5)], ValueError, "share rank and out_dim"),
    ([torch.zeros(2, 3, 4), torch.zeros(3, 4)], ValueError, r"factors\[1\]"),
])
def test_low_rank_weight_refuses_bad_factors(factors, error, words):
    with pytest.raises(error, match=words):
        low_rank_weight(factors)


def test_low_rank_fusion_with_full_rank_represents_any_tfn_weight_exactly():
    """Rank (d_1 + 1)(d_2 + 1) is enough for three modalities: one term per (i, j) pair, e_i (x) e_j (x) W[i, j]."""
    torch.manual_seed(0)
    dims, out_dim = (1, 2, 3), 2
    weight = torch.randn(2, 3, 4, out_dim)  # a TFN layer's weight over [x_1; 1] (x) [x_2; 1] (x) [x_3; 1]
    bias = torch.randn(out_dim)
    rank = 2 * 3
    lmf = LowRankFusion(dims, out_dim, rank)
    with torch.no_grad():
        for r, (i, j) in enumerate((i, j) for i in range(2) for j in range(3)):
            lmf.factors[0][r] = 0.0
            lmf.factors[0][r, i] = 1.0
            lmf.factors[1][r] = 0.0
            lmf.factors[1][r, j] = 1.0
            lmf.factors[2][r] = weight[i, j]
        lmf.bias.copy_(bias)
    xs = features(dims, batch=8)
    torch.testing.assert_close(lmf(xs), tfn_linear_output(weight, bias, xs), atol=1e-5, rtol=1e-5)


def fit_lmf_to_tfn(rank, steps=250):
    """Gradient descent of an LMF of `rank` towards a random TFN layer over two modalities
    (each output slice a generic 3 x 3 matrix, so of rank 3); returns the final relative error."""
    torch.manual_seed(0)
    dims, out_dim = (2, 2), 2
    weight, bias = torch.randn(3, 3, out_dim), torch.randn(out_dim)
    lmf = LowRankFusion(dims, out_dim, rank)
    optimizer = torch.optim.Adam(lmf.parameters(), lr=0.05)
    xs = features(dims, batch=64, seed=1)
    target = tfn_linear_output(weight, bias, xs)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = (lmf(xs) - target).pow(2).mean()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return ((lmf(xs) - target).norm() / target.norm()).item()


def test_low_rank_fusion_learns_a_tfn_weight_when_its_rank_is_large_enough():
    assert fit_lmf_to_tfn(rank=3) < 1e-2
    assert fit_lmf_to_tfn(rank=1) > 0.1  # a rank-1 slice cannot match a generic rank-3 one


# ---------------------------------------------------------------------------------------------- the others


def test_early_fusion_is_an_mlp_on_the_concatenation():
    torch.manual_seed(0)
    early = EarlyFusion((2, 3), hidden=5, out_dim=4)
    a, b = features((2, 3))
    torch.testing.assert_close(early([a, b]), early.mlp(torch.cat([a, b], 1)))
    assert early([a, b]).shape == (4, 4)


def test_late_fusion_averages_the_heads_and_learns_weights_only_when_asked():
    torch.manual_seed(0)
    xs = features((2, 3, 4))
    mean = LateFusion((2, 3, 4), hidden=5, num_classes=3)
    per_modality = torch.stack([head(x) for head, x in zip(mean.heads, xs)])  # (3, B, 3)
    torch.testing.assert_close(mean(xs), per_modality.mean(0))
    assert "weight_logits" not in dict(mean.named_parameters())
    learned = LateFusion((2, 3, 4), hidden=5, num_classes=3, weighting="learned")
    learned.load_state_dict(mean.state_dict())
    assert "weight_logits" in dict(learned.named_parameters())
    with torch.no_grad():
        learned.weight_logits.copy_(torch.tensor([0.0, 1.0, 2.0]))
    weights = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    torch.testing.assert_close(learned(xs), torch.einsum("m,mbc->bc", weights, per_modality))


def test_late_fusion_is_additive_in_the_modalities():
    """f(a, b) - f(a', b) does not depend on b: late fusion has no interaction term."""
    torch.manual_seed(0)
    late = LateFusion((2, 2), hidden=8, num_classes=2)
    a, a2, b, b2 = features((2, 2, 2, 2))
    torch.testing.assert_close(late([a, b]) - late([a2, b]), late([a, b2]) - late([a2, b2]))


def test_average_logits_checks_its_inputs():
    x = torch.randn(2, 3)
    torch.testing.assert_close(average_logits([x, 3 * x]), 2 * x)
    with pytest.raises(ValueError, match=r"logits\[1\] has shape"):
        average_logits([x, torch.randn(2, 4)])
    with pytest.raises(ValueError, match="weights has 3 entries"):
        average_logits([x, x], torch.ones(3) / 3)
    with pytest.raises(TypeError, match="logits must be"):
        average_logits(x)


def test_gated_fusion_gates_are_a_distribution_over_modalities():
    torch.manual_seed(0)
    gated = GatedFusion((2, 3, 4), width=6, hidden=5, out_dim=2)
    xs = features((2, 3, 4))
    gates = gated.gates(xs)
    assert gates.shape == (4, 3, 6)
    torch.testing.assert_close(gates.sum(1), torch.ones(4, 6))
    assert gated(xs).shape == (4, 2)


def test_every_fusion_can_be_trained_and_moved_between_dtypes():
    dims = (2, 3, 4)
    fusions = [EarlyFusion(dims, 5, 2), LateFusion(dims, 5, 2, weighting="learned"), GatedFusion(dims, 6, 5, 2),
               LowRankFusion(dims, 2, 2)]
    for fusion in fusions:
        xs = features(dims)
        fusion(xs).sum().backward()
        assert all(p.grad is not None for p in fusion.parameters() if p is not getattr(fusion, "weight_logits", None))
        assert fusion.to(torch.float64)([x.double() for x in xs]).dtype == torch.float64


def test_fusion_classifier_runs_encoders_fusion_and_head():
    torch.manual_seed(0)
    encoders = {"video": ConvSequenceEncoder(5, 4), "text": ConvSequenceEncoder(None, 3, vocab_size=10)}
    model = FusionClassifier(encoders, TensorFusion((4, 3)), mlp(tensor_fusion_size((4, 3)), 8, 2))
    batch = {"video": torch.randn(6, 7, 5), "text": torch.randint(1, 10, (6, 9)), "label": torch.zeros(6)}
    logits = model(batch)
    assert logits.shape == (6, 2)
    fused = model.fusion([model.encoders["video"](batch["video"]), model.encoders["text"](batch["text"])])
    torch.testing.assert_close(logits, model.head(fused))
    assert model.modalities == ("video", "text")
    with pytest.raises(ValueError, match=r"inputs lacks the modalities \['text'\]"):
        model({"video": batch["video"]})
    with pytest.raises(TypeError, match="inputs must be a mapping"):
        model([batch["video"], batch["text"]])
    with pytest.raises(TypeError, match="encoders must be a non-empty mapping"):
        FusionClassifier([], TensorFusion((4, 3)))


# ---------------------------------------------------------------------------------------------- bad input

ALL_FUSIONS = {
    "early": lambda dims: EarlyFusion(dims, 5, 2),
    "late": lambda dims: LateFusion(dims, 5, 2),
    "gated": lambda dims: GatedFusion(dims, 6, 5, 2),
    "tensor": TensorFusion,
    "low_rank": lambda dims: LowRankFusion(dims, 2, 3),
}


@pytest.mark.parametrize("name", ALL_FUSIONS)
def test_mismatched_batch_sizes_are_refused(name):
    fusion = ALL_FUSIONS[name]((2, 3))
    with pytest.raises(ValueError, match=r"features\[1\] has batch size 5 but features\[0\] has 4"):
        fusion([torch.randn(4, 2), torch.randn(5, 3)])


@pytest.mark.parametrize("name", ALL_FUSIONS)
def test_wrong_number_of_modalities_is_refused(name):
    fusion = ALL_FUSIONS[name]((2, 3))
    with pytest.raises(ValueError, match=r"features holds 3 modalities; expected 2"):
        fusion([torch.randn(4, 2), torch.randn(4, 3), torch.randn(4, 3)])
    with pytest.raises(ValueError, match=r"features holds 1 modalities; expected 2"):
        fusion([torch.randn(4, 2)])


@pytest.mark.parametrize("name", ALL_FUSIONS)
def test_inputs_that_are_not_2d_float_tensors_are_refused(name):
    fusion = ALL_FUSIONS[name]((2, 3))
    with pytest.raises(ValueError, match=r"features\[1\] must have 2 dimensions, got shape \(4, 7, 3\)"):
        fusion([torch.randn(4, 2), torch.randn(4, 7, 3)])
    with pytest.raises(ValueError, match=r"features\[0\] has shape \(4, 5\); expected \(B, 2\)"):
        fusion([torch.randn(4, 5), torch.randn(4, 3)])
    with pytest.raises(TypeError, match=r"features\[0\] must be a floating-point tensor"):
        fusion([torch.ones(4, 2, dtype=torch.long), torch.randn(4, 3)])
    with pytest.raises(TypeError, match="features must be a list or tuple of tensors"):
        fusion(torch.randn(2, 4, 2))


@pytest.mark.parametrize("name", ALL_FUSIONS)
def test_fewer_than_two_modalities_or_bad_dims_are_refused_at_construction(name):
    with pytest.raises(ValueError, match="dims must name at least 2 modalities, got 1"):
        ALL_FUSIONS[name]((4,))
    with pytest.raises(ValueError, match=r"dims must hold positive ints, got \(4, 0\)"):
        ALL_FUSIONS[name]((4, 0))
    with pytest.raises(TypeError, match="dims must be a sequence of ints"):
        ALL_FUSIONS[name](4)


def test_bad_hyper_parameters_are_refused():
    with pytest.raises(ValueError, match="rank must be a positive int, got 0"):
        LowRankFusion((2, 3), out_dim=4, rank=0)
    with pytest.raises(ValueError, match="out_dim must be a positive int, got -1"):
        low_rank_fusion_parameter_count((2, 3), rank=2, out_dim=-1)
    with pytest.raises(ValueError, match="weighting='max' is unknown"):
        LateFusion((2, 3), 4, 2, weighting="max")
