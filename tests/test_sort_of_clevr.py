"""Tests for mmcourse.world.sort_of_clevr: the relational task of Santoro et al. 2017."""
import re

import numpy as np
import pytest

from mmcourse.world.language import Tokenizer
from mmcourse.world.render import render_batch
from mmcourse.world.scene import sample_scenes
from mmcourse.world.sort_of_clevr import ANSWERS, COLORS, WORDS, SortOfClevr, questions, sample_sort_of_clevr

NON_RELATIONAL = {
    r"what is the shape of the (\w+) object\?": 0,
    r"is the (\w+) object on the left\?": 1,
    r"is the (\w+) object on the top\?": 2,
}
RELATIONAL = {
    r"what is the shape of the object closest to the (\w+) object\?": 0,
    r"what is the shape of the object furthest from the (\w+) object\?": 1,
    r"how many objects have the same shape as the (\w+) object\?": 2,
}


@pytest.fixture(scope="module")
def data():
    return sample_sort_of_clevr(40, seed=3)


def _parse(text):
    """(relational, subtype index, colour) read back from the question text."""
    for relational, templates in ((False, NON_RELATIONAL), (True, RELATIONAL)):
        for pattern, subtype in templates.items():
            match = re.fullmatch(pattern, text)
            if match:
                return relational, subtype, match.group(1)
    raise AssertionError(f"unrecognised question {text!r}")


def _expected_answer(scene, relational, subtype, color):
    """The answer, computed independently with a distance matrix."""
    xy = np.array([(o.x, o.y) for o in scene.objects])  # (6, 2)
    shapes = np.array([o.shape for o in scene.objects])
    me = [o.color for o in scene.objects].index(color)
    if not relational:
        return [shapes[me], "yes" if xy[me, 0] < 0.5 else "no", "yes" if xy[me, 1] < 0.5 else "no"][subtype]
    distances = np.linalg.norm(xy - xy[me], axis=1)  # (6,)
    nearest = np.where(np.arange(6) == me, np.inf, distances).argmin()
    farthest = distances.argmax()
    return [shapes[nearest], shapes[farthest], str(int((shapes == shapes[me]).sum()))][subtype]


def test_shapes_and_dtypes(data):
    assert isinstance(data, SortOfClevr) and len(data) == 40
    assert data.images.shape == (40, 75, 75, 3) and data.images.dtype == np.uint8
    assert data.vectors.shape == (40, 20, 18) and data.vectors.dtype == np.float32
    assert data.answers.shape == (40, 20) and data.answers.dtype == np.int64
    assert data.relational.shape == (40, 20) and data.relational.dtype == bool
    assert len(data.texts) == 40 and all(len(row) == 20 for row in data.texts)


def test_ten_non_relational_then_ten_relational(data):
    assert not data.relational[:, :10].any() and data.relational[:, 10:].all()


def test_vector_layout_matches_the_text(data):
    for i in range(len(data)):
        for j, text in enumerate(data.texts[i]):
            relational, subtype, color = _parse(text)
            vector = data.vectors[i, j]
            assert set(np.unique(vector)) <= {0.0, 1.0}
            assert vector[:6].sum() == 1 and vector[COLORS.index(color)] == 1
            assert not vector[6:12].any()  # second colour: reserved for ternary questions
            assert vector[12:15].tolist() == ([0, 1, 0] if relational else [1, 0, 0])
            assert vector[15:18].sum() == 1 and vector[15 + subtype] == 1
            assert relational == data.relational[i, j]


def test_answers_match_an_independent_computation(data):
    for i, scene in enumerate(data.scenes):
        for j, text in enumerate(data.texts[i]):
            assert ANSWERS[data.answers[i, j]] == _expected_answer(scene, *_parse(text)), text


def test_answer_distribution(data):
    non_relational = [ANSWERS[a] for a in data.answers[:, :10].ravel()]
    relational = [ANSWERS[a] for a in data.answers[:, 10:].ravel()]
    assert {"yes", "no", "square", "circle"} == set(non_relational)
    assert {"square", "circle"} <= set(relational) and not {"yes", "no"} & set(relational)
    counts = {a for a in relational if a.isdigit()}
    assert len(counts) >= 4
    for answer in ("yes", "no", "square", "circle"):
        assert non_relational.count(answer) > 0.1 * len(non_relational)
    subtypes = {_parse(t)[:2] for row in data.texts for t in row}
    assert len(subtypes) == 6 and {_parse(t)[2] for row in data.texts for t in row} == set(COLORS)


def test_question_objects():
    scene = sample_scenes(1, seed=0, preset="sort_of_clevr")[0]
    asked = questions(scene, seed=5)
    assert len(asked) == 20
    assert [q.relational for q in asked] == [False] * 10 + [True] * 10
    for q in asked:
        assert ANSWERS[q.answer_index] == q.answer
        assert q.vector.shape == (18,) and q.vector.dtype == np.float32
        assert q.color in q.text
    assert [q.text for q in questions(scene, 5)] == [q.text for q in asked]
    generator = np.random.default_rng(5)
    assert [q.text for q in questions(scene, generator)] == [q.text for q in asked]


def test_images_are_the_rendered_scenes(data):
    assert np.array_equal(data.images, render_batch(data.scenes, 75))
    assert all(scene.preset == "sort_of_clevr" for scene in data.scenes)
    assert sample_sort_of_clevr(2, seed=3, size=64).images.shape == (2, 64, 64, 3)


def test_deterministic_and_prefix_stable(data):
    again = sample_sort_of_clevr(40, seed=3)
    assert again.images.tobytes() == data.images.tobytes()
    assert np.array_equal(again.vectors, data.vectors) and np.array_equal(again.answers, data.answers)
    assert again.texts == data.texts
    prefix = sample_sort_of_clevr(5, seed=3)
    assert prefix.texts == data.texts[:5] and np.array_equal(prefix.answers, data.answers[:5])
    other = sample_sort_of_clevr(5, seed=4)
    assert other.texts != prefix.texts


def test_words_cover_questions_and_answers(data):
    tokenizer = Tokenizer(WORDS)
    for text in [t for row in data.texts for t in row] + list(ANSWERS):
        assert tokenizer.unk_id not in tokenizer.encode(text), text


def test_empty():
    empty = sample_sort_of_clevr(0, seed=0)
    assert empty.images.shape == (0, 75, 75, 3) and empty.vectors.shape == (0, 20, 18) and empty.texts == []


@pytest.mark.parametrize("kwargs, error, name", [
    ({"n": -1}, ValueError, "n"),
    ({"n": 1.5}, TypeError, "n"),
    ({"seed": -2}, ValueError, "seed"),
    ({"size": 10}, ValueError, "size"),
    ({"size": 1000}, ValueError, "size"),
    ({"size": 75.0}, TypeError, "size"),
])
def test_bad_sample_input(kwargs, error, name):
    with pytest.raises(error, match=name):
        sample_sort_of_clevr(**{"n": 2, "seed": 0, **kwargs})


def test_bad_question_input():
    scene = sample_scenes(1, seed=0, preset="sort_of_clevr")[0]
    with pytest.raises(TypeError, match="scene"):
        questions("a scene", 0)
    with pytest.raises(ValueError, match="scene"):
        questions(sample_scenes(1, seed=0)[0], 0)  # default preset
    with pytest.raises(ValueError, match="scene"):
        questions(scene.with_objects(scene.objects[:5]), 0)  # a colour missing
    with pytest.raises(ValueError, match="seed"):
        questions(scene, -1)
    with pytest.raises(TypeError, match="seed"):
        questions(scene, "0")
