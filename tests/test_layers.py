"""The shared transformer blocks: attention against torch's own, masks, norms, MLM masking, ITM partners."""
import pytest
import torch
from torch import nn

from mmcourse.models.layers import (IGNORE_INDEX, MultiHeadAttention, PatchEmbedding, TransformerEncoder,
                                    TransformerLayer, attention, attention_pool, balanced_class_weights, mask_tokens,
                                    masked_softmax, mismatched_partners, mlm_loss, stack_padded)


def torch_attention_like(ours: MultiHeadAttention) -> nn.MultiheadAttention:
    """torch's nn.MultiheadAttention holding the same weights as `ours`."""
    theirs = nn.MultiheadAttention(ours.width, ours.heads, batch_first=True)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.query.weight, ours.key.weight, ours.value.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.query.bias, ours.key.bias, ours.value.bias]))
        theirs.out_proj.weight.copy_(ours.out.weight)
        theirs.out_proj.bias.copy_(ours.out.bias)
    return theirs


def test_cross_attention_equals_torch_with_padding():
    torch.manual_seed(0)
    ours = MultiHeadAttention(16, 4)
    theirs = torch_attention_like(ours)
    x, context = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[0, 4:] = True
    padding[2, 6:] = True
    output, weights = ours(x, context, padding)
    expected_output, expected_weights = theirs(x, context, context, key_padding_mask=padding,
                                               average_attn_weights=False)
    torch.testing.assert_close(output, expected_output, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=1e-5)
    assert weights[0, :, :, 4:].abs().max() == 0  # a padded key gets exactly zero weight
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 5))


def test_causal_self_attention_equals_torch():
    torch.manual_seed(1)
    ours = MultiHeadAttention(8, 2)
    theirs = torch_attention_like(ours)
    x = torch.randn(2, 6, 8)
    future = torch.ones(6, 6, dtype=torch.bool).triu(1)
    output, weights = ours(x, causal=True)
    expected, _ = theirs(x, x, x, attn_mask=future)
    torch.testing.assert_close(output, expected, atol=1e-6, rtol=1e-5)
    assert weights[..., future].abs().max() == 0


def test_attention_function_is_the_equation():
    torch.manual_seed(2)
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    output, weights = attention(q, k, v)
    expected_weights = torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1)  # sqrt(d) = 2
    torch.testing.assert_close(weights, expected_weights)
    torch.testing.assert_close(output, expected_weights @ v)


def test_attention_refuses_bad_masks_and_shapes():
    attention_module = MultiHeadAttention(8, 2)
    x = torch.randn(2, 3, 8)
    with pytest.raises(TypeError, match="key_padding_mask must be a bool"):
        attention_module(x, key_padding_mask=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="key_padding_mask has shape"):
        attention_module(x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="hides every step"):
        attention_module(x, key_padding_mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="context has batch size"):
        attention_module(x, torch.randn(3, 3, 8))
    with pytest.raises(ValueError, match=r"expected \(B, L, 8\)"):
        attention_module(torch.randn(2, 3, 6))
    with pytest.raises(ValueError, match="multiple of heads"):
        MultiHeadAttention(10, 4)


def test_post_norm_layer_equals_torch_encoder_layer():
    torch.manual_seed(3)
    ours = TransformerLayer(16, 4, mlp_width=32, norm_first=False).eval()
    theirs = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, activation="gelu", batch_first=True).eval()
    with torch.no_grad():
        theirs.self_attn.load_state_dict(torch_attention_like(ours.attention).state_dict())
        theirs.linear1.load_state_dict(ours.mlp[0].state_dict())
        theirs.linear2.load_state_dict(ours.mlp[2].state_dict())
        theirs.norm1.load_state_dict(ours.attention_norm.state_dict())
        theirs.norm2.load_state_dict(ours.mlp_norm.state_dict())
    x = torch.randn(2, 5, 16)
    padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    torch.testing.assert_close(ours(x, padding), theirs(x, src_key_padding_mask=padding), atol=1e-5, rtol=1e-5)


def test_layer_keeps_weights_and_cross_attention_reads_the_context():
    torch.manual_seed(4)
    layer = TransformerLayer(16, 2, cross_attention=True, context_width=8)
    x, context = torch.randn(2, 4, 16), torch.randn(2, 6, 8)
    out = layer(x, context=context)
    assert layer.self_attention_weights.shape == (2, 2, 4, 4)
    assert layer.cross_attention_weights.shape == (2, 2, 4, 6)
    assert not torch.allclose(out, layer(x, context=context + 1.0))  # the context matters
    with pytest.raises(ValueError, match="context must be given exactly"):
        layer(x)
    with pytest.raises(ValueError, match="context must be given exactly"):
        TransformerLayer(16, 2)(x, context=context)


def test_encoder_stack_exposes_each_layers_weights():
    encoder = TransformerEncoder(8, depth=3, heads=2)
    encoder(torch.randn(2, 5, 8), causal=True)
    weights = encoder.self_attention_weights()
    assert len(weights) == 3 and all(w.shape == (2, 2, 5, 5) for w in weights)
    with pytest.raises(ValueError, match="depth must be a positive int"):
        TransformerEncoder(8, depth=0, heads=2)


def test_patch_embedding_row_major_patches():
    embedding = PatchEmbedding(image_size=8, patch_size=4, width=3)
    with torch.no_grad():
        embedding.projection.weight.zero_()
        embedding.projection.weight[0, 0] = 1.0 / 16  # channel 0: mean of the red patch
        embedding.projection.bias.zero_()
    images = torch.zeros(1, 3, 8, 8)
    images[0, 0, :4, 4:] = 1.0  # top-right patch
    patches = embedding(images)  # (1, 4, 3)
    assert patches[0, :, 0].tolist() == [0.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="expected \\(B, 3, 8, 8\\)"):
        embedding(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        PatchEmbedding(10, 4, 3)


def test_mask_tokens_follows_bert():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(7, 100, (400, 30), generator=generator)
    ids[:, 0] = 5  # <bos>
    ids[:, 25:] = 0  # padding
    inputs, labels = mask_tokens(ids, mask_id=4, vocab_size=100, special_ids=(0, 5), generator=generator)
    chosen = labels != IGNORE_INDEX
    assert not chosen[:, 0].any() and not chosen[:, 25:].any()  # specials never chosen
    assert abs(chosen[:, 1:25].float().mean().item() - 0.15) < 0.01
    assert torch.equal(labels[chosen], ids[chosen])
    masked = (inputs == 4) & chosen
    kept = (inputs == ids) & chosen
    assert abs(masked.sum().item() / chosen.sum().item() - 0.8) < 0.03
    assert abs(kept.sum().item() / chosen.sum().item() - 0.1) < 0.03
    assert torch.equal(inputs[~chosen], ids[~chosen])
    replaced = inputs[chosen & ~masked & ~kept]
    assert ((replaced >= 7) | (replaced == 1) | (replaced == 2) | (replaced == 3) | (replaced == 6)).all()
    assert not ((replaced == 0) | (replaced == 4) | (replaced == 5)).any()


def test_mask_tokens_chooses_at_least_one_token_per_row():
    ids = torch.tensor([[5, 9, 0, 0], [5, 10, 11, 0]])
    _, labels = mask_tokens(ids, 4, 20, (0, 5), probability=1e-6, generator=torch.Generator().manual_seed(0))
    assert ((labels != IGNORE_INDEX).sum(1) == 1).all()
    assert labels[0, 1] == 9


def test_mlm_loss_scores_only_chosen_positions():
    logits = torch.randn(2, 4, 10)
    labels = torch.full((2, 4), IGNORE_INDEX)
    labels[0, 2], labels[1, 0] = 3, 7
    expected = -(logits[0, 2].log_softmax(-1)[3] + logits[1, 0].log_softmax(-1)[7]) / 2
    torch.testing.assert_close(mlm_loss(logits, labels), expected)
    with pytest.raises(ValueError, match="no position to predict"):
        mlm_loss(logits, torch.full((2, 4), IGNORE_INDEX))
    with pytest.raises(ValueError, match="expected \\(B, L, V\\) and \\(B, L\\)"):
        mlm_loss(logits, labels[:, :3])


def test_mismatched_partners_never_pair_a_row_with_itself():
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(5, 5)
    for _ in range(2000):
        partners = mismatched_partners(5, generator)
        assert sorted(partners.tolist()) == list(range(5))  # a permutation: every caption used once
        counts[torch.arange(5), partners] += 1
    assert counts.diagonal().sum() == 0
    off_diagonal = counts[~torch.eye(5, dtype=torch.bool)]
    assert off_diagonal.min() > 0.8 * 2000 / 4  # every other row is drawn about equally often
    with pytest.raises(ValueError, match="batch_size must be an int >= 2"):
        mismatched_partners(1)


def test_stack_padded_pads_to_one_length_and_cuts_empty_columns():
    first, second = torch.tensor([[5, 6, 0, 0]]), torch.tensor([[7, 8, 9], [4, 0, 0]])
    assert stack_padded([first, second], pad_id=0).tolist() == [[5, 6, 0], [7, 8, 9], [4, 0, 0]]


def test_balanced_class_weights_give_each_class_half_of_the_weight():
    labels = torch.tensor([1, 1, 0, 0, 0, 0])
    weights = balanced_class_weights(labels)
    assert weights.tolist() == pytest.approx([0.75, 1.5])
    assert float(weights[labels].sum()) == pytest.approx(len(labels))
    assert (weights[labels][labels == 0].sum() == weights[labels][labels == 1].sum())
    with pytest.raises(ValueError, match="both classes"):
        balanced_class_weights(torch.ones(4, dtype=torch.long))


def test_masked_softmax_gives_padding_exactly_zero_and_pools_by_weight():
    scores = torch.tensor([[1.0, 2.0, 50.0], [0.0, 0.0, 0.0]])
    padding = torch.tensor([[False, False, True], [False, False, False]])
    weights = masked_softmax(scores, padding)
    assert weights[0, 2] == 0 and torch.allclose(weights.sum(-1), torch.ones(2))
    assert torch.allclose(weights[0, :2], torch.softmax(torch.tensor([1.0, 2.0]), 0))
    features = torch.randn(2, 3, 4)
    assert torch.allclose(attention_pool(features, weights), (weights[..., None] * features).sum(1))
    glimpses = torch.stack([weights, weights.flip(-1)], 1)  # (B, 2, N)
    assert torch.allclose(attention_pool(features, glimpses)[:, 1], attention_pool(features, weights.flip(-1)))
