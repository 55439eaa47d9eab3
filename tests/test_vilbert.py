"""mmcourse.models.vilbert: two streams that meet only in co-attention (text queries on image keys and
values, and the reverse, simultaneously), masks, the ITM head on h_CLS * h_IMG, the word-region
attention readout, the MLM + ITM loss with and without swapped-caption negatives, bad input, and a
tiny run that learns."""
import functools

import pytest
import torch
from torch.utils.data import DataLoader

from mmcourse.models.layers import TransformerLayer
from mmcourse.models.vilbert import CoAttentionLayer, ImageTextMatchingHead, ViLBERT, vilbert_loss
from mmcourse.train import fit
from mmcourse.world.datasets import CaptionDataset, collate
from mmcourse.world.language import default_tokenizer

TOKENIZER = default_tokenizer()
WIDTH, HEADS = 16, 2


def _ids(texts, length=10):
    return torch.from_numpy(TOKENIZER.encode_batch(texts, length, wrap="bos_eos"))


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, 32, 32, generator=g)
    boxes = torch.tensor([[[2.0, 2, 10, 10], [14, 14, 24, 22], [20, 2, 30, 8]],
                          [[4.0, 16, 12, 26], [18, 4, 28, 12], [0, 0, 0, 0]]])  # image 1: a padding box
    region_mask = torch.tensor([[True, True, True], [True, True, False]])
    ids = _ids(["a red circle left of a blue square", "two green shapes"])  # caption 1 is padded
    return images, boxes, region_mask, ids


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ViLBERT(width=WIDTH, depth=2, heads=HEADS, max_length=12).eval()


@pytest.fixture
def caption_model():
    torch.manual_seed(0)
    return ViLBERT(width=WIDTH, depth=1, heads=HEADS)  # max_length 48, as CaptionDataset's


@pytest.fixture(scope="module")
def batch():
    dataset = CaptionDataset(6, seed=3, image_size=32)
    return collate([dataset[i] for i in range(6)])


# ------------------------------------------------------------------------------ shapes and masks


def test_shapes(model):
    images, boxes, region_mask, ids = _inputs()
    with torch.no_grad():
        mlm_logits, itm_logits = model(images, boxes, region_mask, ids)
        image, padding = model.image_tokens(images, boxes, region_mask)
        text, image_states = model.encode(image, padding, ids)
    assert mlm_logits.shape == (2, 10, TOKENIZER.vocab_size) and itm_logits.shape == (2, 2)
    assert image.shape == image_states.shape == (2, 4, WIDTH) and text.shape == (2, 10, WIDTH)  # [IMG] + 3 boxes
    assert padding.tolist() == [[False] * 4, [False, False, False, True]]  # [IMG] is never padding
    torch.testing.assert_close(model.itm_logits(images, boxes, region_mask, ids), itm_logits)
    layer = model.layers[0]
    assert layer.text.cross_attention_weights.shape == (2, HEADS, 10, 4)  # text queries, image keys
    assert layer.image.cross_attention_weights.shape == (2, HEADS, 4, 10)  # image queries, text keys
    assert layer.image.self_attention_weights.shape == (2, HEADS, 4, 4)  # each stream's own self-attention


def test_padded_regions_and_words_get_no_attention_and_change_nothing(model):
    images, boxes, region_mask, ids = _inputs()
    with torch.no_grad():
        reference = model.itm_logits(images, boxes, region_mask, ids)
        for layer in model.layers:
            assert (layer.text.cross_attention_weights[1, :, :, 3] == 0).all()  # the padding box, from text
            assert (layer.image.self_attention_weights[1, :, :, 3] == 0).all()  # ... and from the image
            assert (layer.image.cross_attention_weights[1, :, :, 5:] == 0).all()  # padded words, from the image
        moved = boxes.clone()
        moved[1, 2] = torch.tensor([5.0, 5, 25, 25])  # the padding box now covers real pixels
        torch.testing.assert_close(model.itm_logits(images, moved, region_mask, ids), reference)
        longer = torch.cat([ids, torch.zeros(2, 2, dtype=ids.dtype)], 1)  # more padding words
        torch.testing.assert_close(model.itm_logits(images, boxes, region_mask, longer), reference)


def test_word_region_attention_is_text_queries_over_regions(model):
    images, boxes, region_mask, ids = _inputs()
    with torch.no_grad():
        attention = model.word_region_attention(images, boxes, region_mask, ids, layer=1)
        weights = model.layers[1].text.cross_attention_weights.mean(1)[:, :, 1:]  # (B, L, K) without [IMG]
    assert attention.shape == (2, 10, 3)
    real = ids != TOKENIZER.pad_id
    torch.testing.assert_close(attention[real], (weights / weights.sum(-1, keepdim=True))[real])
    torch.testing.assert_close(attention.sum(-1)[real], torch.ones(int(real.sum())))
    assert (attention[1, :, 2] == 0).all() and (attention[~real] == 0).all()


# ------------------------------------------------------------------------------ co-attention


def test_the_image_reaches_the_text_only_through_co_attention(model):
    images, boxes, region_mask, ids = _inputs()
    other = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        def text_states(pictures):
            return model.encode(*model.image_tokens(pictures, boxes, region_mask), ids)[0]

        assert (text_states(images) - text_states(other)).abs().max() > 1e-3
        for layer in model.layers:  # cut the text stream's co-attention output
            layer.text.cross.out.weight.zero_()
            layer.text.cross.out.bias.zero_()
        torch.testing.assert_close(text_states(images), text_states(other))


def test_co_attention_layer_reads_the_other_stream_as_it_was_before_the_layer():
    torch.manual_seed(0)
    layer = CoAttentionLayer(WIDTH, HEADS).eval()
    text, image = torch.randn(2, 5, WIDTH), torch.randn(2, 3, WIDTH)
    text_padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    image_padding = torch.tensor([[False] * 3, [False, False, True]])
    new_text, new_image = layer(text, text_padding, image, image_padding)
    # each stream's layer, with the OTHER stream's input (not its output) as keys and values
    expected_text = layer.text(text, text_padding, context=image, context_padding_mask=image_padding)
    expected_image = layer.image(image, image_padding, context=text, context_padding_mask=text_padding)
    torch.testing.assert_close(new_text, expected_text)
    torch.testing.assert_close(new_image, expected_image)
    assert isinstance(layer.text, TransformerLayer) and layer.text.cross is not None and not layer.text.norm_first
    assert not torch.allclose(new_image, layer.image(image, image_padding, context=new_text,
                                                     context_padding_mask=text_padding))


def test_itm_head_is_a_linear_layer_on_the_product_of_the_pooled_streams():
    torch.manual_seed(0)
    head = ImageTextMatchingHead(WIDTH)
    h_cls, h_img = torch.randn(3, WIDTH), torch.randn(3, WIDTH)
    pooled_text = torch.relu(h_cls @ head.text_pooler[0].weight.T + head.text_pooler[0].bias)
    pooled_image = torch.relu(h_img @ head.image_pooler[0].weight.T + head.image_pooler[0].bias)
    expected = (pooled_text * pooled_image) @ head.classifier.weight.T + head.classifier.bias
    torch.testing.assert_close(head(h_cls, h_img), expected)


def test_parameters_are_comparable_to_a_two_layer_visualbert():
    """One co-attentional layer (two streams, each self + co-attention + MLP) at width 64 holds about
    as many transformer weights as a two-layer single-stream BERT (2 x 49,984)."""
    model = ViLBERT(width=64, depth=1, heads=4, mlp_width=128)
    assert sum(p.numel() for p in model.layers.parameters()) == 100_480
    assert sum(p.numel() for p in ViLBERT(width=64, depth=1, heads=4).layers.parameters()) == 133_504


# ------------------------------------------------------------------------------ bad input


def test_refuses_bad_input(model):
    images, boxes, region_mask, ids = _inputs()
    with pytest.raises(TypeError, match="region_mask must be a bool"):
        model.itm_logits(images, boxes, region_mask.long(), ids)
    with pytest.raises(ValueError, match=r"region_mask has shape \(2, 2\); expected \(2, 3\)"):
        model.itm_logits(images, boxes, region_mask[:, :2], ids)
    with pytest.raises(ValueError, match=r"boxes has shape \(2, 3, 5\)"):
        model.itm_logits(images, torch.zeros(2, 3, 5), region_mask, ids)
    with pytest.raises(ValueError, match="square"):
        model.itm_logits(images[..., :30], boxes, region_mask, ids)
    with pytest.raises(ValueError, match=r"ids has shape \(1, 10\); expected \(2, L\)"):
        model.itm_logits(images, boxes, region_mask, ids[:1])
    with pytest.raises(ValueError, match="max_length=12"):
        model.itm_logits(images, boxes, region_mask, _ids(["a red circle", "a square"], 13))
    with pytest.raises(ValueError, match="outside"):
        model.itm_logits(images, boxes, region_mask, ids + TOKENIZER.vocab_size)
    with pytest.raises(ValueError, match="only of padding"):
        model.itm_logits(images, boxes, region_mask, torch.zeros_like(ids))
    with pytest.raises(TypeError, match="integer"):
        model.itm_logits(images, boxes, region_mask, ids.float())
    with pytest.raises(ValueError, match="layer must be an int"):
        model.word_region_attention(images, boxes, region_mask, ids, layer=2)
    with pytest.raises(ValueError, match="depth must be a positive int"):
        ViLBERT(width=WIDTH, depth=0, heads=HEADS)


# ------------------------------------------------------------------------------ the loss and learning


def test_loss_at_initialisation_and_reproducible(caption_model, batch):
    model = caption_model
    loss, logs = vilbert_loss(model, batch, torch.Generator().manual_seed(0))
    again, _ = vilbert_loss(model, batch, torch.Generator().manual_seed(0))
    assert torch.equal(loss, again)
    assert abs(logs["itm_loss"].item() - 0.693) < 0.05  # a fair coin at first
    assert abs(logs["mlm_loss"].item() - torch.log(torch.tensor(float(TOKENIZER.vocab_size)))) < 1.0
    assert loss.item() == pytest.approx((logs["itm_loss"] + logs["mlm_loss"]).item())


def test_swapped_captions_join_the_negatives(caption_model, batch):
    model = caption_model
    swapped = batch["tokens"].clone()
    swapped[:, 2] = TOKENIZER.stoi["purple"]
    with_swaps = {**batch, "swapped_tokens": swapped, "has_swap": torch.tensor([True, False, True, True, False, True])}
    none = {**with_swaps, "has_swap": torch.zeros(6, dtype=torch.bool)}
    _, plain = vilbert_loss(model, batch, torch.Generator().manual_seed(0))
    _, unused = vilbert_loss(model, none, torch.Generator().manual_seed(0))
    _, hard = vilbert_loss(model, with_swaps, torch.Generator().manual_seed(0))
    assert unused["itm_loss"].item() == pytest.approx(plain["itm_loss"].item())  # no row has a swap: same loss
    assert hard["itm_loss"].item() != pytest.approx(plain["itm_loss"].item())


@pytest.mark.usefixtures("one_torch_thread")
def test_a_tiny_run_learns_masked_words_from_image_and_text():
    torch.manual_seed(0)
    dataset = CaptionDataset(200, seed=21, image_size=32, captions_per_image=2)
    loader = DataLoader(dataset, batch_size=32, shuffle=True, collate_fn=collate, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    model = ViLBERT(width=32, depth=1, heads=4)
    loss_fn = functools.partial(vilbert_loss, generator=torch.Generator().manual_seed(0))
    history = fit(model, loader, loss_fn, epochs=3, lr=2e-3, progress=False, device="cpu")
    assert history[0]["mlm_loss"] > 4.0 and history[-1]["mlm_loss"] < history[0]["mlm_loss"] - 0.8  # 4.9 -> 3.7 here
