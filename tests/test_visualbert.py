"""mmcourse.models.visualbert: equal to transformers' VisualBertModel, the pretraining heads and loss,
the word-region attention readout, and bad inputs."""
import math

import pytest
import torch
from transformers import VisualBertConfig, VisualBertModel

from mmcourse.models.layers import IGNORE_INDEX
from mmcourse.models.visualbert import (MaskedLanguageModelHead, MatchingHead, VisualBERT, VisualBERTPretraining,
                                        mlm_itm_loss, real_positions, seeded_mlm_itm_loss, special_ids)
from mmcourse.world.datasets import CaptionDataset, collate
from mmcourse.world.language import default_tokenizer

VOCAB, VISUAL_DIM = 100, 16


def _hf_visualbert(seed: int = 0, **overrides) -> VisualBertModel:
    """A tiny random VisualBertModel whose every weight (LayerNorms and segment rows included) is
    perturbed, so that a weight copied to the wrong place shows in the outputs."""
    torch.manual_seed(seed)
    config = VisualBertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=48, visual_embedding_dim=VISUAL_DIM, max_position_embeddings=24,
                              pad_token_id=0, **overrides)
    model = VisualBertModel(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def _inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, VOCAB, (3, 9), generator=g)
    attention_mask = torch.ones(3, 9, dtype=torch.long)
    attention_mask[1, 5:] = 0  # a padded caption
    ids[1, 5:] = 0
    visual = torch.randn(3, 5, VISUAL_DIM, generator=g)
    visual_mask = torch.ones(3, 5, dtype=torch.long)
    visual_mask[2, 2:] = 0  # an image with two real regions
    visual_mask[1, 4:] = 0
    return ids, attention_mask, visual, visual_mask


@pytest.fixture(scope="module")
def batch():
    dataset = CaptionDataset(8, seed=3, image_size=32)
    return collate([dataset[i] for i in range(8)])


def _region_mask(batch):
    return torch.arange(batch["boxes"].shape[1]) < batch["num_objects"][:, None]


# -------------------------------------------------------------------------------------------- transformers


def test_equals_transformers_visualbert_with_padding_in_both_masks():
    theirs = _hf_visualbert()
    ours = VisualBERT.from_transformers(theirs)
    assert not ours.training
    ids, attention_mask, visual, visual_mask = _inputs()
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=attention_mask, visual_embeds=visual,
                          visual_attention_mask=visual_mask).last_hidden_state
        got = ours(ids, attention_mask, visual, visual_mask)
    assert got.shape == (3, 9 + 5, 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # bool masks mean the same as 0/1 masks
    torch.testing.assert_close(ours(ids, attention_mask.bool(), visual, visual_mask.bool()), got)


def test_from_transformers_copies_every_weight_that_matters():
    theirs = _hf_visualbert()
    ours = VisualBERT.from_transformers(theirs)
    ids, attention_mask, visual, visual_mask = _inputs()
    reference = ours(ids, attention_mask, visual, visual_mask).detach()
    with torch.no_grad():  # perturbing the copied region position must change the output: it is used
        ours.region_position.add_(torch.randn(32))
    assert (ours(ids, attention_mask, visual, visual_mask) - reference).abs().max() > 1e-2


def test_from_transformers_refuses_other_models():
    with pytest.raises(TypeError, match="VisualBertModel"):
        VisualBERT.from_transformers(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="bypass_transformer"):
        VisualBERT.from_transformers(_hf_visualbert(bypass_transformer=True))
    with pytest.raises(ValueError, match="hidden_act"):
        VisualBERT.from_transformers(_hf_visualbert(hidden_act="relu"))


def test_padded_positions_get_no_attention_and_do_not_change_real_outputs():
    model = VisualBERT(VOCAB, VISUAL_DIM, width=32, depth=2, heads=4).eval()
    ids, attention_mask, visual, visual_mask = _inputs()
    hidden = model(ids, attention_mask, visual, visual_mask)
    weights = model.self_attention_weights()
    assert len(weights) == 2 and weights[0].shape == (3, 4, 14, 14)
    assert (weights[-1][1, :, :, 5:9] == 0).all() and (weights[-1][2, :, :, 9 + 2:] == 0).all()
    changed = visual.clone()
    changed[2, 2:] = 100.0  # padded regions: whatever they hold, real positions read the same
    torch.testing.assert_close(model(ids, attention_mask, changed, visual_mask)[2, :11], hidden[2, :11])


# -------------------------------------------------------------------------------------------- bad inputs


def test_forward_refuses_bad_inputs():
    model = VisualBERT(VOCAB, VISUAL_DIM, width=32, depth=1, heads=4, max_length=12)
    ids, attention_mask, visual, visual_mask = _inputs()
    with pytest.raises(TypeError, match="input_ids"):
        model(ids.float(), attention_mask, visual, visual_mask)
    with pytest.raises(ValueError, match=r"input_ids holds ids outside \[0, 100\)"):
        model(ids + VOCAB, attention_mask, visual, visual_mask)
    with pytest.raises(ValueError, match="max_length=12"):
        model(torch.ones(3, 13, dtype=torch.long), torch.ones(3, 13), visual, visual_mask)
    with pytest.raises(ValueError, match=r"visual_embeds has shape \(3, 5, 8\); expected \(3, R, 16\)"):
        model(ids, attention_mask, visual[..., :8], visual_mask)
    with pytest.raises(ValueError, match=r"visual_embeds has shape \(2, 5, 16\)"):
        model(ids, attention_mask, visual[:2], visual_mask)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(3, 8\); expected \(3, 9\)"):
        model(ids, attention_mask[:, :8], visual, visual_mask)
    with pytest.raises(ValueError, match="visual_attention_mask must hold only 0 and 1"):
        model(ids, attention_mask, visual, visual_mask * 2)
    with pytest.raises(TypeError, match="visual_attention_mask must be a torch.Tensor"):
        model(ids, attention_mask, visual, [[1] * 5] * 3)
    with pytest.raises(ValueError, match="hide every position"):
        model(ids, torch.zeros_like(attention_mask), visual, torch.zeros_like(visual_mask))
    with pytest.raises(ValueError, match="visual_dim must be a positive int"):
        VisualBERT(VOCAB, 0)


def test_real_positions_reads_transformers_masks():
    assert real_positions("m", torch.tensor([[1.0, 0.0]]), (1, 2)).tolist() == [[True, False]]
    with pytest.raises(ValueError, match=r"m has shape \(1, 2\); expected \(2, 1\)"):
        real_positions("m", torch.tensor([[1, 0]]), (2, 1))


# -------------------------------------------------------------------------------------------- pretraining


def test_heads_are_berts():
    model = VisualBERTPretraining(width=32, depth=1, heads=4)
    assert isinstance(model.mlm_head, MaskedLanguageModelHead) and isinstance(model.itm_head, MatchingHead)
    assert model.mlm_head.token_embedding.weight is model.bert.token.weight  # the decoder is tied
    hidden = torch.randn(2, 3, 32)
    expected = model.mlm_head.transform(hidden) @ model.bert.token.weight.T + model.mlm_head.bias
    torch.testing.assert_close(model.mlm_head(hidden), expected)
    torch.testing.assert_close(model.itm_head(hidden[:, 0]),
                               model.itm_head.classifier(torch.tanh(model.itm_head.pooler[0](hidden[:, 0]))))


def test_forward_itm_logits_and_encode_agree(batch):
    torch.manual_seed(0)
    model = VisualBERTPretraining(width=32, depth=2, heads=4).eval()
    region_mask = _region_mask(batch)
    mlm_logits, itm_logits = model(batch["image"], batch["boxes"], region_mask, batch["tokens"])
    length = batch["tokens"].shape[1]
    assert mlm_logits.shape == (8, length, default_tokenizer().vocab_size) and itm_logits.shape == (8, 2)
    torch.testing.assert_close(model.itm_logits(batch["image"], batch["boxes"], region_mask, batch["tokens"]),
                               itm_logits)
    hidden = model.encode(model.image_side(batch), batch["tokens"])
    assert hidden.shape == (8, length + 6, 32)
    torch.testing.assert_close(model.itm_head(hidden[:, 0]), itm_logits)


def test_loss_at_initialisation_is_chance_and_is_reproducible(batch):
    torch.manual_seed(0)
    model = VisualBERTPretraining(width=32, depth=2, heads=4)
    loss, logged = mlm_itm_loss(model, batch, torch.Generator().manual_seed(5))
    vocab = default_tokenizer().vocab_size
    # BERT's small initial weights: every word and both classes about equally likely
    assert logged["mlm_loss"].item() == pytest.approx(math.log(vocab), abs=0.3)
    assert logged["itm_loss"].item() == pytest.approx(math.log(2), abs=0.05)
    assert loss.item() == pytest.approx((logged["mlm_loss"] + logged["itm_loss"]).item())
    assert set(logged) == {"mlm_loss", "mlm_accuracy", "itm_loss", "itm_accuracy"}
    again, _ = mlm_itm_loss(model, batch, torch.Generator().manual_seed(5))
    assert again.item() == loss.item()
    other, _ = seeded_mlm_itm_loss(6)(model, batch)
    assert other.item() != loss.item()
    loss.backward()  # the loss reaches the detector stand-in
    assert model.regions.backbone.body[0].weight.grad.abs().sum() > 0


def test_swapped_captions_join_the_itm_negatives_with_balanced_classes(batch):
    torch.manual_seed(0)
    model = VisualBERTPretraining(width=32, depth=1, heads=4)
    swapped = batch["tokens"].clone()
    swapped[:, 2] = default_tokenizer().stoi["purple"]
    has_swap = torch.tensor([True, False, True, True, False, True, True, False])
    none = {**batch, "swapped_tokens": swapped, "has_swap": torch.zeros(8, dtype=torch.bool)}
    _, plain = mlm_itm_loss(model, batch, torch.Generator().manual_seed(0))
    _, unused = mlm_itm_loss(model, none, torch.Generator().manual_seed(0))
    assert unused["itm_loss"].item() == pytest.approx(plain["itm_loss"].item())  # no row has a swap: same loss
    assert unused["mlm_loss"].item() == pytest.approx(plain["mlm_loss"].item())  # the true captions' masks unchanged
    # with swaps: 8 positives, 8 partners and 5 swapped negatives, each class half of the weight
    encoded = []
    original_encode = model.encode
    model.encode = lambda side, ids: encoded.append((side[0].shape[0], ids)) or original_encode(side, ids)
    _, hard = mlm_itm_loss(model, {**batch, "swapped_tokens": swapped, "has_swap": has_swap},
                           torch.Generator().manual_seed(0))
    rows, texts = encoded[0]
    assert rows == len(texts) == 8 + 8 + 5
    assert hard["itm_loss"].item() != pytest.approx(plain["itm_loss"].item())


def test_region_features_are_standardised_over_the_real_regions(batch):
    torch.manual_seed(0)
    model = VisualBERTPretraining(width=32, depth=1, heads=4)
    features, region_mask = model.image_side(batch)
    assert features.shape == (8, 6, 32) and region_mask.tolist() == _region_mask(batch).tolist()
    assert (features[~region_mask] == 0).all()  # padding boxes stay out of the statistics
    real = features[region_mask]
    torch.testing.assert_close(real.mean(0), torch.zeros(32), atol=1e-5, rtol=0)
    torch.testing.assert_close(real.var(0, unbiased=False), torch.ones(32), atol=0.02, rtol=0)  # BatchNorm eps


def test_special_ids_are_the_shared_convention():
    assert special_ids(default_tokenizer()) == (0, 1, 2, 3, 5, 6)
    assert IGNORE_INDEX == -100


def test_word_region_attention_is_each_words_share_over_the_regions(batch):
    torch.manual_seed(0)
    model = VisualBERTPretraining(width=32, depth=2, heads=4).eval()
    region_mask = _region_mask(batch)
    region_mask[0, 1:] = False  # one image with a single real region
    ids = batch["tokens"]
    attention = model.word_region_attention(batch["image"], batch["boxes"], region_mask, ids, layer=1)
    length = ids.shape[1]
    assert attention.shape == (8, length, 6) and (attention >= 0).all()
    torch.testing.assert_close(attention.sum(-1), torch.ones(8, length))
    assert (attention[~region_mask[:, None, :].expand_as(attention)] == 0).all()
    assert torch.allclose(attention[0, :, 0], torch.ones(length))
    weights = model.bert.self_attention_weights()[1].mean(1)[:, :length, length:]  # by hand
    torch.testing.assert_close(attention, weights / weights.sum(-1, keepdim=True))
    assert not torch.allclose(model.word_region_attention(batch["image"], batch["boxes"], region_mask, ids, layer=0),
                              attention)
    torch.testing.assert_close(model.word_region_attention(batch["image"], batch["boxes"], region_mask, ids),
                               attention)  # the default is the last layer
    with pytest.raises(ValueError, match="layer must be an int"):
        model.word_region_attention(batch["image"], batch["boxes"], region_mask, ids, layer=2)


def test_pretraining_refuses_bad_inputs(batch):
    model = VisualBERTPretraining(width=32, depth=1, heads=4)
    images, boxes, ids = batch["image"], batch["boxes"], batch["tokens"]
    region_mask = _region_mask(batch)
    with pytest.raises(TypeError, match="region_mask must be a bool tensor"):
        model.itm_logits(images, boxes, region_mask.long(), ids)
    with pytest.raises(ValueError, match=r"region_mask has shape \(8, 5\); expected \(8, 6\)"):
        model.itm_logits(images, boxes, region_mask[:, :5], ids)
    with pytest.raises(ValueError, match=r"boxes has shape \(8, 6, 3\)"):
        model.itm_logits(images, boxes[..., :3], region_mask, ids)
    with pytest.raises(ValueError, match="ids has 4 rows but there are 8 images"):
        model.itm_logits(images, boxes, region_mask, ids[:4])
    with pytest.raises(TypeError, match="images must be a floating-point tensor"):
        model.itm_logits((images * 255).byte(), boxes, region_mask, ids)
    with pytest.raises(ValueError, match="holds ids outside"):
        model.itm_logits(images, boxes, region_mask, ids + 1000)
