"""Tests of mmcourse.world.caption_is_true: every caption the world generates reads back and is
judged true; swapped and irrelevant ones are false (or, for web phrases, refused); hand-written
captions of each kind and relation are judged as the generators mean them; bad input is refused."""
import pytest

from mmcourse.world import caption_is_true
from mmcourse.world.language import (ATTRIBUTE_WORDS, Caption, _read_caption, describe, describe_with_spans,
                                     noisy_captions)
from mmcourse.world.scene import Scene, SceneObject, sample_scenes

SCENES = (sample_scenes(100, seed=5) + sample_scenes(40, seed=5, preset="sort_of_clevr")
          + sample_scenes(10, seed=6, num_objects=1) + sample_scenes(10, seed=7, num_objects=12))
PER_SCENE = 15  # 160 scenes x 15 = 2,400 captions per kind of test


def obj(shape, color, size, style, x, y):
    return SceneObject(shape, color, size, style, x, y)


# x: 0.2 < 0.5 < 0.8 = 0.8; y: 0.2 = 0.2 < 0.8 = 0.8 (ties test the strict relations and the list orders).
SCENE = Scene((obj("circle", "red", "small", "filled", 0.2, 0.2),      # 0
               obj("square", "blue", "large", "outline", 0.8, 0.2),    # 1
               obj("circle", "red", "large", "filled", 0.5, 0.8),      # 2
               obj("triangle", "green", "small", "outline", 0.8, 0.8)))  # 3
# Twenty-one small red circles on a grid: number words past twenty.
CROWD = Scene(tuple(obj("circle", "red", "small", "filled", 0.1 + 0.13 * (k % 7), 0.2 + 0.3 * (k // 7))
                    for k in range(21)))


def swapped_phrase(before: Caption, after: Caption) -> tuple[dict[str, str], str, str]:
    """The values the swapped phrase now states, the attribute swapped and its old value."""
    (w,) = [w for w, (old, new) in enumerate(zip(before.words, after.words)) if old != new and old in ATTRIBUTE_WORDS]
    start, end, _ = next(span for span in after.spans if span[0] <= w < span[1])
    values = dict(ATTRIBUTE_WORDS[word] for word in after.words[start:end] if word in ATTRIBUTE_WORDS)
    attribute, old_value = ATTRIBUTE_WORDS[before.words[w]]
    return values, attribute, old_value


def fitting(scene, values):
    return [o for o in scene.objects if all(getattr(o, a) == v for a, v in values.items())]

# ---------------------------------------------------------------- generated captions


def test_every_generated_caption_is_true():
    templates = set()
    for k, scene in enumerate(SCENES):
        for caption in describe_with_spans(scene, k, PER_SCENE):
            assert caption_is_true(scene, caption.text) is True, (scene, caption.text)
            templates.add(_read_caption(caption.text).template)
    assert len(templates) == 14  # 3 object, 3 relation, 3 count and 5 list templates all seen
    assert all(caption_is_true(CROWD, text) for text in describe(CROWD, 0, 40))
    assert any(" twenty one " in f" {text} " for text in describe(CROWD, 0, 40))


def test_swapped_captions_are_false():
    """Every swap is false of its scene: one attribute word changed, or (when no one-word change can
    make the caption false) an irrelevant caption instead. Most swaps keep the first try, a value
    that fits no object together with the phrase's other values."""
    first_try = replaced = 0
    for k, scene in enumerate(SCENES):
        clean = describe_with_spans(scene, k, PER_SCENE)
        for before, after in zip(clean, noisy_captions(scene, k, PER_SCENE, 1.0, kinds=("swap",))):
            if after.noise_kind == "irrelevant":
                replaced += 1
                assert not after.spans
                continue
            assert after.noise_kind == "swap" and caption_is_true(scene, after.text) is False, (scene, after.text)
            changed = [w for w, (old, new) in enumerate(zip(before.words, after.words)) if old != new]
            assert len(before.words) == len(after.words) and 1 <= len(changed) <= 2  # the word, maybe a/an
            values, _, _ = swapped_phrase(before, after)
            first_try += not fitting(scene, values)
    assert first_try > 0.75 * len(SCENES) * PER_SCENE
    assert replaced < 0.05 * len(SCENES) * PER_SCENE


def test_irrelevant_captions_are_false_or_refused():
    refused = judged = 0
    for k, scene in enumerate(SCENES):
        for caption in noisy_captions(scene, k, PER_SCENE, 1.0, kinds=("irrelevant",)):
            if any(word in ATTRIBUTE_WORDS for word in caption.words):  # an absent colour-shape pair
                assert caption_is_true(scene, caption.text) is False, (scene, caption.text)
                judged += 1
            else:  # a web phrase
                with pytest.raises(ValueError, match="cannot read text="):
                    caption_is_true(scene, caption.text)
                refused += 1
    assert judged > 100 and refused > 100


def test_truncated_captions_are_refused_or_judged_as_the_shorter_caption():
    """A cut caption that still reads is true, except a list cut to fewer phrases than objects
    ("the picture shows a red circle" in a scene of four), which no longer names every object."""
    refused, kinds = 0, set()
    for k, scene in enumerate(SCENES):
        for caption in noisy_captions(scene, k, PER_SCENE, 1.0, kinds=("truncate",)):
            try:
                reading = _read_caption(caption.text)
            except ValueError:
                refused += 1
                continue
            kinds.add(reading.kind)
            assert caption_is_true(scene, caption.text) is (reading.kind != "list"), (scene, caption.text)
    assert refused > 0.8 * len(SCENES) * PER_SCENE and kinds == {"object", "count", "list"}


def test_truncation_examples():
    assert caption_is_true(SCENE, "there is a small circle left of a blue square") is True
    assert caption_is_true(SCENE, "there is a small circle") is True  # cut to an object caption
    assert caption_is_true(SCENE, "there are four objects") is True  # a list cut to its count
    assert caption_is_true(SCENE, "the picture shows a small circle") is False  # a list of one, of four objects
    assert caption_is_true(SCENE, "there are four objects, a red circle") is False  # one phrase for four objects
    for cut in ("there is a small", "there is a small circle left of", "there are four objects, a red circle and"):
        with pytest.raises(ValueError, match="cannot read text="):
            caption_is_true(SCENE, cut)

# ---------------------------------------------------------------- hand-written captions


@pytest.mark.parametrize("text, expected", [
    # object captions: some object fits the phrase
    ("a red circle", True), ("there is a small filled circle", True), ("a picture of a hollow triangle", True),
    ("a green shape", True), ("an object", True), ("A Large Blue Outline Square", True),
    ("a blue circle", False), ("there is a large solid square", False), ("a picture of a purple object", False),
    ("a medium circle", False), ("a diamond", False),
    # count captions: exactly that many objects fit
    ("two red circles", True), ("there are two red circles", True), ("there is one blue square", True),
    ("the picture shows four objects", True), ("two large shapes", True), ("zero yellow shapes", True),
    ("one red circle", False), ("three shapes", False), ("one circle", False), ("there are two squares", False),
    # list captions: every object named once, in order for an ordered list
    ("there are four objects, a red circle, a blue square, a large red circle and a triangle", True),
    ("there are four shapes, a large red circle, a blue square, a red circle and a triangle", True),
    ("a red circle, a blue square, a red circle and a triangle", True),
    ("the picture shows a small circle, a square, a large circle and a green object", True),
    ("there are three objects, a red circle, a blue square and a triangle", False),  # four objects
    ("there are four objects, a red circle, a blue square and a triangle", False),  # three phrases
    ("there are five objects, a red circle, a blue square, a large red circle and a triangle", False),  # four objects
    ("there are four objects, a red circle, a red circle, a red circle and a triangle", False),  # not one-to-one
    ("a red circle, a blue square and a triangle", False),
    ("the picture shows a red circle", False),
    ("from left to right, a small circle, a large circle, a square and a triangle", True),
    ("from left to right, a small circle, a large circle, a triangle and a square", True),  # same x
    ("from left to right, a large circle, a small circle, a square and a triangle", False),
    ("from top to bottom, a blue square, a small circle, a triangle and a large circle", True),  # same y
    ("from top to bottom, a triangle, a blue square, a small circle and a large circle", False),
    # relation captions: two different fitting objects in that relation (strict, as CLEVR)
    ("a small circle left of a blue square", True), ("a blue square left of a small circle", False),
    ("a blue square is to the right of a red circle", True), ("a triangle right of a circle", True),
    ("there is a triangle to the left of a circle", False), ("a triangle left of a square", False),  # same x
    ("a square above a large circle", True), ("a small circle is above a triangle", True),
    ("a small circle below a square", False),  # same y
    ("a large circle is under a small circle", True), ("a small circle under a large circle", False),
    ("a red circle below a red circle", True), ("a red circle to the left of a red circle", True),
    ("a small circle left of a small circle", False),  # one small circle: not two different objects
])
def test_hand_written_captions(text, expected):
    assert caption_is_true(SCENE, text) is expected


def test_number_words_past_twenty_and_an_empty_scene():
    assert caption_is_true(CROWD, "there are twenty one objects") is True
    assert caption_is_true(CROWD, "twenty one small red circles") is True
    assert caption_is_true(CROWD, "twenty red circles") is False
    assert caption_is_true(Scene(()), "there are zero objects") is True
    assert caption_is_true(Scene(()), "a red circle") is False

# ---------------------------------------------------------------- text outside the grammar and bad input


@pytest.mark.parametrize("text, where", [
    ("click here for more photos", r"word 1 \('click'\) expected an article"),
    ("view full size", r"word 1 \('view'\)"),
    ("circle red a the", r"word 1 \('circle'\)"),
    ("a small red", "at the end expected a size, color, style or singular noun"),
    ("an red circle", r"word 1 \('an'\) expected 'a' before 'red'"),
    ("two red circle", r"word 3 \('circle'\) expected a size, color, style or plural noun"),
    ("there is two circles", "'one' after 'is'"),
    ("there are one circle", "a number other than 'one' after 'are'"),
    ("a red blue circle", r"word 3 \('blue'\) expected one color per phrase"),
    ("a red circle, a blue square", "at the end expected ',' or 'and'"),
    ("a red circle left a blue square", r"word 5 \('a'\) expected 'of'"),
    ("a red circle to the above a blue square", "expected 'left' or 'right'"),
    ("a red circle.", r"word 4 \('\.'\) expected the end of the caption"),
    ("the red circle", r"word 2 \('red'\) expected 'picture'"),  # a referring expression, not a caption
    ("there are two objects a red circle and a blue square", r"word 5 \('a'\) expected the end of the caption or ','"),
    ("", "has no words"),
])
def test_text_outside_the_grammar_is_refused_where_it_fails(text, where):
    with pytest.raises(ValueError, match=where) as error:
        caption_is_true(SCENE, text)
    assert f"text={text!r}" in str(error.value)


@pytest.mark.parametrize("scene, text, error, name", [
    ("scene", "a red circle", TypeError, "scene must be a Scene"),
    (SCENE.objects, "a red circle", TypeError, "scene must be a Scene"),
    (SCENE, None, TypeError, "text must be a str"),
    (SCENE, ["a", "red", "circle"], TypeError, "text must be a str"),
    (SCENE, Caption("a red circle"), TypeError, r"pass caption\.text"),
])
def test_bad_input_types(scene, text, error, name):
    with pytest.raises(error, match=name):
        caption_is_true(scene, text)
