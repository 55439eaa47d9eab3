"""The shared encoders: output shapes, masking, causality, pooling position, bad input."""
import pytest
import torch

from mmcourse.models.encoders import (ConvImageEncoder, ConvSequenceEncoder, QuestionEncoder, RegionEncoder,
                                      TextTransformer, ViTEncoder, masked_mean)


def test_masked_mean_ignores_masked_steps():
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert masked_mean(x, torch.tensor([[True, True, False]])).item() == 2.0
    assert masked_mean(x, None).item() == pytest.approx(104 / 3)


def test_sequence_encoder_floats_and_tokens():
    assert ConvSequenceEncoder(5, 16)(torch.randn(3, 12, 5)).shape == (3, 16)
    tokens = ConvSequenceEncoder(None, 16, vocab_size=20)
    assert tokens(torch.randint(1, 20, (3, 7))).shape == (3, 16)


def test_sequence_encoder_ignores_padding():
    torch.manual_seed(0)
    encoder = ConvSequenceEncoder(None, 8, vocab_size=20, kernel_size=1)  # no mixing across steps
    ids = torch.tensor([[4, 5, 6, 0, 0]])
    assert torch.allclose(encoder(ids), encoder(ids[:, :3]), atol=1e-6)


def test_sequence_encoder_sees_word_order():
    torch.manual_seed(0)
    encoder = ConvSequenceEncoder(None, 8, vocab_size=20)
    assert not torch.allclose(encoder(torch.tensor([[3, 4, 5]])), encoder(torch.tensor([[5, 4, 3]])))


def test_image_encoders_shapes():
    images = torch.rand(2, 3, 32, 32)
    cnn = ConvImageEncoder(24, stages=3)
    assert cnn(images).shape == (2, 24) and cnn.feature_map(images).shape == (2, 24, 4, 4) and cnn.stride == 8
    vit = ViTEncoder(32, 8, 24, depth=1, heads=2)
    assert vit(images).shape == (2, 24) and vit.tokens(images).shape == (2, 17, 24)


def test_text_transformer_is_causal_and_pools_the_last_token():
    torch.manual_seed(0)
    text = TextTransformer(30, 16, max_length=8, depth=1, heads=2).eval()
    ids = torch.tensor([[5, 6, 7, 0], [5, 6, 7, 8]])
    tokens, padding = text.tokens(ids)
    assert padding.tolist() == [[False, False, False, True], [False] * 4]
    assert torch.allclose(tokens[0, :3], tokens[1, :3], atol=1e-5)  # later tokens do not leak backwards
    pooled = text(ids)
    assert torch.allclose(pooled[0], tokens[0, 2]) and torch.allclose(pooled[1], tokens[1, 3])


@pytest.mark.parametrize("call, error, word", [
    (lambda: ConvSequenceEncoder(5, 8)(torch.randn(3, 12)), ValueError, "x"),
    (lambda: ConvSequenceEncoder(5, 8)(torch.randn(3, 12, 4)), ValueError, "features"),
    (lambda: ConvSequenceEncoder(None, 8, vocab_size=9)(torch.rand(2, 3)), TypeError, "integer"),
    (lambda: ConvSequenceEncoder(5, 8, vocab_size=9), ValueError, "exactly one"),
    (lambda: ConvImageEncoder(8)(torch.rand(2, 1, 32, 32)), ValueError, "channels"),
    (lambda: ViTEncoder(32, 8, 16)(torch.rand(2, 3, 64, 64)), ValueError, "images"),
    (lambda: ViTEncoder(30, 8, 16), ValueError, "patch_size"),
    (lambda: TextTransformer(9, 8, 4, heads=2)(torch.ones(2, 5, dtype=torch.long)), ValueError, "max_length"),
    (lambda: TextTransformer(9, 8, 4, heads=2)(torch.zeros(2, 3, dtype=torch.long)), ValueError, "padding"),
    (lambda: TextTransformer(9, 8, 4, heads=2)([[1, 2]]), TypeError, "ids"),
])
def test_bad_input_is_named(call, error, word):
    with pytest.raises(error, match=word):
        call()


def test_region_encoder_reads_each_box_and_its_place():
    torch.manual_seed(0)
    encoder = RegionEncoder(16).eval()
    images = torch.rand(2, 3, 32, 32)
    boxes = torch.tensor([[[0.0, 0.0, 8.0, 8.0], [16.0, 16.0, 30.0, 30.0]]] * 2)
    regions = encoder(images, boxes)
    assert regions.shape == (2, 2, 16)
    changed = images.clone()
    changed[:, :, 16:, 16:] = 0.0  # only the second box's pixels change
    after = encoder(changed, boxes)
    assert not torch.allclose(after[:, 1], regions[:, 1])
    moved = encoder(images, boxes + torch.tensor([1.0, 0.0, 1.0, 0.0]))  # same size, other place
    assert not torch.allclose(moved[:, 0], regions[:, 0])


def test_region_encoder_refuses_bad_boxes():
    encoder = RegionEncoder(8)
    with pytest.raises(ValueError, match=r"expected \(2, K, 4\)"):
        encoder(torch.rand(2, 3, 32, 32), torch.zeros(3, 1, 4))
    with pytest.raises(ValueError, match="boxes must have 3 dimensions"):
        encoder(torch.rand(2, 3, 32, 32), torch.zeros(2, 4))


def test_question_encoder_ignores_padding():
    torch.manual_seed(0)
    encoder = QuestionEncoder(vocab_size=30, width=16)
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    words, padding, question = encoder(ids)
    assert words.shape == (2, 5, 16) and question.shape == (2, 16)
    assert padding.tolist() == [[False, False, False, True, True], [False] * 5]
    assert not words[0, 3:].any()  # packed: no state at padded positions
    alone_words, _, alone = encoder(ids[:1, :3])
    assert torch.allclose(alone, question[:1], atol=1e-6)  # trailing padding changes nothing
    assert torch.allclose(alone_words, words[:1, :3], atol=1e-6)


def test_question_encoder_refuses_bad_input():
    encoder = QuestionEncoder(vocab_size=30, width=16)
    with pytest.raises(ValueError, match="question has a row made only of padding"):
        encoder(torch.tensor([[3, 4], [0, 0]]))
    with pytest.raises(ValueError, match="question holds token id 30"):
        encoder(torch.tensor([[3, 30]]))
    with pytest.raises(TypeError, match="question must be an integer tensor"):
        encoder(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="width=15 must be even"):
        QuestionEncoder(vocab_size=30, width=15)
