"""Relation Networks (Santoro et al. 2017, "A simple neural network module for relational
reasoning") and the CNN+MLP baseline they beat on Sort-of-CLEVR (notebook 04).

A Relation Network reads a set of objects O = {o_1, ..., o_N} and a question q and answers

    RN(O, q) = f_phi( sum_{i,j} g_theta(o_i, o_j, q) )

g_theta (an MLP) scores every ORDERED pair of objects, itself included, so N objects make N^2
pairs; the sum makes the answer independent of the order of the objects; f_phi (an MLP) reads the
summed relations. Nothing tells the module which pairs matter: it learns it from the answers.

On pixels the paper needs no object detector: a CNN (four 3x3 convolutions of stride 2, batch norm,
ReLU) turns the image into a d x d feature map, and every cell is an "object", its feature vector
with the cell's (x, y) coordinates appended. The question is Sort-of-CLEVR's 18-d vector.

The baseline (`CnnMlp`) reads the same CNN's feature map flattened, beside q, with an MLP: it can
learn relations too, but has to learn them for every pair of cells separately, where the RN shares
one g_theta across all pairs. As reported by the paper: RN above 94% on relational and
non-relational questions, CNN+MLP near 63% on relational ones. `comparable_cnn_mlp` sizes the
baseline's MLP so that both models have about as many parameters.

Computing g_theta's first layer on all N^2 concatenations [o_i; o_j; q] would repeat work: a linear
layer on a concatenation is a sum of linear maps, W [o_i; o_j; q] = W_1 o_i + W_2 o_j + W_3 q, so
`RelationModule` computes the three terms once per object (and question) and broadcasts their sum
over the pairs, which gives the same numbers (`all_pairs` builds the explicit concatenation; the
tests check both agree). The remaining layers still see every one of the N^2 pairs.
"""
from __future__ import annotations


import torch
from torch import nn

from ..world.sort_of_clevr import ANSWERS, VECTOR_DIM
from .encoders import check_positive_int, check_tensor

NUM_ANSWERS = len(ANSWERS)  # 10
COORDINATES = 2  # (x, y) appended to each cell's features
POOLS = ("sum", "mean")  # how the pairs' relations are aggregated



def mlp(sizes: list[int], final_activation: bool = False, dropout: float = 0.0) -> nn.Sequential:
    """Linear layers of `sizes` (in, hidden..., out) with ReLU between them (and after the last one
    when `final_activation`); `dropout` before the last layer, as the paper's f_phi."""
    layers: list[nn.Module] = []
    for index, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = index == len(sizes) - 2
        if last and dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(n_in, n_out))
        if not last or final_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def mlp_parameter_count(sizes: list[int]) -> int:
    """Weights and biases of `mlp(sizes)`: sum of (n_in + 1) * n_out."""
    return sum((n_in + 1) * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))


def matching_mlp_width(inputs: int, outputs: int, layers: int, target: int, max_width: int = 4096) -> int:
    """The hidden width h in [1, max_width) whose `mlp([inputs] + [h] * layers + [outputs])` has the
    parameter count closest to `target`: how a baseline MLP is sized to match another model."""
    for name, value in (("inputs", inputs), ("outputs", outputs), ("layers", layers), ("max_width", max_width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    return min(range(1, max_width),
               key=lambda hidden: abs(mlp_parameter_count([inputs] + [hidden] * layers + [outputs]) - target))


def conv_stack(channels: int, layers: int = 4, in_channels: int = 3) -> nn.Sequential:
    """The paper's CNN: `layers` x (3x3 convolution of stride 2 with `channels` kernels, batch norm,
    ReLU); (B, 3, S, S) -> (B, channels, d, d) with d = S halved (rounding up) `layers` times."""
    blocks: list[nn.Module] = []
    for layer in range(layers):
        blocks += [nn.Conv2d(in_channels if layer == 0 else channels, channels, 3, stride=2, padding=1),
                   nn.BatchNorm2d(channels), nn.ReLU()]
    return nn.Sequential(*blocks)


def feature_side(image_size: int, layers: int) -> int:
    """The side d of the feature map of `conv_stack(layers=layers)` on `image_size` images."""
    side = image_size
    for _ in range(layers):
        side = (side + 1) // 2  # kernel 3, stride 2, padding 1
    return side


def cell_objects(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, d, d) feature map -> (B, d*d, C + 2) objects: each cell's features with its (x, y)
    centre in [-1, 1] appended (row-major order: cell k is at row k // d, column k % d)."""
    check_tensor("feature_map", feature_map, 4, floating=True)
    batch, _, rows, columns = feature_map.shape
    ys = torch.linspace(-1, 1, rows, device=feature_map.device, dtype=feature_map.dtype)
    xs = torch.linspace(-1, 1, columns, device=feature_map.device, dtype=feature_map.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (d, d) each
    coordinates = torch.stack([grid_x, grid_y]).expand(batch, -1, -1, -1)  # (B, 2, d, d)
    return torch.cat([feature_map, coordinates], 1).flatten(2).transpose(1, 2)  # (B, d*d, C + 2)


def all_pairs(objects: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
    """The explicit input of g_theta: (B, N, D) objects and (B, Q) questions -> (B, N, N, 2D + Q),
    entry [b, i, j] = [o_i; o_j; q]. N^2 rows per question: what `RelationModule` avoids building."""
    _check_objects_question(objects, question)
    batch, n, _ = objects.shape
    first = objects[:, :, None, :].expand(-1, -1, n, -1)  # (B, N, N, D): o_i
    second = objects[:, None, :, :].expand(-1, n, -1, -1)  # (B, N, N, D): o_j
    asked = question[:, None, None, :].expand(-1, n, n, -1)  # (B, N, N, Q)
    return torch.cat([first, second, asked], -1)  # (B, N, N, 2D + Q)


class RelationModule(nn.Module):
    """RN(O, q) = f_phi( sum_{i,j} g_theta(o_i, o_j, q) ): (B, N, object_dim) objects and
    (B, question_dim) questions -> (B, num_answers) logits.

    g_theta: `g_layers` layers of `hidden` units, ReLU after each; f_phi: `f_layers` layers
    (`hidden` units, then the answers), `dropout` before its last layer (the paper: 0.5).
    `pool="sum"` is the paper's sum over pairs; `"mean"` divides it by N^2, which keeps f_phi's
    input at the scale of one relation, whatever N (and lets a higher learning rate train).
    """

    def __init__(self, object_dim: int, question_dim: int = VECTOR_DIM, num_answers: int = NUM_ANSWERS,
                 hidden: int = 256, g_layers: int = 4, f_layers: int = 3, dropout: float = 0.0,
                 pool: str = "sum"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool={pool!r} is unknown; expected one of {POOLS}")
        self.pool = pool
        for name, value in dict(object_dim=object_dim, question_dim=question_dim, num_answers=num_answers,
                                hidden=hidden, g_layers=g_layers, f_layers=f_layers).items():
            check_positive_int(name, value)
        self.object_dim, self.question_dim = object_dim, question_dim
        # g_theta's first layer reads [o_i; o_j; q] (2 * object_dim + question_dim inputs).
        self.g_first = nn.Linear(2 * object_dim + question_dim, hidden)
        self.g_rest = mlp([hidden] * g_layers, final_activation=True)
        self.f = mlp([hidden] * f_layers + [num_answers], dropout=dropout)

    def g(self, pairs: torch.Tensor) -> torch.Tensor:
        """g_theta on explicit pairs (..., 2D + Q) -> (..., hidden): the definition, for checking."""
        return self.g_rest(torch.relu(self.g_first(pairs)))

    def pair_relations(self, objects: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        """g_theta(o_i, o_j, q) for all N^2 ordered pairs: (B, N, N, hidden)."""
        _check_objects_question(objects, question, self.object_dim, self.question_dim)
        d = self.object_dim
        w_first, w_second, w_question = self.g_first.weight.split([d, d, self.question_dim], dim=1)
        # W [o_i; o_j; q] + b = W_1 o_i + W_2 o_j + (W_3 q + b), each term computed once.
        first = objects @ w_first.T  # (B, N, hidden): W_1 o_i
        second = objects @ w_second.T  # (B, N, hidden): W_2 o_j
        asked = question @ w_question.T + self.g_first.bias  # (B, hidden): W_3 q + b
        hidden = first[:, :, None, :] + second[:, None, :, :] + asked[:, None, None, :]  # (B, N, N, hidden)
        return self.g_rest(torch.relu(hidden))  # (B, N, N, hidden)

    def forward(self, objects: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        relations = self.pair_relations(objects, question)  # (B, N, N, hidden)
        # sum_{i,j} g(o_i, o_j, q) over all N^2 ordered pairs (or their mean): (B, hidden)
        relations = relations.sum((1, 2)) if self.pool == "sum" else relations.mean((1, 2))
        return self.f(relations)  # (B, num_answers)


class RelationNetwork(nn.Module):
    """CNN -> feature-map cells as objects -> `RelationModule` (Santoro et al. 2017, Sort-of-CLEVR).

    forward(images (B, 3, S, S) float, question_vector (B, 18) float) -> {"logits": (B, 10)}.
    `objects(images)` gives the (B, d*d, channels + 2) objects, `relation(objects, question)` the
    logits of an explicit object set, so a batch can run the CNN once per image and ask each image
    many questions (`ask`).
    """

    def __init__(self, image_size: int = 75, channels: int = 24, conv_layers: int = 4, hidden: int = 256,
                 g_layers: int = 4, f_layers: int = 3, question_dim: int = VECTOR_DIM,
                 num_answers: int = NUM_ANSWERS, dropout: float = 0.0, pool: str = "sum"):
        super().__init__()
        self.image_size = check_positive_int("image_size", image_size)
        self.cnn = conv_stack(check_positive_int("channels", channels), check_positive_int("conv_layers", conv_layers))
        self.relation = RelationModule(channels + COORDINATES, question_dim, num_answers, hidden, g_layers,
                                       f_layers, dropout, pool)
        self.channels, self.conv_layers, self.question_dim = channels, conv_layers, question_dim
        self.num_objects = feature_side(image_size, conv_layers) ** 2

    def objects(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, d*d, channels + 2): one object per cell of the CNN's feature map."""
        _check_images(images, self.image_size)
        return cell_objects(self.cnn(images))

    def ask(self, images: torch.Tensor, question_vectors: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images with Q questions each (B, Q, 18) -> (B, Q, answers) logits; the CNN
        runs once per image."""
        check_tensor("question_vectors", question_vectors, 3, floating=True)
        if len(question_vectors) != len(images):
            raise ValueError(f"question_vectors has batch size {len(question_vectors)} but images has {len(images)}; "
                             "expected (B, Q, 18), Q questions per image")
        objects = self.objects(images)  # (B, N, D)
        per_question = objects.repeat_interleave(question_vectors.shape[1], 0)  # (B * Q, N, D)
        logits = self.relation(per_question, question_vectors.flatten(0, 1))  # (B * Q, answers)
        return logits.view(*question_vectors.shape[:2], -1)  # (B, Q, answers)

    def forward(self, images: torch.Tensor, question_vector: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_question_vector(question_vector, images, self.question_dim)
        return {"logits": self.relation(self.objects(images), question_vector)}  # (B, answers)


class CnnMlp(nn.Module):
    """The baseline: the same CNN, its feature map flattened and concatenated with the question,
    then an MLP of `layers` hidden layers of `hidden` units -> (B, answers) logits.

    forward(images (B, 3, S, S), question_vector (B, 18)) -> {"logits": (B, 10)}; `ask` as the RN's.
    """

    def __init__(self, image_size: int = 75, channels: int = 24, conv_layers: int = 4, hidden: int = 256,
                 layers: int = 3, question_dim: int = VECTOR_DIM, num_answers: int = NUM_ANSWERS,
                 dropout: float = 0.0):
        super().__init__()
        self.image_size = check_positive_int("image_size", image_size)
        self.cnn = conv_stack(check_positive_int("channels", channels), check_positive_int("conv_layers", conv_layers))
        flat = channels * feature_side(image_size, conv_layers) ** 2
        self.mlp = mlp([flat + question_dim] + [check_positive_int("hidden", hidden)] * check_positive_int(
            "layers", layers) + [num_answers], dropout=dropout)
        self.question_dim = question_dim

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, channels * d * d): the flattened feature map."""
        _check_images(images, self.image_size)
        return self.cnn(images).flatten(1)

    def ask(self, images: torch.Tensor, question_vectors: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images with Q questions each (B, Q, 18) -> (B, Q, answers) logits."""
        check_tensor("question_vectors", question_vectors, 3, floating=True)
        if len(question_vectors) != len(images):
            raise ValueError(f"question_vectors has batch size {len(question_vectors)} but images has {len(images)}; "
                             "expected (B, Q, 18), Q questions per image")
        features = self.features(images)[:, None, :].expand(-1, question_vectors.shape[1], -1)  # (B, Q, F)
        return self.mlp(torch.cat([features, question_vectors], -1))  # (B, Q, answers)

    def forward(self, images: torch.Tensor, question_vector: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_question_vector(question_vector, images, self.question_dim)
        return {"logits": self.mlp(torch.cat([self.features(images), question_vector], 1))}  # (B, answers)


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters of `model`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def comparable_cnn_mlp(rn: RelationNetwork, layers: int = 3, dropout: float = 0.0) -> CnnMlp:
    """A `CnnMlp` with the RN's CNN and the hidden width (`layers` hidden layers) that brings its
    parameter count closest to the RN's: the fair baseline of the paper's comparison."""
    if not isinstance(rn, RelationNetwork):
        raise TypeError(f"rn must be a RelationNetwork, got {type(rn).__name__}")
    flat = rn.channels * rn.num_objects + rn.question_dim
    answers = rn.relation.f[-1].out_features
    hidden = matching_mlp_width(flat, answers, layers, parameter_count(rn.relation))
    return CnnMlp(rn.image_size, rn.channels, rn.conv_layers, hidden, layers, rn.question_dim, answers, dropout)


def _check_images(images, image_size: int) -> None:
    check_tensor("images", images, 4, floating=True)
    if tuple(images.shape[1:]) != (3, image_size, image_size):
        raise ValueError(f"images has shape {tuple(images.shape)}; expected (B, 3, {image_size}, {image_size})")


def _check_question_vector(question_vector, images, question_dim: int) -> None:
    check_tensor("question_vector", question_vector, 2, floating=True)
    if question_vector.shape[1] != question_dim:
        raise ValueError(f"question_vector has shape {tuple(question_vector.shape)}; expected (B, {question_dim})")
    if isinstance(images, torch.Tensor) and len(question_vector) != len(images):
        raise ValueError(f"question_vector has batch size {len(question_vector)} but images has {len(images)}; "
                         "expected one question per image")


def _check_objects_question(objects, question, object_dim: int | None = None,
                            question_dim: int | None = None) -> None:
    check_tensor("objects", objects, 3, floating=True)
    check_tensor("question", question, 2, floating=True)
    if object_dim is not None and objects.shape[2] != object_dim:
        raise ValueError(f"objects has shape {tuple(objects.shape)}; expected (B, N, {object_dim})")
    if question_dim is not None and question.shape[1] != question_dim:
        raise ValueError(f"question has shape {tuple(question.shape)}; expected (B, {question_dim})")
    if len(question) != len(objects):
        raise ValueError(f"question has batch size {len(question)} but objects has {len(objects)}; "
                         "expected one question per object set")
