"""Tests of mmcourse.models.albef: ITC with queues and momentum distillation, hard negatives, ITM,
MLM, the momentum model and its queues, Grad-CAM and the readouts."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmcourse.models import albef
from mmcourse.models.albef import (ALBEF, ALBEFLoss, distillation_targets, expression_map, gradcam, itc_loss,
                                   itm_loss, momentum_update, sample_hard_negatives, small_albef, soft_cross_entropy)
from mmcourse.models.layers import mask_tokens, mlm_loss
from mmcourse.train import fit, loss_evaluator
from mmcourse.world.language import default_tokenizer

TOKENIZER = default_tokenizer()


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny tensors: one torch thread is much faster than two on a loaded machine."""
    yield


def tiny_model(queue_size=16, momentum=0.9, **kwargs) -> ALBEF:
    torch.manual_seed(0)
    return ALBEF(image_size=16, patch_size=4, width=16, embed_dim=8, image_depth=1, text_depth=1, fusion_depth=2,
                 heads=2, max_length=12, queue_size=queue_size, momentum=momentum, **kwargs)


def tiny_batch(batch_size=4, length=7, seed=0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 3, 16, 16, generator=generator)
    ids = torch.randint(7, TOKENIZER.vocab_size, (batch_size, length), generator=generator)
    ids[:, 0], ids[:, -1] = TOKENIZER.bos_id, TOKENIZER.eos_id
    ids[0, -2:] = torch.tensor([TOKENIZER.eos_id, TOKENIZER.pad_id])  # one shorter caption
    return {"image": images, "tokens": ids}


# ------------------------------------------------------------------------------ distillation targets


def test_distillation_targets_mix_the_momentum_softmax_with_the_diagonal():
    similarity = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])  # (B=2, N=3)
    e = math.e
    softmax = torch.tensor([[e / (1 + e + e * e), 1 / (1 + e + e * e), e * e / (1 + e + e * e)],
                            [1 / (2 + e), e / (2 + e), 1 / (2 + e)]])
    one_hot = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    assert torch.allclose(distillation_targets(similarity, 0.5), 0.5 * softmax + 0.5 * one_hot, atol=1e-6)
    assert torch.equal(distillation_targets(similarity, 0.0), one_hot)
    assert torch.allclose(distillation_targets(similarity, 1.0), softmax, atol=1e-6)
    assert torch.allclose(distillation_targets(similarity, 0.3).sum(1), torch.ones(2))


def test_distillation_targets_refuse_bad_input():
    with pytest.raises(ValueError, match="momentum_similarity must have 2 dimensions"):
        distillation_targets(torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match=r"shape \(3, 2\); expected \(B, N\) with N >= B"):
        distillation_targets(torch.zeros(3, 2), 0.5)
    with pytest.raises(ValueError, match="alpha must be a number in"):
        distillation_targets(torch.zeros(2, 3), 1.5)
    with pytest.raises(ValueError, match="non-finite"):
        distillation_targets(torch.tensor([[float("nan"), 0.0]]), 0.5)
    with pytest.raises(TypeError, match="floating-point"):
        distillation_targets(torch.zeros(2, 3, dtype=torch.long), 0.5)


# ------------------------------------------------------------------------------ ITC


def test_itc_loss_by_hand_with_a_queue():
    image = torch.tensor([[1.0, 0.0]])
    text = torch.tensor([[1.0, 0.0]])
    # key 0: the momentum feature of the pair (the positive), key 1: a queued negative
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # logits (1, 0) in both directions: -log(e / (e + 1))
    assert float(itc_loss(image, text, keys, keys, 1.0, alpha=0.0)) == pytest.approx(math.log(1 + math.exp(-1)))
    # alpha = 1 and a momentum model equal to the online one: the entropy of p = softmax(1, 0)
    p = torch.tensor([1.0, 0.0]).softmax(0)
    assert float(itc_loss(image, text, keys, keys, 1.0, alpha=1.0)) == pytest.approx(float(-(p * p.log()).sum()))
    # temperature 0.5 doubles the logits
    assert float(itc_loss(image, text, keys, keys, 0.5, alpha=0.0)) == pytest.approx(math.log(1 + math.exp(-2)))


def test_itc_loss_at_alpha_zero_is_infonce_with_the_queue_as_extra_negatives():
    generator = torch.Generator().manual_seed(1)
    image, text = (F.normalize(torch.randn(4, 8, generator=generator), dim=1) for _ in range(2))
    image_keys, text_keys = (F.normalize(torch.randn(10, 8, generator=generator), dim=1) for _ in range(2))
    targets = torch.arange(4)
    expected = (F.cross_entropy(image @ text_keys.T / 0.1, targets)
                + F.cross_entropy(text @ image_keys.T / 0.1, targets)) / 2
    assert torch.allclose(itc_loss(image, text, image_keys, text_keys, 0.1, alpha=0.0), expected)
    # without a queue it is CLIP's symmetric loss when the keys are the features themselves
    clip_like = (F.cross_entropy(image @ text.T / 0.1, targets) + F.cross_entropy(text @ image.T / 0.1, targets)) / 2
    assert torch.allclose(itc_loss(image, text, image, text, 0.1, alpha=0.0), clip_like)


def test_itc_loss_with_distillation_uses_the_momentum_rows_as_teachers():
    generator = torch.Generator().manual_seed(2)
    image, text = (F.normalize(torch.randn(3, 4, generator=generator), dim=1) for _ in range(2))
    image_keys, text_keys = (F.normalize(torch.randn(7, 4, generator=generator), dim=1) for _ in range(2))
    tau, alpha = 0.2, 0.4
    targets_i2t = alpha * (image_keys[:3] @ text_keys.T / tau).softmax(1) + (1 - alpha) * torch.eye(3, 7)
    targets_t2i = alpha * (text_keys[:3] @ image_keys.T / tau).softmax(1) + (1 - alpha) * torch.eye(3, 7)
    expected = (F.cross_entropy(image @ text_keys.T / tau, targets_i2t)
                + F.cross_entropy(text @ image_keys.T / tau, targets_t2i)) / 2  # torch's soft-target CE
    assert torch.allclose(itc_loss(image, text, image_keys, text_keys, tau, alpha), expected, atol=1e-6)


def test_soft_cross_entropy_matches_torch():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
    targets = torch.tensor([[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]])
    assert torch.allclose(soft_cross_entropy(logits, targets), F.cross_entropy(logits, targets))


def test_itc_loss_refuses_bad_input():
    features, keys = torch.zeros(2, 4), torch.zeros(5, 4)
    with pytest.raises(ValueError, match=r"image_keys has shape \(5, 3\); expected \(B \+ Q, 4\)"):
        itc_loss(features, features, torch.zeros(5, 3), keys, 0.1)
    with pytest.raises(ValueError, match="expected .* at least B=2"):
        itc_loss(features, features, torch.zeros(1, 4), torch.zeros(1, 4), 0.1)
    with pytest.raises(ValueError, match="text_features"):
        itc_loss(features, torch.zeros(3, 4), keys, keys, 0.1)
    with pytest.raises(ValueError, match="image_keys has shape .* but text_keys"):
        itc_loss(features, features, keys, torch.zeros(6, 4), 0.1)
    with pytest.raises(ValueError, match="temperature must be a positive"):
        itc_loss(features, features, keys, keys, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        itc_loss(features, features, keys, keys, 0.1, alpha=-0.1)


# ------------------------------------------------------------------------------ hard negatives


def test_sample_hard_negatives_never_returns_the_row_itself_and_follows_the_softmax():
    similarity = torch.tensor([[5.0, 1.0, 0.0, -1.0],
                               [0.0, 9.0, 2.0, 2.0],
                               [1.0, 1.0, 1.0, 1.0],
                               [3.0, 0.0, 1.0, 0.0]])
    generator = torch.Generator().manual_seed(0)
    draws = 3000
    samples = torch.stack([sample_hard_negatives(similarity, generator) for _ in range(draws)])  # (draws, B)
    assert samples.dtype == torch.long and samples.shape == (draws, 4)
    assert not (samples == torch.arange(4)).any()
    for row in range(4):
        others = [j for j in range(4) if j != row]
        expected = similarity[row, others].softmax(0) * draws  # softmax without the diagonal
        observed = torch.bincount(samples[:, row], minlength=4)[others].float()
        chi_square = float(((observed - expected) ** 2 / expected).sum())
        assert chi_square < 20, (row, observed, expected)  # df = 2: p < 1e-4 for a correct sampler


def test_sample_hard_negatives_is_reproducible_with_a_generator():
    similarity = torch.randn(8, 8, generator=torch.Generator().manual_seed(3))
    first = sample_hard_negatives(similarity, torch.Generator().manual_seed(7))
    again = sample_hard_negatives(similarity, torch.Generator().manual_seed(7))
    assert torch.equal(first, again)
    other = torch.stack([sample_hard_negatives(similarity, torch.Generator().manual_seed(s)) for s in range(5)])
    assert len({tuple(row.tolist()) for row in other}) > 1


def test_sample_hard_negatives_picks_the_only_other_row_of_two():
    assert sample_hard_negatives(torch.tensor([[0.0, -50.0], [80.0, 1.0]])).tolist() == [1, 0]


def test_sample_hard_negatives_refuses_bad_input():
    with pytest.raises(ValueError, match=r"shape \(2, 3\); expected a square \(B, B\)"):
        sample_hard_negatives(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="B >= 2"):
        sample_hard_negatives(torch.zeros(1, 1))
    with pytest.raises(ValueError, match="non-finite"):
        sample_hard_negatives(torch.tensor([[0.0, float("inf")], [0.0, 0.0]]))
    with pytest.raises(TypeError, match="floating-point"):
        sample_hard_negatives(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        sample_hard_negatives(torch.zeros(2, 2), generator=0)


# ------------------------------------------------------------------------------ ITM and MLM


def test_itm_loss_scores_positives_and_both_kinds_of_negatives():
    model, batch = tiny_model(), tiny_batch()
    model.eval()
    images, ids = batch["image"], batch["tokens"]
    with torch.no_grad():
        image_tokens = model.image_encoder(images)
        text_states, padding = model.text_encoder(ids)
        negative_texts, negative_images = torch.tensor([1, 2, 3, 0]), torch.tensor([3, 0, 1, 2])
        loss, accuracy = itm_loss(model, image_tokens, text_states, padding, negative_texts, negative_images)
        # Pair by pair, one fusion call each: (image index, text index, label)
        pairs = ([(i, i, 1) for i in range(4)] + [(i, int(negative_texts[i]), 0) for i in range(4)]
                 + [(int(negative_images[i]), i, 0) for i in range(4)])
        logits = torch.cat([model.itm_head(model.fuse(text_states[t:t + 1], padding[t:t + 1],
                                                      image_tokens[i:i + 1])[:, 0]) for i, t, _ in pairs])
        labels = torch.tensor([label for _, _, label in pairs])
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits, labels)), abs=1e-5)
    assert float(accuracy) == pytest.approx(float((logits.argmax(1) == labels).float().mean()))


def test_itm_loss_refuses_a_row_paired_with_itself():
    model, batch = tiny_model(), tiny_batch()
    image_tokens = model.image_encoder(batch["image"])
    text_states, padding = model.text_encoder(batch["tokens"])
    with pytest.raises(ValueError, match="negative_texts pairs some row with itself"):
        itm_loss(model, image_tokens, text_states, padding, torch.tensor([0, 2, 3, 1]), torch.tensor([1, 0, 3, 2]))
    with pytest.raises(ValueError, match=r"negative_images has shape \(3,\); expected \(4,\)"):
        itm_loss(model, image_tokens, text_states, padding, torch.tensor([1, 0, 3, 2]), torch.tensor([1, 0, 3]))
    with pytest.raises(ValueError, match=r"expected \[0, 4\)"):
        itm_loss(model, image_tokens, text_states, padding, torch.tensor([1, 0, 3, 4]), torch.tensor([1, 0, 3, 2]))


def test_mlm_loss_of_albef_loss_predicts_the_masked_words_from_the_fusion_encoder():
    model, batch = tiny_model(), tiny_batch()
    model.eval()
    loss, logged = ALBEFLoss(itm=None, alpha=0.0, mlm=True, seed=5)(model, batch)
    special = (TOKENIZER.pad_id, TOKENIZER.unk_id, TOKENIZER.cls_id, TOKENIZER.sep_id, TOKENIZER.bos_id,
               TOKENIZER.eos_id)
    inputs, labels = mask_tokens(batch["tokens"], TOKENIZER.mask_id, TOKENIZER.vocab_size, special,
                                 generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        states, padding = model.text_encoder(inputs)
        logits = model.mlm_head(model.fuse(states, padding, model.image_encoder(batch["image"])))
    assert float(logged["mlm"]) == pytest.approx(float(mlm_loss(logits, labels)), abs=1e-5)
    assert float(loss.detach()) == pytest.approx(float(logged["itc"] + logged["mlm"]), abs=1e-5)


# ------------------------------------------------------------------------------ momentum model and queues


def test_momentum_update_is_an_exponential_moving_average():
    online, momentum = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[1.0, 2.0]]))
        online.bias.fill_(4.0)
        momentum.weight.copy_(torch.tensor([[3.0, -2.0]]))
        momentum.bias.fill_(0.0)
    momentum_update(online, momentum, 0.75)
    assert torch.allclose(momentum.weight, torch.tensor([[0.75 * 3 + 0.25 * 1, 0.75 * -2 + 0.25 * 2]]))
    assert torch.allclose(momentum.bias, torch.tensor([1.0]))
    assert torch.allclose(online.weight, torch.tensor([[1.0, 2.0]]))  # the online module is untouched


def test_momentum_update_refuses_bad_input():
    with pytest.raises(ValueError, match="m must be a number in"):
        momentum_update(nn.Linear(2, 1), nn.Linear(2, 1), 1.5)
    with pytest.raises(ValueError, match="expected a copy of the same module"):
        momentum_update(nn.Linear(2, 1), nn.Linear(3, 1), 0.5)


def test_the_model_starts_with_frozen_copies_and_moves_them_by_its_momentum():
    model = tiny_model(momentum=0.9)
    assert not any(p.requires_grad for p in model.momentum_image_encoder.parameters())
    online = model.text_projection.weight
    assert torch.equal(model.momentum_text_projection.weight, online)
    old = online.detach().clone()
    with torch.no_grad():
        online.add_(1.0)
    model.update_momentum_model()
    assert torch.allclose(model.momentum_text_projection.weight, 0.9 * old + 0.1 * (old + 1.0))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert all(id(p) not in trainable for p in model.momentum_text_encoder.parameters())


def test_the_queue_overwrites_its_oldest_rows_and_wraps_around():
    model = tiny_model(queue_size=5)
    batches = [torch.full((2, 8), float(value)) for value in (1, 2, 3)]
    model.enqueue(batches[0], -batches[0])
    assert int(model.queue_pointer) == 2
    model.enqueue(batches[1], -batches[1])
    assert int(model.queue_pointer) == 4
    model.enqueue(batches[2], -batches[2])  # rows 4 and 0: the pointer wraps
    assert int(model.queue_pointer) == 1
    assert model.image_queue.shape == (5, 8)
    assert model.image_queue[:, 0].tolist() == [3.0, 1.0, 2.0, 2.0, 3.0]
    assert model.text_queue[:, 0].tolist() == [-3.0, -1.0, -2.0, -2.0, -3.0]
    # the next batch replaces the oldest row left, the second row of the first batch
    model.enqueue(torch.full((1, 8), 4.0), torch.full((1, 8), 4.0))
    assert model.image_queue[:, 0].tolist() == [3.0, 4.0, 2.0, 2.0, 3.0]


def test_the_queue_refuses_bad_batches():
    model = tiny_model(queue_size=3)
    with pytest.raises(ValueError, match="does not fit a queue of queue_size=3"):
        model.enqueue(torch.zeros(4, 8), torch.zeros(4, 8))
    with pytest.raises(ValueError, match=r"expected the same \(B, 8\)"):
        model.enqueue(torch.zeros(2, 7), torch.zeros(2, 7))
    with pytest.raises(ValueError, match=r"expected the same \(B, 8\)"):
        model.enqueue(torch.zeros(2, 8), torch.zeros(1, 8))


def test_albef_loss_updates_the_momentum_model_and_queues_only_in_training():
    model, batch = tiny_model(queue_size=16, momentum=0.5), tiny_batch()
    with torch.no_grad():
        model.image_projection.weight.add_(1.0)  # online and momentum now differ
    before_queue, before_momentum = model.image_queue.clone(), model.momentum_image_projection.weight.clone()
    model.eval()
    ALBEFLoss(itm="hard", alpha=0.4, mlm=False)(model, batch)
    assert torch.equal(model.image_queue, before_queue) and int(model.queue_pointer) == 0
    assert torch.equal(model.momentum_image_projection.weight, before_momentum)

    model.train()
    loss_fn = ALBEFLoss(itm="hard", alpha=0.4, mlm=False)
    loss_fn(model, batch)
    assert torch.allclose(model.momentum_image_projection.weight,
                          0.5 * before_momentum + 0.5 * model.image_projection.weight)
    assert int(model.queue_pointer) == 4 and loss_fn.steps == 1
    image_features, text_features = model.momentum_features(batch["image"], batch["tokens"])
    assert torch.allclose(model.image_queue[:4], image_features) and torch.allclose(model.text_queue[:4], text_features)
    assert torch.equal(model.image_queue[4:], before_queue[4:])


def test_alpha_ramps_up_over_the_warmup_steps():
    model, batch = tiny_model(), tiny_batch()
    loss_fn = ALBEFLoss(itm=None, alpha=0.4, mlm=False, alpha_warmup_steps=4)
    model.train()
    alphas = [float(loss_fn(model, batch)[1]["alpha"]) for _ in range(6)]
    assert alphas == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4])


def test_hard_negatives_start_after_the_warmup_steps(monkeypatch):
    calls = []
    original = albef.sample_hard_negatives
    monkeypatch.setattr(albef, "sample_hard_negatives", lambda *args: calls.append(1) or original(*args))
    model, batch = tiny_model(), tiny_batch()
    model.train()
    loss_fn = ALBEFLoss(itm="hard", alpha=0.0, mlm=False, hard_warmup_steps=2)
    loss_fn(model, batch)
    loss_fn(model, batch)
    assert calls == []  # random negatives during the warm-up
    loss_fn(model, batch)
    assert len(calls) == 2  # one draw for the images' negative captions, one for the captions' images


def test_albef_loss_refuses_bad_flags():
    with pytest.raises(ValueError, match="itm='hardest' is unknown"):
        ALBEFLoss(itm="hardest")
    with pytest.raises(ValueError, match="alpha must be a number in"):
        ALBEFLoss(alpha=2)
    with pytest.raises(TypeError, match="mlm must be a bool"):
        ALBEFLoss(mlm=1)
    with pytest.raises(ValueError, match="alpha_warmup_steps"):
        ALBEFLoss(alpha_warmup_steps=-1)
    with pytest.raises(ValueError, match="hard_warmup_steps must be a non-negative int"):
        ALBEFLoss(hard_warmup_steps=1.5)


# ------------------------------------------------------------------------------ training


def test_fit_trains_every_objective_and_logs_each_component():
    model = tiny_model(queue_size=8)
    loader = [tiny_batch(batch_size=4, seed=seed) for seed in range(6)]  # the same 24 pairs every epoch
    loss_fn = ALBEFLoss(itm="hard", alpha=0.4, mlm=True, seed=0)
    history = fit(model, loader, loss_fn, epochs=4, lr=3e-3, progress=False,
                  evaluate=loss_evaluator(loss_fn), val_loader=loader[:1])
    first, last = history.records[0], history.records[-1]
    for name in ("itc", "itm", "itm_accuracy", "mlm", "temperature", "alpha"):
        assert name in last and math.isfinite(last[name])
    # 24 steps are too few for ITC to leave its plateau (features start nearly identical), not for the rest
    assert last["train_loss"] < first["train_loss"] - 0.2
    assert last["itm"] < first["itm"] and last["mlm"] < first["mlm"]
    assert loss_fn.steps == 24  # validation calls (eval mode) are not training steps
    assert int(model.queue_pointer) == (24 * 4) % 8
    assert not torch.equal(model.momentum_image_encoder.position, model.image_encoder.position)


# ------------------------------------------------------------------------------ readouts and Grad-CAM


def test_readouts_have_the_documented_shapes_and_values():
    model, batch = tiny_model(), tiny_batch()
    model.eval()
    images, ids = batch["image"], batch["tokens"]
    assert model.itm_logits(images, ids).shape == (4, 2)
    similarity = model.itc_similarity(images, ids[:3])
    assert similarity.shape == (4, 3)
    assert torch.allclose(similarity, model.encode_image(images) @ model.encode_text(ids[:3]).T)
    assert torch.allclose(model.encode_image(images).norm(dim=1), torch.ones(4))
    attention = model.word_patch_attention(images, ids)
    assert attention.shape == (4, 7, 16) and (attention >= 0).all()
    cls_weight = model.fusion.layers[0].cross_attention_weights.mean(1)[..., 0]  # (B, L) on the image [CLS]
    assert torch.allclose(attention.sum(-1) + cls_weight, torch.ones(4, 7), atol=1e-5)
    assert not attention.requires_grad


def test_gradcam_weighs_attention_by_the_positive_gradient_of_the_match_score():
    model, batch = tiny_model(), tiny_batch()
    model.eval()
    images, ids = batch["image"], batch["tokens"]
    with torch.no_grad():  # gradcam switches gradients on by itself
        cams = gradcam(model, images, ids, layer=1)
    assert cams.shape == (4, 7, 16) and (cams >= 0).all() and cams.sum() > 0
    assert all(p.grad is None for p in model.parameters())
    # the same by hand, with retain_grad and backward
    logits = model.itm_logits(images, ids)
    attention = model.fusion.layers[1].cross_attention_weights
    attention.retain_grad()
    logits[:, 1].sum().backward()
    expected = (attention.grad.clamp(min=0) * attention).mean(1)[..., 1:]
    assert torch.allclose(cams, expected.detach(), atol=1e-6)
    # rows are independent: one example alone gives the same map
    assert torch.allclose(gradcam(model, images[2:3], ids[2:3], layer=1), cams[2:3], atol=1e-6)


def test_expression_map_averages_the_word_tokens_only():
    maps = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    ids = torch.tensor([[TOKENIZER.bos_id, 20, 21, TOKENIZER.eos_id],
                        [TOKENIZER.bos_id, 30, TOKENIZER.eos_id, TOKENIZER.pad_id]])
    expected = torch.stack([maps[0, 1:3].mean(0), maps[1, 1]])
    assert torch.allclose(expression_map(maps, ids), expected)
    with pytest.raises(ValueError, match="has no word token"):
        expression_map(maps, torch.full((2, 4), TOKENIZER.pad_id))
    with pytest.raises(ValueError, match=r"expected \(B, L, N\) and \(B, L\)"):
        expression_map(maps, ids[:, :3])


# ------------------------------------------------------------------------------ bad input


def test_the_model_refuses_bad_input():
    model, batch = tiny_model(), tiny_batch()
    images, ids = batch["image"], batch["tokens"]
    with pytest.raises(ValueError, match=r"images has shape \(4, 3, 8, 8\); expected \(B, 3, 16, 16\)"):
        model.itm_logits(torch.zeros(4, 3, 8, 8), ids)
    with pytest.raises(ValueError, match="images has batch size 4 but ids 3"):
        model.itm_logits(images, ids[:3])
    with pytest.raises(TypeError, match="integer tensor of token ids"):
        model.itm_logits(images, ids.float())
    with pytest.raises(ValueError, match="L <= max_length=12"):
        model.encode_text(torch.full((1, 13), 7))
    with pytest.raises(ValueError, match=r"expected token ids in \[0, "):
        model.encode_text(torch.full((1, 5), TOKENIZER.vocab_size))
    with pytest.raises(ValueError, match="only of padding"):
        model.encode_text(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"layer must be an int in \[-2, 2\)"):
        gradcam(model, images, ids, layer=2)
    with pytest.raises(ValueError, match="layer must be an int"):
        model.word_patch_attention(images, ids, layer=5)


def test_mean_pooling_averages_the_patches_and_the_real_tokens():
    torch.manual_seed(0)
    model = ALBEF(image_size=16, patch_size=4, width=16, embed_dim=8, image_depth=1, text_depth=1, fusion_depth=1,
                  heads=2, max_length=12, queue_size=8, pooling="mean")
    batch = tiny_batch()
    images, ids = batch["image"], batch["tokens"]
    tokens = model.image_encoder(images)
    expected_image = F.normalize(model.image_projection(tokens[:, 1:].mean(1)), dim=-1)
    assert torch.allclose(model.encode_image(images), expected_image, atol=1e-6)
    states, padding = model.text_encoder(ids)
    first = model.text_projection(states[0, :6].mean(0))  # row 0 has 6 real tokens and one pad
    assert torch.allclose(model.encode_text(ids, normalize=False)[0], first, atol=1e-6)
    momentum_image, _ = model.momentum_features(images, ids)
    assert torch.allclose(momentum_image, expected_image, atol=1e-6)  # the copy starts equal


def test_the_vision_transformer_standardises_pixels():
    torch.manual_seed(0)
    standardised = albef.VisionTransformer(16, 4, 16, 1, 2, pixel_mean=0.5, pixel_std=0.25)
    plain = albef.VisionTransformer(16, 4, 16, 1, 2, pixel_mean=0.0, pixel_std=1.0)
    plain.load_state_dict(standardised.state_dict())
    images = torch.rand(2, 3, 16, 16)
    assert torch.allclose(standardised(images), plain((images - 0.5) / 0.25), atol=1e-6)
    assert albef.VisionTransformer(16, 4, 16, 1, 2)(images).shape == (2, 17, 16)
    with pytest.raises(ValueError, match="pixel_std must be positive"):
        albef.VisionTransformer(16, 4, 16, 1, 2, pixel_std=0.0)


def test_the_constructors_refuse_bad_arguments():
    with pytest.raises(ValueError, match="pooling='max' is unknown"):
        ALBEF(pooling="max")
    with pytest.raises(ValueError, match="queue_size must be a positive int"):
        ALBEF(queue_size=0)
    with pytest.raises(ValueError, match="momentum must be a number in"):
        ALBEF(momentum=1.0)
    with pytest.raises(ValueError, match="embed_dim must be a positive int"):
        ALBEF(embed_dim=2.5)
    with pytest.raises(ValueError, match="multiple of 8"):
        small_albef(image_size=36)
    assert small_albef(image_size=64, width=16, heads=2, queue_size=8).grid == 8


def test_tokenize_wraps_and_pads_on_the_model_device():
    model = tiny_model()
    ids = model.tokenize(["a red circle", "two blue squares"])
    assert ids.shape == (2, 12) and ids.dtype == torch.long
    assert ids[0, :5].tolist() == TOKENIZER.encode("a red circle", wrap="bos_eos")
