"""DeViSE: PPMI-SVD word vectors of the world's captions, the hinge rank loss against a brute-force
loop, training into the fixed label space on single-object scenes, bad input."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mmcourse.models.devise import DeViSE, WordVectors, devise_loss, hinge_rank_loss, word_vectors
from mmcourse.models.encoders import ConvImageEncoder
from mmcourse.train import fit
from mmcourse.world import describe, render, sample_scenes
from mmcourse.world.datasets import images_to_tensor
from mmcourse.world.scene import PRESETS

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see conftest

COLORS = PRESETS["default"].colors
SHAPES = PRESETS["default"].shapes


@pytest.fixture(scope="module")
def corpus():
    return [text for scene in sample_scenes(300, seed=0) for text in describe(scene, seed=0, n=5)]


@pytest.fixture(scope="module")
def vectors(corpus):
    return word_vectors(corpus, dim=32)


# ------------------------------------------------------------------------------ word vectors


def test_word_vectors_are_unit_rows_over_the_corpus_words(vectors, corpus):
    assert vectors.matrix.shape == (len(vectors.words), 32) and vectors.matrix.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors.matrix, axis=1), 1.0, atol=1e-5)
    assert list(vectors.words) == sorted(vectors.words)
    assert "," not in vectors.words and {"red", "circle", "left"} <= set(vectors.words)
    assert np.array_equal(vectors.vector("red"), vectors.matrix[vectors.index("red")])


def test_word_vectors_are_deterministic_to_the_byte(corpus):
    first, second = word_vectors(corpus, dim=16), word_vectors(list(corpus), dim=16)
    assert first.words == second.words and first.matrix.tobytes() == second.matrix.tobytes()


def test_colour_words_are_nearer_each_other_than_shape_words(vectors):
    # Distributional semantics: colours fill the same slots of the captions, so they cluster.
    assert {word for word, _ in vectors.nearest("red", k=3)} <= set(COLORS)
    assert {word for word, _ in vectors.nearest("circle", k=2)} <= set(SHAPES)
    within = np.mean([vectors.similarity(a, b) for a in COLORS for b in COLORS if a != b])
    across = np.mean([vectors.similarity(a, b) for a in COLORS for b in SHAPES])
    assert within > across + 0.3


def test_nearest_is_sorted_and_excludes_the_word(vectors):
    neighbours = vectors.nearest("blue", k=5)
    similarities = [s for _, s in neighbours]
    assert len(neighbours) == 5 and "blue" not in dict(neighbours)
    assert similarities == sorted(similarities, reverse=True)
    assert similarities[0] == pytest.approx(vectors.similarity("blue", neighbours[0][0]), abs=1e-6)


def test_cooccurrence_window_and_min_count():
    corpus = ["a b c d", "a b c d", "a b e"]
    narrow, wide = word_vectors(corpus, dim=2, window=1), word_vectors(corpus, dim=2, window=3)
    assert narrow.words == ("a", "b", "c", "d", "e")
    assert not np.allclose(narrow.matrix, wide.matrix)
    assert word_vectors(corpus, dim=2, min_count=2).words == ("a", "b", "c", "d")


@pytest.mark.parametrize("call, error, word", [
    (lambda: word_vectors("a red circle"), TypeError, "corpus"),
    (lambda: word_vectors(["a red circle", 3]), TypeError, "corpus[1]"),
    (lambda: word_vectors([", ,", "?"]), ValueError, "corpus"),
    (lambda: word_vectors(["a red circle"], dim=4), ValueError, "dim=4"),
    (lambda: word_vectors(["a red circle"], dim=0), ValueError, "dim"),
    (lambda: word_vectors(["a red circle"], dim=2, window=0), ValueError, "window"),
    (lambda: word_vectors(["a red circle"], dim=2, min_count=1.5), ValueError, "min_count"),
    (lambda: word_vectors(["red", "blue"], dim=1), ValueError, "co-occurs"),
    (lambda: WordVectors(("a", "b"), np.zeros((3, 2))), ValueError, "matrix"),
])
def test_word_vectors_bad_input(call, error, word):
    with pytest.raises(error, match=word.replace("[", r"\[").replace("]", r"\]")):
        call()


def test_word_vector_lookups_refuse_unknown_words_and_bad_k(vectors):
    with pytest.raises(ValueError, match="word='dog'"):
        vectors.vector("dog")
    with pytest.raises(ValueError, match="k=0"):
        vectors.nearest("red", k=0)
    with pytest.raises(ValueError, match="labels"):
        vectors.label_vectors("red")


# ------------------------------------------------------------------------------ hinge rank loss


def brute_force_hinge_rank_loss(embeddings, labels, targets, margin):
    total = 0.0
    for v, y in zip(embeddings, targets):
        for j in range(len(labels)):
            if j != y:
                total += max(0.0, margin - float(labels[y] @ v) + float(labels[j] @ v))
    return total / len(embeddings)


@pytest.mark.parametrize("margin", [0.0, 0.1, 0.7])
def test_hinge_rank_loss_matches_a_brute_force_loop(margin):
    generator = torch.Generator().manual_seed(1)
    embeddings, labels = torch.randn(7, 5, generator=generator), torch.randn(4, 5, generator=generator)
    targets = torch.randint(0, 4, (7,), generator=generator)
    loss = hinge_rank_loss(embeddings, labels, targets, margin)
    assert loss.item() == pytest.approx(brute_force_hinge_rank_loss(embeddings, labels, targets, margin), rel=1e-5)


def test_hinge_rank_loss_is_zero_once_every_margin_holds_and_has_gradients():
    labels = torch.eye(3)
    embeddings = (2 * torch.eye(3)).requires_grad_()
    assert hinge_rank_loss(embeddings, labels, torch.arange(3), margin=0.1).item() == 0.0
    # Every image now scores 2 with a wrong label and 0 with its own: (0.1 + 2) + (0.1 + 0) per image.
    loss = hinge_rank_loss(embeddings, labels, torch.tensor([1, 2, 0]), margin=0.1)
    assert loss.item() == pytest.approx(2.2, rel=1e-6)
    loss.backward()
    assert embeddings.grad.abs().sum() > 0


@pytest.mark.parametrize("args, error, word", [
    ((torch.randn(4, 5), torch.randn(3, 6), torch.zeros(4, dtype=torch.long)), ValueError, "dimension"),
    ((torch.randn(4, 5), torch.randn(3, 5), torch.zeros(3, dtype=torch.long)), ValueError, "targets"),
    ((torch.randn(4, 5), torch.randn(3, 5), torch.tensor([0, 1, 2, 3])), ValueError, "targets"),
    ((torch.randn(4, 5), torch.randn(3, 5), torch.tensor([0, -1, 2, 0])), ValueError, "targets"),
    ((torch.randn(4, 5), torch.randn(3, 5), torch.zeros(4)), TypeError, "targets"),
    ((torch.randn(4, 5, 1), torch.randn(3, 5), torch.zeros(4, dtype=torch.long)), ValueError, "image_embeddings"),
    ((torch.randn(4, 5), torch.randn(3, 5), torch.zeros(4, dtype=torch.long), -0.1), ValueError, "margin"),
])
def test_hinge_rank_loss_bad_input(args, error, word):
    with pytest.raises(error, match=word):
        hinge_rank_loss(*args)


# ------------------------------------------------------------------------------ the model


def test_devise_maps_images_into_the_fixed_label_space(vectors):
    labels = vectors.label_vectors(COLORS)
    model = DeViSE(ConvImageEncoder(16, stages=2), labels)
    images = torch.rand(3, 3, 32, 32)
    embeddings = model(images)
    assert embeddings.shape == (3, 32) and model.scores(images).shape == (3, len(COLORS))
    assert torch.allclose(model.scores(images), embeddings @ labels.T, atol=1e-5)
    assert "label_vectors" in model.state_dict()
    assert all(p is not model.label_vectors for p in model.parameters())  # a buffer: never trained
    with pytest.raises(ValueError, match="feature_dim"):
        DeViSE(torch.nn.Flatten(), labels)
    with pytest.raises(ValueError, match="label_vectors"):
        DeViSE(ConvImageEncoder(16), labels[0])


def single_object_data(attribute, names, n, seed):
    scenes = sample_scenes(n, seed=seed, num_objects=1)
    images = images_to_tensor(np.stack([render(scene, 32).image for scene in scenes]))  # (n, 3, 32, 32)
    targets = torch.tensor([names.index(scene.objects[0].attribute(attribute)) for scene in scenes])
    return images, targets


@pytest.mark.parametrize("attribute, names", [("color", COLORS), ("shape", SHAPES)])
def test_devise_learns_labels_of_single_object_scenes(vectors, attribute, names):
    torch.manual_seed(0)
    images, targets = single_object_data(attribute, names, 600, seed=1)
    loader = DataLoader(TensorDataset(images[:500], targets[:500]), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    model = DeViSE(ConvImageEncoder(16, stages=3), vectors.label_vectors(names))
    epochs = 19  # 304 steps; the learning rate decays linearly to 0 so BatchNorm's running stats settle
    steps = epochs * len(loader)
    fit(model, loader, devise_loss, epochs=epochs, lr=3e-3, device="cpu", progress=False, scheduler_every="batch",
        scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps))
    with torch.no_grad():
        accuracy = (model.predict(images[500:]) == targets[500:]).float().mean().item()
    assert accuracy > 0.7, f"{attribute} accuracy {accuracy:.2f} (chance {1 / len(names):.2f})"
