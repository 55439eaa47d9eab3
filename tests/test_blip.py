"""Tests of mmcourse.models.blip: the captioner (image-grounded decoder), nucleus sampling, the filter."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmcourse.models.albef import ALBEF
from mmcourse.models.blip import (Captioner, captioning_loss, filter_captions, generate, match_probability,
                                  nucleus_filter, nucleus_sample)
from mmcourse.world.language import default_tokenizer

TOKENIZER = default_tokenizer()


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny tensors: one torch thread is much faster than two on a loaded machine."""
    yield


def tiny_captioner() -> Captioner:
    torch.manual_seed(0)
    return Captioner(image_size=16, patch_size=4, width=16, image_depth=1, decoder_depth=1, heads=2, max_length=10)


def tiny_batch(batch_size=3, length=6, seed=0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 3, 16, 16, generator=generator)
    ids = torch.randint(7, TOKENIZER.vocab_size, (batch_size, length), generator=generator)
    ids[:, 0], ids[:, -1] = TOKENIZER.bos_id, TOKENIZER.eos_id
    ids[0, -2:] = torch.tensor([TOKENIZER.eos_id, TOKENIZER.pad_id])
    return {"image": images, "tokens": ids}


# ------------------------------------------------------------------------------ nucleus sampling


def test_nucleus_filter_keeps_the_smallest_set_reaching_top_p():
    probabilities = torch.tensor([[0.125, 0.5, 0.125, 0.25]])
    assert torch.allclose(nucleus_filter(probabilities, 0.75), torch.tensor([[0.0, 2 / 3, 0.0, 1 / 3]]))
    assert torch.allclose(nucleus_filter(probabilities, 0.6), torch.tensor([[0.0, 2 / 3, 0.0, 1 / 3]]))
    assert torch.allclose(nucleus_filter(probabilities, 0.5), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    assert torch.allclose(nucleus_filter(probabilities, 0.1), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    assert torch.allclose(nucleus_filter(probabilities, 1.0), probabilities)
    # rows are filtered independently
    two = torch.tensor([[0.2, 0.3, 0.5, 0.0], [0.7, 0.1, 0.1, 0.1]])
    assert torch.allclose(nucleus_filter(two, 0.7), torch.tensor([[0.0, 3 / 8, 5 / 8, 0.0], [1.0, 0.0, 0.0, 0.0]]))


def test_nucleus_sample_draws_only_from_the_nucleus_in_proportion():
    logits = torch.tensor([0.125, 0.5, 0.125, 0.25]).log().repeat(4000, 1)  # 4000 rows, one draw each
    words = nucleus_sample(logits, 0.75, torch.Generator().manual_seed(0))
    counts = torch.bincount(words, minlength=4).float()
    assert counts[0] == 0 and counts[2] == 0
    assert float(counts[1] / 4000) == pytest.approx(2 / 3, abs=0.03)


def test_nucleus_sample_is_reproducible_with_a_generator():
    logits = torch.randn(16, 30, generator=torch.Generator().manual_seed(1))
    first = nucleus_sample(logits, 0.9, torch.Generator().manual_seed(3))
    assert torch.equal(first, nucleus_sample(logits, 0.9, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, nucleus_sample(logits, 0.9, torch.Generator().manual_seed(4)))


def test_nucleus_sampling_refuses_bad_input():
    with pytest.raises(ValueError, match=r"top_p must be a number in \(0, 1\]"):
        nucleus_filter(torch.tensor([[1.0, 0.0]]), 0.0)
    with pytest.raises(ValueError, match="top_p"):
        nucleus_sample(torch.zeros(1, 3), 1.5)
    with pytest.raises(ValueError, match="summing to one"):
        nucleus_filter(torch.tensor([[2.0, -1.0]]), 0.9)
    with pytest.raises(ValueError, match="probabilities must have 2 dimensions"):
        nucleus_filter(torch.tensor([0.5, 0.5]), 0.9)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        nucleus_sample(torch.zeros(1, 3), 0.9, generator=3)


# ------------------------------------------------------------------------------ the captioner


def test_captioning_loss_is_next_word_cross_entropy_over_real_tokens():
    model, batch = tiny_captioner(), tiny_batch()
    model.eval()
    loss, logged = captioning_loss(model, batch)
    ids = batch["tokens"]
    with torch.no_grad():
        logits = model(batch["image"], ids[:, :-1])  # (B, L - 1, V)
    terms, hits = [], []
    for b in range(len(ids)):
        for t in range(ids.shape[1] - 1):
            target = int(ids[b, t + 1])
            if target != TOKENIZER.pad_id:
                terms.append(-float(logits[b, t].log_softmax(0)[target]))
                hits.append(int(logits[b, t].argmax()) == target)
    assert float(loss.detach()) == pytest.approx(sum(terms) / len(terms), abs=1e-5)
    assert float(logged["accuracy"]) == pytest.approx(sum(hits) / len(hits))


def test_the_decoder_is_causal_and_reads_the_image():
    model, batch = tiny_captioner(), tiny_batch()
    model.eval()
    images, ids = batch["image"], batch["tokens"]
    changed = ids.clone()
    changed[:, 3] = 20
    with torch.no_grad():
        before, after = model(images, ids), model(images, changed)
        other_image = model(images.roll(1, 0), ids)
    assert torch.allclose(before[:, :3], after[:, :3], atol=1e-6)  # positions 0..2 cannot see token 3
    assert not torch.allclose(before[:, 3], after[:, 3])
    assert not torch.allclose(before[1], other_image[1])


def test_captioner_learns_a_few_captions(one_torch_thread):
    model, batch = tiny_captioner(), tiny_batch(batch_size=4, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _ = captioning_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_captioner_refuses_bad_input():
    model, batch = tiny_captioner(), tiny_batch()
    with pytest.raises(ValueError, match="images has batch size 3 but ids 2"):
        model(batch["image"], batch["tokens"][:2])
    with pytest.raises(ValueError, match=r"expected \(B, L\) with L >= 2"):
        captioning_loss(model, {"image": batch["image"], "tokens": batch["tokens"][:, :1]})
    with pytest.raises(ValueError, match="L <= max_length=10"):
        model(batch["image"], torch.full((3, 11), 7))


# ------------------------------------------------------------------------------ generation


def test_generate_writes_bos_words_eos_then_padding():
    model = tiny_captioner()
    images = tiny_batch(batch_size=5)["image"]
    ids = generate(model, images, max_length=8, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert ids.dtype == torch.long and ids.shape[0] == 5 and 2 <= ids.shape[1] <= 8
    assert (ids[:, 0] == TOKENIZER.bos_id).all()
    for row in ids.tolist():
        if TOKENIZER.eos_id in row:
            end = row.index(TOKENIZER.eos_id)
            assert all(token == TOKENIZER.pad_id for token in row[end + 1:])
            words = row[1:end]
        else:
            assert len(row) == 8  # cut at max_length
            words = row[1:]
        assert all(token >= 7 for token in words)  # no special token among the words
    again = generate(model, images, max_length=8, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ids, again)


def test_generate_follows_a_decoder_that_knows_its_caption():
    model = tiny_captioner()
    with torch.no_grad():  # the LM head ignores its input and always says "red", slightly less "<eos>"
        model.lm_head.weight.zero_()
        model.lm_head.bias.fill_(-20.0)
        model.lm_head.bias[TOKENIZER.stoi["red"]] = 5.0
        model.lm_head.bias[TOKENIZER.eos_id] = 4.0
    images = tiny_batch(batch_size=2)["image"]
    greedy = generate(model, images, max_length=5, top_p=0.5)  # the nucleus holds "red" alone
    assert greedy.tolist() == [[TOKENIZER.bos_id] + [TOKENIZER.stoi["red"]] * 4] * 2
    with torch.no_grad():
        model.lm_head.bias[TOKENIZER.eos_id] = 9.0
    assert generate(model, images, max_length=5).tolist() == [[TOKENIZER.bos_id, TOKENIZER.eos_id]] * 2


def test_generate_refuses_bad_arguments():
    model, images = tiny_captioner(), tiny_batch()["image"]
    with pytest.raises(ValueError, match=r"max_length must be an int in \[2, 10\]"):
        generate(model, images, max_length=11)
    with pytest.raises(ValueError, match="max_length"):
        generate(model, images, max_length=1)
    with pytest.raises(TypeError, match="model must be a Captioner"):
        generate(torch.nn.Linear(2, 2), images, max_length=5)
    with pytest.raises(ValueError, match="images must have 4 dimensions"):
        generate(model, images[0], max_length=5)


# ------------------------------------------------------------------------------ the filter


def test_filter_keeps_captions_whose_match_probability_exceeds_the_threshold():
    torch.manual_seed(0)
    filter_model = ALBEF(image_size=16, patch_size=4, width=16, embed_dim=8, image_depth=1, text_depth=1,
                         fusion_depth=1, heads=2, max_length=10, queue_size=8)
    batch = tiny_batch(batch_size=4)
    with torch.no_grad():  # a head whose "match" logit is the [CLS] feature's first coordinate
        filter_model.itm_head.weight.zero_()
        filter_model.itm_head.bias.zero_()
        filter_model.itm_head.weight[1, 0] = 1.0
    probability = match_probability(filter_model, batch["image"], batch["tokens"])
    logits = filter_model.itm_logits(batch["image"], batch["tokens"])
    assert torch.allclose(probability, F.softmax(logits, 1)[:, 1])
    assert torch.allclose(probability, torch.sigmoid(logits[:, 1]))
    threshold = float(probability.median())
    keep = filter_captions(filter_model, batch["image"], batch["tokens"], threshold)
    assert keep.dtype == torch.bool and torch.equal(keep, probability > threshold)
    assert 0 < int(keep.sum()) < 4


def test_filter_refuses_bad_arguments():
    batch = tiny_batch()
    with pytest.raises(TypeError, match="filter_model must be an albef.ALBEF"):
        filter_captions(tiny_captioner(), batch["image"], batch["tokens"])
    with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1\)"):
        filter_captions(None, batch["image"], batch["tokens"], threshold=1.0)


def test_nucleus_mass_exactly_at_top_p_keeps_no_more_words():
    probabilities = torch.tensor([[0.5, 0.25, 0.25]])
    kept = nucleus_filter(probabilities, 0.75) > 0
    assert int(kept.sum()) == 2 and bool(kept[0, 0])
    assert math.isclose(float(nucleus_filter(probabilities, 0.75).sum()), 1.0, rel_tol=1e-6)
