"""VQA models of notebook 04 over precomputed image features: output shapes and attention that sums
to one with exact zeros at padding, one stacked-attention hop against its equations, bottom-up
top-down attention indifferent to the objects' order, the grid's position embedding, bad input, and
a tiny learning check."""
import pytest
import torch
import torch.nn.functional as F

from mmcourse.models.vqa import (BlindLSTM, BottomUpTopDown, CnnLstm, GridFeatures, SanHop, StackedAttention,
                                 check_vqa_inputs, san_hop)
from mmcourse.world.language import default_tokenizer
from mmcourse.world.programs import ANSWERS

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see conftest

TOKENIZER = default_tokenizer()
WIDTH = 16
FEATURES = 8  # channels of the precomputed grid and of each region feature
MODELS = (BlindLSTM, CnnLstm, StackedAttention, BottomUpTopDown)


def make_model(model_class, seed=0, **options):
    torch.manual_seed(seed)
    if model_class is not BlindLSTM:
        options["feature_width"] = FEATURES
    return model_class(TOKENIZER.vocab_size, len(ANSWERS), width=WIDTH, pad_id=TOKENIZER.pad_id, **options).eval()


def batch(length=8):
    """Two 4x4 feature grids, three region features per scene of which the second row's last is
    padding (its feature is junk on purpose), and two questions of different lengths."""
    torch.manual_seed(1)
    grid = torch.rand(2, FEATURES, 4, 4)
    regions = torch.randn(2, 3, FEATURES)
    objects = torch.tensor([[True, True, True], [True, True, False]])
    question = torch.from_numpy(TOKENIZER.encode_batch(["what color is the big sphere", "how many"], length))
    return grid, regions, objects, question


def run(model, grid, regions, objects, question):
    if isinstance(model, BottomUpTopDown):
        return model(regions, question, objects)
    return model(grid, question)


# ------------------------------------------------------------------------------ shapes and attention


@pytest.mark.parametrize("model_class", MODELS)
def test_logits_have_one_score_per_answer_and_padding_changes_nothing(model_class):
    model = make_model(model_class)
    grid, regions, objects, question = batch()
    with torch.no_grad():
        output = run(model, grid, regions, objects, question)
        longer = run(model, grid, regions, objects, F.pad(question, (0, 4), value=TOKENIZER.pad_id))
    assert output["logits"].shape == (2, len(ANSWERS))
    assert torch.isfinite(output["logits"]).all()
    assert torch.allclose(output["logits"], longer["logits"], atol=1e-5)


def test_stacked_attention_has_one_map_per_hop_over_the_grid():
    model = make_model(StackedAttention, hops=3)
    grid, _, _, question = batch()
    with torch.no_grad():
        output = model(grid, question)
    assert output["grid"] == (4, 4)
    assert output["attention"].shape == (2, 3, 16)
    assert torch.allclose(output["attention"].sum(-1), torch.ones(2, 3))
    assert not torch.allclose(output["attention"][:, 0], output["attention"][:, 1])  # each hop has its own map


def test_bottom_up_attention_sums_to_one_over_real_objects_only():
    model = make_model(BottomUpTopDown)
    _, regions, objects, question = batch()
    junk = regions.clone()
    junk[1, 2] = 10 * torch.randn(FEATURES) + 5  # the padded region's feature changed
    real = regions.clone()
    real[1, 1] = 10 * torch.randn(FEATURES) + 5  # a real region's feature changed: the control
    with torch.no_grad():
        output = model(regions, question, objects)
        output_junk = model(junk, question, objects)
        output_real = model(real, question, objects)
    attention = output["attention"]
    assert attention.shape == (2, 3)
    assert torch.allclose(attention.sum(-1), torch.ones(2))
    assert attention[1, 2].item() == 0.0  # exactly zero, not just small
    assert (attention[objects] > 0).all()
    assert torch.allclose(output["logits"], output_junk["logits"], atol=1e-6)
    assert torch.allclose(output["attention"], output_junk["attention"], atol=1e-6)
    assert not torch.allclose(output["logits"][1], output_real["logits"][1], atol=1e-4)


def test_bottom_up_top_down_is_indifferent_to_the_order_of_objects():
    model = make_model(BottomUpTopDown)
    _, regions, objects, question = batch()
    order = torch.tensor([2, 0, 1])
    with torch.no_grad():
        output = model(regions, question, objects)
        permuted = model(regions[:, order], question, objects[:, order])
    assert torch.allclose(output["logits"], permuted["logits"], atol=1e-5)
    assert torch.allclose(output["attention"][:, order], permuted["attention"], atol=1e-6)


def test_blind_lstm_ignores_the_grid_and_cnn_lstm_does_not():
    grid, _, _, question = batch()
    with torch.no_grad():
        blind, cnn = make_model(BlindLSTM), make_model(CnnLstm)
        assert torch.equal(blind(grid, question)["logits"], blind(grid.flip(0), question)["logits"])
        assert not torch.allclose(cnn(grid, question)["logits"], cnn(grid.flip(0), question)["logits"])


# ------------------------------------------------------------------------------ equations


def test_san_hop_matches_the_papers_equations():
    torch.manual_seed(0)
    hop = SanHop(width=6, attention_width=5)
    cells, query = torch.randn(3, 7, 6), torch.randn(3, 6)  # v_I (B, N, D), u_{k-1} (B, D)
    refined, attention = san_hop(cells, query, hop)
    W_I, W_Q, b_A, W_P = hop.image.weight, hop.question.weight, hop.question.bias, hop.score.weight
    h_A = torch.tanh(torch.einsum("kd,bnd->bnk", W_I, cells) + (query @ W_Q.T + b_A)[:, None, :])
    scores = torch.einsum("k,bnk->bn", W_P[0], h_A)
    p_I = torch.exp(scores) / torch.exp(scores).sum(1, keepdim=True)
    u_k = sum(p_I[:, i, None] * cells[:, i] for i in range(7)) + query
    assert torch.allclose(attention, p_I, atol=1e-6)
    assert torch.allclose(refined, u_k, atol=1e-5)
    assert torch.equal(hop(cells, query)[0], refined)


def test_grid_features_add_each_cells_centre_in_row_major_order():
    torch.manual_seed(0)
    grid = GridFeatures(feature_width=4, width=8).eval()
    feature_map = torch.rand(2, 4, 3, 5)  # a 3 x 5 grid: rows are y, columns x
    with torch.no_grad():
        cells, shape = grid(feature_map)
        assert shape == (3, 5) and cells.shape == (2, 15, 8)
        for row, y in enumerate((-1.0, 0.0, 1.0)):
            for column, x in enumerate((-1.0, -0.5, 0.0, 0.5, 1.0)):
                expected = grid.projection(feature_map[:, :, row, column]) + grid.position(torch.tensor([x, y]))
                assert torch.allclose(cells[:, row * 5 + column], expected, atol=1e-5), (row, column)


# ------------------------------------------------------------------------------ bad input


def no_object_in_second_row(objects):
    objects = objects.clone()
    objects[1] = False
    return objects


@pytest.mark.parametrize("change, error, match", [
    (lambda r, o, q: (r[:1], q, o), ValueError, "question has batch size 2 but regions has 1"),
    (lambda r, o, q: (r, q.float(), o), TypeError, "question must be an integer tensor"),
    (lambda r, o, q: (r.to(torch.uint8), q, o), TypeError, "regions must be a floating-point tensor"),
    (lambda r, o, q: (r[0], q, o), ValueError, r"regions must have 3 dimensions, got shape \(3, 8\)"),
    (lambda r, o, q: (r, q, None), TypeError, "objects must be a bool tensor"),
    (lambda r, o, q: (r, q, o.long()), TypeError, "objects must be a bool tensor"),
    (lambda r, o, q: (r, q, o[:, :2]), ValueError, r"objects has shape \(2, 2\); expected \(2, 3\)"),
    (lambda r, o, q: (r, q, no_object_in_second_row(o)), ValueError, "objects marks no object in some row"),
    (lambda r, o, q: (r, q + TOKENIZER.vocab_size, o), ValueError, "question holds token id"),
])
def test_bad_input_is_refused_with_a_message_naming_the_argument(change, error, match):
    model = make_model(BottomUpTopDown)
    _, regions, objects, question = batch()
    with pytest.raises(error, match=match):
        model(*change(regions, objects, question))


def test_bad_input_is_refused_by_the_grid_models_too():
    grid, _, _, question = batch()
    for model_class in (BlindLSTM, CnnLstm, StackedAttention):
        model = make_model(model_class)
        with pytest.raises(ValueError, match="question has batch size 1 but grid has 2"):
            model(grid, question[:1])
        with pytest.raises(TypeError, match="grid must be a floating-point tensor"):
            model(grid.to(torch.uint8), question)
        with pytest.raises(ValueError, match=r"grid must have 4 dimensions, got shape \(2, 8, 16\)"):
            model(grid.flatten(2), question)
    for model_class in (CnnLstm, StackedAttention):
        with pytest.raises(ValueError, match=r"grid has shape \(2, 4, 4, 4\): 4 feature channels, but the model "
                                             r"was built for feature_width=8"):
            make_model(model_class)(grid[:, :4], question)
    with pytest.raises(ValueError, match="hops must be a positive int"):
        make_model(StackedAttention, hops=0)


def test_exactly_one_kind_of_image_features_is_accepted():
    grid, regions, objects, question = batch()
    with pytest.raises(ValueError, match="a grid has none"):
        check_vqa_inputs(question, grid=grid, objects=objects)
    with pytest.raises(ValueError, match="regions has shape .*: 8 feature channels, but .* feature_width=5"):
        check_vqa_inputs(question, regions=regions, objects=objects, feature_width=5)
    check_vqa_inputs(question, grid=grid)  # either one alone is fine
    check_vqa_inputs(question, regions=regions, objects=objects)
    with pytest.raises(ValueError, match="give exactly one of grid .* and regions"):
        check_vqa_inputs(question)
    with pytest.raises(ValueError, match="give exactly one of grid .* and regions"):
        check_vqa_inputs(question, grid=grid, regions=regions, objects=objects)


# ------------------------------------------------------------------------------ learning


COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.9], [0.9, 0.9, 0.1]])


def coloured_squares(count, generator):
    """Grey 32x32 images each holding one 8x8 square of one of four colours at a random place, as an
    8x8 grid of 4x4 average-pooled cells (the "precomputed features"); the answer is the colour's
    index and the question is random ids, so only the grid can tell."""
    answers = torch.randint(len(COLOURS), (count,), generator=generator)
    corners = torch.randint(0, 25, (count, 2), generator=generator)
    images = torch.full((count, 3, 32, 32), 0.5)
    for image, answer, (y, x) in zip(images, answers, corners.tolist()):
        image[:, y:y + 8, x:x + 8] = COLOURS[answer][:, None, None]
    question = torch.randint(1, TOKENIZER.vocab_size, (count, 5), generator=generator)
    return F.avg_pool2d(images, 4), question, answers  # grid (B, 3, 8, 8)


def test_stacked_attention_learns_the_colour_of_a_square_well_above_chance():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    # raw pooled pixels, not a trained CNN's features: a wider model and more steps than a CNN needs
    model = StackedAttention(TOKENIZER.vocab_size, len(COLOURS), feature_width=3, width=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        grid, question, answers = coloured_squares(32, generator)
        loss = F.cross_entropy(model(grid, question)["logits"], answers)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    grid, question, answers = coloured_squares(200, generator)
    with torch.no_grad():
        accuracy = (model.eval()(grid, question)["logits"].argmax(1) == answers).float().mean().item()
    assert accuracy > 0.8, f"accuracy {accuracy:.2f}, chance is 0.25"


@pytest.mark.gpu
@pytest.mark.parametrize("model_class", MODELS)
def test_models_run_where_the_model_is(model_class):
    model = make_model(model_class).cuda()
    inputs = [tensor.cuda() for tensor in batch()]
    output = run(model, *inputs)
    assert output["logits"].device.type == "cuda"
