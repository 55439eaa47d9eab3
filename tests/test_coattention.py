"""Hierarchical co-attention (Lu et al. 2016): one level's affinity and attentions against an explicit
einsum recomputation, the three question levels, attention that sums to one with exact zeros at
padded words, padding that changes nothing, and bad input."""
import pytest
import torch
import torch.nn.functional as F

from mmcourse.models.coattention import LEVELS, HierarchicalCoAttention, ParallelCoAttention
from mmcourse.world.language import default_tokenizer
from mmcourse.world.programs import ANSWERS

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see conftest

TOKENIZER = default_tokenizer()


FEATURES = 8  # channels of the precomputed feature grid


def make_model(seed=0):
    torch.manual_seed(seed)
    return HierarchicalCoAttention(TOKENIZER.vocab_size, len(ANSWERS), feature_width=FEATURES, width=16,
                                   attention_width=12, pad_id=TOKENIZER.pad_id).eval()


def batch(length=8):
    """A 4x4 feature grid per image and two questions of different lengths."""
    torch.manual_seed(1)
    grid = torch.rand(2, FEATURES, 4, 4)
    question = torch.from_numpy(TOKENIZER.encode_batch(["what color is the big sphere", "how many"], length))
    return grid, question


def test_one_level_matches_an_explicit_recomputation_of_the_papers_equations():
    torch.manual_seed(0)
    level = ParallelCoAttention(width=6, attention_width=5)
    words, cells = torch.randn(2, 4, 6), torch.randn(2, 7, 6)  # Q (B, L, d), V (B, N, d)
    padding = torch.tensor([[False, False, False, False], [False, False, True, True]])
    attended = level(words, padding, cells)

    W_b, W_v, W_q = level.affinity.weight, level.image.weight, level.question.weight
    w_hv, w_hq = level.image_score.weight[0], level.question_score.weight[0]
    real = (~padding).float()  # (B, L)
    C = torch.tanh(torch.einsum("bld,de,bne->bln", words, W_b, cells)) * real[:, :, None]  # Q^T W_b V
    H_v = torch.tanh(torch.einsum("kd,bnd->bkn", W_v, cells)
                     + torch.einsum("kd,bld,bln->bkn", W_q, words, C))  # W_v V + (W_q Q) C
    H_q = torch.tanh(torch.einsum("kd,bld->bkl", W_q, words)
                     + torch.einsum("kd,bnd,bln->bkl", W_v, cells, C))  # W_q Q + (W_v V) C^T
    a_v = torch.einsum("k,bkn->bn", w_hv, H_v).softmax(-1)
    scores_q = torch.exp(torch.einsum("k,bkl->bl", w_hq, H_q)) * real
    a_q = scores_q / scores_q.sum(1, keepdim=True)

    assert torch.allclose(attended.affinity, C, atol=1e-6)
    assert torch.allclose(attended.image_attention, a_v, atol=1e-6)
    assert torch.allclose(attended.question_attention, a_q, atol=1e-6)
    assert torch.allclose(attended.image, torch.einsum("bn,bnd->bd", a_v, cells), atol=1e-5)
    assert torch.allclose(attended.question, torch.einsum("bl,bld->bd", a_q, words), atol=1e-5)
    assert (attended.question_attention[1, 2:] == 0).all()  # exactly zero at padded words


def test_question_levels_are_embeddings_max_over_ngrams_and_an_lstm():
    model = make_model()
    grid, question = batch()
    with torch.no_grad():
        levels, padding = model.question_levels(question)
        words = levels["word"]
        assert torch.equal(padding, question == TOKENIZER.pad_id)
        assert torch.equal(words[~padding], model.embed(question)[~padding])
        assert (words[padding] == 0).all()
        t = 1  # the bigram and trigram at word t read words t..t+1 and t..t+2
        unigram, bigram, trigram = model.ngram_convs
        by_hand = torch.stack([
            torch.tanh(unigram.weight[..., 0] @ words[0, t] + unigram.bias),
            torch.tanh(torch.einsum("dek,ke->d", bigram.weight, words[0, t:t + 2]) + bigram.bias),
            torch.tanh(torch.einsum("dek,ke->d", trigram.weight, words[0, t:t + 3]) + trigram.bias),
        ]).amax(0)
        assert torch.allclose(levels["phrase"][0, t], by_hand, atol=1e-5)
        assert torch.allclose(levels["question"], model.question_lstm(levels["phrase"])[0])
    assert [levels[level].shape for level in LEVELS] == [(2, 8, 16)] * 3


def test_forward_returns_three_levels_of_attention_summing_to_one_with_zeros_at_padding():
    model = make_model()
    grid, question = batch()
    with torch.no_grad():
        output = model(grid, question)
        longer = model(grid, F.pad(question, (0, 3), value=TOKENIZER.pad_id))
    padding = question == TOKENIZER.pad_id
    assert output["logits"].shape == (2, len(ANSWERS))
    assert output["grid"] == (4, 4)
    assert output["image_attention"].shape == (2, 3, 16)
    assert output["question_attention"].shape == (2, 3, 8)
    assert torch.allclose(output["image_attention"].sum(-1), torch.ones(2, 3))
    assert torch.allclose(output["question_attention"].sum(-1), torch.ones(2, 3))
    assert (output["question_attention"].transpose(1, 2)[padding] == 0).all()
    assert (output["question_attention"].transpose(1, 2)[~padding] > 0).all()
    assert torch.allclose(output["logits"], longer["logits"], atol=1e-5)
    assert torch.allclose(output["image_attention"], longer["image_attention"], atol=1e-6)


def test_forward_uses_each_level_of_coattention_in_order():
    model = make_model()
    grid, question = batch()
    with torch.no_grad():
        output = model(grid, question)
        levels, padding = model.question_levels(question)
        cells, _ = model.grid_features(grid)
        for index, level in enumerate(LEVELS):
            attended = model.coattention[level](levels[level], padding, cells)
            assert torch.allclose(output["image_attention"][:, index], attended.image_attention)
            assert torch.allclose(output["question_attention"][:, index], attended.question_attention)


@pytest.mark.parametrize("change, error, match", [
    (lambda i, q: (i[:1], q), ValueError, "question has batch size 2 but grid has 1"),
    (lambda i, q: (i, q.float()), TypeError, "question must be an integer tensor"),
    (lambda i, q: (i.to(torch.uint8), q), TypeError, "grid must be a floating-point tensor"),
    (lambda i, q: (i.flatten(2), q), ValueError, r"grid must have 4 dimensions, got shape \(2, 8, 16\)"),
    (lambda i, q: (i, q[:, :, None]), ValueError, r"question must have 2 dimensions, got shape \(2, 8, 1\)"),
    (lambda i, q: (i, q - 1), ValueError, "question holds token id -1"),
    (lambda i, q: (i, torch.zeros_like(q)), ValueError, "question has a row made only of padding"),
])
def test_bad_input_is_refused_with_a_message_naming_the_argument(change, error, match):
    with pytest.raises(error, match=match):
        make_model()(*change(*batch()))


@pytest.mark.gpu
def test_coattention_runs_where_the_model_is():
    output = make_model().cuda()(*(tensor.cuda() for tensor in batch()))
    assert output["logits"].device.type == "cuda"
