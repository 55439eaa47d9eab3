"""mmcourse.experiments.alignment.regions: explicit alignment accuracy by hand, words whose phrase singles
out their object, held-out true vs one-word-swapped captions, ITM accuracy on them with stand-in
models, the swapped-caption training set, and region features pretrained on attributes."""
import numpy as np
import pytest
import torch
from torch import nn

from mmcourse.experiments.alignment.regions import (SwappedCaptionDataset, SwappedCaptions, evaluate_word_alignment,
                                                 explicit_alignment_accuracy, identifying_word_mask,
                                                 itm_swap_accuracy, pretrain_region_encoder, swapped_caption,
                                                 swapped_caption_pairs)
from mmcourse.models.encoders import RegionEncoder
from mmcourse.world import sample_scenes
from mmcourse.world.datasets import CaptionDataset, collate
from mmcourse.world.language import ATTRIBUTE_WORDS, caption_is_true, default_tokenizer, split_words
from mmcourse.world.scene import get_preset

TOKENIZER = default_tokenizer()


# ------------------------------------------------------------------------------ explicit alignment accuracy


def test_explicit_alignment_accuracy_by_hand():
    alignment = torch.zeros(1, 6, 3, dtype=torch.bool)
    alignment[0, 1:4, 0] = True  # "a red circle" names object 0
    alignment[0, 4, 1] = alignment[0, 4, 2] = True  # a word naming two objects: not counted
    alignment[0, 5, 2] = True
    assignment = torch.tensor([[2, 0, 0, 1, 1, -1]])  # <bos> (not counted), two right, one wrong, ..., none
    assert explicit_alignment_accuracy(assignment, alignment) == {"accuracy": 0.5, "words": 4}
    keep = torch.tensor([[True, True, True, False, True, False]])
    assert explicit_alignment_accuracy(assignment, alignment, keep) == {"accuracy": 1.0, "words": 2}
    empty = explicit_alignment_accuracy(assignment, torch.zeros_like(alignment))
    assert empty["words"] == 0 and np.isnan(empty["accuracy"])


def test_explicit_alignment_accuracy_refuses_bad_input():
    assignment, alignment = torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"alignment has shape \(2, 4, 3\)"):
        explicit_alignment_accuracy(assignment, alignment[:, :4])
    with pytest.raises(TypeError, match="alignment must be a bool tensor"):
        explicit_alignment_accuracy(assignment, alignment.long())
    with pytest.raises(TypeError, match="integer"):
        explicit_alignment_accuracy(assignment.float(), alignment)
    with pytest.raises(ValueError, match=r"keep has shape \(2, 4\)"):
        explicit_alignment_accuracy(assignment, alignment, torch.ones(2, 4, dtype=torch.bool))


def _codes(*objects):
    """(1, K, 4) attribute codes of (shape, color, size, style) value tuples, padded to K = 3."""
    spec = get_preset("default")
    codes = np.full((1, 3, 4), -1)
    for k, values in enumerate(objects):
        codes[0, k] = [spec.values(a).index(v) for a, v in zip(("shape", "color", "size", "style"), values)]
    return torch.from_numpy(codes)


def test_identifying_words_are_those_of_phrases_that_fit_their_object_alone():
    ids = torch.tensor([TOKENIZER.encode("a red circle and a circle", wrap="bos_eos")])  # (1, 8)
    alignment = torch.zeros(1, 8, 3, dtype=torch.bool)
    alignment[0, 1:4, 0] = True  # "a red circle" -> object 0
    alignment[0, 5:7, 1] = True  # "a circle" -> object 1, but object 0 is a circle too
    attributes = _codes(("circle", "red", "small", "filled"), ("circle", "blue", "large", "filled"))
    mask = identifying_word_mask(ids, alignment, attributes)
    assert mask.tolist() == [[False, True, True, True, False, False, False, False]]
    with pytest.raises(ValueError, match="disagree"):
        identifying_word_mask(ids, alignment, attributes[:, :2])


class _AlwaysFirstRegion(nn.Module):
    """Assigns every token to region 0."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def assign_words(self, images, boxes, region_mask, ids):
        return torch.zeros(ids.shape, dtype=torch.long)


def test_evaluate_word_alignment_counts_the_dataset_words():
    dataset = CaptionDataset(20, seed=4, image_size=32, captions_per_image=2)
    scores = evaluate_word_alignment(_AlwaysFirstRegion(), dataset, batch_size=16)
    alignment = torch.stack([dataset[i]["alignment"] for i in range(len(dataset))])  # (N, L, K)
    counted = alignment.sum(-1) == 1
    assert scores["words"] == int(counted.sum()) > 50
    assert scores["accuracy"] == pytest.approx(float(alignment[..., 0][counted].float().mean()))
    assert scores["excluded_words"] == int((alignment.sum(-1) > 1).sum())
    assert 0.15 < scores["chance"] < 0.5 and scores["identifying_words"] < scores["words"]
    with pytest.raises(TypeError, match="assign_words"):
        evaluate_word_alignment(nn.Linear(2, 2), dataset)


# ------------------------------------------------------------------------------ swapped captions


def test_swapped_caption_differs_in_one_attribute_word_and_is_false():
    found = 0
    for scene in sample_scenes(30, 8):
        result = swapped_caption(scene, 8, 0)
        if result is None:
            continue
        true, swapped, attribute = result
        old, new = true.words, swapped.words
        changed = [w for w in range(len(old)) if old[w] != new[w]]
        attribute_changes = [w for w in changed if new[w] in ATTRIBUTE_WORDS]
        assert len(attribute_changes) == 1 and set(changed) - set(attribute_changes) <= {attribute_changes[0] - 1}
        assert ATTRIBUTE_WORDS[new[attribute_changes[0]]][0] == attribute
        assert caption_is_true(scene, true.text) and not caption_is_true(scene, swapped.text)
        found += 1
    assert found > 20


@pytest.fixture(scope="module")
def pairs():
    return swapped_caption_pairs(12, seed=5, image_size=32)


def test_swapped_caption_pairs(pairs):
    assert len(pairs) == 12 and pairs.images.shape == (12, 3, 32, 32) and pairs.boxes.shape == (12, 6, 4)
    assert pairs.true_ids.shape == pairs.swapped_ids.shape == (12, 48)
    assert pairs.region_mask.sum(1).tolist() == pairs.num_objects.tolist()
    for true, swapped, ids in zip(pairs.true_texts, pairs.swapped_texts, pairs.swapped_ids):
        assert true != swapped and len(split_words(true)) == len(split_words(swapped))
        assert TOKENIZER.decode(ids.tolist()) == " ".join(split_words(swapped))
    again = swapped_caption_pairs(12, seed=5, image_size=32)
    assert again.swapped_texts == pairs.swapped_texts and torch.equal(again.images, pairs.images)
    with pytest.raises(ValueError, match="n must be"):
        swapped_caption_pairs(0, seed=5, image_size=32)


class _Oracle(nn.Module):
    """ITM logits (0, +1) for the true captions it was given, (0, -1) for any other."""

    def __init__(self, true_ids):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.true = {tuple(row[row != 0].tolist()) for row in true_ids}

    def itm_logits(self, images, boxes, region_mask, ids):
        known = torch.tensor([tuple(row[row != 0].tolist()) in self.true for row in ids])
        return torch.stack([torch.zeros(len(ids)), known.float() * 2 - 1], 1)


class _Constant(_Oracle):
    def itm_logits(self, images, boxes, region_mask, ids):
        return torch.tensor([[0.0, 1.0]]).expand(len(ids), 2)


class _Scorer(_Oracle):
    """No ITM head: a score per caption, higher for the true ones."""

    itm_logits = None

    def caption_scores(self, images, boxes, region_mask, ids):
        return self.itm_logits_of(ids)

    def itm_logits_of(self, ids):
        return torch.tensor([float(tuple(row[row != 0].tolist()) in self.true) for row in ids])


def test_itm_swap_accuracy_with_stand_in_models(pairs):
    oracle = itm_swap_accuracy(_Oracle(pairs.true_ids), pairs, batch_size=5)
    assert oracle["accuracy"] == oracle["pairwise"] == 1.0
    assert all(oracle[f"pairwise_{a}"] == 1.0 for a in set(pairs.swapped_attributes))
    constant = itm_swap_accuracy(_Constant(pairs.true_ids), pairs)
    assert constant["accuracy"] == 0.5 and constant["pairwise"] == 0.0  # a tie is not a win
    scorer = itm_swap_accuracy(_Scorer(pairs.true_ids), pairs)
    assert scorer["pairwise"] == 1.0 and "accuracy" not in scorer
    with pytest.raises(TypeError, match="itm_logits"):
        itm_swap_accuracy(nn.Linear(2, 2), pairs)
    with pytest.raises(TypeError, match="SwappedCaptions"):
        itm_swap_accuracy(_Oracle(pairs.true_ids), [])


def test_swapped_caption_dataset_adds_the_swapped_caption_of_every_item():
    captions = CaptionDataset(10, seed=6, image_size=32, captions_per_image=2)
    dataset = SwappedCaptionDataset(captions)
    assert len(dataset) == 20 and dataset.has_swap.float().mean() > 0.7
    for j in range(len(dataset)):
        item = dataset[j]
        tokens, swapped = item["tokens"], item["swapped_tokens"]
        if not item["has_swap"]:
            assert (swapped == 0).all()
            continue
        differ = (tokens != swapped).nonzero().squeeze(1).tolist()
        words = [TOKENIZER.itos[int(swapped[w])] for w in differ]
        assert 1 <= len(differ) <= 2 and sum(w in ATTRIBUTE_WORDS for w in words) == 1
    batch = collate([dataset[j] for j in range(4)])
    assert batch["swapped_tokens"].shape == (4, 48) and batch["has_swap"].dtype == torch.bool
    with pytest.raises(ValueError, match="noise_rate=0"):
        SwappedCaptionDataset(CaptionDataset(4, seed=6, image_size=32, noise_rate=0.5))
    with pytest.raises(TypeError, match="CaptionDataset"):
        SwappedCaptionDataset([])


# ------------------------------------------------------------------------------ region pretraining


@pytest.mark.usefixtures("one_torch_thread")
def test_pretrain_region_encoder_learns_the_attributes():
    torch.manual_seed(0)
    encoder = RegionEncoder(16, stages=1)
    accuracy = pretrain_region_encoder(encoder, CaptionDataset(160, seed=9, image_size=32), epochs=5, batch_size=16)
    assert set(accuracy) == {"shape", "color", "size", "style"}
    assert accuracy["color"] > 0.8 and accuracy["size"] > 0.8, accuracy  # 0.98 and 0.96 here; chance 1/6 and 1/2
    with pytest.raises(TypeError, match="CaptionDataset"):
        pretrain_region_encoder(encoder, [])
