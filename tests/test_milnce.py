"""mmcourse.models.milnce: the loss against a hand-written loop of the paper's formula, K = 1 as plain
NCE, gradients, the video and text towers, a short training run, and bad inputs."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmcourse.models.clip import clip_loss
from mmcourse.models.milnce import (MilNce, VideoEncoder, milnce_loss, milnce_training_loss, nce_loss,
                                    nce_training_loss, small_milnce)
from mmcourse.train import fit


def _unit(*shape, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype), dim=-1)


def _reference(video, text, temperature, mask=None) -> float:
    """The paper's Eq. 1 with plain loops: for clip i, the sum over its bag over the sum over every
    (clip i, any candidate of any bag) pair and every (other clip, candidate of bag i) pair."""
    batch, size = text.shape[:2]
    real = [[k for k in range(size) if mask is None or bool(mask[j, k])] for j in range(batch)]

    def score(i, j, k):
        return math.exp(float(video[i] @ text[j, k]) / temperature)

    total = 0.0
    for i in range(batch):
        numerator = sum(score(i, i, k) for k in real[i])
        denominator = sum(score(i, j, k) for j in range(batch) for k in real[j])
        denominator += sum(score(j, i, k) for j in range(batch) if j != i for k in real[i])
        total += -math.log(numerator / denominator)
    return total / batch


# -------------------------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("batch, size", [(1, 1), (1, 3), (2, 1), (3, 2), (5, 4), (8, 3)])
@pytest.mark.parametrize("temperature", [0.07, 0.5, 1.0, 2.0])
def test_loss_equals_the_reference_loop(batch, size, temperature):
    video, text = _unit(batch, 6, seed=batch), _unit(batch, size, 6, seed=100 + size)
    ours = milnce_loss(video, text, temperature)
    assert ours.dim() == 0
    assert float(ours) == pytest.approx(_reference(video, text, temperature), rel=1e-10)


def test_loss_on_unnormalised_features_and_float32():
    generator = torch.Generator().manual_seed(3)
    video, text = torch.randn(4, 5, generator=generator), torch.randn(4, 3, 5, generator=generator)
    assert float(milnce_loss(video, text, 0.8)) == pytest.approx(_reference(video.double(), text.double(), 0.8),
                                                                 rel=1e-5)


def test_positives_appear_once_in_the_denominator():
    # B = 1: nothing else in the batch, so the denominator is the numerator itself and the loss is 0
    assert float(milnce_loss(_unit(1, 4), _unit(1, 3, 4), 0.1)) == pytest.approx(0.0, abs=1e-12)
    # B = 2, K = 1, all scores zero: every term is 1; numerator 1, denominator 2 + 1 = 3
    zeros_video, zeros_text = torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 1, 3, dtype=torch.float64)
    assert float(milnce_loss(zeros_video, zeros_text)) == pytest.approx(math.log(3))


def test_masked_candidates_are_left_out():
    video, text = _unit(4, 5, seed=1), _unit(4, 3, 5, seed=2)
    mask = torch.tensor([[True, True, True], [True, False, False], [True, True, False], [False, True, False]])
    assert float(milnce_loss(video, text, 0.3, mask)) == pytest.approx(_reference(video, text, 0.3, mask), rel=1e-10)
    # a padded candidate may hold anything: changing it changes nothing
    moved = text.clone()
    moved[1, 1:] = _unit(2, 5, seed=9)
    torch.testing.assert_close(milnce_loss(video, moved, 0.3, mask), milnce_loss(video, text, 0.3, mask))
    # a bag padded with copies of its first candidate, copies masked, is the bag of one
    single = text[:, :1]
    copies = single.expand(-1, 3, -1)
    only_first = torch.tensor([[True, False, False]]).expand(4, -1)
    torch.testing.assert_close(milnce_loss(video, copies, 0.3, only_first), milnce_loss(video, single, 0.3))


def test_nce_is_the_single_softmax_over_both_directions():
    video, text = _unit(6, 8, seed=4), _unit(6, 8, seed=5)
    scores = video @ text.T / 0.2  # (B, B)
    # row i: clip i against every narration; then narration i against every other clip
    logits = torch.stack([torch.cat([scores[i], torch.cat([scores[:i, i], scores[i + 1:, i]])]) for i in range(6)])
    expected = F.cross_entropy(logits, torch.arange(6))  # the positive sits at column i of each row
    torch.testing.assert_close(nce_loss(video, text, 0.2), expected)
    torch.testing.assert_close(milnce_loss(video, text[:, None], 0.2), expected)


def test_nce_is_not_clips_average_of_two_softmaxes_but_bounds_it():
    # one softmax over 2B - 1 pairs has a larger denominator than each of CLIP's two: the NCE loss
    # is at least CLIP's symmetric loss, and equal for B = 1 (both 0)
    for seed in range(5):
        video, text = _unit(5, 8, seed=seed), _unit(5, 8, seed=seed + 50)
        assert float(nce_loss(video, text, 0.1)) > float(clip_loss(video, text, 10.0))
    assert float(nce_loss(_unit(1, 4), _unit(1, 4, seed=3))) == pytest.approx(0.0, abs=1e-12)


def test_bags_only_help():
    # adding candidates to a bag enlarges its numerator by the same terms as its row of the
    # denominator; with everything else equal, a perfect second candidate lowers the loss
    video = _unit(4, 6, seed=7)
    wrong = _unit(4, 1, 6, seed=8)
    right = video[:, None]
    assert float(milnce_loss(video, torch.cat([wrong, right], 1), 0.1)) < float(milnce_loss(video, wrong, 0.1))


def test_stable_for_large_scores():
    video, text = _unit(4, 6, seed=1, dtype=torch.float32), _unit(4, 2, 6, seed=2, dtype=torch.float32)
    loss = milnce_loss(video, text, 1e-4)  # scores up to 10^4: exp would overflow
    assert torch.isfinite(loss)
    video.requires_grad_(True)
    milnce_loss(video, text, 1e-3).backward()
    assert torch.isfinite(video.grad).all()


def test_gradients_flow_to_both_towers():
    video = _unit(3, 4, seed=1).requires_grad_(True)
    text = _unit(3, 2, 4, seed=2).requires_grad_(True)
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    assert torch.autograd.gradcheck(lambda v, t: milnce_loss(v, t, 0.5, mask), (video, text))
    milnce_loss(video, text, 0.5, mask).backward()
    assert video.grad.abs().sum() > 0 and text.grad[:, 0].abs().sum() > 0
    assert text.grad[1, 1].abs().sum() == 0  # a padded candidate gets no gradient
    temperature = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    milnce_loss(video.detach(), text.detach(), temperature).backward()
    assert temperature.grad is not None and temperature.grad != 0


@pytest.mark.parametrize("video, text, message", [
    (torch.zeros(3, 4), torch.zeros(3, 4), "text_features must have 3 dimensions"),
    (torch.zeros(3, 4, 1), torch.zeros(3, 2, 4), "video_features must have 2 dimensions"),
    (torch.zeros(3, 4), torch.zeros(2, 2, 4), r"expected \(3, K, 4\)"),
    (torch.zeros(3, 4), torch.zeros(3, 2, 5), r"expected \(3, K, 4\)"),
    (torch.zeros(3, 4), torch.zeros(3, 0, 4), "K >= 1"),
    (torch.zeros(0, 4), torch.zeros(0, 2, 4), "empty"),
])
def test_loss_refuses_bad_shapes(video, text, message):
    with pytest.raises(ValueError, match=message):
        milnce_loss(video, text)


def test_loss_refuses_bad_arguments():
    video, text = torch.zeros(2, 4), torch.zeros(2, 3, 4)
    with pytest.raises(TypeError, match="video_features must be a torch.Tensor"):
        milnce_loss(video.tolist(), text)
    with pytest.raises(TypeError, match="floating-point"):
        milnce_loss(video.long(), text)
    for temperature in (0.0, -1.0, float("nan"), torch.tensor(-0.5)):
        with pytest.raises(ValueError, match="temperature must be positive"):
            milnce_loss(video, text, temperature)
    with pytest.raises(TypeError, match="temperature must be a positive number"):
        milnce_loss(video, text, "0.1")
    with pytest.raises(ValueError, match="temperature must be a scalar"):
        milnce_loss(video, text, torch.ones(2))
    with pytest.raises(ValueError, match=r"candidate_mask must be a bool tensor of shape \(2, 3\)"):
        milnce_loss(video, text, 1.0, torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="candidate_mask must be a bool tensor"):
        milnce_loss(video, text, 1.0, torch.ones(2, 3))
    with pytest.raises(ValueError, match="candidate_mask row 1 is all False"):
        milnce_loss(video, text, 1.0, torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(ValueError, match="text_features must have 2 dimensions"):
        nce_loss(video, text)


# -------------------------------------------------------------------------------------------- the towers


def test_video_encoder_reads_steps_and_ignores_padding(one_torch_thread):
    torch.manual_seed(0)
    encoder = VideoEncoder(16).eval()
    frames = torch.rand(2, 4, 3, 32, 32)
    assert encoder(frames).shape == (2, 16)
    # a segment padded with junk frames, masked, is the segment alone
    padded = torch.cat([frames[:, :3], torch.rand(2, 3, 3, 32, 32)], 1)  # (2, 6, 3, 32, 32)
    mask = torch.tensor([[True] * 3 + [False] * 3] * 2)
    torch.testing.assert_close(encoder(padded, mask), encoder(frames[:, :3]), atol=1e-5, rtol=1e-5)
    # a still segment and one where an object appears differ
    still = torch.ones(1, 2, 3, 32, 32)
    appears = still.clone()
    appears[0, 1, :, 8:14, 8:14] = 0.0
    assert not torch.allclose(encoder(still), encoder(appears))


def test_video_encoder_refuses_bad_frames():
    encoder = VideoEncoder(16)
    with pytest.raises(ValueError, match="frames must have 5 dimensions"):
        encoder(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"T >= 2 frames, got \(2, 1, 3, 32, 32\)"):
        encoder(torch.rand(2, 1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"shape \(B, T, 3, H, W\)"):
        encoder(torch.rand(2, 3, 1, 32, 32))
    with pytest.raises(ValueError, match=r"frame_mask must be a bool tensor of shape \(2, 3\)"):
        encoder(torch.rand(2, 3, 3, 32, 32), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="width must be a positive int"):
        VideoEncoder(0)


def test_dual_encoder_shapes_and_norms(one_torch_thread):
    torch.manual_seed(0)
    model = small_milnce(width=16, embed_dim=8)
    ids = model.tokenize(["the red circle grows", "now watch this", "the blue square moves left"])
    assert ids.dtype == torch.int64 and ids.shape[0] == 3
    bags = torch.stack([ids[:2], ids[1:]])  # (2, 2, L)
    video, text = model(torch.rand(2, 3, 3, 32, 32), bags)
    assert video.shape == (2, 8) and text.shape == (2, 2, 8)
    torch.testing.assert_close(video.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2, 2))
    torch.testing.assert_close(text[0, 1], text[1, 0])  # the same narration, the same feature
    with pytest.raises(ValueError, match=r"expected \(2, K, L\)"):
        model(torch.rand(2, 3, 3, 32, 32), bags[:1])
    with pytest.raises(ValueError, match="narrations must have 3 dimensions"):
        model(torch.rand(2, 3, 3, 32, 32), ids[:2])
    with pytest.raises(TypeError, match="integer tensor of token ids"):
        model.encode_text(ids.float())
    with pytest.raises(ValueError, match=r"ids must have shape \(N, L\) or \(B, K, L\)"):
        model.encode_text(ids[0])
    with pytest.raises(TypeError, match="texts must be a list of str"):
        model.tokenize("the red circle grows")
    with pytest.raises(ValueError, match="texts is empty"):
        model.tokenize([])
    with pytest.raises(ValueError, match="embed_dim must be a positive int"):
        MilNce(VideoEncoder(8), model.text_encoder, 0)
    with pytest.raises(TypeError, match="video_encoder must be an nn.Module"):
        MilNce(torch.nn.Linear(2, 2), model.text_encoder, 8)


def _toy_batch(seed: int = 0, batch: int = 8, size: int = 2) -> dict:
    """Segments where one square appears in a colour; bag candidate 0 names it, others are noise ids."""
    generator = torch.Generator().manual_seed(seed)
    frames = torch.ones(batch, 2, 3, 32, 32)
    narrations = torch.randint(7, 40, (batch, size, 4), generator=generator)
    for i in range(batch):
        frames[i, 1, i % 3, 4 * i:4 * i + 6, 4 * i:4 * i + 6] = 0.0  # a different place and colour per segment
        narrations[i, 0] = torch.tensor([7 + i, 20 + i % 3, 30, 0])
    return {"frames": frames, "narrations": narrations, "narration_mask": torch.ones(batch, size, dtype=torch.bool)}


def test_training_losses_agree_with_the_loss(one_torch_thread):
    torch.manual_seed(0)
    model = small_milnce(width=16, embed_dim=8).eval()
    batch = _toy_batch()
    video, text = model(batch["frames"], batch["narrations"])
    loss, logged = milnce_training_loss(model, batch, temperature=0.2)
    torch.testing.assert_close(loss, milnce_loss(video, text, 0.2))
    nce, _ = nce_training_loss(model, batch, temperature=0.2)
    torch.testing.assert_close(nce, nce_loss(video, text[:, 0], 0.2))
    assert 0.0 <= float(logged["bag_accuracy"]) <= 1.0
    with pytest.raises(ValueError, match="bag_size must be a positive int"):
        milnce_training_loss(model, batch, bag_size=0)
    with pytest.raises(ValueError, match=r"missing \['narration_mask'\]"):
        milnce_training_loss(model, {"frames": batch["frames"], "narrations": batch["narrations"]})


def test_a_short_run_learns_to_match(one_torch_thread):
    torch.manual_seed(0)
    model = small_milnce(width=16, embed_dim=16)
    batch = _toy_batch()
    with torch.no_grad():
        before = float(milnce_training_loss(model.eval(), batch, 0.1)[0])
    history = fit(model, [batch], lambda m, b: milnce_training_loss(m, b, 0.1), epochs=80, lr=3e-3, progress=False)
    with torch.no_grad():
        after, logged = milnce_training_loss(model, batch, 0.1)  # fit leaves the model in eval mode
    assert float(after) < 0.1 * before
    assert float(logged["bag_accuracy"]) == 1.0
    assert history[-1]["train_loss"] < history[0]["train_loss"]
