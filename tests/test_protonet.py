"""Tests of mmcourse.models.protonet (Snell et al. 2017) and mmcourse.models.colearning."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmcourse.models.colearning import (BY_VIEW_A, BY_VIEW_B, GIVEN, UNLABELLED, co_training,
                                        distillation_loss)
from mmcourse.models.protonet import (ProtoEncoder, ProtoNet, class_prototypes, pairwise_distances,
                                      protonet_training_loss)


def random_encoder(seed: int, width: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 10), nn.Tanh(), nn.Linear(10, width))


def lecture_steps(encoder, support, query, n_way, n_support):
    """The lecture's steps written out independently: class means, squared distances, log-softmax."""
    z_support, z_query = encoder(support), encoder(query)
    prototypes = torch.stack([z_support[c * n_support:(c + 1) * n_support].mean(0) for c in range(n_way)])
    distances = torch.stack([torch.stack([((q - p) ** 2).sum() for p in prototypes]) for q in z_query])
    return -distances - torch.logsumexp(-distances, dim=1, keepdim=True)


@pytest.mark.parametrize("n_way, n_support, n_query", [(2, 1, 1), (3, 5, 7), (5, 2, 10), (1, 3, 2)])
def test_protonet_equals_the_lecture_steps(n_way, n_support, n_query):
    encoder = random_encoder(n_way * 10 + n_support)
    generator = torch.Generator().manual_seed(n_query)
    support = torch.randn(n_way * n_support, 2, 4, 4, generator=generator)
    query = torch.randn(n_query, 2, 4, 4, generator=generator)
    log_probs = ProtoNet(encoder)(support, query, n_way, n_support)
    assert log_probs.shape == (n_query, n_way)
    torch.testing.assert_close(log_probs, lecture_steps(encoder, support, query, n_way, n_support))
    torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(n_query))


def test_the_distances():
    queries, prototypes = torch.tensor([[0.0, 0.0], [3.0, 4.0]]), torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(pairwise_distances(queries, prototypes), torch.tensor([[9.0, 1.0], [16.0, 18.0]]))
    torch.testing.assert_close(pairwise_distances(queries, prototypes, "euclidean"),
                               torch.tensor([[9.0, 1.0], [16.0, 18.0]]).sqrt())
    torch.testing.assert_close(pairwise_distances(queries[1:], prototypes, "cosine"), torch.tensor([[0.4, 0.2]]))
    torch.testing.assert_close(pairwise_distances(queries, prototypes), torch.cdist(queries, prototypes) ** 2)
    assert torch.isfinite(pairwise_distances(prototypes, prototypes, "euclidean")).all()


def test_other_distances_reach_forward():
    encoder = random_encoder(0)
    support, query = torch.randn(4, 2, 4, 4), torch.randn(3, 2, 4, 4)
    for distance in ("euclidean", "cosine"):
        z_support, z_query = encoder(support), encoder(query)
        expected = F.log_softmax(-pairwise_distances(z_query, class_prototypes(z_support, 2, 2), distance), dim=1)
        torch.testing.assert_close(ProtoNet(encoder, distance)(support, query, 2, 2), expected)


def test_protonet_refuses_bad_episodes():
    model = ProtoNet(random_encoder(0))
    support, query = torch.randn(6, 2, 4, 4), torch.randn(3, 2, 4, 4)
    with pytest.raises(ValueError, match=r"support_images holds 6 items; expected n_way \* n_support = 2 \* 2 = 4"):
        model(support, query, 2, 2)
    with pytest.raises(ValueError, match="expected images of the same shape"):
        model(support, torch.randn(3, 2, 4, 5), 3, 2)
    with pytest.raises(ValueError, match="n_way must be a positive int"):
        model(support, query, 0, 2)
    with pytest.raises(ValueError, match="query_images is empty"):
        model(support, query[:0], 3, 2)
    with pytest.raises(ValueError, match="D=3 features but prototypes D=4"):
        pairwise_distances(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="distance='manhattan' is unknown"):
        ProtoNet(random_encoder(0), "manhattan")
    with pytest.raises(TypeError, match="encoder must be an nn.Module"):
        ProtoNet(lambda x: x)
    with pytest.raises(ValueError, match=r"must map 9 images to a \(9, D\) tensor"):
        ProtoNet(nn.Identity())(support, query, 3, 2)


def test_proto_encoder_pools_an_8x8_digit_to_one_pixel():
    encoder = ProtoEncoder(1, 16, 8)
    assert encoder(torch.rand(5, 1, 8, 8)).shape == (5, 16) and encoder.width == 16
    assert sum(isinstance(layer, nn.MaxPool2d) for layer in encoder.body) == 3
    assert ProtoEncoder(1, 16, 28).width == 16  # the paper's Omniglot size: 28 -> 14 -> 7 -> 3 -> 1
    assert ProtoEncoder(1, 16, 8, pooled=1)(torch.rand(2, 1, 8, 8)).shape == (2, 16 * 4 * 4)
    with pytest.raises(ValueError, match=r"images must have shape \(B, 1, 8, 8\)"):
        encoder(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="pooled must be an int in 0..3"):
        ProtoEncoder(1, 16, 8, pooled=4)


def test_proto_encoder_drops_out_while_training_only():
    encoder = ProtoEncoder(1, 16, 8, pooled=1, dropout=0.5)
    images = torch.rand(4, 1, 8, 8)
    encoder.train()
    assert (encoder(images) == 0).float().mean() > 0.3  # about half the numbers zeroed (ReLU zeros add a few)
    encoder.eval()
    torch.testing.assert_close(encoder(images), encoder(images))  # deterministic at test time
    assert (encoder(images) == 0).float().mean() < (encoder.train()(images) == 0).float().mean()
    with pytest.raises(ValueError, match=r"dropout must be a probability in \[0, 1\), got 1.0"):
        ProtoEncoder(1, 16, 8, dropout=1.0)


def test_protonet_training_loss_is_the_nll_of_the_true_classes():
    model = ProtoNet(random_encoder(1))
    episode = {"support": torch.randn(6, 2, 4, 4), "query": torch.randn(4, 2, 4, 4), "n_way": 3, "n_support": 2,
               "query_labels": torch.tensor([0, 1, 2, 2])}
    loss, logged = protonet_training_loss(model, episode)
    log_probs = model(episode["support"], episode["query"], 3, 2)
    torch.testing.assert_close(loss, -log_probs[torch.arange(4), episode["query_labels"]].mean())
    assert loss.requires_grad and 0.0 <= float(logged["accuracy"]) <= 1.0


# ------------------------------------------------------------------------- co-learning


def test_distillation_loss_is_the_scaled_kl():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 3, generator=generator), torch.randn(4, 3, generator=generator)
    t = 2.0
    p, q = (teacher / t).softmax(1), (student / t).softmax(1)
    expected = t ** 2 * (p * (p.log() - q.log())).sum(1).mean()
    torch.testing.assert_close(distillation_loss(student, teacher, t), expected)
    assert float(distillation_loss(teacher + 5.0, teacher)) == pytest.approx(0.0, abs=1e-6)  # same distribution
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    distillation_loss(student, teacher).backward()
    assert student.grad is not None and teacher.grad is None  # the teacher is not trained
    with pytest.raises(ValueError, match="expected the same"):
        distillation_loss(student, teacher[:, :2])
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        distillation_loss(student, teacher, 0.0)


def two_views(n=200, seed=0):
    """View a reads the class exactly; view b is a noisy Gaussian around +-1."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    view_a = truth + rng.normal(0, 0.05, n)
    view_b = np.where(truth == 1, 1.0, -1.0) + rng.normal(0, 0.6, n)
    return truth, view_a, view_b


def nearest_mean(values):
    """A learner on one 1-d view: class probabilities from the distance to each class mean."""
    def fit(indices, labels):
        means = np.array([values[indices][labels == c].mean() for c in (0, 1)])
        logits = -(values[:, None] - means[None, :]) ** 2 * 10
        return np.exp(logits - logits.max(1, keepdims=True)) / np.exp(logits - logits.max(1, keepdims=True)).sum(
            1, keepdims=True)
    return fit


def test_co_training_spreads_the_easy_views_labels():
    truth, view_a, view_b = two_views()
    labels = np.full(len(truth), UNLABELLED)
    given = [int(np.flatnonzero(truth == 0)[0]), int(np.flatnonzero(truth == 1)[0])]
    labels[given] = truth[given]
    result = co_training(nearest_mean(view_a), nearest_mean(view_b), labels, rounds=3, per_class=10)
    assert (labels[given] == truth[given]).all() and (labels != UNLABELLED).sum() == 2  # the input is untouched
    assert (result.labelled_by[given] == GIVEN).all() and (result.round[given] == 0).all()
    by_a = result.labelled_by == BY_VIEW_A
    assert by_a.sum() == 3 * 2 * 10  # every round, 10 per class
    assert (result.labels[by_a] == truth[by_a]).all()  # the exact view never errs
    assert (result.labelled_by == BY_VIEW_B).sum() == 3 * 2 * 10
    assert set(result.round[by_a]) == {1, 2, 3}
    # view b alone on the two given labels vs on the co-trained pool
    kept = np.flatnonzero(result.labels != UNLABELLED)
    alone = nearest_mean(view_b)(np.array(given), truth[given]).argmax(1)
    helped = nearest_mean(view_b)(kept, result.labels[kept]).argmax(1)
    assert (helped == truth).mean() >= (alone == truth).mean() and (helped == truth).mean() > 0.9


def test_co_training_refuses_bad_input():
    fit = nearest_mean(np.zeros(4))
    with pytest.raises(ValueError, match="at least one"):
        co_training(fit, fit, np.full(4, UNLABELLED), 1, 1)
    with pytest.raises(ValueError, match="1-d array of class indices"):
        co_training(fit, fit, np.zeros(4), 1, 1)
    with pytest.raises(ValueError, match="rounds must be a positive int"):
        co_training(fit, fit, np.array([0, 1, -1, -1]), 0, 1)
    with pytest.raises(ValueError, match=r"fit_a must return \(N, C\) = \(4, C\)"):
        co_training(lambda i, y: np.zeros((3, 2)), fit, np.array([0, 1, -1, -1]), 1, 1)
