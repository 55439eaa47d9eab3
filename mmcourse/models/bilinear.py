"""Bilinear fusion and bilinear attention for VQA (notebook 04, lecture section 5).

Concatenating an image vector v and a question vector q lets a layer weigh each of their features
separately; a bilinear model scores every PRODUCT v_i q_j, z_k = v^T W_k q, which is what
"red AND left" needs, but W holds m x n x o numbers. Two ways to make that affordable:

- MFB, multimodal factorized bilinear pooling (Yu et al. 2017, "Multi-modal Factorized Bilinear
  Pooling with Co-Attention Learning for VQA"): W_k = U_k V_k^T of rank k, so
  z = SumPool(U~^T v o V~^T q, k), a sum over windows of k of the element-wise product of two
  expanded projections, then power normalisation sign(z) sqrt(|z|) and L2 normalisation.
  MFH (Yu et al. 2018, "Beyond Bilinear: Generalized Multimodal Factorized High-order Pooling for
  VQA") cascades p MFB blocks, each multiplying the previous block's expanded vector into its own,
  for interactions of order up to p, and concatenates the p outputs.
- BAN, bilinear attention networks (Kim, Jun & Zhang 2018): a low-rank bilinear score between every
  object and every word, softmax over all (object, word) pairs at once, then bilinear pooling of
  objects and words under that map; G glimpses, each with its own map, added to the question by
  residual learning.

The two VQA models read precomputed features, as the other models of `vqa` do: `forward(regions
(B, K, C) float, question (B, L) int64 ids, objects (B, K) bool True at real objects)` returns
"logits" (B, num_answers) and the attention maps.
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import QuestionEncoder, check_positive_int, check_tensor, masked_mean
from .layers import attention_pool, check_padding_mask, masked_softmax
from .vqa import answer_head, check_vqa_inputs

FUSIONS = ("mfh", "concat")



# --------------------------------------------------------------------------------------------
# MFB and MFH
# --------------------------------------------------------------------------------------------


def sum_pool(expanded: torch.Tensor, k: int) -> torch.Tensor:
    """SumPool(e, k): (..., k * o) -> (..., o), the sum over non-overlapping windows of k features."""
    if expanded.shape[-1] % k:
        raise ValueError(f"expanded has {expanded.shape[-1]} features, not a multiple of k={k}")
    return expanded.unflatten(-1, (-1, k)).sum(-1)  # z_i = sum_{j<k} e_{i k + j}


def power_l2_normalize(z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """z <- sign(z) sqrt(|z|), then z <- z / ||z||_2 (along the last dimension).

    Written sqrt(relu(z)) - sqrt(relu(-z)): the same values, with a zero (not nan) gradient at 0."""
    z = torch.sqrt(F.relu(z)) - torch.sqrt(F.relu(-z))  # power normalisation
    return F.normalize(z, dim=-1, eps=eps)  # L2 normalisation


def mfb(x: torch.Tensor, y: torch.Tensor, U: torch.Tensor, V: torch.Tensor, k: int) -> torch.Tensor:
    """MFB of (..., m) `x` and (..., n) `y` with factor matrices U (m, k*o), V (n, k*o) -> (..., o):
    z = SumPool(U^T x o V^T y, k), power- and L2-normalised."""
    expanded = (x @ U) * (y @ V)  # e = U~^T x o V~^T y: (..., k * o)
    return power_l2_normalize(sum_pool(expanded, k))  # (..., o)


class MFB(nn.Module):
    """Multimodal factorized bilinear pooling: (..., x_width), (..., y_width) -> (..., out_width).

    z = norm(SumPool(U~^T x o V~^T y, k)) with U~, V~ linear layers (with biases) to k * out_width
    features and dropout on the expanded product e (as the paper). `expand` gives e, which MFH
    chains."""

    def __init__(self, x_width: int, y_width: int, out_width: int, k: int = 5, dropout: float = 0.0):
        super().__init__()
        self.k = check_positive_int("k", k)
        self.out_width = check_positive_int("out_width", out_width)
        self.x_projection = nn.Linear(check_positive_int("x_width", x_width), k * out_width)  # U~
        self.y_projection = nn.Linear(check_positive_int("y_width", y_width), k * out_width)  # V~
        self.dropout = nn.Dropout(dropout)

    def expand(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """e = U~^T x o V~^T y: (..., k * out_width), before dropout and pooling."""
        _check_pair("x", x, self.x_projection.in_features, "y", y, self.y_projection.in_features)
        return self.x_projection(x) * self.y_projection(y)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return power_l2_normalize(sum_pool(self.dropout(self.expand(x, y)), self.k))  # (..., out_width)


class MFH(nn.Module):
    """Multimodal factorized high-order pooling of order p: (..., x_width), (..., y_width) ->
    (..., p * out_width).

    e^1 = U~_1^T x o V~_1^T y,   e^i = e^{i-1} o (U~_i^T x o V~_i^T y)   (i = 2..p)
    z^i = norm(SumPool(e^i, k)),   MFH(x, y) = [z^1; ...; z^p]
    """

    def __init__(self, x_width: int, y_width: int, out_width: int, k: int = 5, order: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(MFB(x_width, y_width, out_width, k, dropout)
                                    for _ in range(check_positive_int("order", order)))
        self.out_width = order * out_width

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        outputs, previous = [], None
        for block in self.blocks:
            expanded = block.expand(x, y)  # U~_i^T x o V~_i^T y: (..., k * o)
            if previous is not None:
                expanded = expanded * previous  # e^i = e^{i-1} o (U~_i^T x o V~_i^T y)
            previous = block.dropout(expanded)
            outputs.append(power_l2_normalize(sum_pool(previous, block.k)))  # z^i: (..., o)
        return torch.cat(outputs, -1)  # [z^1; ...; z^p]: (..., p * o)


# --------------------------------------------------------------------------------------------
# Bilinear attention (BAN)
# --------------------------------------------------------------------------------------------


class BilinearAttention(nn.Module):
    """BAN's bilinear attention maps and bilinear pooling with residual learning over G glimpses.

    Objects X (B, K, Dx), words Y (B, L, Dy), rank `hidden`:

    attention logits   A_g[i, j] = p_g^T (relu(X U)_i o relu(Y V)_j)     -- A_g = ((1 p_g^T) o XU)(YV)^T
    attention map      A_g = softmax over all K * L pairs at once (padded objects and words: 0)
    bilinear pooling   f'_k = sum_{i,j} A_g[i, j] relu(X U'_g)_{ik} relu(Y V'_g)_{jk}   -- (XU')_k^T A (YV')_k
    residual learning  f_{g+1} = P_g^T BAN_g(f_g, Y; A_g) 1^T + f_g,   f_0 = Y

    U and V are shared by the glimpses and each has its own p_g, so the G maps are computed together
    from the question's words, each independently of the others (as in the authors' code); each
    glimpse has its own pooling U'_g, V'_g and projection P_g, and adds its pooled vector to every
    word state of the question. ReLU follows each projection, as in the paper's experiments.
    `forward` returns the updated words (B, L, Dy) and the maps (B, G, K, L).
    """

    def __init__(self, object_width: int, word_width: int, hidden: int, glimpses: int = 2):
        super().__init__()
        for name, value in dict(object_width=object_width, word_width=word_width, hidden=hidden,
                                glimpses=glimpses).items():
            check_positive_int(name, value)
        self.object_projection = nn.Linear(object_width, hidden)  # U
        self.word_projection = nn.Linear(word_width, hidden)  # V
        self.glimpse_vectors = nn.Parameter(torch.randn(glimpses, hidden) / hidden ** 0.5)  # p_g, one row per glimpse
        self.pool_objects = nn.ModuleList(nn.Linear(object_width, hidden) for _ in range(glimpses))  # U'_g
        self.pool_words = nn.ModuleList(nn.Linear(word_width, hidden) for _ in range(glimpses))  # V'_g
        self.glimpse_out = nn.ModuleList(nn.Linear(hidden, word_width) for _ in range(glimpses))  # P_g
        self.object_width, self.word_width, self.glimpses = object_width, word_width, glimpses

    def attention_logits(self, objects: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """A_g[i, j] = sum_r p_g[r] relu(XU)[i, r] relu(YV)[j, r]: (B, G, K, L), before the softmax."""
        projected_objects = torch.relu(self.object_projection(objects))  # XU: (B, K, R)
        projected_words = torch.relu(self.word_projection(words))  # YV: (B, L, R)
        weighted = projected_objects[:, None] * self.glimpse_vectors[None, :, None, :]  # (1 p_g^T) o XU: (B, G, K, R)
        return weighted @ projected_words[:, None].transpose(-1, -2)  # (B, G, K, R) @ (B, 1, R, L) -> (B, G, K, L)

    def attention_maps(self, objects: torch.Tensor, object_padding: torch.Tensor, words: torch.Tensor,
                       word_padding: torch.Tensor) -> torch.Tensor:
        """(B, G, K, L): per glimpse, a softmax over all K * L (object, word) pairs; padded objects
        (`object_padding` (B, K) True) and padded words (`word_padding` (B, L) True) get exactly 0."""
        logits = self.attention_logits(objects, words)  # (B, G, K, L)
        padding = object_padding[:, None, :, None] | word_padding[:, None, None, :]  # (B, 1, K, L)
        joint = masked_softmax(logits.flatten(2), padding.flatten(2), dim=-1)  # (B, G, K * L)
        return joint.view_as(logits)

    def pool(self, glimpse: int, objects: torch.Tensor, words: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """BAN_g(X, Y; A): f_k = relu(X U'_g)_k^T A relu(Y V'_g)_k for each rank k: (B, R)."""
        pooled_objects = torch.relu(self.pool_objects[glimpse](objects))  # XU': (B, K, R)
        pooled_words = torch.relu(self.pool_words[glimpse](words))  # YV': (B, L, R)
        return torch.einsum("bkr,bkl,blr->br", pooled_objects, attention, pooled_words)  # (B, R)

    def forward(self, objects: torch.Tensor, object_padding: torch.Tensor, words: torch.Tensor,
                word_padding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_inputs(objects, object_padding, words, word_padding)
        maps = self.attention_maps(objects, object_padding, words, word_padding)  # (B, G, K, L)
        for glimpse in range(self.glimpses):
            pooled = self.pool(glimpse, objects, words, maps[:, glimpse])  # BAN_g(f_g, Y; A_g): (B, R)
            words = words + self.glimpse_out[glimpse](pooled)[:, None, :]  # f_{g+1} = P_g^T BAN_g 1^T + f_g: (B, L, Dy)
        return words, maps

    def _check_inputs(self, objects, object_padding, words, word_padding) -> None:
        check_tensor("objects", objects, 3, floating=True)
        check_tensor("words", words, 3, floating=True)
        if objects.shape[2] != self.object_width:
            raise ValueError(f"objects has shape {tuple(objects.shape)}; expected (B, K, {self.object_width})")
        if words.shape[2] != self.word_width:
            raise ValueError(f"words has shape {tuple(words.shape)}; expected (B, L, {self.word_width})")
        if len(words) != len(objects):
            raise ValueError(f"words has batch size {len(words)} but objects has {len(objects)}; "
                             "expected one question per object set")
        for name, padding, sequence in (("object_padding", object_padding, objects), ("word_padding", word_padding, words)):
            if padding is None:
                raise TypeError(f"{name} must be a (B, {sequence.shape[1]}) bool tensor (True at padding), got None")
            check_padding_mask(name, padding, sequence)


# --------------------------------------------------------------------------------------------
# VQA models
# --------------------------------------------------------------------------------------------


class BilinearAttentionNetwork(nn.Module):
    """BAN for VQA (Kim et al. 2018): box features and the question's word states through
    `BilinearAttention` with `glimpses` glimpses, the question's words after the last glimpse
    averaged (real words only), then the answer head.

    forward(regions (B, K, C), question (B, L) ids, objects (B, K) bool) -> {"logits" (B, answers),
    "attention" (B, G, K, L): each glimpse's map over (object, word) pairs, summing to one}.
    """

    def __init__(self, vocab_size: int, num_answers: int, feature_width: int, width: int = 64,
                 glimpses: int = 2, pad_id: int = 0):
        super().__init__()
        self.question_encoder = QuestionEncoder(vocab_size, width, pad_id)
        self.region_projection = nn.Sequential(nn.Linear(feature_width, width), nn.GELU())
        self.bilinear = BilinearAttention(width, width, width, glimpses)
        self.head = answer_head(width, 2 * width, num_answers)

    def forward(self, regions: torch.Tensor, question: torch.Tensor, objects: torch.Tensor) -> dict[str, torch.Tensor]:
        check_vqa_inputs(question, regions=regions, objects=objects, feature_width=self.region_projection[0].in_features)
        words, padding, _ = self.question_encoder(question)  # Y: (B, L, D), (B, L)
        regions = self.region_projection(regions)  # X: (B, K, D)
        words, maps = self.bilinear(regions, ~objects, words, padding)  # f_G: (B, L, D), (B, G, K, L)
        return {"logits": self.head(masked_mean(words, ~padding)), "attention": maps}


class MFHCoAttention(nn.Module):
    """MFH with co-attention for VQA (Yu et al. 2018).

    1. question self-attention: each word state scores itself (a small MLP), softmax over real words;
       q^ = the attended word states (one per glimpse, concatenated);
    2. question-guided object attention: each object's score comes from MFB(v_i, q^), softmax over
       real objects; v^ = the attended objects (one per glimpse, concatenated);
    3. fusion of v^ and q^: MFH (`fusion="mfh"`) or, for the comparison, their concatenation through
       one ReLU layer of the same output width (`fusion="concat"`); then the answer head.

    forward(regions (B, K, C), question (B, L) ids, objects (B, K) bool) -> {"logits",
    "object_attention" (B, K), "question_attention" (B, L)} (the maps averaged over glimpses).
    `fusion_parameters()` counts the fusion's parameters, to set against its accuracy.
    """

    def __init__(self, vocab_size: int, num_answers: int, feature_width: int, width: int = 64,
                 glimpses: int = 1, k: int = 5, order: int = 2, fusion: str = "mfh", dropout: float = 0.0,
                 pad_id: int = 0):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion={fusion!r} is unknown; expected one of {FUSIONS}")
        glimpses = check_positive_int("glimpses", glimpses)
        self.question_encoder = QuestionEncoder(vocab_size, width, pad_id)
        self.region_projection = nn.Sequential(nn.Linear(feature_width, width), nn.GELU())
        self.word_scores = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, glimpses))
        self.object_mfb = MFB(width, glimpses * width, width, k, dropout)  # z_i = MFB(v_i, q^)
        self.object_scores = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, glimpses))
        fused_width = order * width
        if fusion == "mfh":
            self.fusion = MFH(glimpses * width, glimpses * width, width, k, order, dropout)
        else:
            self.fusion = nn.Sequential(nn.Linear(2 * glimpses * width, fused_width), nn.ReLU())
        self.head = answer_head(fused_width, 2 * width, num_answers)
        self.fusion_kind = fusion

    def fusion_parameters(self) -> int:
        """Parameters of the fusion of v^ and q^ alone (MFH or concatenation + layer)."""
        return sum(p.numel() for p in self.fusion.parameters())

    def forward(self, regions: torch.Tensor, question: torch.Tensor, objects: torch.Tensor) -> dict[str, torch.Tensor]:
        check_vqa_inputs(question, regions=regions, objects=objects, feature_width=self.region_projection[0].in_features)
        words, padding, _ = self.question_encoder(question)  # (B, L, D), (B, L)
        regions = self.region_projection(regions)  # v_i: (B, K, D)
        # Question self-attention: alpha^q = softmax_l(MLP(w_l)) per glimpse.
        word_attention = masked_softmax(self.word_scores(words).transpose(1, 2), padding[:, None], -1)  # (B, G, L)
        attended_question = attention_pool(words, word_attention).flatten(1)  # q^: (B, G * D)
        # Question-guided object attention: alpha^v = softmax_i(MLP(MFB(v_i, q^))) per glimpse.
        per_object = attended_question[:, None].expand(-1, regions.shape[1], -1)  # (B, K, G * D)
        scores = self.object_scores(self.object_mfb(regions, per_object)).transpose(1, 2)  # (B, G, K)
        object_attention = masked_softmax(scores, ~objects[:, None], -1)  # (B, G, K)
        attended_objects = attention_pool(regions, object_attention).flatten(1)  # v^: (B, G * D)
        fused = self._fuse(attended_objects, attended_question)  # (B, order * D)
        return {"logits": self.head(fused), "object_attention": object_attention.mean(1),
                "question_attention": word_attention.mean(1)}

    def _fuse(self, image: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        if self.fusion_kind == "mfh":
            return self.fusion(image, question)  # MFH(v^, q^)
        return self.fusion(torch.cat([image, question], -1))  # relu(W [v^; q^] + b)


def fusion_parameter_counts(vocab_size: int, num_answers: int, feature_width: int, width: int = 64,
                            **options) -> dict[str, int]:
    """{"mfh": ..., "concat": ...}: the fusion parameters of `MFHCoAttention` built both ways with
    the same sizes (`options` as its constructor's)."""
    return {fusion: MFHCoAttention(vocab_size, num_answers, feature_width, width, fusion=fusion,
                                   **options).fusion_parameters() for fusion in FUSIONS}


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _check_pair(x_name: str, x, x_width: int, y_name: str, y, y_width: int) -> None:
    for name, value, width in ((x_name, x, x_width), (y_name, y, y_width)):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() < 1:
            raise TypeError(f"{name} must be a floating-point tensor (..., {width}), got "
                            f"{getattr(value, 'dtype', type(value).__name__)}")
        if value.shape[-1] != width:
            raise ValueError(f"{name} has shape {tuple(value.shape)}; expected (..., {width})")
    if x.shape[:-1] != y.shape[:-1]:
        raise ValueError(f"{x_name} has shape {tuple(x.shape)} but {y_name} {tuple(y.shape)}; "
                         "expected the same leading dimensions")

