"""Visual question answering baselines and attention models (notebook 04, lecture section 5).

Every model here reads image features and a question (token ids) and scores every answer of the
world's answer vocabulary (`mmcourse.world.programs.ANSWERS`): `forward` returns a dict whose
"logits" (B, num_answers) train with cross-entropy, beside the attention weights the notebook draws
and scores against the question's program trace.

The image arrives as features of a pretrained CNN, computed once per image, as in the papers (SAN
and co-attention read VGG or ResNet grids, bottom-up attention the features of a Faster R-CNN
trained on Visual Genome): a `grid` (B, C, h, w) feature map for models that attend over cells, or
`regions` (B, K, C), one feature per box, with `objects` (B, K) marking real boxes, for models that
attend over objects. Every model thus sees the same visual evidence; what differs is how the
question reaches it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import QuestionEncoder, check_positive_int, check_tensor
from .layers import attention_pool, masked_softmax


def answer_head(in_width: int, hidden: int, num_answers: int) -> nn.Sequential:
    """The classifier over answers that every VQA model ends in: an MLP with one hidden layer."""
    return nn.Sequential(nn.Linear(in_width, hidden), nn.GELU(), nn.Linear(hidden, num_answers))


def check_vqa_inputs(question: torch.Tensor, grid: torch.Tensor | None = None, regions: torch.Tensor | None = None,
                     objects: torch.Tensor | None = None, feature_width: int | None = None) -> None:
    """Refuse a VQA batch whose parts disagree: (B, L) int64 question ids with either a (B, C, h, w)
    float `grid` or (B, K, C) float `regions` and a (B, K) bool `objects` mask (True where a box
    holds a real object, at least one per row); C must be `feature_width` when given."""
    check_tensor("question", question, 2, floating=False)
    if (grid is None) == (regions is None):
        raise ValueError("give exactly one of grid (B, C, h, w) and regions (B, K, C) as the image features")
    features = check_tensor("grid", grid, 4, floating=True) if grid is not None else \
        check_tensor("regions", regions, 3, floating=True)
    name, channels = ("grid", 1) if grid is not None else ("regions", -1)
    if len(question) != len(features):
        raise ValueError(f"question has batch size {len(question)} but {name} has {len(features)}; "
                         "expected one question per image")
    if feature_width is not None and features.shape[channels] != feature_width:
        raise ValueError(f"{name} has shape {tuple(features.shape)}: {features.shape[channels]} feature channels, "
                         f"but the model was built for feature_width={feature_width}")
    if regions is None:
        if objects is not None:
            raise ValueError("objects marks real regions; a grid has none (give regions with objects)")
        return
    if not isinstance(objects, torch.Tensor) or objects.dtype != torch.bool:
        raise TypeError(f"objects must be a bool tensor (True where a box holds an object), "
                        f"got {getattr(objects, 'dtype', type(objects).__name__)}")
    if tuple(objects.shape) != tuple(regions.shape[:2]):
        raise ValueError(f"objects has shape {tuple(objects.shape)}; expected {tuple(regions.shape[:2])}, "
                         "one flag per region")
    if not objects.any(1).all():
        raise ValueError("objects marks no object in some row; every scene holds at least one object")



class GatedTanh(nn.Module):
    """y = tanh(W x + b) * sigmoid(W' x + b'): the non-linear layer of bottom-up top-down attention
    (Anderson et al. 2018, following Teney et al. 2018); the sigmoid gate says how much passes."""

    def __init__(self, in_width: int, out_width: int):
        super().__init__()
        self.value = nn.Linear(in_width, out_width)  # W, b
        self.gate = nn.Linear(in_width, out_width)  # W', b'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.value(x)) * torch.sigmoid(self.gate(x))


class GridFeatures(nn.Module):
    """A CNN feature map as a set of image regions: (B, C, h, w) -> (cells (B, N, width), grid (h, w)).

    The feature map is read cell by cell in row-major order, N = h * w, as SAN and co-attention read
    VGG's 14 x 14 conv5 grid, and each cell is projected to `width`. A learned embedding of each
    cell's centre (x, y) in [-1, 1] is added to its feature. Why: attention pools cells by a weighted
    *sum*, which forgets where the cells were, and a CNN knows positions only near the borders (from
    its zero padding). With its coordinates inside the feature, an attended cell tells the next hop
    where it is, so "the thing left of the cube" becomes a comparison of x coordinates the model can
    learn. The coordinates are computed for any grid size.
    """

    def __init__(self, feature_width: int, width: int):
        super().__init__()
        self.projection = nn.Linear(feature_width, width)  # C -> width
        self.position = nn.Linear(2, width)  # (x, y) -> width
        self.width = width

    def forward(self, grid: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        rows, columns = grid.shape[-2:]
        cells = self.projection(grid.flatten(2).transpose(1, 2))  # (B, N, width), row-major
        ys = torch.linspace(-1.0, 1.0, rows, device=cells.device, dtype=cells.dtype)  # (h,)
        xs = torch.linspace(-1.0, 1.0, columns, device=cells.device, dtype=cells.dtype)  # (w,)
        centres = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).view(rows * columns, 2)  # (N, 2) as (x, y)
        return cells + self.position(centres), (rows, columns)  # (B, N, width), (h, w)


class BlindLSTM(nn.Module):
    """The question-only baseline: what the question alone tells about the answer.

    Antol et al. 2015 ("VQA: Visual Question Answering") report it as "LSTM Q": a question LSTM and
    a classifier, no image. It takes the `grid` for the common interface and ignores it, so its
    accuracy measures the language prior ("how many" -> "2", "what size" -> "small" or "large") that
    every image model gets for free.
    """

    def __init__(self, vocab_size: int, num_answers: int, width: int = 64, pad_id: int = 0):
        super().__init__()
        self.question_encoder = QuestionEncoder(vocab_size, width, pad_id)
        self.head = answer_head(width, 2 * width, num_answers)

    def forward(self, grid: torch.Tensor, question: torch.Tensor) -> dict[str, torch.Tensor]:
        check_vqa_inputs(question, grid=grid)
        _, _, question_vector = self.question_encoder(question)  # (B, width)
        return {"logits": self.head(question_vector)}  # (B, num_answers)


class CnnLstm(nn.Module):
    """Antol et al. 2015's "deeper LSTM Q + norm I": one image vector, one question vector, no attention.

    The CNN feature map, averaged over the grid and l2-normalised ("norm I"), is the image vector; image and question are each mapped to a
    common width by a linear layer and tanh, fused by an elementwise product (the paper's choice:
    a feature is large only where both modalities agree), and classified by an MLP.
    """

    def __init__(self, vocab_size: int, num_answers: int, feature_width: int, width: int = 64, pad_id: int = 0):
        super().__init__()
        self.question_encoder = QuestionEncoder(vocab_size, width, pad_id)
        self.image_projection = nn.Sequential(nn.Linear(feature_width, width), nn.Tanh())
        self.question_projection = nn.Sequential(nn.Linear(width, width), nn.Tanh())
        self.head = answer_head(width, 2 * width, num_answers)

    def forward(self, grid: torch.Tensor, question: torch.Tensor) -> dict[str, torch.Tensor]:
        check_vqa_inputs(question, grid=grid, feature_width=self.image_projection[0].in_features)
        _, _, question_vector = self.question_encoder(question)  # (B, width)
        image_vector = F.normalize(grid.mean((2, 3)), dim=-1)  # (B, C), unit length
        fused = self.image_projection(image_vector) * self.question_projection(question_vector)  # (B, width)
        return {"logits": self.head(fused)}  # (B, num_answers)


class SanHop(nn.Module):
    """The weights of one stacked-attention hop: W_I, W_Q with b_A, W_P (see `san_hop`)."""

    def __init__(self, width: int, attention_width: int):
        super().__init__()
        self.image = nn.Linear(width, attention_width, bias=False)  # W_I
        self.question = nn.Linear(width, attention_width)  # W_Q, b_A
        # W_P. The paper's b_P is a bias per region; a shared scalar would cancel in the softmax, and
        # a prior over locations is learnable through the cells' position embedding, so there is none.
        self.score = nn.Linear(attention_width, 1, bias=False)

    def forward(self, cells: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return san_hop(cells, query, self)


def san_hop(cells: torch.Tensor, query: torch.Tensor, hop: SanHop) -> tuple[torch.Tensor, torch.Tensor]:
    """One hop of stacked attention (Yang et al. 2016, eqs. 15-17 and 19-20): image cells v_I
    (B, N, D) and the query u_{k-1} (B, D) -> (refined query u_k (B, D), attention p_I (B, N))."""
    # h_A = tanh(W_I v_I (+) (W_Q u_{k-1} + b_A)): the question term is added to every cell
    joint = torch.tanh(hop.image(cells) + hop.question(query)[:, None])  # (B, N, k)
    attention = hop.score(joint).squeeze(-1).softmax(-1)  # p_I = softmax(W_P h_A): (B, N)
    attended = attention_pool(cells, attention)  # v~_I = sum_i p_i v_i: (B, D)
    return attended + query, attention  # u_k = v~_I + u_{k-1}: (B, D), (B, N)


class StackedAttention(nn.Module):
    """Stacked attention networks (Yang et al. 2016, "Stacked Attention Networks for Image Question
    Answering").

    The question vector u_0 (LSTM) queries the CNN grid cells v_I = tanh(W f_cell + b); each hop
    (`san_hop`) attends over the cells and adds what it found to the query, so a second hop can
    look again knowing what the first one saw ("what is left of the *red* thing": find red, then
    look left of it). The final query u_K is classified. `forward` returns "logits", "attention"
    (B, hops, N) one map per hop over the N = h * w cells, and "grid" (h, w).
    """

    def __init__(self, vocab_size: int, num_answers: int, feature_width: int, width: int = 64, hops: int = 2,
                 attention_width: int | None = None, pad_id: int = 0):
        super().__init__()
        check_positive_int("hops", hops)
        self.question_encoder = QuestionEncoder(vocab_size, width, pad_id)
        self.grid_features = GridFeatures(feature_width, width)
        self.image_projection = nn.Sequential(nn.Linear(width, width), nn.Tanh())  # v_I = tanh(W_I f_I + b_I)
        self.hops = nn.ModuleList(SanHop(width, attention_width or width) for _ in range(hops))
        self.head = answer_head(width, 2 * width, num_answers)

    def forward(self, grid: torch.Tensor, question: torch.Tensor) -> dict[str, torch.Tensor | tuple[int, int]]:
        check_vqa_inputs(question, grid=grid, feature_width=self.grid_features.projection.in_features)
        _, _, query = self.question_encoder(question)  # u_0 = v_Q: (B, D)
        cells, grid_shape = self.grid_features(grid)  # (B, N, D)
        cells = self.image_projection(cells)  # v_I: (B, N, D)
        maps = []
        for hop in self.hops:
            query, attention = hop(cells, query)  # (B, D), (B, N)
            maps.append(attention)
        return {"logits": self.head(query), "attention": torch.stack(maps, 1), "grid": grid_shape}  # (B, hops, N)


class BottomUpTopDown(nn.Module):
    """Bottom-up and top-down attention (Anderson et al. 2018, "Bottom-Up and Top-Down Attention for
    Image Captioning and Visual Question Answering").

    Bottom-up: one feature per object, pooled from the image inside each box (`regions`, from a
    `RegionEncoder` over the world's boxes, the stand-in for Faster R-CNN's proposals). Top-down:
    the question scores every object, a_i = w_a^T f_a(v_i o q), and the answer reads the
    softmax-weighted sum, so attention picks objects, not grid cells. Padded boxes (`objects` False)
    get exactly zero weight, and the model is indifferent to the objects' order. `forward` returns
    "logits" and "attention" (B, K) over the boxes.

    The paper writes f_a([v_i; q]), a concatenation. Here the scoring multiplies, v_i o q (as common
    reimplementations do), after a LayerNorm on each side: measured on notebook 04's budget, the
    concatenation settles on a question-independent saliency (q only shifts every object's input by
    the same amount, and the region features are about ten times larger than q), so its weight on
    the answer object stays at the uniform 1 / objects; the product with both norms learns it.
    """

    def __init__(self, vocab_size: int, num_answers: int, feature_width: int, width: int = 64, pad_id: int = 0):
        super().__init__()
        self.question_encoder = QuestionEncoder(vocab_size, width, pad_id)
        self.region_projection = nn.Linear(feature_width, width)
        self.region_norm = nn.LayerNorm(width)  # v_i and q on one scale: the raw region features are ~10x q's
        self.question_norm = nn.LayerNorm(width)
        self.attention_layer = GatedTanh(width, width)  # f_a
        self.attention_score = nn.Linear(width, 1, bias=False)  # w_a
        self.question_layer = GatedTanh(width, width)  # f_q
        self.image_layer = GatedTanh(width, width)  # f_v
        self.head = answer_head(width, 2 * width, num_answers)

    def forward(self, regions: torch.Tensor, question: torch.Tensor, objects: torch.Tensor) -> dict[str, torch.Tensor]:
        check_vqa_inputs(question, regions=regions, objects=objects, feature_width=self.region_projection.in_features)
        question_vector = self.question_norm(self.question_encoder(question)[2])  # q: (B, D)
        regions = self.region_norm(self.region_projection(regions))  # v_i: (B, K, D)
        paired = regions * question_vector[:, None]  # v_i o q: (B, K, D)
        scores = self.attention_score(self.attention_layer(paired)).squeeze(-1)  # a_i = w_a^T f_a(v_i o q): (B, K)
        attention = masked_softmax(scores, ~objects)  # alpha = softmax(a) over real objects: (B, K)
        attended = attention_pool(regions, attention)  # v^ = sum_i alpha_i v_i: (B, D)
        joint = self.question_layer(question_vector) * self.image_layer(attended)  # h = f_q(q) o f_v(v^): (B, D)
        return {"logits": self.head(joint), "attention": attention}
