"""Data and measurements for notebook 05: co-learning, zero-shot and few-shot.

Few-shot on real handwriting (Snell et al. 2017's protocol, on scikit-learn's 1,797 8x8 digit scans):

- A class is a digit seen at one of four rotations: class id = 4 * digit + quarter turns
  (`class_id`), as Snell et al. grew Omniglot's 1,200 training characters to 4,800 classes. Training
  classes come from `TRAIN_DIGITS` (0-4), test classes from `TEST_DIGITS` (5-9), whose digits the
  training episodes never show at any rotation. 6 and 9 are both test digits on purpose: a 6 turned
  twice *is* a 9, so a split that trained on turned 6s would have shown the network 9s. The
  training digits whose mirror image is no turn of themselves (`MIRROR_DIGITS`: 2 and 4; a 0, a 1
  and a 3 mirrored are nearly themselves, turned or not) give more classes mirrored (ids from 40 on):
  28 training classes from five digits.
- 5-way tests use the five test digits upright. 10-way tests need ten unseen classes and there are
  only five unseen digits, so they add the test digits turned once (90 degrees): ten classes, none
  of them a near copy of another (a 9 turned once is a 6 turned three times, which is not used).
- `Episodes`: n-way k-shot episodes over any labelled set, support then query, both class-major;
  episode i depends only on (seed, i), and no image appears twice in an episode.
- `train_protonet` trains a `ProtoNet` on episodes with `mmcourse.train.fit`; `evaluate` reports
  mean accuracy over test episodes with a 95% confidence interval (1.96 standard errors, as the
  paper reports it); baselines: 1-nearest neighbour on pixels (`pixel_nearest_neighbour`) and a
  logistic regression fitted on the shots of a frozen encoder (`linear_probe`).
- `embedding_view`: a 2-D projection of an episode's support, queries and prototypes, and which
  queries were misclassified, for the notebook's picture of the embedding space.
- What matters: `train_protonet(..., distance=, train_way=, train_shot=)` and `ProtoRecipe.rotate`
  give each ablation (squared vs plain Euclidean vs cosine, training ways and shots, rotations).

Zero-shot against few-shot (Radford et al. 2021 report the crossover for CLIP's linear probes):
`train_world_clip` trains a small CLIP on world captions that never name the held-out colour-shape
compositions of notebook 02; on images of those compositions `shot_curves` measures, against k
shots per class, zero-shot from prompts, prototypes and a linear probe on the frozen image
features, and two ways to use the prompts and the shots together: prototypes that start from the
text embedding (counted as `text_weight` shots) and a probe whose prior is the zero-shot classifier
(`text_prior_probe`); `crossover` reads where a few-shot curve reaches zero-shot.

Co-learning (`colearning_curves`): shape classification of one-object world images from a few
labels per class, with many image-caption pairs. The caption view is the rich one (a bag-of-words
logistic regression learns from a handful of labels, though some captions never name the shape);
co-training (Blum & Mitchell 1998) and cross-modal distillation (Gupta et al. 2016) carry it over
to the image model, measured against the image model trained on the labels alone.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset

from ..models.clip import CLIP, clip_training_loss, small_clip, zero_shot_classifier
from ..models.colearning import UNLABELLED, co_training, distillation_loss
from ..models.encoders import ConvImageEncoder
from ..models.protonet import ProtoEncoder, ProtoNet, class_prototypes, pairwise_distances, protonet_training_loss
from ..train import fit, model_device
from ..world.datasets import collate
from ..world.language import default_tokenizer, describe_with_spans
from ..world.scene import check_count, check_seed, get_preset, sample_scenes, scene_rng
from . import representation as rep

TURNS = 4  # rotations by 0, 90, 180 and 270 degrees
MIRRORED = 10 * TURNS  # class ids of mirrored digits start after the 40 turned ones
TRAIN_DIGITS = (0, 1, 2, 3, 4)
TEST_DIGITS = (5, 6, 7, 8, 9)  # 6 and 9 together: a 6 turned twice is a 9
MIRROR_DIGITS = (2, 4)  # training digits whose mirror image is no turn of themselves (0, 1 and 3 nearly are)
Z_95 = 1.96  # a 95% confidence interval is the mean +- 1.96 standard errors


# --------------------------------------------------------------------------------------------
# Real handwritten digits, turned
# --------------------------------------------------------------------------------------------


def class_id(digit: int, turns: int, mirrored: bool = False) -> int:
    """The class of `digit` turned `turns` quarter turns counter-clockwise, after a left-right mirror
    when `mirrored`: 4 * digit + turns, plus 40 for a mirrored digit."""
    digit, turns = check_count("digit", digit), check_count("turns", turns)
    if digit > 9 or turns >= TURNS or not isinstance(mirrored, bool):
        raise ValueError(f"digit={digit}, turns={turns}, mirrored={mirrored!r}; expected a digit 0-9, "
                         f"0-{TURNS - 1} quarter turns and a bool")
    return TURNS * digit + turns + MIRRORED * mirrored


def class_name(label: int) -> str:
    """'6 @ 90°' for the class of a 6 turned once, '2 @ 0° mirrored' for a mirrored 2."""
    mirrored, label = divmod(check_count("label", label), MIRRORED)
    digit, turns = divmod(label, TURNS)
    return f"{digit} @ {90 * turns}°" + (" mirrored" if mirrored else "")


def digit_classes(digits: Sequence[int], turns: Sequence[int] = (0,), mirrored: bool = False) -> list[int]:
    """The class ids of every digit of `digits` at every rotation of `turns`, digit-major."""
    return [class_id(digit, turn, mirrored) for digit in digits for turn in turns]


def digit_scans() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's handwritten digits at four rotations, as they are and mirrored: images
    (8 * 1797, 1, 8, 8) float in [0, 1] and labels (8 * 1797,) int64 class ids (`class_id`). Rows
    (4 * m + t) * 1797 + i hold scan i, mirrored when m = 1, then turned t times."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)  # (1797, 1, 8, 8), 16 = full ink
    digit = torch.from_numpy(digits.target).long()  # (1797,)
    views = [(torch.flip(images, dims=(3,)) if mirrored else images, mirrored) for mirrored in (False, True)]
    scans = torch.cat([torch.rot90(view, turn, dims=(2, 3)) for view, _ in views for turn in range(TURNS)])
    labels = torch.cat([TURNS * digit + turn + MIRRORED * mirrored for _, mirrored in views for turn in range(TURNS)])
    return scans, labels


# --------------------------------------------------------------------------------------------
# Episodes
# --------------------------------------------------------------------------------------------


def sample_episode(labels, classes: Sequence[int], n_way: int, n_support: int, n_query: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One episode's indices into a labelled set: (chosen classes (n_way,), support (n_way * n_support,),
    query (n_way * n_query,)), support and query class-major in the order of the chosen classes.

    `n_way` classes are drawn from `classes` without replacement, then n_support + n_query distinct
    items of each; every class needs that many.
    """
    labels = _labels_array(labels)
    chosen = rng.choice(np.asarray(classes), size=n_way, replace=False)
    support, query = [], []
    for label in chosen:
        items = rng.choice(np.flatnonzero(labels == label), size=n_support + n_query, replace=False)
        support.append(items[:n_support])
        query.append(items[n_support:])
    return chosen, np.concatenate(support), np.concatenate(query)


class Episodes(Dataset):
    """`num_episodes` n-way k-shot episodes over `images` (N, ...) and `labels` (N,), drawing from `classes`.

    Item i (depending only on (seed, i)) is a dict: "support" (n_way * n_support, ...) and "query"
    (n_way * n_query, ...) images, class-major; "query_labels" (n_way * n_query,) in 0..n_way-1;
    "classes" (n_way,) the labels behind 0..n_way-1; "support_index", "query_index" rows of `images`;
    "n_way", "n_support" ints. Feeds `protonet_training_loss` and `fit` directly.
    """

    def __init__(self, images: torch.Tensor, labels, classes: Sequence[int], n_way: int, n_support: int,
                 n_query: int, num_episodes: int, seed: int):
        self.labels = _labels_array(labels)
        if not isinstance(images, torch.Tensor) or len(images) != len(self.labels):
            raise ValueError(f"images must be a tensor with one row per label ({len(self.labels)}), got "
                             f"{tuple(getattr(images, 'shape', ())) or type(images).__name__}")
        self.images = images
        self.n_way, self.n_support = check_count("n_way", n_way, 1), check_count("n_support", n_support, 1)
        self.n_query = check_count("n_query", n_query, 1)
        self.num_episodes, self.seed = check_count("num_episodes", num_episodes, 1), check_seed(seed)
        self.classes = _check_classes(classes, self.labels, self.n_way, self.n_support + self.n_query)

    def __len__(self) -> int:
        return self.num_episodes

    def __getitem__(self, index: int) -> dict:
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index < len(self):
            raise IndexError(f"episode {index!r} is out of range for {len(self)} episodes")
        rng = scene_rng(self.seed, int(index), "episode")
        chosen, support, query = sample_episode(self.labels, self.classes, self.n_way, self.n_support,
                                                self.n_query, rng)
        return {"support": self.images[support], "query": self.images[query],
                "query_labels": torch.arange(self.n_way).repeat_interleave(self.n_query),
                "classes": torch.from_numpy(chosen), "support_index": torch.from_numpy(support),
                "query_index": torch.from_numpy(query), "n_way": self.n_way, "n_support": self.n_support}


# --------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProtoRecipe:
    """How to meta-train and test a ProtoNet on the digits; `PROTO_RECIPES` holds the course's scales."""

    train_episodes: int = 2000
    train_way: int = 20  # more ways in training than at test (Snell et al.: 60-way training for 5-way tests)
    train_shot: int = 5
    train_query: int = 5  # queries per class in a training episode
    rotate: bool = True  # train on the four rotations of the training digits (20 classes, 28 with mirrors) or upright only
    mirror: tuple[int, ...] = MIRROR_DIGITS  # training digits whose mirror images are more classes (at every turn)
    width: int = 64
    pooled: int = 1  # encoder blocks that halve the map: 8x8 -> 4x4 embedding maps (see ProtoEncoder)
    dropout: float = 0.4  # on the embedding, while training (cpu, one seed, unseen digits 1-shot: 0.2 81.5%, 0.4 82.7%, 0.6 83.0%)
    lr: float = 1e-3
    test_episodes: int = 600
    test_query: int = 15  # queries per class in a test episode
    ablation_episodes: int = 300  # training episodes of each variant in the notebook's "what matters" table
    ablation_width: int = 32  # and its encoder width: a cheaper network, the same for every variant


PROTO_RECIPES = {
    "ci": ProtoRecipe(train_episodes=200, width=32, test_episodes=100, ablation_episodes=60, ablation_width=16),
    "cpu": ProtoRecipe(),
    "gpu": ProtoRecipe(test_episodes=2000, ablation_episodes=2000, ablation_width=64),
}


def train_classes(recipe: ProtoRecipe) -> list[int]:
    """The recipe's training classes: the training digits at four rotations (or upright only), and
    the digits of `recipe.mirror` mirrored, at the same rotations."""
    if not set(recipe.mirror) <= set(TRAIN_DIGITS):
        raise ValueError(f"recipe.mirror={recipe.mirror}; only training digits {TRAIN_DIGITS} may be mirrored")
    turns = range(TURNS) if recipe.rotate else (0,)
    return digit_classes(TRAIN_DIGITS, turns) + digit_classes(recipe.mirror, turns, mirrored=True)


def ablation_recipe(recipe: ProtoRecipe, **changes) -> ProtoRecipe:
    """The cheaper recipe of the "what matters" variants (`ablation_episodes`, `ablation_width`), with `changes`."""
    return replace(recipe, train_episodes=recipe.ablation_episodes, width=recipe.ablation_width, **changes)


def test_classes(n_way: int) -> list[int]:
    """Unseen classes for an `n_way` test: the five test digits upright, and turned once for 10-way."""
    if n_way not in (5, 10):
        raise ValueError(f"n_way={n_way}; the digits give 5-way tests (test digits upright) and 10-way tests "
                         f"(also turned once)")
    return digit_classes(TEST_DIGITS, (0,) if n_way == 5 else (0, 1))


def train_protonet(images: torch.Tensor, labels, recipe: ProtoRecipe, seed: int = 0,
                   distance: str = "squared_euclidean", train_way: int | None = None,
                   train_shot: int | None = None, progress: bool = False) -> ProtoNet:
    """A ProtoNet (`ProtoEncoder` of `recipe.width`) trained on `recipe.train_episodes` episodes of
    `train_classes(recipe)`; `train_way`/`train_shot` override the recipe's. Adam, the learning rate
    halved every quarter of training (Snell et al. halve it every 2000 episodes). In eval mode."""
    way = recipe.train_way if train_way is None else train_way
    shot = recipe.train_shot if train_shot is None else train_shot
    torch.manual_seed(check_seed(seed))
    encoder = ProtoEncoder(images.shape[1], recipe.width, images.shape[-1], pooled=recipe.pooled, dropout=recipe.dropout)
    model = ProtoNet(encoder, distance)
    episodes = Episodes(images, labels, train_classes(recipe), way, shot, recipe.train_query,
                        recipe.train_episodes, seed)
    step = max(1, recipe.train_episodes // 4)
    fit(model, episodes, protonet_training_loss, epochs=1, lr=recipe.lr, progress=progress,
        scheduler=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, step, 0.5), scheduler_every="batch")
    return model


Predictor = Callable[[dict], torch.Tensor]  # episode -> (n_query,) predicted indices in 0..n_way-1


def evaluate(predict: Predictor, episodes: Episodes) -> dict[str, float]:
    """Mean query accuracy of `predict` over `episodes`, its 95% confidence interval half-width
    ("ci95") and the number of episodes."""
    accuracies = [float((predict(episode).cpu() == episode["query_labels"]).float().mean()) for episode in episodes]
    return {"accuracy": float(np.mean(accuracies)), "ci95": ci95(accuracies), "episodes": len(accuracies)}


def ci95(values: Sequence[float]) -> float:
    """Half-width of the 95% confidence interval of the mean of `values` (1.96 standard errors)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        raise ValueError(f"values holds {len(values)} numbers; a confidence interval needs at least two")
    return float(Z_95 * values.std(ddof=1) / math.sqrt(len(values)))


def protonet_predictor(model: ProtoNet) -> Predictor:
    """Predicts the nearest prototype with `model` (in eval mode, without gradients)."""
    def predict(episode: dict) -> torch.Tensor:
        device = model_device(model)
        model.eval()
        with torch.no_grad():
            return model(episode["support"].to(device), episode["query"].to(device), episode["n_way"],
                         episode["n_support"]).argmax(1)
    return predict


def pixel_nearest_neighbour(episode: dict) -> torch.Tensor:
    """Baseline: the class of the support image nearest each query in pixel space (Euclidean)."""
    support, query = episode["support"].flatten(1), episode["query"].flatten(1)  # (S, P), (Q, P)
    nearest = torch.cdist(query, support).argmin(1)  # (Q,) a support row
    return nearest // episode["n_support"]


def linear_probe(encoder: torch.nn.Module) -> Predictor:
    """Baseline: a logistic regression fitted on the shots' embeddings by the frozen `encoder`."""
    def predict(episode: dict) -> torch.Tensor:
        support, query = _embed(encoder, episode["support"]), _embed(encoder, episode["query"])
        support_labels = torch.arange(episode["n_way"]).repeat_interleave(episode["n_support"])
        return fit_linear_probe(support, support_labels, query)
    return predict


def fit_linear_probe(support_features: torch.Tensor, support_labels: torch.Tensor,
                     query_features: torch.Tensor) -> torch.Tensor:
    """(Q,) classes predicted by a multinomial logistic regression (scikit-learn, L2, C=1) fitted on the
    (S, D) support features, the features standardised with the support's mean and deviation; on the
    query features' device."""
    from sklearn.linear_model import LogisticRegression

    mean, std = support_features.mean(0), support_features.std(0, unbiased=False) + 1e-6

    def standardised(features: torch.Tensor) -> np.ndarray:
        return ((features - mean) / std).detach().cpu().numpy()

    probe = LogisticRegression(max_iter=1000).fit(standardised(support_features), support_labels.cpu().numpy())
    return torch.from_numpy(probe.predict(standardised(query_features))).long().to(query_features.device)


def _embed(encoder: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    encoder.eval()
    with torch.no_grad():
        return encoder(images.to(model_device(encoder))).float().cpu()


def embedding_view(model: ProtoNet, episode: dict) -> dict[str, torch.Tensor]:
    """What a picture of one episode in embedding space needs, projected on the 2 principal axes of
    the support, queries and prototypes together: "support" (S, 2), "query" (Q, 2), "prototypes"
    (n_way, 2); "predictions" (Q,), "wrong" (Q,) bool: the misclassified queries."""
    z_support, z_query = _embed(model.encoder, episode["support"]), _embed(model.encoder, episode["query"])
    prototypes = class_prototypes(z_support, episode["n_way"], episode["n_support"])  # (n_way, D)
    predictions = pairwise_distances(z_query, prototypes, model.distance).argmin(1)  # (Q,)
    support, query, centres = rep.pca_2d(z_support, z_query, prototypes)
    return {"support": support, "query": query, "prototypes": centres, "predictions": predictions,
            "wrong": predictions != episode["query_labels"]}


# --------------------------------------------------------------------------------------------
# Zero-shot against few-shot on held-out compositions of the world
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrossoverRecipe:
    """A small CLIP trained on the world without the held-out compositions, then classification of
    those 6 compositions from prompts or from k shots; `CROSSOVER_RECIPES` holds the course's scales."""

    scenes: int = 4000  # training scenes of 1 or 2 objects, 2 captions each
    image_size: int = 32
    width: int = 64
    embed_dim: int = 64
    epochs: int = 6
    batch_size: int = 128
    lr: float = 2e-3
    per_class: int = 60  # images of each held-out composition: shots are drawn from them, queries too
    queries: int = 20  # query images per class in a draw
    shots: tuple[int, ...] = (1, 2, 4, 8, 16)
    draws: int = 50  # random support/query splits averaged per k
    text_weight: float = 4.0  # the text embedding counts as this many shots in a combined prototype
    prior_weight: float = 1.0  # lambda of the probe's Gaussian prior around the zero-shot classifier


CROSSOVER_RECIPES = {
    "ci": CrossoverRecipe(scenes=1000, epochs=4, per_class=40, shots=(1, 4, 16), draws=20),
    "cpu": CrossoverRecipe(),
    "gpu": CrossoverRecipe(scenes=20000, image_size=64, width=128, epochs=15, per_class=100, draws=200),
}
PROMPTS = ("a {}", "there is a {}", "the picture shows a {}")  # wordings of the training captions
METHODS = ("zero-shot", "prototypes", "linear probe", "text + shots", "probe with text prior")


def train_world_clip(recipe: CrossoverRecipe, seed: int = 0, progress: bool = False) -> CLIP:
    """A `small_clip` (CNN vision) trained on `recipe.scenes` world scenes whose captions never name a
    held-out composition together (`representation.scene_captions`), notebook 02's recipe: AdamW,
    weight decay 0.05, a one-cycle learning rate. In eval mode."""
    seed = check_seed(seed)
    scenes = rep.sample_mixed_scenes(recipe.scenes, seed, counts=(1, 2))
    captions = [rep.scene_captions(scene, seed, i, 2, rep.HELD_OUT_COMPOSITIONS) for i, scene in enumerate(scenes)]
    pairs = rep.PairDataset(scenes, captions, recipe.image_size)
    batches = DataLoader(pairs, batch_size=recipe.batch_size, shuffle=True, collate_fn=collate,
                         generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    model = small_clip(image_size=recipe.image_size, width=recipe.width, embed_dim=recipe.embed_dim, vision="cnn")
    fit(model, batches, clip_training_loss, epochs=recipe.epochs, lr=recipe.lr, weight_decay=0.05,
        scheduler=lambda optimizer: torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe.lr, total_steps=recipe.epochs * len(batches), pct_start=0.1),
        scheduler_every="batch", progress=progress)
    return model


def held_out_features(model: CLIP, recipe: CrossoverRecipe, seed: int = 0) -> dict[str, torch.Tensor]:
    """The frozen CLIP's view of the held-out compositions: "features" (6 * per_class, D) unit image
    embeddings of one-object scenes, "labels" their composition (index into HELD_OUT_COMPOSITIONS),
    "text" (6, D) the zero-shot classifier's class embeddings from `PROMPTS`, "logit_scale" CLIP's
    learned inverse temperature (0-d)."""
    pairs = rep.HELD_OUT_COMPOSITIONS
    scenes = rep.single_object_scenes(len(pairs) * recipe.per_class, check_seed(seed) + 1, pairs)
    features = rep.encode_images(model, rep.render_images(scenes, recipe.image_size))  # (N, D)
    text = zero_shot_classifier(model, [rep.composition_name(pair) for pair in pairs], PROMPTS).T.float().cpu()
    return {"features": features, "labels": torch.arange(len(scenes)) % len(pairs), "text": text,
            "logit_scale": model.logit_scale.detach().float().cpu()}


def shot_curves(held: dict[str, torch.Tensor], recipe: CrossoverRecipe, seed: int = 0) -> dict[str, list[float]]:
    """Accuracy against k shots per class (`recipe.shots`) of each method of `METHODS` on the frozen
    features of `held_out_features`, mean over `recipe.draws` splits.

    A draw takes `recipe.queries` query images of every class and, from the rest, the first k of a
    shuffled support pool for every k (so a larger support set contains the smaller); every method
    answers the same queries (`few_shot_scores`).
    """
    features, labels, text = held["features"], torch.as_tensor(held["labels"]).long(), held["text"]
    n_way, per_class, shots = len(text), int(torch.bincount(labels).min()), recipe.shots
    if max(shots) + recipe.queries > per_class:
        raise ValueError(f"shots up to {max(shots)} plus {recipe.queries} queries need {max(shots) + recipe.queries} "
                         f"images of each class; the smallest class has {per_class}")
    curves = {method: np.zeros(len(shots)) for method in METHODS}
    for draw in range(check_count("draws", recipe.draws, 1)):
        rng = scene_rng(check_seed(seed), draw, "shots")
        order = [rng.permutation(np.flatnonzero(labels.numpy() == c)) for c in range(n_way)]
        query = torch.from_numpy(np.concatenate([items[:recipe.queries] for items in order]))
        targets = labels[query]
        for i, k in enumerate(shots):
            support = torch.from_numpy(np.concatenate([items[recipe.queries:recipe.queries + k]
                                                       for items in order]))  # class-major
            scores = few_shot_scores(features[support], features[query], text, k, recipe, float(held["logit_scale"]))
            for method in METHODS:
                curves[method][i] += float((scores[method].argmax(1) == targets).float().mean()) / recipe.draws
    return {method: values.tolist() for method, values in curves.items()}


def few_shot_scores(support: torch.Tensor, query: torch.Tensor, text: torch.Tensor, n_support: int,
                    recipe: CrossoverRecipe, logit_scale: float) -> dict[str, torch.Tensor]:
    """(Q, n_way) class scores (higher = more likely) of every method of `METHODS` for one episode:
    (n_way * n_support, D) class-major `support` features, (Q, D) `query`, (n_way, D) class `text`.

    "zero-shot" the cosine similarity to each class text (it ignores the shots); "prototypes" minus
    the squared Euclidean distance to each class mean of the shots; "linear probe" a logistic
    regression fitted on the shots (one-hot); "text + shots" the cosine similarity to prototypes
    that start from the text embedding, w * text + sum of the shots (the text counting as w =
    `recipe.text_weight` shots); "probe with text prior" the logits of `text_prior_probe`'s weights.
    """
    n_way = len(text)
    support_labels = torch.arange(n_way, device=support.device).repeat_interleave(n_support)  # class-major
    prototypes = class_prototypes(support, n_way, n_support)  # (n_way, D)
    combined = F.normalize(recipe.text_weight * text + n_support * prototypes, dim=1)  # (n_way, D)
    probe = fit_linear_probe(support, support_labels, query)  # (Q,)
    return {"zero-shot": query @ text.T, "prototypes": -pairwise_distances(query, prototypes),
            "linear probe": F.one_hot(probe, n_way).float(), "text + shots": F.normalize(query, dim=1) @ combined.T,
            "probe with text prior": logit_scale * query @ text_prior_probe(
                support, support_labels, text, logit_scale, recipe.prior_weight).T}


def text_prior_probe(support: torch.Tensor, support_labels: torch.Tensor, text: torch.Tensor, logit_scale: float,
                     prior_weight: float) -> torch.Tensor:
    """(n_way, D) weights W of a softmax regression on the shots (logits s * W f) that start at the
    zero-shot classifier T = `text` and are pulled back to it, the maximum a posteriori
    estimate under a Gaussian prior centred on T (s = CLIP's `logit_scale`, lambda = `prior_weight`):

        W* = argmin_W  sum_i CE(s * W f_i, y_i)  +  lambda / 2 * ||W - T||^2

    The data term is a sum, not a mean: every shot adds evidence, so with no shots W* = T (zero-shot)
    and as the shots grow they outweigh the prior (a linear probe). Solved by L-BFGS from T.
    """
    weights = text.clone().requires_grad_()  # (n_way, D), starts at the zero-shot classifier
    optimizer = torch.optim.LBFGS([weights], max_iter=100, line_search_fn="strong_wolfe")

    def objective():
        optimizer.zero_grad()
        data = F.cross_entropy(logit_scale * support @ weights.T, support_labels, reduction="sum")
        loss = data + prior_weight / 2 * (weights - text).pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    return weights.detach()


def crossover(shots: Sequence[int], few_shot: Sequence[float], zero_shot: Sequence[float] | float) -> float | None:
    """The number of shots where `few_shot` first reaches `zero_shot`, read between the two measured k
    that surround it on a log2 scale; `shots[0]` when it is ahead from the start, None when never."""
    shots, few_shot = np.asarray(shots, dtype=np.float64), np.asarray(few_shot, dtype=np.float64)
    if few_shot.shape != shots.shape or len(shots) == 0:
        raise ValueError(f"shots has {len(shots)} values and few_shot {len(few_shot)}; expected one accuracy per k")
    gap = few_shot - np.broadcast_to(np.asarray(zero_shot, dtype=np.float64), shots.shape)
    ahead = np.flatnonzero(gap >= 0)
    if len(ahead) == 0:
        return None
    first = int(ahead[0])
    if first == 0:
        return float(shots[0])
    low, high = np.log2(shots[first - 1]), np.log2(shots[first])
    fraction = -gap[first - 1] / (gap[first] - gap[first - 1])  # where the straight line crosses zero
    return float(2 ** (low + fraction * (high - low)))


# --------------------------------------------------------------------------------------------
# Co-learning: captions teach the image model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoLearningRecipe:
    """Shape classification of one-object world images with a few labels and many image-caption pairs;
    `COLEARNING_RECIPES` holds the course's scales."""

    pairs: int = 3000  # image-caption pairs; the labelled ones are among them
    test: int = 600  # test images
    image_size: int = 32
    budgets: tuple[int, ...] = (1, 4, 16, 64)  # labels per class
    width: int = 32
    steps: int = 300  # training steps of every image model, whatever its data
    batch_size: int = 64
    lr: float = 2e-3
    rounds: int = 3  # co-training rounds
    per_class: int = 150  # examples each view labels per class and round
    temperature: float = 2.0  # of the distillation


COLEARNING_RECIPES = {
    "ci": CoLearningRecipe(pairs=900, test=300, budgets=(1, 4), steps=140, rounds=2, per_class=100),
    "cpu": CoLearningRecipe(),
    "gpu": CoLearningRecipe(pairs=20000, test=2000, image_size=64, width=64, steps=1500, rounds=5, per_class=1000),
}


def colearning_data(n: int, image_size: int, seed: int) -> dict:
    """`n` one-object world scenes: "images" (n, 3, S, S), "captions" one world caption each (it may
    not name the shape: "a small red object"), "words" (n, V) their bag-of-words counts, "labels" (n,)
    the shape (index into the preset's shapes)."""
    scenes = sample_scenes(check_count("n", n, 1), check_seed(seed), num_objects=1)
    captions = [describe_with_spans(scene, seed, 1)[0].text for scene in scenes]
    tokenizer = default_tokenizer()
    words = torch.zeros(len(captions), tokenizer.vocab_size)
    for row, caption in zip(words, captions):
        row.index_add_(0, torch.tensor(tokenizer.encode(caption)), torch.ones(len(tokenizer.encode(caption))))
    shapes = get_preset("default").shapes
    return {"images": rep.render_images(scenes, image_size), "captions": captions, "words": words,
            "labels": torch.tensor([shapes.index(scene.objects[0].shape) for scene in scenes])}


def caption_probabilities(words: torch.Tensor, indices, labels) -> np.ndarray:
    """(N, C) class probabilities of every caption by a logistic regression (scikit-learn, C=10) on
    the bag-of-words counts, fitted on the captions `indices` with `labels`: the rich modality's learner."""
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(C=10.0, max_iter=1000).fit(words[indices].numpy(), np.asarray(labels))
    return probe.predict_proba(words.numpy())


def image_classifier(recipe: CoLearningRecipe, num_classes: int, seed: int) -> nn.Module:
    """The poor modality's model: a `ConvImageEncoder` and a linear layer, seeded, behind a batch norm
    of the input. The world's one-object pictures are nearly all white (pixel mean about 0.93, deviation
    about 0.08): unstandardised, the encoder's first batch norm sees statistics that drift as its
    convolution learns, its running estimates lag, and the model in eval mode answers one class for
    every picture for hundreds of steps (in train mode it is already right)."""
    torch.manual_seed(check_seed(seed))
    return nn.Sequential(nn.BatchNorm2d(3), ConvImageEncoder(recipe.width), nn.Linear(recipe.width, num_classes))


def train_image_classifier(images: torch.Tensor, targets: torch.Tensor, recipe: CoLearningRecipe, num_classes: int,
                           seed: int = 0, distill: bool = False) -> nn.Module:
    """An `image_classifier` trained `recipe.steps` steps on batches drawn with replacement from
    (`images`, `targets`): cross-entropy on class indices, or with `distill=True`
    `distillation_loss` on (N, C) teacher logits."""
    data = TensorDataset(images, targets)
    sampler = RandomSampler(data, replacement=True, num_samples=recipe.steps * recipe.batch_size,
                            generator=torch.Generator().manual_seed(check_seed(seed)))
    model = image_classifier(recipe, num_classes, seed)

    def loss_fn(model, batch):
        logits = model(batch[0])  # (B, C)
        return (distillation_loss(logits, batch[1], recipe.temperature) if distill
                else F.cross_entropy(logits, batch[1]))

    fit(model, DataLoader(data, batch_size=recipe.batch_size, sampler=sampler), loss_fn, epochs=1, lr=recipe.lr,
        progress=False)
    return model


def image_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of an image classifier."""
    logits = _embed(model, images)  # (N, C)
    return float((logits.argmax(1) == labels.cpu()).float().mean())


def labelled_subset(labels: torch.Tensor, per_class: int, seed: int) -> np.ndarray:
    """Indices of `per_class` examples of every class (the few labels), drawn with `seed`."""
    rng = scene_rng(check_seed(seed), check_count("per_class", per_class, 1), "labels")
    labels = torch.as_tensor(labels).cpu().numpy()
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                           for c in range(int(labels.max()) + 1)])


def colearning_curves(recipe: CoLearningRecipe, seed: int = 0) -> dict[str, list[float]]:
    """Test accuracy of the image model against the label budget (labels per class, `recipe.budgets`):
    "image only" (trained on the labels alone), "co-training" (trained on the pool that co-training
    of the image model and a caption classifier built), "distillation" (trained to match a caption
    classifier, fitted on the labels, on every pair), and "caption teacher" (the caption classifier
    on the pairs' captions, for reference)."""
    data = colearning_data(recipe.pairs, recipe.image_size, seed)
    test = colearning_data(recipe.test, recipe.image_size, check_seed(seed) + 1)
    images, words, labels = data["images"], data["words"], data["labels"]
    num_classes = int(labels.max()) + 1

    def fit_images(indices, pool_labels):
        model = train_image_classifier(images[indices], torch.as_tensor(pool_labels), recipe, num_classes, seed)
        return _embed(model, images).softmax(1).numpy()

    curves = {name: [] for name in ("image only", "co-training", "distillation", "caption teacher")}
    for budget in recipe.budgets:
        known = labelled_subset(labels, budget, seed)
        pool = np.full(len(labels), UNLABELLED)
        pool[known] = labels[known].numpy()
        only = train_image_classifier(images[known], labels[known], recipe, num_classes, seed)
        result = co_training(fit_images, lambda indices, values: caption_probabilities(words, indices, values),
                             pool, recipe.rounds, recipe.per_class)
        kept = np.flatnonzero(result.labels != UNLABELLED)
        co_trained = train_image_classifier(images[kept], torch.from_numpy(result.labels[kept]), recipe,
                                            num_classes, seed)
        teacher = caption_probabilities(words, known, labels[known])  # (N, C)
        teacher_logits = torch.from_numpy(np.log(np.clip(teacher, 1e-8, None))).float()
        student = train_image_classifier(images, teacher_logits, recipe, num_classes, seed, distill=True)
        for name, model in (("image only", only), ("co-training", co_trained), ("distillation", student)):
            curves[name].append(image_accuracy(model, test["images"], test["labels"]))
        curves["caption teacher"].append(float((teacher.argmax(1) == labels.numpy()).mean()))
    return curves


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _labels_array(labels) -> np.ndarray:
    array = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise ValueError(f"labels must be a 1-d array of integer class labels, got shape {array.shape} "
                         f"dtype {array.dtype}")
    return array


def _check_classes(classes, labels: np.ndarray, n_way: int, per_class: int) -> list[int]:
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise TypeError(f"classes must be a sequence of class labels, got {type(classes).__name__}")
    classes = list(classes)
    if len(set(classes)) != len(classes) or len(classes) < n_way:
        raise ValueError(f"classes holds {len(set(classes))} distinct labels (of {len(classes)}); an "
                         f"n_way={n_way} episode needs at least {n_way}, each listed once")
    counts = {label: int((labels == label).sum()) for label in classes}
    short = {label: count for label, count in counts.items() if count < per_class}
    if short:
        raise ValueError(f"classes {sorted(short)} have {sorted(set(short.values()))} items; an episode takes "
                         f"n_support + n_query = {per_class} of each")
    return classes
