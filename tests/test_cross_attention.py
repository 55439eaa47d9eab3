"""Tests of the Multimodal Transformer's crossmodal attention and the resampled early-fusion baseline
(mmcourse.models.cross_attention)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmcourse.models.cross_attention import (MODALITIES, CrossmodalBlock, MulT, ResampledEarlyFusion, resample,
                                             sinusoidal_positions)
from mmcourse.models.layers import attention

WIDTH, HEADS, VIDEO_DIM, AUDIO_DIM, VOCAB = 16, 4, 5, 4, 30
B, T_VIDEO, T_AUDIO = 3, 12, 20

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is faster on a busy machine


def seeded(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def block() -> CrossmodalBlock:
    torch.manual_seed(0)
    return CrossmodalBlock(WIDTH, HEADS, source_width=8).eval()


def text_ids(seed=0) -> torch.Tensor:
    """(B, 6) right-padded ids: rows of 6, 5 and 4 words."""
    ids = torch.randint(7, VOCAB, (B, 6), generator=torch.Generator().manual_seed(seed))
    ids[1, 5:] = 0
    ids[2, 4:] = 0
    return ids


def inputs(seed=0):
    return seeded(B, T_VIDEO, VIDEO_DIM, seed=seed), seeded(B, T_AUDIO, AUDIO_DIM, seed=seed + 1), text_ids(seed)


@pytest.fixture
def mult() -> MulT:
    torch.manual_seed(0)
    return MulT(VIDEO_DIM, AUDIO_DIM, VOCAB, width=WIDTH, heads=HEADS).eval()


@pytest.fixture
def early() -> ResampledEarlyFusion:
    torch.manual_seed(0)
    return ResampledEarlyFusion(VIDEO_DIM, AUDIO_DIM, VOCAB, width=WIDTH, heads=HEADS).eval()


# --- the crossmodal block ----------------------------------------------------------------------

def test_block_computes_the_papers_equations(block):
    target, source = seeded(B, 5, WIDTH), seeded(B, 7, 8, seed=1)
    z = block.target_norm(target)
    a = block.attention
    split = lambda x: x.unflatten(-1, (HEADS, -1)).transpose(1, 2)  # noqa: E731
    read, weights = attention(split(a.query(z)), split(a.key(block.source_norm(source))),
                              split(a.value(block.source_norm(source))))
    z_hat = block.ff_norm(a.out(read.transpose(1, 2).flatten(2)) + z)  # LN(CM(LN(Z), LN(X)) + LN(Z))
    expected = block.feed_forward(z_hat) + z_hat
    assert torch.allclose(block(target, source), expected, atol=1e-6)
    assert torch.allclose(block.attention_weights, weights)


def test_queries_come_from_the_target_and_keys_values_from_the_source(block):
    target, source = seeded(B, 5, WIDTH), seeded(B, 7, 8, seed=1)
    out = block(target, source)
    assert out.shape == (B, 5, WIDTH)  # one output per target step, whatever the source length
    assert block.attention_weights.shape == (B, HEADS, 5, 7)
    assert torch.allclose(block.attention_weights.sum(-1), torch.ones(B, HEADS, 5))
    assert not torch.allclose(block(target, seeded(B, 7, 8, seed=2)), out, atol=1e-3)  # the source is read
    assert block(target, seeded(B, 11, 8, seed=2)).shape == (B, 5, WIDTH)  # any source length
    # Target steps do not see each other: changing step 0 of the target changes output step 0 only.
    changed = target.clone()
    changed[:, 0] = seeded(B, WIDTH, seed=3)
    new = block(changed, source)
    assert not torch.allclose(new[:, 0], out[:, 0], atol=1e-3)
    assert torch.allclose(new[:, 1:], out[:, 1:], atol=1e-6)


def test_padded_source_steps_get_zero_weight_and_change_nothing(block):
    target, source = seeded(B, 5, WIDTH), seeded(B, 7, 8, seed=1)
    padding = torch.zeros(B, 7, dtype=torch.bool)
    padding[0, 4:] = True
    padding[2, 6] = True
    out = block(target, source, padding)
    assert (block.attention_weights[0, :, :, 4:] == 0).all() and (block.attention_weights[2, :, :, 6] == 0).all()
    assert (block.attention_weights[1] > 0).all()
    other = source.clone()
    other[padding] = seeded(int(padding.sum()), 8, seed=5) * 10
    assert torch.allclose(block(target, other, padding), out, atol=1e-6)
    assert torch.allclose(block(target[:1], source[:1, :4]), out[:1], atol=1e-5)  # as if those steps were absent


@pytest.mark.parametrize("target, source, mask, error, words", [
    (seeded(B, 5, WIDTH + 1), seeded(B, 7, 8), None, ValueError, "target has shape"),
    (seeded(B, 5, WIDTH), seeded(B, 7, 9), None, ValueError, "source has shape"),
    (seeded(B, 5, WIDTH), seeded(B + 1, 7, 8), None, ValueError, "batch size"),
    (seeded(B, WIDTH), seeded(B, 7, 8), None, ValueError, "target must have 3 dimensions"),
    (seeded(B, 5, WIDTH), seeded(B, 7, 8), torch.zeros(B, 6, dtype=torch.bool), ValueError, "source_padding_mask"),
    (seeded(B, 5, WIDTH), seeded(B, 7, 8), torch.zeros(B, 7), TypeError, "bool"),
    (seeded(B, 5, WIDTH), seeded(B, 7, 8), torch.ones(B, 7, dtype=torch.bool), ValueError, "every step"),
])
def test_block_refuses_bad_inputs(block, target, source, mask, error, words):
    with pytest.raises(error, match=words):
        block(target, source, mask)


def test_sinusoidal_positions_follow_the_formula():
    table = sinusoidal_positions(7, 6)
    assert table.shape == (7, 6)
    assert torch.allclose(table[3, 2], torch.tensor(3 / 10000 ** (2 / 6)).sin())
    assert torch.allclose(table[3, 3], torch.tensor(3 / 10000 ** (2 / 6)).cos())
    assert sinusoidal_positions(4, 5).shape == (4, 5)  # odd widths too


# --- MulT ----------------------------------------------------------------------------------------

def test_mult_reads_unaligned_sequences(mult):
    video, audio, text = inputs()
    logits = mult(video, audio, text)
    assert logits.shape == (B, 2) and torch.isfinite(logits).all()
    assert sorted(mult.crossmodal) == sorted(f"{s}->{t}" for t in MODALITIES for s in MODALITIES if s != t)
    assert mult(video[:, :7], audio[:, :9], text).shape == (B, 2)  # any lengths
    for changed in ((seeded(B, T_VIDEO, VIDEO_DIM, seed=9), audio, text),
                    (video, seeded(B, T_AUDIO, AUDIO_DIM, seed=9), text), (video, audio, text_ids(seed=4))):
        assert not torch.allclose(mult(*changed), logits, atol=1e-4)  # every modality counts


def test_mult_attention_readout(mult):
    video, audio, text = inputs()
    attention = mult.text_to_video_attention(video, audio, text)
    assert attention.shape == (B, 6, T_VIDEO)
    assert torch.allclose(attention.sum(-1), torch.ones(B, 6))
    assert mult.attention_weights("audio", "video").shape == (B, HEADS, T_VIDEO, T_AUDIO)
    assert mult.attention_weights("text", "audio").shape == (B, HEADS, T_AUDIO, 6)
    assert (mult.attention_weights("text", "audio")[2, :, :, 4:] == 0).all()  # padded words get no weight
    with pytest.raises(ValueError, match="no crossmodal block"):
        mult.attention_weights("video", "video")
    with pytest.raises(RuntimeError, match="call the model"):
        MulT(VIDEO_DIM, AUDIO_DIM, VOCAB, width=WIDTH).attention_weights("video", "text")


def test_padding_changes_nothing(mult):
    video, audio, text = inputs()
    logits = mult(video, audio, text)
    more_pads = torch.cat([text, torch.zeros(B, 3, dtype=torch.long)], 1)
    assert torch.allclose(mult(video, audio, more_pads), logits, atol=1e-5)
    video_padding = torch.zeros(B, T_VIDEO, dtype=torch.bool)
    video_padding[:, 9:] = True
    audio_padding = torch.zeros(B, T_AUDIO, dtype=torch.bool)
    audio_padding[0, 15:] = True
    padded = mult(video, audio, text, video_padding_mask=video_padding, audio_padding_mask=audio_padding)
    assert torch.allclose(padded[1:], mult(video[1:, :9], audio[1:], text[1:]), atol=1e-5)
    noisy_video, noisy_audio = video.clone(), audio.clone()
    noisy_video[video_padding] = 50.0
    noisy_audio[audio_padding] = -50.0
    assert torch.allclose(mult(noisy_video, noisy_audio, text, video_padding_mask=video_padding,
                               audio_padding_mask=audio_padding), padded, atol=1e-5)


def test_mult_options():
    torch.manual_seed(0)
    text_only = MulT(VIDEO_DIM, AUDIO_DIM, VOCAB, width=WIDTH, targets=("text",))
    assert sorted(text_only.crossmodal) == ["audio->text", "video->text"]
    deeper = MulT(VIDEO_DIM, AUDIO_DIM, VOCAB, width=WIDTH, depth=2, self_depth=1, kernel_size=1, num_classes=3)
    assert len(deeper.crossmodal["video->text"]) == 2 and deeper.self_attention is not None
    assert deeper(*inputs()).shape == (B, 3)
    with pytest.raises(ValueError, match="no crossmodal block"):
        text_only.attention_weights("text", "video")


@pytest.mark.parametrize("change, error, words", [
    (lambda v, a, t: (v[..., :4], a, t), ValueError, r"video has shape \(3, 12, 4\); expected \(B, T_v, 5\)"),
    (lambda v, a, t: (v, a[..., :3], t), ValueError, r"audio has shape"),
    (lambda v, a, t: (v, a[:2], t), ValueError, "audio has batch size 2 but video has 3"),
    (lambda v, a, t: (v, a, t[:2]), ValueError, "text has batch size 2"),
    (lambda v, a, t: (v, a, t.float()), TypeError, "text must be an integer tensor"),
    (lambda v, a, t: (v[0], a, t), ValueError, "video must have 3 dimensions"),
    (lambda v, a, t: (v.long(), a, t), TypeError, "video must be a floating-point"),
    (lambda v, a, t: (v, a, t * torch.tensor([[1], [1], [0]])), ValueError, "only of padding"),
])
def test_models_refuse_bad_inputs(mult, early, change, error, words):
    for model in (mult, early):
        with pytest.raises(error, match=words):
            model(*change(*inputs()))


def test_mult_refuses_bad_masks(mult):
    video, audio, text = inputs()
    with pytest.raises(ValueError, match="video_padding_mask has shape"):
        mult(video, audio, text, video_padding_mask=torch.zeros(B, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="audio_padding_mask must be a bool"):
        mult(video, audio, text, audio_padding_mask=torch.zeros(B, T_AUDIO))


@pytest.mark.parametrize("kwargs, words", [
    (dict(targets=("text", "smell")), "targets"),
    (dict(targets=()), "targets"),
    (dict(kernel_size=2), "kernel_size"),
    (dict(width=0), "width"),
    (dict(self_depth=-1), "self_depth"),
    (dict(width=18), "multiple of heads"),
])
def test_mult_refuses_bad_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words):
        MulT(VIDEO_DIM, AUDIO_DIM, VOCAB, **kwargs)


# --- resampled early fusion ----------------------------------------------------------------------

def test_resample_averages_the_frames_of_each_word_step():
    frames = torch.arange(12.0).view(1, 12, 1).repeat(2, 1, 1)  # (2, 12, 1): frame t holds t
    out = resample(frames, torch.tensor([6, 4]), 7)
    assert torch.equal(out[0, :, 0], torch.tensor([0.5, 2.5, 4.5, 6.5, 8.5, 10.5, 0.0]))  # pairs of frames
    assert torch.equal(out[1, :, 0], torch.tensor([1.0, 4.0, 7.0, 10.0, 0.0, 0.0, 0.0]))  # triples
    linear = resample(frames[:1], torch.tensor([6]), 6, mode="linear")
    assert torch.allclose(linear[0, :, 0], torch.tensor([0.5, 2.5, 4.5, 6.5, 8.5, 10.5]))


@pytest.mark.parametrize("lengths, mode, words", [
    (torch.tensor([6]), "area", "lengths"),
    (torch.tensor([6, 8]), "area", "lengths"),
    (torch.tensor([6, 0]), "area", "lengths"),
    (torch.tensor([6.0, 5.0]), "area", "integer"),
    (torch.tensor([6, 5]), "cubic", "mode"),
])
def test_resample_refuses_bad_arguments(lengths, mode, words):
    with pytest.raises((ValueError, TypeError), match=words):
        resample(torch.zeros(2, 12, 3), lengths, 7, mode)


def test_early_fusion_reads_every_modality_and_ignores_padding(early):
    video, audio, text = inputs()
    logits = early(video, audio, text)
    assert logits.shape == (B, 2)
    more_pads = torch.cat([text, torch.zeros(B, 2, dtype=torch.long)], 1)
    assert torch.allclose(early(video, audio, more_pads), logits, atol=1e-5)
    assert not torch.allclose(early(seeded(B, T_VIDEO, VIDEO_DIM, seed=7), audio, text), logits, atol=1e-4)
    assert not torch.allclose(early(video, seeded(B, T_AUDIO, AUDIO_DIM, seed=7), text), logits, atol=1e-4)
    with pytest.raises(ValueError, match="right-padded"):
        early(video, audio, text.flip(1))


def test_early_fusion_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        ResampledEarlyFusion(VIDEO_DIM, AUDIO_DIM, VOCAB, mode="bicubic")


def test_both_models_learn_a_cue_in_the_video():
    """A smile at a random frame of an otherwise noisy clip: both models learn to spot it."""
    generator = torch.Generator().manual_seed(0)
    n = 192
    labels = torch.randint(0, 2, (n,), generator=generator)
    video = torch.randn(n, T_VIDEO, VIDEO_DIM, generator=generator)
    onset = torch.randint(0, T_VIDEO - 2, (n,), generator=generator)
    for k in range(3):
        video[torch.arange(n), onset + k, 0] += 4.0 * (2 * labels - 1)
    audio = torch.randn(n, T_AUDIO, AUDIO_DIM, generator=generator)
    text = torch.randint(7, VOCAB, (n, 5), generator=generator)
    for model_class in (MulT, ResampledEarlyFusion):
        torch.manual_seed(0)
        model = model_class(VIDEO_DIM, AUDIO_DIM, VOCAB, width=WIDTH)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for step in range(40):
            rows = torch.arange(step * 48, step * 48 + 48) % n
            loss = F.cross_entropy(model(video[rows], audio[rows], text[rows]), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            accuracy = (model.eval()(video, audio, text).argmax(1) == labels).float().mean().item()
        assert accuracy > 0.9, (model_class.__name__, accuracy)
