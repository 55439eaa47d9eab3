"""mmcourse.models.vilt: equal to transformers' ViltModel, the pretraining model, the word-patch attention
readout, and bad inputs."""
import math

import pytest
import torch
from transformers import ViltConfig, ViltModel

from mmcourse.models.layers import PatchEmbedding
from mmcourse.models.vilt import ViLT, ViLTPretraining
from mmcourse.models.visualbert import MaskedLanguageModelHead, MatchingHead, mlm_itm_loss
from mmcourse.world.datasets import CaptionDataset, collate
from mmcourse.world.language import default_tokenizer

VOCAB, IMAGE_SIZE, PATCH = 100, 32, 8
PATCHES = (IMAGE_SIZE // PATCH) ** 2


def _hf_vilt(seed: int = 0, **overrides) -> ViltModel:
    """A tiny random ViltModel that keeps every patch, with every weight perturbed (LayerNorms,
    position and type embeddings included) so that a misplaced copy shows in the outputs."""
    torch.manual_seed(seed)
    config = ViltConfig(**{**dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, image_size=IMAGE_SIZE, patch_size=PATCH, max_image_length=-1,
                                  max_position_embeddings=24), **overrides})
    model = ViltModel(config).eval()
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
    return ids, attention_mask, torch.rand(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)


def _assert_same_rows_in_some_order(got: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    """(B, N, D) each: row set of got[b] == row set of expected[b], matched one to one."""
    for ours, theirs in zip(got, expected):
        nearest = torch.cdist(theirs, ours).argmin(1)  # (N,) our row closest to each of theirs
        assert sorted(nearest.tolist()) == list(range(len(ours))), "the rows do not match one to one"
        torch.testing.assert_close(ours[nearest], theirs, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def batch():
    dataset = CaptionDataset(8, seed=3, image_size=IMAGE_SIZE)
    return collate([dataset[i] for i in range(8)])


# -------------------------------------------------------------------------------------------- transformers


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_equals_transformers_vilt(qkv_bias):
    theirs = _hf_vilt(qkv_bias=qkv_bias)
    ours = ViLT.from_transformers(theirs)
    assert not ours.training
    ids, attention_mask, images = _inputs()
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=attention_mask, pixel_values=images).last_hidden_state
        got = ours(ids, attention_mask, images)
    text_and_cls = ids.shape[1] + 1
    assert got.shape == expected.shape == (3, text_and_cls + PATCHES, 32)
    # the words and the image [CLS] sit at the same places
    torch.testing.assert_close(got[:, :text_and_cls], expected[:, :text_and_cls], atol=1e-5, rtol=0)
    # ViltModel visits the patches in a random order: the same rows, permuted
    _assert_same_rows_in_some_order(got[:, text_and_cls:], expected[:, text_and_cls:], atol=1e-5)


def test_our_patches_are_in_row_major_order():
    theirs = _hf_vilt()
    ours = ViLT.from_transformers(theirs)
    ids, attention_mask, images = _inputs()
    hidden = ours(ids, attention_mask, images).detach()
    changed = images.clone()
    changed[:, :, 8:16, 16:24] = 0.0  # patch (row 1, column 2) = index 1 * 4 + 2 = 6
    difference = (ours(ids, attention_mask, changed).detach() - hidden).abs().amax((0, 2))  # (L + 1 + N,)
    patch_difference = difference[ids.shape[1] + 1:]
    others = patch_difference[torch.arange(PATCHES) != 6]
    assert patch_difference.argmax() == 6 and patch_difference[6] > 10 * others.max()


def test_from_transformers_refuses_other_models():
    with pytest.raises(TypeError, match="ViltModel"):
        ViLT.from_transformers(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="hidden_act"):
        ViLT.from_transformers(_hf_vilt(hidden_act="relu"))


# -------------------------------------------------------------------------------------------- the model


def test_embeddings_follow_the_paper():
    model = ViLT(VOCAB, IMAGE_SIZE, PATCH, width=32, depth=1, heads=4)
    assert isinstance(model.patches, PatchEmbedding) and model.num_patches == PATCHES and model.grid == 4
    assert model.transformer.layers[0].norm_first  # pre-norm, with a final LayerNorm
    assert isinstance(model.transformer.norm, torch.nn.LayerNorm) and model.transformer.norm.eps == 1e-12
    assert model.image_position.shape == (1, 1 + PATCHES, 32)


def test_padded_words_get_no_attention():
    model = ViLT(VOCAB, IMAGE_SIZE, PATCH, width=32, depth=2, heads=4).eval()
    ids, attention_mask, images = _inputs()
    hidden = model(ids, attention_mask, images)
    weights = model.self_attention_weights()
    assert len(weights) == 2 and weights[0].shape == (3, 4, 9 + 1 + PATCHES, 9 + 1 + PATCHES)
    assert (weights[0][1, :, :, 5:9] == 0).all() and (weights[0][0] > 0).all()
    changed = ids.clone()
    changed[1, 5:] = 50  # what the padding holds does not matter
    torch.testing.assert_close(model(changed, attention_mask, images)[1, :5], hidden[1, :5])


def test_forward_refuses_bad_inputs():
    model = ViLT(VOCAB, IMAGE_SIZE, PATCH, width=32, depth=1, heads=4, max_length=12)
    ids, attention_mask, images = _inputs()
    with pytest.raises(TypeError, match="input_ids"):
        model(ids.float(), attention_mask, images)
    with pytest.raises(ValueError, match=r"outside \[0, 100\)"):
        model(ids - 10, attention_mask, images)
    with pytest.raises(ValueError, match="max_length=12"):
        model(torch.ones(3, 13, dtype=torch.long), torch.ones(3, 13), images)
    with pytest.raises(ValueError, match="input_ids has 3 rows but pixel_values has 2 images"):
        model(ids, attention_mask, images[:2])
    with pytest.raises(ValueError, match=r"images has shape \(3, 3, 16, 16\); expected \(B, 3, 32, 32\)"):
        model(ids, attention_mask, images[..., :16, :16])
    with pytest.raises(ValueError, match=r"attention_mask has shape \(3, 9, 1\); expected \(3, 9\)"):
        model(ids, attention_mask[..., None], images)
    with pytest.raises(ValueError, match="image_size=30 must be a multiple of patch_size=8"):
        ViLT(VOCAB, 30, 8)


# -------------------------------------------------------------------------------------------- pretraining


def test_pretraining_heads_loss_and_agreement(batch):
    torch.manual_seed(0)
    model = ViLTPretraining(IMAGE_SIZE, PATCH, width=32, depth=2, heads=4).eval()
    assert isinstance(model.mlm_head, MaskedLanguageModelHead) and isinstance(model.itm_head, MatchingHead)
    assert model.mlm_head.token_embedding.weight is model.vilt.token.weight
    ids = batch["tokens"]
    mlm_logits, itm_logits = model(batch["image"], ids)
    vocab = default_tokenizer().vocab_size
    assert mlm_logits.shape == (8, ids.shape[1], vocab) and itm_logits.shape == (8, 2)
    torch.testing.assert_close(model.itm_logits(batch["image"], ids), itm_logits)
    hidden = model.encode(model.image_side(batch), ids)
    assert hidden.shape == (8, ids.shape[1] + 1 + PATCHES, 32)
    loss, logged = mlm_itm_loss(model.train(), batch, torch.Generator().manual_seed(0))
    assert logged["mlm_loss"].item() == pytest.approx(math.log(vocab), abs=0.3)
    assert logged["itm_loss"].item() == pytest.approx(math.log(2), abs=0.05)
    loss.backward()
    assert model.vilt.patches.projection.weight.grad.abs().sum() > 0


def test_word_patch_attention_is_each_words_share_over_the_patches(batch):
    torch.manual_seed(0)
    model = ViLTPretraining(IMAGE_SIZE, PATCH, width=32, depth=2, heads=4).eval()
    ids = batch["tokens"]
    attention = model.word_patch_attention(batch["image"], ids, layer=0)
    length = ids.shape[1]
    assert attention.shape == (8, length, PATCHES) and (attention > 0).all()
    torch.testing.assert_close(attention.sum(-1), torch.ones(8, length))
    weights = model.vilt.self_attention_weights()[0].mean(1)[:, :length, length + 1:]  # by hand, [CLS] left out
    torch.testing.assert_close(attention, weights / weights.sum(-1, keepdim=True))
    assert not torch.allclose(model.word_patch_attention(batch["image"], ids), attention)  # default: the last layer
    with pytest.raises(ValueError, match="layer must be an int"):
        model.word_patch_attention(batch["image"], ids, layer=2)


def test_pretraining_refuses_bad_inputs(batch):
    model = ViLTPretraining(IMAGE_SIZE, PATCH, width=32, depth=1, heads=4)
    with pytest.raises(TypeError, match="images must be a floating-point tensor"):
        model.itm_logits((batch["image"] * 255).byte(), batch["tokens"])
    with pytest.raises(ValueError, match="ids has shape"):
        model.itm_logits(batch["image"], torch.ones(8, 49, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids has 4 rows but pixel_values has 8 images"):
        model.itm_logits(batch["image"], batch["tokens"][:4])


def test_pretraining_standardises_the_pixels(batch):
    torch.manual_seed(0)
    model = ViLTPretraining(IMAGE_SIZE, PATCH, width=32, depth=1, heads=4, pixel_mean=0.5, pixel_std=0.25).eval()
    ids = batch["tokens"]
    expected = model.vilt(ids, ids != 0, (batch["image"] - 0.5) / 0.25)
    torch.testing.assert_close(model.encode((batch["image"],), ids), expected)
    with pytest.raises(ValueError, match="pixel_std must be positive"):
        ViLTPretraining(pixel_std=0.0)
    with pytest.raises(ValueError, match="pixel_mean must be a finite number"):
        ViLTPretraining(pixel_mean=float("nan"))
