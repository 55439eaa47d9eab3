"""mmcourse.models.region_word: Karpathy & Fei-Fei's image-sentence score against a hand-written loop,
eq. 9 by hand, masks (padding regions, padding tokens and the wrap), readouts, bad input, and a tiny
run that learns to align words with regions from image-caption pairs alone."""
import math

import pytest
import torch
from torch.utils.data import DataLoader

from mmcourse.experiments.alignment.regions import evaluate_word_alignment
from mmcourse.models.region_word import (RegionWordAligner, contrastive_loss, image_sentence_scores, ranking_loss,
                                         region_mask_of, region_word_loss)
from mmcourse.train import fit
from mmcourse.world.datasets import CaptionDataset, collate
from mmcourse.world.language import default_tokenizer

TOKENIZER = default_tokenizer()


def _ids(texts, length):
    return torch.from_numpy(TOKENIZER.encode_batch(texts, length, wrap="bos_eos"))


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, 32, 32, generator=g)
    boxes = torch.tensor([[[2.0, 2, 10, 10], [14, 14, 24, 22], [20, 2, 30, 8]],
                          [[4.0, 16, 12, 26], [18, 4, 28, 12], [0, 0, 0, 0]]])  # image 1: two boxes, one padding
    region_mask = torch.tensor([[True, True, True], [True, True, False]])
    ids = _ids(["a red circle left of a blue square", "two green shapes"], 10)
    return images, boxes, region_mask, ids


@pytest.fixture
def model():
    torch.manual_seed(0)
    return RegionWordAligner(width=16, dim=8).eval()


# ------------------------------------------------------------------------------ the score


def test_image_sentence_scores_equal_a_hand_written_loop():
    g = torch.Generator().manual_seed(1)
    regions, words = torch.randn(3, 4, 5, generator=g), torch.randn(2, 6, 5, generator=g)
    region_mask = torch.tensor([[True, True, True, True], [True, False, True, False], [False, False, True, False]])
    word_mask = torch.tensor([[False, True, True, True, False, False], [False, True, False, True, True, True]])
    scores = image_sentence_scores(regions, region_mask, words, word_mask)
    assert scores.shape == (3, 2)
    for k in range(3):
        for l in range(2):
            best = [max(float(regions[k, i] @ words[l, t]) for i in range(4) if region_mask[k, i])
                    for t in range(6) if word_mask[l, t]]
            assert scores[k, l].item() == pytest.approx(sum(best) / len(best), abs=1e-5)


def test_ranking_loss_is_eq_9_by_hand():
    scores = torch.tensor([[2.0, 1.5, -1.0], [0.0, 1.0, 0.8], [3.0, 0.0, 0.5]])
    expected = 0.0
    for k in range(3):
        for l in range(3):
            if l != k:
                expected += max(0.0, scores[k, l] - scores[k, k] + 1) + max(0.0, scores[l, k] - scores[k, k] + 1)
    assert ranking_loss(scores).item() == pytest.approx(expected / 3)
    assert ranking_loss(scores * 100, margin=1.0).item() > 0  # the margin does not scale with the scores
    assert ranking_loss(torch.eye(4) * 10).item() == 0.0  # every true pair ahead by more than the margin


def test_contrastive_loss_is_symmetric_cross_entropy():
    scores = torch.tensor([[2.0, 1.5, -1.0], [0.0, 1.0, 0.8], [3.0, 0.0, 0.5]])
    rows = -torch.log_softmax(scores / 0.5, 1).diagonal().mean()
    columns = -torch.log_softmax(scores / 0.5, 0).diagonal().mean()
    assert contrastive_loss(scores, 0.5).item() == pytest.approx(((rows + columns) / 2).item(), abs=1e-6)


def test_forward_is_the_score_of_the_models_own_vectors(model):
    images, boxes, region_mask, ids = _inputs()
    with torch.no_grad():
        scores = model(images, boxes, region_mask, ids)
        words, word_mask = model.words(ids)
        expected = image_sentence_scores(model.regions(images, boxes), region_mask, words, word_mask)
        own = model.caption_scores(images, boxes, region_mask, ids)
    assert scores.shape == (2, 2)
    torch.testing.assert_close(scores, expected)
    torch.testing.assert_close(own, scores.diagonal())


# ------------------------------------------------------------------------------ masks and readouts


def test_padding_regions_padding_tokens_and_the_wrap_are_ignored(model):
    images, boxes, region_mask, ids = _inputs()
    with torch.no_grad():
        reference = model(images, boxes, region_mask, ids)
        moved = boxes.clone()
        moved[1, 2] = torch.tensor([5.0, 5, 25, 25])  # the padding box now covers real pixels
        assert torch.equal(model(images, moved, region_mask, ids), reference)
        longer = torch.cat([ids, torch.zeros(2, 5, dtype=ids.dtype)], 1)  # more padding at the end
        torch.testing.assert_close(model(images, boxes, region_mask, longer), reference)
    words = model.words_of(ids)
    assert words.tolist() == ((ids > 6) & (ids != TOKENIZER.pad_id)).tolist()  # no <bos>, <eos>, <pad>
    assert words.sum(1).tolist() == [8, 3]


def test_readouts_shapes_and_masks(model):
    images, boxes, region_mask, ids = _inputs()
    with torch.no_grad():
        scores = model.word_region_scores(images, boxes, region_mask, ids)
        attention = model.word_region_attention(images, boxes, region_mask, ids)
    assignment = model.assign_words(images, boxes, region_mask, ids)
    assert scores.shape == attention.shape == (2, 10, 3) and assignment.shape == (2, 10)
    assert torch.isinf(scores[1, :, 2]).all() and torch.isfinite(scores[0]).all()  # a padding region: -inf
    assert (attention[1, :, 2] == 0).all()  # ...and no attention
    words = model.words_of(ids)
    torch.testing.assert_close(attention.sum(-1)[words], torch.ones(int(words.sum())))
    assert (attention[~words] == 0).all()  # padding and <bos>/<eos> rows are empty
    assert (assignment[~words] == -1).all()
    assert torch.equal(assignment[words], scores.argmax(-1)[words])
    assert (assignment[1][words[1]] < 2).all()  # never the padding region


def test_region_mask_of_a_batch():
    batch = {"boxes": torch.zeros(2, 4, 4), "num_objects": torch.tensor([1, 3])}
    assert region_mask_of(batch).tolist() == [[True, False, False, False], [True, True, True, False]]
    with pytest.raises(ValueError, match="num_objects"):
        region_mask_of({"boxes": torch.zeros(2, 4, 4)})


# ------------------------------------------------------------------------------ bad input


def test_refuses_bad_input(model):
    images, boxes, region_mask, ids = _inputs()
    with pytest.raises(TypeError, match="region_mask must be a bool"):
        model(images, boxes, region_mask.long(), ids)
    with pytest.raises(ValueError, match=r"region_mask has shape \(2, 2\); expected \(2, 3\)"):
        model(images, boxes, region_mask[:, :2], ids)
    with pytest.raises(ValueError, match="no real region"):
        model(images, boxes, torch.zeros_like(region_mask), ids)
    with pytest.raises(ValueError, match=r"boxes has shape \(2, 3, 2\)"):
        model(images, boxes[..., :2], region_mask, ids)
    with pytest.raises(ValueError, match=r"ids has shape \(1, 10\); expected \(2, L\)"):
        model(images, boxes, region_mask, ids[:1])
    with pytest.raises(TypeError, match="ids must be an integer tensor"):
        model(images, boxes, region_mask, ids.float())
    with pytest.raises(ValueError, match="no word"):
        model.caption_scores(images, boxes, region_mask, _ids(["", "a circle"], 4))
    with pytest.raises(ValueError, match="context must be an odd positive int"):
        RegionWordAligner(context=4)
    with pytest.raises(ValueError, match="dim must be a positive int"):
        RegionWordAligner(dim=0)


def test_losses_refuse_bad_input():
    with pytest.raises(ValueError, match=r"scores has shape \(2, 3\); expected \(B, B\)"):
        ranking_loss(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="margin must be a positive number"):
        ranking_loss(torch.zeros(2, 2), margin=-1)
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        contrastive_loss(torch.zeros(2, 2), temperature=0)
    with pytest.raises(ValueError, match="D"):
        image_sentence_scores(torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 5, 6),
                              torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"word_mask has shape \(2, 4\); expected \(2, 5\)"):
        image_sentence_scores(torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 5, 4),
                              torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="objective"):
        region_word_loss(None, {}, objective="triplet")


# ------------------------------------------------------------------------------ learning


@pytest.mark.usefixtures("one_torch_thread")
def test_a_tiny_run_learns_to_align_words_with_regions():
    """From image-caption pairs alone, words come to pick the region they name, well above chance."""
    torch.manual_seed(0)
    train = CaptionDataset(400, seed=11, image_size=32, captions_per_image=2)
    test = CaptionDataset(60, seed=12, image_size=32, captions_per_image=2)
    model = RegionWordAligner(width=24, dim=24)
    before = evaluate_word_alignment(model, test)
    loader = DataLoader(train, batch_size=32, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(0))
    history = fit(model, loader, region_word_loss, epochs=3, lr=3e-3, progress=False, device="cpu")
    after = evaluate_word_alignment(model, test)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert math.isclose(after["chance"], before["chance"]) and after["words"] > 300
    assert after["accuracy"] > after["chance"] + 0.15, (before, after)
