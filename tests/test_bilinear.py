"""Bilinear fusion and attention of notebook 04: MFB and MFH against their definitions computed by
hand, BAN's attention logits against an explicit einsum, its maps summing to one over all (object,
word) pairs with exact zeros at padding and independent glimpses, the two VQA models' outputs, the
fusion parameter counts, bad inputs, and a tiny learning check."""
import pytest
import torch
import torch.nn.functional as F

from mmcourse.models.bilinear import (MFB, MFH, BilinearAttention, BilinearAttentionNetwork, MFHCoAttention,
                                      fusion_parameter_counts, mfb, power_l2_normalize, sum_pool)
from mmcourse.world.language import default_tokenizer
from mmcourse.world.programs import ANSWERS

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see conftest

TOKENIZER = default_tokenizer()
WIDTH = 16
FEATURES = 8
MODELS = (BilinearAttentionNetwork, MFHCoAttention)


def make_model(model_class, seed=0, **options):
    torch.manual_seed(seed)
    return model_class(TOKENIZER.vocab_size, len(ANSWERS), FEATURES, width=WIDTH, pad_id=TOKENIZER.pad_id,
                       **options).eval()


def batch(length=8):
    """Three region features per scene, the second row's last one padding (junk on purpose), and two
    questions of different lengths."""
    torch.manual_seed(1)
    regions = torch.randn(2, 3, FEATURES)
    objects = torch.tensor([[True, True, True], [True, True, False]])
    question = torch.from_numpy(TOKENIZER.encode_batch(["what color is the big sphere", "how many"], length))
    return regions, question, objects


def by_hand_normalize(z):
    """sign(z) sqrt(|z|), then divided by its L2 norm: the papers' normalisation, spelled out."""
    z = torch.sign(z) * torch.sqrt(z.abs())
    return z / z.norm(dim=-1, keepdim=True)


# ------------------------------------------------------------------------------ MFB and MFH


def test_mfb_function_equals_its_definition_on_tiny_inputs():
    x, y = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0, -1.0])
    U = torch.arange(12.0).view(2, 6) / 10 - 0.3  # (m=2, k*o=6): k=3, o=2
    V = torch.arange(18.0).view(3, 6).flip(1) / 10 - 0.8  # (n=3, 6)
    expanded = [sum(x[a] * U[a, c] for a in range(2)) * sum(y[b] * V[b, c] for b in range(3)) for c in range(6)]
    z = torch.stack([expanded[0] + expanded[1] + expanded[2], expanded[3] + expanded[4] + expanded[5]])
    assert torch.allclose(mfb(x, y, U, V, k=3), by_hand_normalize(z), atol=1e-6)


def test_sum_pool_and_normalisation_by_hand():
    e = torch.tensor([1.0, 2.0, 3.0, -10.0])
    assert torch.equal(sum_pool(e, 2), torch.tensor([3.0, -7.0]))
    z = power_l2_normalize(torch.tensor([4.0, -9.0]))
    assert torch.allclose(z, torch.tensor([2.0, -3.0]) / 13 ** 0.5)
    zero = torch.zeros(3, requires_grad=True)
    power_l2_normalize(zero).sum().backward()
    assert torch.isfinite(zero.grad).all()  # no nan from sqrt at zero
    with pytest.raises(ValueError, match="multiple of k=3"):
        sum_pool(torch.ones(4), 3)


def _set_linear(layer, weight, bias):
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)


def test_mfb_module_equals_the_definition_with_its_biases():
    torch.manual_seed(0)
    module = MFB(3, 2, out_width=2, k=2).eval()
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    Ux = x @ module.x_projection.weight.T + module.x_projection.bias  # U~^T x: (5, 4)
    Vy = y @ module.y_projection.weight.T + module.y_projection.bias
    e = Ux * Vy
    z = torch.stack([e[:, 0] + e[:, 1], e[:, 2] + e[:, 3]], -1)
    assert torch.allclose(module(x, y), by_hand_normalize(z), atol=1e-6)


def test_mfh_of_order_two_and_three_equals_its_cascade_by_hand():
    torch.manual_seed(0)
    x, y = torch.randn(4, 3), torch.randn(4, 2)
    for order in (2, 3):
        module = MFH(3, 2, out_width=2, k=3, order=order).eval()
        blocks = [(b.x_projection(x) * b.y_projection(y)) for b in module.blocks]  # U~_i^T x o V~_i^T y
        expanded, outputs = None, []
        for product in blocks:
            expanded = product if expanded is None else expanded * product  # e^i = e^{i-1} o (...)
            z = torch.stack([expanded[:, 0:3].sum(1), expanded[:, 3:6].sum(1)], -1)
            outputs.append(by_hand_normalize(z))
        result = module(x, y)
        assert result.shape == (4, 2 * order)
        assert torch.allclose(result, torch.cat(outputs, -1), atol=1e-6)


def test_mfb_refuses_inputs_of_the_wrong_width_or_leading_shape():
    module = MFB(3, 2, out_width=2, k=2)
    with pytest.raises(ValueError, match=r"x has shape \(5, 4\); expected \(\.\.\., 3\)"):
        module(torch.randn(5, 4), torch.randn(5, 2))
    with pytest.raises(ValueError, match="same leading dimensions"):
        module(torch.randn(5, 3), torch.randn(4, 2))
    with pytest.raises(TypeError, match="y must be a floating-point tensor"):
        module(torch.randn(5, 3), torch.ones(5, 2, dtype=torch.long))


# ------------------------------------------------------------------------------ bilinear attention


def attention_inputs(seed=0):
    torch.manual_seed(seed)
    module = BilinearAttention(object_width=5, word_width=4, hidden=6, glimpses=3)
    objects, words = torch.randn(2, 4, 5), torch.randn(2, 3, 4)
    object_padding = torch.tensor([[False, False, False, False], [False, False, True, True]])
    word_padding = torch.tensor([[False, False, False], [False, False, True]])
    return module, objects, object_padding, words, word_padding


def test_bilinear_attention_logits_equal_an_explicit_einsum_over_objects_and_words():
    module, objects, _, words, _ = attention_inputs()
    XU = torch.relu(objects @ module.object_projection.weight.T + module.object_projection.bias)  # (B, K, R)
    YV = torch.relu(words @ module.word_projection.weight.T + module.word_projection.bias)  # (B, L, R)
    expected = torch.einsum("bkr,gr,blr->bgkl", XU, module.glimpse_vectors, YV)  # A_g = ((1 p_g^T) o XU)(YV)^T
    assert torch.allclose(module.attention_logits(objects, words), expected, atol=1e-6)


def test_attention_sums_to_one_over_all_pairs_with_exact_zeros_at_padding():
    module, objects, object_padding, words, word_padding = attention_inputs()
    updated, maps = module(objects, object_padding, words, word_padding)
    assert maps.shape == (2, 3, 4, 3) and updated.shape == words.shape
    assert torch.allclose(maps.sum((2, 3)), torch.ones(2, 3), atol=1e-6)  # per glimpse, over K * L jointly
    assert (maps[1, :, 2:, :] == 0).all()  # padded objects
    assert (maps[1, :, :, 2] == 0).all()  # padded word
    assert (maps[0] > 0).all()


def test_glimpses_are_independent_and_the_question_is_updated_by_residuals():
    module, objects, object_padding, words, word_padding = attention_inputs()
    with torch.no_grad():
        _, before = module(objects, object_padding, words, word_padding)
        module.glimpse_vectors[1].add_(torch.randn(6))  # change p_1 only
        _, after = module(objects, object_padding, words, word_padding)
    assert torch.equal(before[:, 0], after[:, 0]) and torch.equal(before[:, 2], after[:, 2])
    assert not torch.allclose(before[:, 1], after[:, 1])
    # f_{g+1} = P_g^T BAN_g(f_g, Y; A_g) 1^T + f_g: glimpse by glimpse, every word state moves by
    # the same vector, and the next glimpse pools the updated words.
    with torch.no_grad():
        updated, maps = module(objects, object_padding, words, word_padding)
        f = words
        for g in range(3):
            f = f + module.glimpse_out[g](module.pool(g, objects, f, maps[:, g]))[:, None, :]
    assert torch.allclose(updated, f, atol=1e-6)
    assert not torch.allclose(updated, words, atol=1e-3)


def test_bilinear_pooling_equals_its_definition():
    module, objects, object_padding, words, word_padding = attention_inputs()
    maps = module.attention_maps(objects, object_padding, words, word_padding)
    XU = torch.relu(module.pool_objects[0](objects))
    YV = torch.relu(module.pool_words[0](words))
    # f_k = (XU')_k^T A (YV')_k, one rank at a time
    expected = torch.stack([torch.stack([XU[b, :, k] @ maps[b, 0] @ YV[b, :, k] for k in range(6)]) for b in range(2)])
    assert torch.allclose(module.pool(0, objects, words, maps[:, 0]), expected, atol=1e-6)


def test_bilinear_attention_refuses_bad_inputs_naming_them():
    module, objects, object_padding, words, word_padding = attention_inputs()
    with pytest.raises(ValueError, match="words has batch size 1 but objects has 2"):
        module(objects, object_padding, words[:1], word_padding[:1])
    with pytest.raises(ValueError, match=r"objects has shape \(2, 4, 3\); expected \(B, K, 5\)"):
        module(objects[..., :3], object_padding, words, word_padding)
    with pytest.raises(TypeError, match="object_padding must be a"):
        module(objects, None, words, word_padding)
    with pytest.raises(ValueError, match="object_padding hides every"):
        module(objects, torch.ones(2, 4, dtype=torch.bool), words, word_padding)


# ------------------------------------------------------------------------------ VQA models


@pytest.mark.parametrize("model_class", MODELS)
def test_vqa_models_give_logits_and_attention_with_exact_zeros_at_padding(model_class):
    model = make_model(model_class)
    regions, question, objects = batch()
    with torch.no_grad():
        output = model(regions, question, objects)
        longer = model(regions, F.pad(question, (0, 3), value=TOKENIZER.pad_id), objects)
        junk = regions.clone()
        junk[1, 2] = 100.0  # the padded box's feature must not matter
        moved = model(junk, question, objects)
    assert output["logits"].shape == (2, len(ANSWERS))
    assert torch.allclose(output["logits"], longer["logits"], atol=1e-5)
    assert torch.allclose(output["logits"], moved["logits"], atol=1e-5)
    padded_words = question == TOKENIZER.pad_id
    if model_class is BilinearAttentionNetwork:
        maps = output["attention"]
        assert maps.shape == (2, 2, 3, question.shape[1])
        assert torch.allclose(maps.sum((2, 3)), torch.ones(2, 2), atol=1e-5)
        assert (maps[1, :, 2] == 0).all() and (maps.transpose(2, 3)[padded_words[:, None].expand(-1, 2, -1)] == 0).all()
    else:
        assert torch.allclose(output["object_attention"].sum(1), torch.ones(2), atol=1e-5)
        assert output["object_attention"][1, 2] == 0
        assert torch.allclose(output["question_attention"].sum(1), torch.ones(2), atol=1e-5)
        assert (output["question_attention"][padded_words] == 0).all()


@pytest.mark.parametrize("model_class", MODELS)
def test_vqa_models_refuse_bad_inputs_naming_the_argument(model_class):
    model = make_model(model_class)
    regions, question, objects = batch()
    with pytest.raises(ValueError, match="question has batch size 1 but regions has 2"):
        model(regions, question[:1], objects)
    with pytest.raises(TypeError, match="objects must be a bool tensor"):
        model(regions, question, None)
    with pytest.raises(ValueError, match="objects has shape"):
        model(regions, question, objects[:, :2])
    with pytest.raises(ValueError, match="built for feature_width=8"):
        model(regions[..., :5], question, objects)


def test_fusion_parameter_counts_mfh_against_concatenation():
    counts = fusion_parameter_counts(TOKENIZER.vocab_size, len(ANSWERS), FEATURES, width=WIDTH, k=5, order=2)
    # MFH: order blocks of two linear maps to k * width; concat: one layer (2 width -> order * width).
    assert counts["mfh"] == 2 * 2 * (WIDTH + 1) * 5 * WIDTH
    assert counts["concat"] == (2 * WIDTH + 1) * 2 * WIDTH
    assert make_model(MFHCoAttention, fusion="concat")(*batch())["logits"].shape == (2, len(ANSWERS))
    with pytest.raises(ValueError, match="fusion='sum' is unknown"):
        make_model(MFHCoAttention, fusion="sum")


@pytest.mark.parametrize("model_class", MODELS)
def test_vqa_models_fit_a_tiny_batch(model_class):
    model = make_model(model_class).train()
    regions, question, objects = batch()
    answers = torch.tensor([1, 4])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = F.cross_entropy(model(regions, question, objects)["logits"], answers)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1
