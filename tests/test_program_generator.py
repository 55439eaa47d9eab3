"""The program generator of N2NMN (Hu et al. 2017): layout vocabulary, seq2seq with attention,
behaviour cloning, sampling, and the REINFORCE estimator with its baseline."""
from __future__ import annotations

import pytest
import torch

from mmcourse.experiments.reasoning import programs as experiment
from mmcourse.models.program_generator import (LayoutVocabulary, MovingAverageBaseline, ProgramGenerator,
                                               reinforce_loss)
from mmcourse.world import programs
from mmcourse.world.language import default_tokenizer
from mmcourse.world.scene import sample_scenes

TRAIN = 200  # questions cloned on; the next 100 are held out


@pytest.fixture(scope="module", autouse=True)
def one_thread_for_the_module():
    """Tiny LSTMs step by step: one torch thread is many times faster than two that wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world():
    """300 world questions (60 scenes x 5), their scenes, question ids and expert layout ids."""
    scenes = sample_scenes(60, 0)
    asked = programs.ask_balanced(scenes, 0, 5)
    questions = [q for per_scene in asked for q in per_scene]
    question_scenes = [scene for scene, per_scene in zip(scenes, asked) for _ in per_scene]
    words, layouts = experiment.layout_data(questions)
    return {"questions": questions, "scenes": question_scenes, "words": words, "layouts": layouts}


@pytest.fixture(scope="module")
def cloned(world):
    """A generator cloned on the first 200 questions (a few seconds on one CPU thread)."""
    generator = experiment.new_generator(width=64, seed=0)
    history = experiment.clone(generator, world["words"][:TRAIN], world["layouts"][:TRAIN], epochs=20,
                               batch_size=32, lr=1e-2, seed=0, device="cpu", progress=False)
    return generator, history


# --------------------------------------------------------------------------------------------
# REINFORCE on a toy policy: a categorical over 3 actions, action 2 rewarded
# --------------------------------------------------------------------------------------------

REWARD = torch.tensor([0.0, 0.0, 1.0])


def _toy_gradient(actions: torch.Tensor, baseline) -> torch.Tensor:
    """The gradient of reinforce_loss w.r.t. the policy's logits, for the sampled `actions`."""
    logits = torch.tensor([0.5, 0.0, -0.5], requires_grad=True)  # action 2 starts least likely
    log_probs = logits.log_softmax(0)[actions]  # log pi(a) (N,)
    reinforce_loss(log_probs, REWARD[actions], baseline).backward()
    return logits.grad


def _toy_actions(n: int, seed: int = 0) -> torch.Tensor:
    probs = torch.tensor([0.5, 0.0, -0.5]).softmax(0)
    return torch.multinomial(probs, n, replacement=True, generator=torch.Generator().manual_seed(seed))


def test_reinforce_step_moves_probability_towards_the_rewarded_action():
    logits = torch.tensor([0.5, 0.0, -0.5], requires_grad=True)
    before = logits.softmax(0)[2].item()
    actions = _toy_actions(64)
    reinforce_loss(logits.log_softmax(0)[actions], REWARD[actions], baseline=0.3).backward()
    assert logits.grad[2] < 0 < logits.grad[0]  # descent raises the rewarded logit, lowers the others
    with torch.no_grad():
        after = (logits - 0.5 * logits.grad).softmax(0)[2].item()
    assert after > before


def test_baseline_changes_per_sample_weights_not_the_expected_gradient():
    one = torch.tensor([2])
    assert not torch.allclose(_toy_gradient(one, 0.0), _toy_gradient(one, 0.5))  # (r - b) differs per sample
    actions = _toy_actions(200_000)
    plain, with_baseline = _toy_gradient(actions, 0.0), _toy_gradient(actions, 0.5)
    # the exact gradient of -E[r] = -pi_2 w.r.t. the logits: -pi_2 (e_2 - pi)
    pi = torch.tensor([0.5, 0.0, -0.5]).softmax(0)
    exact = -pi[2] * (torch.eye(3)[2] - pi)
    torch.testing.assert_close(plain, exact, atol=5e-3, rtol=0)
    torch.testing.assert_close(with_baseline, exact, atol=5e-3, rtol=0)


def test_a_baseline_near_the_mean_reward_lowers_the_variance():
    actions = _toy_actions(2000, seed=1)
    logits = torch.tensor([0.5, 0.0, -0.5], requires_grad=True)
    log_probs = logits.log_softmax(0)[actions]
    per_sample = torch.stack([torch.autograd.grad(lp, logits, retain_graph=True)[0] for lp in log_probs[:500]])
    rewards = REWARD[actions[:500]].unsqueeze(1)  # (500, 1)
    mean_reward = torch.tensor([0.5, 0.0, -0.5]).softmax(0)[2]
    assert ((rewards - mean_reward) * per_sample).var(0).sum() < (rewards * per_sample).var(0).sum()


def test_baseline_receives_no_gradient():
    logits = torch.zeros(3, requires_grad=True)
    baseline = torch.tensor(0.4, requires_grad=True)
    per_sample = torch.full((4,), 0.4, requires_grad=True)
    actions = torch.tensor([0, 1, 2, 2])
    reinforce_loss(logits.log_softmax(0)[actions], REWARD[actions], baseline).backward()
    reinforce_loss(logits.log_softmax(0)[actions], REWARD[actions], per_sample).backward()
    assert baseline.grad is None and per_sample.grad is None and logits.grad is not None


def test_moving_average_baseline_uses_only_earlier_batches():
    baseline = MovingAverageBaseline(decay=0.9)
    assert baseline.update(torch.tensor([1.0, 0.0])) == 0.0  # nothing seen yet
    assert baseline.value == pytest.approx(0.5)  # the first batch sets it
    assert baseline.update([1.0, 1.0]) == pytest.approx(0.5)
    assert baseline.value == pytest.approx(0.9 * 0.5 + 0.1 * 1.0)
    with pytest.raises(ValueError, match="decay"):
        MovingAverageBaseline(decay=1.0)


# --------------------------------------------------------------------------------------------
# Layout vocabulary
# --------------------------------------------------------------------------------------------


def test_layouts_round_trip_through_the_vocabulary(world):
    vocabulary = LayoutVocabulary()
    layouts = [programs.layout_tokens(q.program) for q in world["questions"][:100]]
    ids = vocabulary.encode(layouts, 16)
    assert ids.shape == (100, 16) and ids.dtype == torch.int64
    assert vocabulary.decode(ids) == layouts
    lengths = torch.tensor([len(layout) for layout in layouts])
    assert (ids[torch.arange(100), lengths] == vocabulary.end_id).all()  # <end> right after the modules
    assert len(vocabulary) == len(programs.LAYOUT_TOKENS) + 3


def test_vocabulary_names_unknown_tokens_and_short_lengths():
    vocabulary = LayoutVocabulary()
    with pytest.raises(ValueError, match=r"layouts\[1\]\[1\] is 'filter_color\[pink\]'"):
        vocabulary.encode([["count", "scene"], ["count", "filter_color[pink]", "scene"]], 8)
    with pytest.raises(ValueError, match=r"layouts\[0\]\[0\] is '<end>'"):
        vocabulary.encode([["<end>"]], 8)
    with pytest.raises(ValueError, match="length=2"):
        vocabulary.encode([["count", "scene"]], 2)
    with pytest.raises(ValueError, match="ids holds token id 99"):
        vocabulary.decode(torch.tensor([[3, 99]]))


# --------------------------------------------------------------------------------------------
# The seq2seq generator
# --------------------------------------------------------------------------------------------


def test_cloning_200_questions_writes_held_out_layouts(world, cloned):
    generator, history = cloned
    assert history["train_loss"][-1] < history["train_loss"][0] / 10
    held_out = slice(TRAIN, None)
    assert experiment.exact_match(generator, world["words"][held_out], world["layouts"][held_out]) > 0.5
    assert experiment.layout_validity(generator, world["words"][held_out]) > 0.9
    reward = experiment.answer_reward(world["scenes"][held_out], [q.answer for q in world["questions"][held_out]])
    assert experiment.mean_reward(generator, world["words"][held_out], reward) > 0.5


def test_teacher_forcing_shapes_and_attention(world):
    generator = experiment.new_generator(width=32, seed=0)
    words, layouts = world["words"][:5], world["layouts"][:5]
    logits, attention = generator(words, generator.vocabulary.teacher_inputs(layouts), return_attention=True)
    assert logits.shape == (5, 16, len(generator.vocabulary)) and attention.shape == (5, 16, words.shape[1])
    torch.testing.assert_close(attention.sum(-1), torch.ones(5, 16))
    assert (attention[words.unsqueeze(1).expand_as(attention) == default_tokenizer().pad_id] == 0).all()
    assert torch.isinf(logits[..., generator.vocabulary.pad_id]).all()  # never predicted
    assert generator.clone_loss(words, layouts).ndim == 0


def test_sampling_is_reproducible_with_a_generator(world):
    generator = experiment.new_generator(width=32, seed=0)  # untrained: every draw is far from greedy
    words = world["words"][:40]
    draw = [generator.sample(words, generator=torch.Generator().manual_seed(seed)) for seed in (1, 1, 2)]
    assert torch.equal(draw[0].ids, draw[1].ids) and torch.equal(draw[0].log_probs, draw[1].log_probs)
    assert not torch.equal(draw[0].ids, draw[2].ids)
    greedy = [generator.sample(words, greedy=True, generator=torch.Generator().manual_seed(seed)) for seed in (1, 2)]
    assert torch.equal(greedy[0].ids, greedy[1].ids)


def test_sampled_log_probs_count_modules_and_end_but_not_padding(world, cloned):
    generator, _ = cloned
    words = world["words"][:40]
    sampled = generator.sample(words, max_length=16, generator=torch.Generator().manual_seed(0))
    assert sampled.ids.shape == (40, 16) and sampled.log_probs.requires_grad
    vocabulary = generator.vocabulary
    ended = (sampled.ids == vocabulary.end_id).any(1)
    assert ended.all() and (sampled.lengths < 16).all()  # a cloned model ends its layouts
    positions = torch.arange(16).expand(40, 16)
    assert (sampled.ids[torch.arange(40), sampled.lengths - 1] == vocabulary.end_id).all()
    assert (sampled.ids[positions >= sampled.lengths.unsqueeze(1)] == vocabulary.pad_id).all()
    with torch.no_grad():
        step = generator(words, vocabulary.teacher_inputs(sampled.ids)).log_softmax(-1)  # (B, T, V)
        counted = step.gather(-1, sampled.ids.clamp_min(vocabulary.end_id).unsqueeze(-1)).squeeze(-1)
        by_hand = (counted * (positions < sampled.lengths.unsqueeze(1))).sum(1)
        torch.testing.assert_close(sampled.log_probs.detach(), by_hand, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(generator.log_prob(words, sampled.ids), by_hand, atol=1e-4, rtol=1e-4)


def test_generator_names_bad_inputs(world):
    generator = experiment.new_generator(width=16, seed=0)
    words, layouts = world["words"][:3], world["layouts"][:3]
    with pytest.raises(ValueError, match="question holds token id"):
        generator.sample(words + 10_000)
    with pytest.raises(TypeError, match="question must be an integer tensor"):
        generator.sample(words.float())
    with pytest.raises(ValueError, match=r"layouts has 2 rows .* question has 3"):
        generator.clone_loss(words, layouts[:2])
    with pytest.raises(ValueError, match="layout_in holds token id"):
        generator(words, layouts + 100)
    with pytest.raises(ValueError, match="max_length"):
        generator.sample(words, max_length=0)
    with pytest.raises(ValueError, match=r"rewards has shape \(2,\)"):
        reinforce_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match=r"questions has 3 rows but layouts has 2"):
        experiment.clone(generator, words, layouts[:2], epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"reward_fn returned shape \(2,\)"):
        experiment.reinforce(generator, words, lambda tokens, indices: [0.0, 1.0], epochs=1, device="cpu",
                             progress=False)


# --------------------------------------------------------------------------------------------
# Programs from layouts, and REINFORCE training
# --------------------------------------------------------------------------------------------


def test_decode_programs_refuses_invalid_layouts(world):
    expert = programs.layout_tokens(world["questions"][0].program)
    decoded = experiment.decode_programs([expert, [], ["scene"], ["count"], ["count", "scene", "scene"],
                                          ["count", "count", "scene"]])
    assert decoded[0] == programs.program_from_layout(expert)
    assert decoded[1:] == [None] * 5


def test_reinforce_learns_a_rewarded_first_module(world):
    """From scratch, a reward for starting the layout with `count` is learned within a few epochs."""
    generator = experiment.new_generator(width=32, seed=0)
    starts_with_count = lambda tokens, indices: [float(t[:1] == ["count"]) for t in tokens]  # noqa: E731
    history = experiment.reinforce(generator, world["words"][:200], starts_with_count, epochs=6, batch_size=50,
                                   lr=3e-2, seed=0, max_length=4, device="cpu", progress=False)
    assert history["reward"][0] < 0.2 and history["reward"][-1] > 0.9
    assert set(history.names()) >= {"reward", "valid", "train_loss"}


def test_reinforce_after_cloning_keeps_answering(world, cloned):
    generator, _ = cloned
    words = world["words"][:TRAIN]
    reward = experiment.answer_reward(world["scenes"][:TRAIN], [q.answer for q in world["questions"][:TRAIN]])
    before = experiment.mean_reward(generator, words, reward)
    fine_tuned = experiment.new_generator(width=64, seed=0)
    fine_tuned.load_state_dict(generator.state_dict())
    history = experiment.reinforce(fine_tuned, words, reward, epochs=1, batch_size=50, lr=1e-4, seed=0,
                                   device="cpu", progress=False)
    assert 0.5 < history["reward"][0] <= 1.0
    assert experiment.mean_reward(fine_tuned, words, reward) > before - 0.1


@pytest.mark.gpu
def test_sampling_and_reinforce_on_cuda(world):
    generator = experiment.new_generator(width=32, seed=0).cuda()
    words = world["words"][:64].cuda()
    draws = [generator.sample(words, generator=torch.Generator(device="cuda").manual_seed(3)).ids for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    with pytest.raises(ValueError, match="generator is on cpu but question is on cuda"):
        generator.sample(words, generator=torch.Generator())
    history = experiment.reinforce(generator, world["words"][:64], lambda tokens, indices: [1.0] * len(tokens),
                                   epochs=1, batch_size=32, device="cuda", progress=False)
    assert history["reward"] == [1.0]
