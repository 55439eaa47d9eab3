"""mmcourse.models.clip: the loss against open_clip's, the model's temperature, zero-shot weights,
a short training run, and bad inputs."""
import math

import pytest
import torch
import torch.nn.functional as F
from bench_helpers import load_bench
from open_clip.loss import ClipLoss
from torch.utils.data import DataLoader

from mmcourse.metrics import retrieval_recalls
from mmcourse.models.clip import (CLIP, LOGIT_SCALE_INIT, LOGIT_SCALE_MAX, clip_loss, clip_training_loss,
                                  similarity_matrix, small_clip, zero_shot_classifier)
from mmcourse.train import fit
from mmcourse.world.datasets import CaptionDataset
from mmcourse.world.language import default_tokenizer

SIZES = [(1, 4), (2, 3), (7, 16), (64, 32), (130, 512)]


def _unit(*shape, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype), dim=-1)


# -------------------------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("batch, dim", SIZES)
@pytest.mark.parametrize("scale", [1.0, 1 / 0.07, 100.0])
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 0.0), (torch.float32, 1e-6)])
def test_clip_loss_agrees_with_open_clip(batch, dim, scale, dtype, rtol):
    # in float32 a loss of ~40 (scale 100) is only known to 4e-6: one unit in the last place
    image, text = _unit(batch, dim, seed=batch, dtype=dtype), _unit(batch, dim, seed=batch + 1, dtype=dtype)
    ours = clip_loss(image, text, scale)
    theirs = ClipLoss()(image, text, scale)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=rtol)


@pytest.mark.parametrize("batch, dim", SIZES)
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_clip_loss_gradients_agree_with_open_clip(batch, dim, dtype, atol):
    def gradients(loss_fn):
        image = _unit(batch, dim, seed=batch, dtype=dtype).requires_grad_()
        text = _unit(batch, dim, seed=batch + 1, dtype=dtype).requires_grad_()
        log_scale = torch.tensor(LOGIT_SCALE_INIT, dtype=dtype, requires_grad=True)
        loss = loss_fn(image, text, log_scale.exp())
        return torch.autograd.grad(loss, (image, text, log_scale))

    for ours, theirs in zip(gradients(clip_loss), gradients(ClipLoss())):
        # relative to the largest entry: the gradient scales with the logit scale
        torch.testing.assert_close(ours, theirs, atol=atol * max(1.0, theirs.abs().max().item()), rtol=0)


def test_clip_loss_known_values():
    # one pair: nothing to contrast with, the loss is zero whatever the features
    assert clip_loss(_unit(1, 8), _unit(1, 8, seed=1), 10.0).item() == pytest.approx(0.0, abs=1e-7)
    # B orthonormal pairs, text i == image i: each row has e^s on the diagonal and B - 1 ones elsewhere
    batch, scale = 4, 5.0
    eye = torch.eye(batch)
    expected = -math.log(math.exp(scale) / (math.exp(scale) + batch - 1))
    assert clip_loss(eye, eye, scale).item() == pytest.approx(expected, rel=1e-6)
    # swapping the texts makes every diagonal pair wrong: the loss grows
    assert clip_loss(eye, eye.flip(0), scale).item() > expected + scale


def test_clip_loss_is_symmetric_in_its_two_directions():
    image, text = _unit(6, 8), _unit(6, 8, seed=1)
    torch.testing.assert_close(clip_loss(image, text, 3.0), clip_loss(text, image, 3.0))


def test_clip_loss_accepts_half_precision_normalised_features():
    image, text = _unit(8, 16).bfloat16(), _unit(8, 16, seed=1).bfloat16()
    assert torch.isfinite(clip_loss(image, text, 14.0))


@pytest.mark.parametrize("image, text, scale, error, match", [
    (_unit(4, 8), _unit(5, 8), 1.0, ValueError, r"shape \(4, 8\) but text_features has shape \(5, 8\)"),
    (_unit(4, 8), _unit(4, 9), 1.0, ValueError, "expected the same"),
    (_unit(4, 8)[0], _unit(4, 8)[0], 1.0, ValueError, "image_features must have 2 dimensions"),
    (_unit(4, 8), _unit(2, 4, 8), 1.0, ValueError, "text_features must have 2 dimensions"),
    (_unit(4, 8).long(), _unit(4, 8), 1.0, TypeError, "floating-point"),
    ([[1.0]], _unit(1, 1), 1.0, TypeError, "torch.Tensor"),
    (torch.zeros(0, 8), torch.zeros(0, 8), 1.0, ValueError, "empty"),
    (_unit(4, 8) * 2, _unit(4, 8), 1.0, ValueError, "image_features must have L2-normalised rows"),
    (_unit(4, 8), _unit(4, 8) * 1.01, 1.0, ValueError, "text_features must have L2-normalised rows"),
    (_unit(4, 8), torch.randn(4, 8), 1.0, ValueError, "F.normalize"),
    (_unit(4, 8), _unit(4, 8), 0.0, ValueError, "positive"),
    (_unit(4, 8), _unit(4, 8), -2.0, ValueError, "positive"),
    (_unit(4, 8), _unit(4, 8), float("nan"), ValueError, "positive and finite"),
    (_unit(4, 8), _unit(4, 8), torch.tensor(-1.0), ValueError, "positive"),
    (_unit(4, 8), _unit(4, 8), torch.ones(4), ValueError, r"scalar .* shape \(4,\)"),
    (_unit(4, 8), _unit(4, 8), True, TypeError, "logit_scale"),
    (_unit(4, 8), _unit(4, 8), "14", TypeError, "logit_scale"),
])
def test_clip_loss_refuses_bad_input(image, text, scale, error, match):
    with pytest.raises(error, match=match):
        clip_loss(image, text, scale)


def test_clip_loss_speed_is_close_to_open_clip():
    """A loose check of bench/clip_loss_speed.py (which prints the real ratios): at most 1.5x."""
    bench = load_bench("clip_loss_speed")
    ours, theirs = bench.time_ratio(batch_size=256, dim=256, rounds=5, calls=5)
    assert ours / theirs <= 1.5, f"clip_loss takes {ours / theirs:.2f}x open_clip's time"


def test_similarity_matrix_is_cosine():
    image, text = torch.randn(3, 5) * 4, torch.randn(7, 5)
    similarity = similarity_matrix(image, text)
    assert similarity.shape == (3, 7)
    torch.testing.assert_close(similarity[1, 4], F.cosine_similarity(image[1], text[4], dim=0))
    with pytest.raises(ValueError, match="D=5 but text_features has D=4"):
        similarity_matrix(image, torch.randn(7, 4))
    with pytest.raises(ValueError, match="2 dimensions"):
        similarity_matrix(image[0], text)


# ------------------------------------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return small_clip(image_size=32, width=32, embed_dim=16, depth=1)


def test_temperature_starts_at_0_07_and_is_clamped_at_100(model):
    assert model.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert model.log_logit_scale.item() == pytest.approx(LOGIT_SCALE_INIT)
    clamped = small_clip(image_size=32, width=32, embed_dim=16, depth=1)
    with torch.no_grad():
        clamped.log_logit_scale.fill_(LOGIT_SCALE_MAX + 1)
    assert clamped.logit_scale.item() == pytest.approx(100.0)
    clamped.logit_scale.backward()
    assert clamped.log_logit_scale.grad.item() == 0.0  # no push beyond the clamp
    model.logit_scale.backward()
    assert model.log_logit_scale.grad.item() == pytest.approx(1 / 0.07, rel=1e-6)  # d exp(x) / dx below it
    model.zero_grad()


@pytest.mark.parametrize("vision", ["vit", "cnn"])
def test_forward_gives_normalised_features(vision):
    torch.manual_seed(0)
    model = small_clip(image_size=32, width=32, embed_dim=16, vision=vision, depth=1)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = model.tokenize(["a red circle", "two blue squares", "there is a small green triangle"])
    image_features, text_features, logit_scale = model(images, ids)
    assert image_features.shape == text_features.shape == (3, 16)
    torch.testing.assert_close(image_features.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(text_features.norm(dim=-1), torch.ones(3))
    assert logit_scale.dim() == 0
    raw = model.encode_text(ids, normalize=False)
    torch.testing.assert_close(F.normalize(raw, dim=-1), text_features)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3))


def test_tokenize_wraps_and_pads_to_the_model_length(model):
    tokenizer = default_tokenizer()
    ids = model.tokenize(["a red circle", "hi there"])
    assert ids.dtype == torch.int64 and ids.shape == (2, model.text_encoder.max_length)
    assert ids[0, :5].tolist() == [tokenizer.bos_id, *tokenizer.encode("a red circle"), tokenizer.eos_id]
    assert (ids[0, 5:] == tokenizer.pad_id).all()
    assert ids[1, 1].item() == tokenizer.unk_id  # "hi" is not a word of the world
    with pytest.raises(ValueError, match="more than length=48"):
        model.tokenize([" ".join(["red"] * 60)])


def test_model_refuses_bad_construction():
    with pytest.raises(ValueError, match="vision='resnet'"):
        small_clip(vision="resnet")
    encoder = small_clip(width=32, depth=1)
    with pytest.raises(ValueError, match="embed_dim must be a positive int"):
        CLIP(encoder.image_encoder, encoder.text_encoder, 0)
    with pytest.raises(TypeError, match="image_encoder must be an nn.Module with an int `width`"):
        CLIP(torch.nn.Linear(3, 3), encoder.text_encoder, 8)
    with pytest.raises(TypeError, match="max_length"):
        CLIP(encoder.image_encoder, encoder.image_encoder, 8)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_short_training_run_aligns_images_and_captions():
    """~160 steps on 128 pairs: the model learns to match them far above chance (1/128 for R@1)."""
    dataset = CaptionDataset(128, seed=0, image_size=32, cache=False)
    torch.manual_seed(0)
    model = small_clip(image_size=32, width=32, embed_dim=32, vision="cnn", depth=1)
    loader = DataLoader(dataset, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    history = fit(model, loader, clip_training_loss, epochs=40, lr=3e-3, device="cpu", progress=False)
    model.eval()
    batch = next(iter(DataLoader(dataset, batch_size=len(dataset))))
    with torch.no_grad():
        similarity = similarity_matrix(model.encode_image(batch["image"]), model.encode_text(batch["tokens"]))
    recalls = retrieval_recalls(similarity.numpy(), ks=(1,))
    assert history["train_loss"][-1] < history["train_loss"][0] - 1.0
    assert history["accuracy"][-1] > 0.5 and {"logit_scale", "accuracy"} <= set(history.names())
    assert recalls["i2t_R@1"] >= 0.3 and recalls["t2i_R@1"] >= 0.3, recalls  # chance: 1 / 128


# ------------------------------------------------------------------------------------ zero-shot weights


def test_zero_shot_classifier_averages_normalised_prompt_embeddings(model):
    classnames, templates = ["red circle", "blue square"], ["a {}", "there is a {}", lambda c: f"the {c}"]
    weights = zero_shot_classifier(model, classnames, templates)
    assert weights.shape == (16, 2) and not weights.requires_grad
    with torch.no_grad():
        prompts = model.encode_text(model.tokenize(["a blue square", "there is a blue square", "the blue square"]))
    torch.testing.assert_close(weights[:, 1], F.normalize(prompts.mean(0), dim=0))
    single = zero_shot_classifier(model, ["red circle"], ["{}"])
    with torch.no_grad():
        torch.testing.assert_close(single[:, 0], model.encode_text(model.tokenize(["red circle"]))[0])


def test_zero_shot_classifier_batches_do_not_change_the_result(model):
    classnames, templates = ["red", "green", "blue"], ["a {} shape", "{}"]
    torch.testing.assert_close(zero_shot_classifier(model, classnames, templates, batch_size=1),
                               zero_shot_classifier(model, classnames, templates))


@pytest.mark.parametrize("classnames, templates, error, match", [
    ([], ["{}"], ValueError, "classnames is empty"),
    (["red"], [], ValueError, "templates is empty"),
    ("red", ["{}"], TypeError, "classnames must be a sequence of str"),
    (["red", 3], ["{}"], TypeError, r"classnames\[1\]"),
    (["red"], "a {}", TypeError, "wrap a single template"),
    (["red"], ["a picture"], ValueError, r"templates\[0\]='a picture' has no '\{\}'"),
    (["red"], ["{}", 5], TypeError, r"templates\[1\]"),
])
def test_zero_shot_classifier_refuses_bad_input(model, classnames, templates, error, match):
    with pytest.raises(error, match=match):
        zero_shot_classifier(model, classnames, templates)


def test_zero_shot_classifier_needs_a_text_model(model):
    with pytest.raises(TypeError, match="tokenize"):
        zero_shot_classifier(torch.nn.Linear(2, 2), ["red"], ["{}"])
    with pytest.raises(ValueError, match="batch_size"):
        zero_shot_classifier(model, ["red"], ["{}"], batch_size=0)
