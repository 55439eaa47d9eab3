"""Tests of the MulT experiment helpers (mmcourse.experiments.alignment.affect): data, training, accuracy
per interaction type and the word -> frame attention scored against the expression frames."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mmcourse.experiments.alignment import affect as mult_experiment
from mmcourse.world import affect
from mmcourse.world.language import default_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCOURSE_CACHE_DIR", str(tmp_path / "cache"))


class Oracle(nn.Module):
    """Attends from every word to the frames where the face moves (at noise 0: the expression frames),
    or uniformly, or away from them; always predicts class 1."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.parameter = nn.Parameter(torch.zeros(1))

    def forward(self, video, audio, text):
        return torch.tensor([0.0, 1.0]).expand(len(video), 2)

    def text_to_video_attention(self, video, audio, text):
        moving = (video.abs().sum(-1) > 0).float()  # (B, T_v)
        scores = {"oracle": moving, "uniform": torch.ones_like(moving), "away": 1.0 - moving}[self.how]
        scores = scores + 1e-12 if self.how == "away" else scores
        maps = scores / scores.sum(1, keepdim=True)
        return maps[:, None, :].expand(-1, text.shape[1], -1)  # (B, L, T_v)


@pytest.fixture(scope="module")
def clean():
    return mult_experiment.unaligned_affect(60, seed=3, noise=0.0, cache=False)


def test_unaligned_items_have_their_own_lengths_and_the_expression(clean):
    item = clean[0]
    assert item["video"].shape == (mult_experiment.VIDEO_FRAMES, len(affect.VIDEO_CHANNELS))
    assert item["audio"].shape == (mult_experiment.AUDIO_FRAMES, len(affect.AUDIO_CHANNELS))
    assert item["expression"].shape == (mult_experiment.VIDEO_FRAMES,) and item["expression"].dtype == torch.bool
    for i in range(len(clean)):  # at noise 0 the face moves exactly on its expression frames
        moving = clean[i]["video"].abs().sum(-1) > 0
        assert torch.equal(moving, clean[i]["expression"])


@pytest.mark.parametrize("how, mass, pointing", [("oracle", 1.0, 1.0), ("away", 0.0, 0.0)])
def test_grounding_scores_a_perfect_and_an_opposite_attention(clean, how, mass, pointing):
    scores = mult_experiment.word_to_frame_grounding(Oracle(how), clean)
    assert scores["mass_on_expression"] == pytest.approx(mass, abs=1e-6)
    assert scores["pointing_game"] == pointing
    assert scores["chance"] == pytest.approx(4 / 12)  # round(12 / 3) expression frames of 12
    faces = int(sum(clean[i]["expression"].any() for i in range(len(clean))))
    assert scores["examples"] == faces > 10


def test_uniform_attention_scores_chance_and_never_points(clean):
    scores = mult_experiment.word_to_frame_grounding(Oracle("uniform"), clean, words="opinion")
    assert scores["mass_on_expression"] == pytest.approx(scores["chance"])
    assert scores["pointing_game"] == 0.0  # ties count against the model


def test_word_attention_averages_real_words_or_picks_the_opinion_word():
    attention = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)  # (B, L, T)
    text = torch.tensor([[9, 9, 9, 9], [9, 9, 9, 0]])
    mean = mult_experiment.word_attention(attention, text)
    assert torch.allclose(mean[0], attention[0].mean(0)) and torch.allclose(mean[1], attention[1, :3].mean(0))
    opinion = mult_experiment.word_attention(attention, text, words="opinion")
    assert torch.equal(opinion, torch.stack([attention[0, 2], attention[1, 1]]))
    with pytest.raises(ValueError, match="expected \\(B, L, T\\) and \\(B, L\\)"):
        mult_experiment.word_attention(attention, text[:, :3])


def test_the_opinion_word_is_the_adjective(clean):
    tokenizer = default_tokenizer()
    adjectives = set(affect.POSITIVE_WORDS + affect.NEGATIVE_WORDS + affect.NEUTRAL_WORDS)
    text = torch.stack([clean[i]["text"] for i in range(len(clean))])  # (N, L)
    attention = torch.eye(text.shape[1]).expand(len(text), -1, -1)  # word l attends to "frame" l
    position = mult_experiment.word_attention(attention, text, words="opinion").argmax(1)  # (N,)
    words = {tokenizer.decode([int(text[i, position[i]])]) for i in range(len(text))}
    assert words <= adjectives and len(words) > 5


def test_accuracy_by_interaction_of_a_constant_guess(clean):
    scores = mult_experiment.accuracy_by_interaction(Oracle("uniform"), clean)
    assert set(scores) == {*affect.INTERACTIONS, "all"}
    for kind in affect.INTERACTIONS:  # labels are balanced within each type
        assert scores[kind] == pytest.approx(0.5, abs=0.05)


def test_a_short_training_run_learns_and_its_words_find_the_expression():
    train = mult_experiment.unaligned_affect(600, seed=0, shares=(1.0, 0.0, 0.0), cache=False)
    test = mult_experiment.unaligned_affect(300, seed=1, shares=(1.0, 0.0, 0.0), cache=False)
    model = mult_experiment.make_affect_model("mult", width=16, seed=0, targets=("text",))
    before = mult_experiment.word_to_frame_grounding(model, test)
    history = mult_experiment.train_affect_model(model, train, epochs=4, lr=1e-2, batch_size=32, device="cpu")
    assert history.last["train_loss"] < history[0]["train_loss"] - 0.1
    assert mult_experiment.accuracy_by_interaction(model, test)["unimodal"] > 0.75
    after = mult_experiment.word_to_frame_grounding(model, test)
    assert after["mass_on_expression"] > after["chance"] + 0.2 > before["mass_on_expression"] + 0.1
    assert after["pointing_game"] > 0.8


def test_models_are_seeded_and_leave_the_global_generator_alone():
    state = torch.get_rng_state()
    first = mult_experiment.make_affect_model("early", seed=4)
    second = mult_experiment.make_affect_model("early", seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    other = mult_experiment.make_affect_model("early", seed=5)
    assert not torch.equal(first.fuse.weight, other.fuse.weight)


def test_bad_arguments_are_refused(clean):
    with pytest.raises(ValueError, match="kind"):
        mult_experiment.make_affect_model("late")
    with pytest.raises(ValueError, match="words"):
        mult_experiment.word_to_frame_grounding(Oracle("oracle"), clean, words="verbs")
    with pytest.raises(TypeError, match="text_to_video_attention"):
        mult_experiment.word_to_frame_grounding(mult_experiment.make_affect_model("early"), clean)
    with pytest.raises(TypeError, match="AffectDataset"):
        mult_experiment.accuracy_by_interaction(Oracle("oracle"), [clean[0]])
    with pytest.raises(ValueError, match="batch_size"):
        mult_experiment.accuracy_by_interaction(Oracle("oracle"), clean, batch_size=0)
    faceless = mult_experiment.unaligned_affect(2, seed=0, shares=(1.0, 0.0, 0.0), cache=False)
    with pytest.raises(ValueError, match="no example with an active face"):
        mult_experiment.word_to_frame_grounding(Oracle("oracle"), faceless)
