"""GLIP-style grounding: RoI region features, the word-region alignment loss against a brute-force
loop, training targets from CaptionDataset batches, zero-shot grounding of phrases naming colour-shape
pairs never named in training, accuracy by IoU, bad input."""
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from mmcourse.models.encoders import ConvImageEncoder, TextTransformer
from mmcourse.models.grounding import (PhraseGrounder, box_scores, ground, grounding_accuracy, grounding_loss,
                                       grounding_targets, word_region_alignment_loss)
from mmcourse.train import fit
from mmcourse.world import datasets, describe_with_spans, render, sample_scenes
from mmcourse.world.language import default_tokenizer, refer_with_spans

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see conftest

TOKENIZER = default_tokenizer()
MAX_OBJECTS = 6  # the default preset's
# Colour-shape pairs no training caption names together; each colour once, each shape twice.
HELD_OUT = {("red", "circle"), ("green", "square"), ("blue", "triangle"), ("yellow", "circle"),
            ("purple", "square"), ("cyan", "triangle")}


def small_grounder(stages=2, seed=0):
    torch.manual_seed(seed)
    text = TextTransformer(len(TOKENIZER), 32, max_length=48, depth=1, causal=False)
    return PhraseGrounder(ConvImageEncoder(32, stages=stages), text, dim=32, roi_size=3)


# ------------------------------------------------------------------------------ region features


def test_region_features_shape_and_translation_equivariance():
    model = small_grounder(stages=3)  # stride 8; train mode: BatchNorm uses the batch's statistics
    image = torch.full((1, 3, 128, 128), 0.9)  # large enough that no receptive field meets the border
    image[:, :, 40:48, 40:48] = torch.tensor([0.8, 0.2, 0.2])[:, None, None]
    moved = image.roll(shifts=(32, 32), dims=(2, 3))  # the object moves by four feature cells
    boxes = torch.tensor([[[40.0, 40, 48, 48], [56, 24, 64, 32]]])  # (1, K=2, 4): the object, empty canvas
    with torch.no_grad():
        features = model.region_features(torch.cat([image, moved]), torch.cat([boxes, boxes + 32]))
    assert features.shape == (2, 2, 32)
    assert torch.allclose(features[0, 0], features[1, 0], atol=1e-4)  # same content, same feature
    assert (features[0, 0] - features[0, 1]).abs().max() > 0.02  # object vs empty canvas


def test_scores_are_region_word_dot_products():
    model = small_grounder().eval()
    images, boxes = torch.rand(2, 3, 32, 32), torch.tensor([[[0.0, 0, 8, 8], [10, 10, 20, 20]]] * 2)
    ids = torch.from_numpy(TOKENIZER.encode_batch(["a red circle", "two blue squares"], 6, wrap="bos_eos"))
    with torch.no_grad():
        scores = model(images, boxes, ids)
        regions, (words, mask) = model.region_features(images, boxes), model.word_features(ids)
    assert scores.shape == (2, 2, 6)
    assert torch.allclose(scores, regions @ words.transpose(1, 2), atol=1e-5)
    assert mask.tolist() == (ids != TOKENIZER.pad_id).tolist()


# ------------------------------------------------------------------------------ loss and targets


def brute_force_alignment_loss(scores, target, region_mask, token_mask):
    losses = []
    for b in range(scores.shape[0]):
        regions = [k for k in range(scores.shape[1]) if region_mask[b, k]]
        for l in range(scores.shape[2]):
            named = [k for k in regions if target[b, k, l]]
            if not named or not token_mask[b, l]:
                continue
            normaliser = sum(math.exp(scores[b, k, l]) for k in regions)
            losses.append(-math.log(sum(math.exp(scores[b, k, l]) for k in named) / normaliser))
    return sum(losses) / len(losses)


def test_alignment_loss_matches_a_brute_force_loop():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 4, 5, generator=generator, dtype=torch.float64)
    region_mask = torch.tensor([[True, True, True, False], [True, True, False, False], [True] * 4])
    token_mask = torch.tensor([[True] * 5, [True, True, True, False, False], [True, True, True, True, False]])
    target = (torch.rand(3, 4, 5, generator=generator) < 0.3) & region_mask[:, :, None] & token_mask[:, None, :]
    target[0, 0, 0] = target[0, 1, 0] = True  # a word naming two regions ("two red circles")
    loss = word_region_alignment_loss(scores, target, region_mask, token_mask)
    assert loss.item() == pytest.approx(brute_force_alignment_loss(scores, target, region_mask, token_mask), rel=1e-9)


def test_alignment_loss_ignores_padding_boxes_and_unaligned_words():
    target = torch.zeros(1, 3, 2, dtype=torch.bool)
    target[0, 0, 0] = True
    region_mask, token_mask = torch.tensor([[True, True, False]]), torch.tensor([[True, True]])
    scores = torch.zeros(1, 3, 2)
    changed = scores.clone()
    changed[0, 2] = 50.0  # a padding box
    changed[0, :, 1] = torch.tensor([3.0, -3.0, 1.0])  # a word that names nothing
    for s in (scores, changed):
        assert word_region_alignment_loss(s, target, region_mask, token_mask).item() == pytest.approx(math.log(2))


def caption_batch(n=4, seed=3):
    data = datasets.CaptionDataset(n, seed=seed, image_size=32, cache=False)
    return data, next(iter(DataLoader(data, batch_size=n, collate_fn=datasets.collate)))


def test_grounding_targets_follow_the_caption_dataset():
    data, batch = caption_batch()
    targets = grounding_targets(batch)
    batch_size, length = batch["tokens"].shape
    assert targets["target_alignment"].shape == (batch_size, MAX_OBJECTS, length)
    assert torch.equal(targets["target_alignment"], batch["alignment"].transpose(1, 2))
    assert targets["region_mask"].sum(1).tolist() == [len(scene) for scene in data.scenes]
    assert torch.equal(targets["token_mask"], batch["tokens"] != TOKENIZER.pad_id)
    loss = grounding_loss(small_grounder(), batch)
    assert loss.ndim == 0 and loss.item() > 0


# ------------------------------------------------------------------------------ zero-shot grounding


def names_held_out_pair(scene, caption):
    """Whether some phrase of `caption` names both the colour and the shape of a held-out object."""
    words = caption.words
    for start, end, index in caption.spans:
        obj, phrase = scene.objects[index], words[start:end]
        if (obj.color, obj.shape) in HELD_OUT and obj.color in phrase and any(
                word.startswith(obj.shape) for word in phrase):
            return True
    return False


def training_subset(data):
    """The items of `data` whose captions never name a held-out pair."""
    per_image = data.captions_per_image
    return Subset(data, [i * per_image + c for i, scene in enumerate(data.scenes)
                         for c, caption in enumerate(describe_with_spans(scene, data.seed, per_image))
                         if not names_held_out_pair(scene, caption)])


def held_out_phrases(n_scenes, seed, size=32, length=24):
    """Referring expressions of every held-out-pair object of fresh scenes, as model inputs.

    The phrase mask keeps the words of the object's own span but not "the": world captions never
    use it as a determiner, so its alignment scores were never trained.
    """
    images, boxes, ids, masks, targets, counts = [], [], [], [], [], []
    for scene in sample_scenes(n_scenes, seed=seed):
        picture = render(scene, size)
        for index, obj in enumerate(scene.objects):
            if (obj.color, obj.shape) not in HELD_OUT:
                continue
            try:
                expression = refer_with_spans(scene, index, seed)
            except ValueError:  # an object no expression singles out
                continue
            padded = np.zeros((MAX_OBJECTS, 4), np.float32)
            padded[:len(scene)] = picture.boxes
            mask = np.zeros(length, bool)
            mask[1:1 + len(expression.words)] = expression.alignment(len(scene))[:, index] & np.array(
                [word != "the" for word in expression.words])  # position 0 holds <bos>
            images.append(picture.image), boxes.append(padded), masks.append(mask)
            ids.append(TOKENIZER.encode_batch([expression.text], length, wrap="bos_eos")[0])
            targets.append(index), counts.append(len(scene))
    region_mask = torch.arange(MAX_OBJECTS)[None] < torch.tensor(counts)[:, None]
    return (datasets.images_to_tensor(np.stack(images)), torch.from_numpy(np.stack(boxes)),
            torch.from_numpy(np.stack(ids)), torch.from_numpy(np.stack(masks)), region_mask, torch.tensor(targets))


def test_grounds_phrases_of_colour_shape_pairs_never_named_in_training():
    data = datasets.CaptionDataset(400, seed=0, image_size=32, captions_per_image=4, cache=False)
    train = training_subset(data)
    assert 0.6 * len(data) < len(train) < len(data)
    loader = DataLoader(train, batch_size=32, shuffle=True, collate_fn=datasets.collate,
                        generator=torch.Generator().manual_seed(0))
    model = small_grounder()
    epochs = 8  # 312 steps, learning rate decaying linearly to 0
    steps = epochs * len(loader)
    fit(model, loader, grounding_loss, epochs=epochs, lr=3e-3, device="cpu", progress=False,
        scheduler_every="batch",
        scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps))

    images, boxes, ids, phrase_mask, region_mask, targets = held_out_phrases(300, seed=5)
    chosen = ground(model, images, boxes, ids, phrase_mask, region_mask)
    rows = torch.arange(len(boxes))
    accuracy = grounding_accuracy(boxes[rows, chosen], boxes[rows, targets])
    chance = (1 / region_mask.sum(1).float()).mean().item()
    assert len(targets) > 300
    assert accuracy > max(0.5, 2 * chance), f"held-out grounding accuracy {accuracy:.2f}, chance {chance:.2f}"


def test_ground_picks_the_box_with_the_best_mean_word_score():
    class FixedScores(torch.nn.Module):
        def forward(self, images, boxes, ids):
            return torch.tensor([[[5.0, 0.0, -9.0], [1.0, 2.0, 9.0], [9.0, 9.0, -20.0]]])  # (1, K=3, L=3)

    model, images, boxes, ids = FixedScores(), torch.rand(1, 3, 32, 32), torch.zeros(1, 3, 4), torch.ones(1, 3).long()
    assert ground(model, images, boxes, ids, torch.tensor([[True, True, False]])).item() == 2
    assert ground(model, images, boxes, ids, torch.tensor([[True, True, True]])).item() == 1
    assert ground(model, images, boxes, ids, torch.tensor([[True, True, False]]),
                  torch.tensor([[True, True, False]])).item() == 0


def test_box_scores_are_mean_word_scores_with_ruled_out_boxes_at_minus_infinity():
    class FixedScores(torch.nn.Module):
        def forward(self, images, boxes, ids):
            return torch.tensor([[[5.0, 0.0, -9.0], [1.0, 2.0, 9.0], [9.0, 9.0, -20.0]]])  # (1, K=3, L=3)

    model, images, boxes, ids = FixedScores(), torch.rand(1, 3, 32, 32), torch.zeros(1, 3, 4), torch.ones(1, 3).long()
    scores = box_scores(model, images, boxes, ids, torch.tensor([[True, True, False]]),
                        torch.tensor([[True, False, True]]))
    torch.testing.assert_close(scores, torch.tensor([[2.5, float("-inf"), 9.0]]))
    assert scores.softmax(1)[0, 1] == 0  # a ruled-out box gets no probability


def test_grounding_accuracy_counts_iou_at_the_threshold():
    true = torch.tensor([[0.0, 0, 10, 10]] * 3)
    pred = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 4]])  # IoU 1, 0.5, 0.4
    assert grounding_accuracy(pred, true) == pytest.approx(2 / 3)
    assert grounding_accuracy(pred, true, iou_threshold=0.95) == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------ bad input


def bad_calls():
    model = small_grounder()
    images, boxes, ids = torch.rand(2, 3, 32, 32), torch.tensor([[[0.0, 0, 8, 8]]] * 2), torch.ones(2, 4).long()
    scores, target = torch.randn(2, 1, 4), torch.zeros(2, 1, 4, dtype=torch.bool)
    region, tokens = torch.ones(2, 1, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool)
    target_on_pad = target.clone()
    target_on_pad[0, 0, 0] = True
    return [
        (lambda: model(images, boxes[:1], ids), ValueError, "boxes"),
        (lambda: model(images, boxes[..., :3], ids), ValueError, "boxes"),
        (lambda: model(images, boxes.flip(-1), ids), ValueError, "x2 < x1"),
        (lambda: model(images, boxes.long(), ids), TypeError, "boxes"),
        (lambda: model(images, boxes, ids[:1]), ValueError, "ids"),
        (lambda: PhraseGrounder(torch.nn.Linear(2, 2), TextTransformer(9, 8, 4)), TypeError, "image_encoder"),
        (lambda: PhraseGrounder(ConvImageEncoder(8), torch.nn.Linear(2, 2)), TypeError, "text_encoder"),
        (lambda: PhraseGrounder(ConvImageEncoder(8), TextTransformer(9, 8, 4), dim=0), ValueError, "dim"),
        (lambda: word_region_alignment_loss(scores, target.float(), region, tokens), TypeError, "target_alignment"),
        (lambda: word_region_alignment_loss(scores, target[:, :, :3], region, tokens), ValueError,
         "target_alignment"),
        (lambda: word_region_alignment_loss(scores, target, region[:, :0], tokens), ValueError, "region_mask"),
        (lambda: word_region_alignment_loss(scores, target, region, tokens[:1]), ValueError, "token_mask"),
        (lambda: word_region_alignment_loss(scores, target_on_pad, ~region, tokens), ValueError, "padding"),
        (lambda: word_region_alignment_loss(scores, target, region, tokens), ValueError, "no True"),
        (lambda: grounding_targets({"tokens": ids}), ValueError, "alignment"),
        (lambda: ground(model, images, boxes, ids, torch.zeros(2, 4, dtype=torch.bool)), ValueError, "phrase_mask"),
        (lambda: ground(model, images, boxes, ids, tokens[:, :2]), ValueError, "phrase_mask"),
        (lambda: ground(model, images, boxes, ids, tokens, ~region), ValueError, "region_mask"),
        (lambda: box_scores(model, images, boxes, ids, tokens, region[:1]), ValueError, "region_mask"),
        (lambda: grounding_accuracy(boxes[0], boxes[0][:, :3]), ValueError, "pred_boxes"),
        (lambda: grounding_accuracy(boxes[0], boxes[0], iou_threshold=0), ValueError, "iou_threshold"),
        (lambda: grounding_accuracy(boxes[0].long(), boxes[0]), TypeError, "pred_boxes"),
    ]


@pytest.mark.parametrize("case", range(len(bad_calls())))
def test_bad_input_is_refused_with_a_named_argument(case):
    call, error, word = bad_calls()[case]
    with pytest.raises(error, match=word):
        call()
